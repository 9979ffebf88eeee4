"""Where the two cores go while the trainer benchmark's 2-worker runs train (Linux: reads /proc).

The throughput target compares Ray Train with plain DDP on the same two cores. This benchmark asks why the two
differ: for one plain-DDP run and one Ray Train run per pass it takes two snapshots of every thread's CPU
ticks in a window of steady training and splits the machine's ticks into the training threads (the busiest
thread of each training process), idle, and everything else by role (gloo threads, Ray's daemons and actors,
kernel threads, the VM's agents). It also reports each training thread's CPU seconds per step, which splits
Ray Train's throughput relative to DDP into two factors:

    throughput ratio = (Ray's training share / DDP's) x (DDP's CPU per step / Ray's)

This is an identity (both sides are steps per machine tick), not a check: what it tells is whether a slower
run gets less of the machine or needs more CPU for each step.

Every mode runs under the pipeline's malloc settings, as in bench.trainer_bench. Writes
bench/results/trainer_cpu.json. Run with `.venv/bin/python -m bench.cpu_accounting [--passes N]`.
"""
from __future__ import annotations

import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import trainer_bench  # noqa: E402

RESULTS = REPO / "bench" / "results"
# Long enough that a fixed window after every run's start-up (Ray Train's ≈ 16 s, plus warm-up) still ends
# inside the loop: 100 steps of 0.8-1.1 s; the window is [DELAY_S, DELAY_S + WINDOW_S] after the run's launch.
STEPS = 100
DELAY_S = 40.0
WINDOW_S = 40.0


@dataclass(frozen=True)
class ThreadTicks:
    cmdline: str
    comm: str
    ppid: int
    ticks: int  # user + system, in USER_HZ ticks


def read_stat(path: str) -> tuple[str, int, int]:
    """A /proc stat file's (comm, ppid, utime + stime ticks); a process's counts all its threads, live or gone."""
    stat = Path(path).read_text()
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()
    return comm, int(fields[1]), int(fields[11]) + int(fields[12])


def snapshot() -> dict[tuple[int, int], ThreadTicks]:
    """Every thread on the machine: (pid, tid) -> its command line, name, parent and CPU ticks so far."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            for tid in os.listdir(f"/proc/{pid}/task"):
                comm, ppid, ticks = read_stat(f"/proc/{pid}/task/{tid}/stat")
                out[(int(pid), int(tid))] = ThreadTicks(cmdline, comm, ppid, ticks)
        except (FileNotFoundError, ProcessLookupError, ValueError):  # it ended while we read it
            continue
    return out


def machine_ticks() -> dict[str, int]:
    """The `cpu` line of /proc/stat: ticks of both cores by kind."""
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    values = Path("/proc/stat").read_text().splitlines()[0].split()[1:1 + len(names)]
    return dict(zip(names, map(int, values)))


_RAY_SCRIPTS = {"dashboard/dashboard.py": "Ray dashboard", "log_monitor.py": "Ray log monitor",
                "autoscaler/_private/monitor.py": "Ray autoscaler monitor", "autoscaler/v2/monitor.py":
                "Ray autoscaler monitor", "raylet/raylet": "Ray raylet", "gcs/gcs_server": "Ray GCS"}


def role_of(cmdline: str) -> str:
    """A process's role in the accounting, from its command line (kernel threads have none)."""
    if not cmdline:
        return "kernel threads"
    if cmdline.startswith("ray::"):
        return "Ray " + re.split(r"[ .]", cmdline[5:], maxsplit=1)[0]
    if cmdline.startswith("ray-dashboard-") or "multiprocessing.forkserver" in cmdline:
        return "Ray dashboard modules"
    for fragment, role in _RAY_SCRIPTS.items():
        if fragment in cmdline:
            return role
    if "multiprocessing.spawn" in cmdline:
        return "DDP worker"
    return "other: " + Path(cmdline.split()[0]).name


def account(before: dict, after: dict, cpu_before: dict[str, int], cpu_after: dict[str, int],
            trainer_pids: set[int], steps_in_window: float, driver_pid: int | None = None) -> dict:
    """Split the window's machine ticks between the training threads, idle, and everything else by role.

    The training thread of a training process is its busiest thread in the window; its other threads are
    counted by name (gloo's are the all-reduce; the rest are the process's own runtime)."""
    delta = {k: v.ticks - before[k].ticks for k, v in after.items() if k in before}
    total = sum(cpu_after[k] - cpu_before[k] for k in cpu_after)
    idle = (cpu_after["idle"] - cpu_before["idle"]) + (cpu_after["iowait"] - cpu_before["iowait"])
    steal = cpu_after["steal"] - cpu_before["steal"]
    training = {}
    for pid in sorted(trainer_pids):
        threads = [k for k in delta if k[0] == pid]
        if threads:
            busiest = max(threads, key=lambda k: delta[k])
            training[busiest] = delta[busiest]
    by_role: dict[str, int] = {}
    for key, ticks in delta.items():
        if key in training or ticks == 0:
            continue
        thread = after[key]
        if key[0] in trainer_pids:
            role = "training processes' gloo threads" if "gloo" in thread.comm else "training processes' other threads"
        else:
            role = "benchmark driver" if key[0] == driver_pid else role_of(thread.cmdline)
        by_role[role] = by_role.get(role, 0) + ticks
    train_ticks = sum(training.values())
    hz = os.sysconf("SC_CLK_TCK")
    return {
        "machine_ticks": total,
        "share": {"training_threads": round(train_ticks / total, 4), "idle": round(idle / total, 4),
                  "steal": round(steal / total, 4),
                  "everything_else": round(1 - (train_ticks + idle + steal) / total, 4)},
        # Ticks of threads that started or ended inside the window are in the machine's total but in neither
        # snapshot pair: a window with much of this saw something come and go (another job, a test run).
        "not_attributed": round(1 - (train_ticks + idle + steal + sum(by_role.values())) / total, 4),
        "training_thread_cpu_s_per_step": [round(t / hz / steps_in_window, 4) for t in training.values()],
        "everything_else_ticks_by_role": dict(sorted(by_role.items(), key=lambda kv: -kv[1])),
    }


def trainer_pids(mode: str) -> set[int]:
    """The processes that train: this process's spawned DDP children, or Ray Train's worker actors."""
    found = set()
    for (pid, tid), thread in snapshot().items():
        if pid != tid:
            continue
        if mode == "torch_ddp" and thread.ppid == os.getpid() and "multiprocessing.spawn" in thread.cmdline:
            found.add(pid)
        if mode == "ray_train" and thread.cmdline.startswith("ray::RayTrainWorker"):
            found.add(pid)
    return found


SAMPLER_THREAD = "cpu-accounting-sampler"


def measured_run(mode: str, run, delay_s: float = DELAY_S, window_s: float = WINDOW_S) -> dict:
    """Run `run()` (a 2-worker benchmark run) while a thread snapshots the machine at delay_s and delay_s + window_s."""
    taken: dict = {}

    def sampler() -> None:
        time.sleep(delay_s)
        taken["pids"] = trainer_pids(mode)
        # A snapshot reads every thread on the machine (tens of ms on a busy one): time each at its middle.
        t0 = time.perf_counter()
        taken["before"], taken["cpu_before"] = snapshot(), machine_ticks()
        t1 = time.perf_counter()
        time.sleep(window_s)
        t2 = time.perf_counter()
        taken["after"], taken["cpu_after"] = snapshot(), machine_ticks()
        taken["window_s"] = (t2 + time.perf_counter()) / 2 - (t0 + t1) / 2

    thread = threading.Thread(target=sampler, daemon=True, name=SAMPLER_THREAD)
    thread.start()
    row = run()
    thread.join()
    # The window must sit inside the steady steps: after start-up and warm-up, before the loop's end.
    steady_from = row["startup_s"] + trainer_bench.WARMUP * row["ms_per_step"] / 1000
    if delay_s < steady_from or delay_s + window_s > row["wall_s"]:
        raise RuntimeError(f"{mode}: the window {delay_s:.0f}-{delay_s + window_s:.0f} s is not inside the steady "
                           f"steps ({steady_from:.0f}-{row['wall_s']:.0f} s after launch); change DELAY_S or STEPS")
    if len(taken["pids"]) != 2:
        raise RuntimeError(f"{mode}: found {len(taken['pids'])} training processes in the window, expected 2")
    steps_in_window = taken["window_s"] / (row["ms_per_step"] / 1000)
    accounting = account(taken["before"], taken["after"], taken["cpu_before"], taken["cpu_after"],
                         taken["pids"], steps_in_window, os.getpid())
    return {**row, "window_s": round(taken["window_s"], 2), "steps_in_window": round(steps_in_window, 1),
            **accounting}


def compare(ddp: dict, ray: dict) -> dict:
    """Ray-vs-DDP throughput (from the median step times) and its two factors over the window (see the module
    docstring): the training threads' share of the machine, and DDP's CPU per step over Ray's."""
    share = ray["share"]["training_threads"] / ddp["share"]["training_threads"]
    cpu = statistics.mean(ddp["training_thread_cpu_s_per_step"]) / statistics.mean(ray["training_thread_cpu_s_per_step"])
    return {"throughput_ratio": round(ddp["ms_per_step"] / ray["ms_per_step"], 3),
            "share_ratio": round(share, 3), "cpu_per_step_ratio": round(cpu, 3)}


def main(passes: int, out: Path) -> dict:
    from pipeline.ray_edge import ensure_ray, keep_ray_on_loopback

    keep_ray_on_loopback()
    runs, comparisons = [], []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        from components.data.prepare import prepare_dataset
        from pipeline.config import load_config

        prepare_dataset(load_config(REPO / "configs" / "default.yaml").data, tmp / "data")
        for n in range(1, passes + 1):
            print(f"cpu accounting (pass {n}): plain DDP ...", flush=True)
            ddp = measured_run("torch_ddp", lambda: trainer_bench.run_ddp(tmp / "data", tmp, 2, STEPS))
            print(f"cpu accounting (pass {n}): Ray Train, 2 workers ...", flush=True)
            started = ensure_ray(None, 2)
            try:
                ray = measured_run("ray_train", lambda: trainer_bench.run_ray_train(
                    tmp / "data", tmp, 2, f"cpu-pass{n}", STEPS))
            finally:
                if started:
                    import ray as ray_module

                    ray_module.shutdown()
            runs += [{**ddp, "pass": n}, {**ray, "pass": n}]
            comparisons.append(compare(ddp, ray))
            print(f"  {comparisons[-1]}", flush=True)
    result = {
        "machine": {"cpus": os.cpu_count(), "user_hz": os.sysconf("SC_CLK_TCK")},
        "malloc": trainer_bench.malloc_setting(),
        "command": f"python -m bench.cpu_accounting --passes {passes}",
        "window": {"delay_s": DELAY_S, "window_s": WINDOW_S, "steps_per_run": STEPS},
        "runs": runs,
        "per_pass": comparisons,
        "median": {k: round(statistics.median(c[k] for c in comparisons), 3) for k in comparisons[0]},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["median"], indent=2))
    return result


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=2, help="pairs of (plain DDP, Ray Train) runs")
    parser.add_argument("--out", type=Path, default=RESULTS / "trainer_cpu.json", help="result JSON")
    args = parser.parse_args()
    if args.passes < 1:
        parser.error(f"--passes must be at least 1, got {args.passes}")
    if not Path("/proc/stat").exists():
        parser.error("this benchmark reads Linux's /proc; run it on Linux")
    trainer_bench.reexec_with_malloc("tuned")
    main(args.passes, args.out)
