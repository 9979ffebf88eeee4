"""Ray Train against plain DDP with the machine's drift taken out: both train at once, and take turns.

The trainer benchmark runs its modes one after another, minutes apart, and this shared 2-core machine's
speed drifts by more than the 5 % the throughput target is about (one day's 8 passes: plain DDP 818-1,054
ms/step, per-pass ratios 0.81-1.18). Here a plain-DDP run and a Ray Train run of the same 2-worker
configuration are both started, and then only one of them runs at a time: every SEGMENT_S seconds one side
is frozen (SIGSTOP on every process of it) and the other thawed (SIGCONT). Frozen means the whole side:
for Ray Train that is the entire local cluster (GCS, raylet, dashboard, monitors, controller, actors and
workers), so each Ray segment pays for everything Ray runs beside the training, and each DDP segment for
nothing of it. Only this benchmark's own driver process keeps running in both, a small cost borne equally.

Each side's rank 0 writes the monotonic end time and duration of every step to a file. A step counts for a
segment if it started and ended inside it, after the segment's first step (which may still be paying for
the switch). A cycle is one DDP segment and one Ray segment, in ABBA order over pairs of cycles so that a
drift within a cycle does not favour the side that always runs second. Per cycle:

    throughput ratio = DDP's median step time / Ray Train's median step time

Reported: each cycle's ratio, their median, and a bootstrap 95 % interval of that median.
`--pair ddp,ddp` runs the same procedure with plain DDP on both sides: an A/A check of the method itself,
whose ratio should come out at 1 within its interval.

Writes bench/results/trainer_interleaved.json (A/A: trainer_interleaved_aa.json). Linux only (signals,
/proc). Run with `.venv/bin/python -m bench.interleaved_bench [--cycles N] [--pair ray,ddp]`.
"""
from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import trainer_bench  # noqa: E402
from bench.cpu_accounting import machine_ticks, read_stat  # noqa: E402

RESULTS = REPO / "bench" / "results"
SEGMENT_S = 12.0
CYCLES = 16
# Steps per run, at most this many a second of its segments, and at least this many: enough for every
# cycle's segment plus the shared start-up. Both runs are stopped when the cycles are done, wherever they are.
MAX_STEPS_PER_S = 2.5
MIN_STEPS = 2000


def steps_for(cycles: int, segment_s: float) -> int:
    """Each side runs cycles x segment_s seconds; a run that ran out of steps would leave cycles empty."""
    return max(MIN_STEPS, int(MAX_STEPS_PER_S * cycles * segment_s) + 100)


class StampedSteps(list):
    """The loop's `step_time_s` trace list that also appends "<monotonic end> <duration>" to a file."""

    def __init__(self, path: str):
        super().__init__()
        self._file = open(path, "a", buffering=1)  # noqa: SIM115 - one line per step, for the process's life

    def append(self, duration: float) -> None:
        super().append(duration)
        self._file.write(f"{time.monotonic():.6f} {duration:.6f}\n")


def read_stamps(path: Path) -> list[tuple[float, float]]:
    """(start, end) monotonic times of every step in a stamp file."""
    if not path.exists():
        return []
    rows = [line.split() for line in path.read_text().splitlines()]
    return [(float(row[0]) - float(row[1]), float(row[0])) for row in rows if len(row) == 2]  # whole lines


def stamp_rank0(state, rank: int, stamp_file: str) -> None:
    if rank == 0:
        state.trace["step_time_s"] = StampedSteps(stamp_file)


def ray_stamped_loop(config) -> None:
    """train_loop_per_worker with rank 0's step times stamped (patched in this worker process only)."""
    from components.training import ray_train

    build = ray_train.build_worker_state

    def stamped_build(loop_config, rank, world, *args, **kwargs):
        state, cfg, loss = build(loop_config, rank, world, *args, **kwargs)
        stamp_rank0(state, rank, loop_config.stamp_file)
        return state, cfg, loss

    ray_train.build_worker_state = stamped_build
    ray_train.train_loop_per_worker(config)


def _ddp_stamped_worker(rank: int, world: int, config, port: int) -> None:
    from components.training.loop import train_steps

    state, cfg, loss = trainer_bench.ddp_worker_state(rank, world, config, port)
    stamp_rank0(state, rank, config.stamp_file)
    train_steps(state, loss, cfg, cfg.steps, lambda s, m: None)


def ddp_child(data_dir: str, stamp_file: str, steps: int) -> None:
    """The plain-DDP side, run as its own process tree (`--ddp-child`): 2 spawned gloo workers."""
    import torch.multiprocessing as mp

    config = trainer_bench.loop_config(Path(data_dir), 2, steps).with_overrides(stamp_file=stamp_file)
    mp.spawn(_ddp_stamped_worker, args=(2, config, trainer_bench._free_port()), nprocs=2)


def tree(pid: int) -> set[int]:
    """pid and all its descendants, from /proc (children lists of every thread)."""
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p in found:
            continue
        found.add(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{tid}/children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class Side:
    """One side of the comparison: a name, a stamp file, and how to find its processes now."""

    def __init__(self, name: str, stamp_file: Path, pids):
        self.name, self.stamp_file, self.pids = name, stamp_file, pids


def process_ticks() -> dict[int, int]:
    """CPU ticks so far (user + system, all threads) of every process on the machine."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            out[int(pid)] = read_stat(f"/proc/{pid}/stat")[2]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def where_ticks_went(before: dict[int, int], after: dict[int, int], cpu_before: dict, cpu_after: dict,
                     running: set[int], frozen: set[int], driver: int) -> dict[str, float]:
    """A segment's machine ticks, as shares: the running side, the frozen side (should be 0), this driver,
    idle, and everything else on the machine."""
    delta = {pid: after[pid] - before.get(pid, 0) for pid in after}
    total = sum(cpu_after.values()) - sum(cpu_before.values())
    idle = cpu_after["idle"] + cpu_after["iowait"] - cpu_before["idle"] - cpu_before["iowait"]
    parts = {"running_side": sum(delta.get(p, 0) for p in running - {driver}),
             "frozen_side": sum(delta.get(p, 0) for p in frozen - {driver}),
             "driver": delta.get(driver, 0), "idle": idle}
    parts["everything_else"] = total - sum(parts.values())
    return {k: round(v / max(total, 1), 4) for k, v in parts.items()}


def take_turns(sides: list[Side], cycles: int, segment_s: float, log=print) -> list[dict]:
    """Alternate the sides, one running at a time, for `cycles` cycles; returns the segments run, each with
    where the machine's CPU went in it (see where_ticks_went).

    Order within a cycle is ABBA over pairs of cycles (A B, B A, A B, ...)."""
    segments = []
    try:
        for cycle in range(cycles):
            order = sides if cycle % 2 == 0 else sides[::-1]
            for side in order:
                other = next(s for s in sides if s is not side)
                frozen, running = other.pids(), side.pids()
                signal_all(frozen, signal.SIGSTOP)
                signal_all(running, signal.SIGCONT)
                start = time.monotonic()
                before, cpu_before = process_ticks(), machine_ticks()
                time.sleep(segment_s)
                after, cpu_after = process_ticks(), machine_ticks()
                segments.append({"cycle": cycle, "side": side.name, "start": start, "end": time.monotonic(),
                                 "cpu_share": where_ticks_went(before, after, cpu_before, cpu_after, running,
                                                              frozen, os.getpid())})
            log(f"  cycle {cycle + 1}/{cycles} done")
    finally:
        for side in sides:
            signal_all(side.pids(), signal.SIGCONT)
    return segments


def segment_ms(steps: list[tuple[float, float]], start: float, end: float) -> dict | None:
    """Median step time (ms) of the steps wholly inside [start, end], without the segment's first one."""
    inside = [(s, e) for s, e in steps if s >= start and e <= end][1:]
    if len(inside) < 3:
        return None
    return {"steps": len(inside), "median_ms": round(1000 * statistics.median(e - s for s, e in inside), 1)}


def analyse(segments: list[dict], stamps: dict[str, list[tuple[float, float]]], numerator: str,
            denominator: str, seed: int = 0) -> dict:
    """Per cycle: numerator's median step time / denominator's (the denominator's relative throughput).

    A cycle where either side completed fewer than 3 counted steps is left out and counted."""
    by_cycle: dict[int, dict] = {}
    for seg in segments:
        measured = segment_ms(stamps[seg["side"]], seg["start"], seg["end"])
        by_cycle.setdefault(seg["cycle"], {})[seg["side"]] = measured
    cycles, ratios = [], []
    for cycle, sides in sorted(by_cycle.items()):
        a, b = sides.get(numerator), sides.get(denominator)
        row = {"cycle": cycle, f"{numerator}_ms": a and a["median_ms"], f"{denominator}_ms": b and b["median_ms"]}
        if a and b:
            row["ratio"] = round(a["median_ms"] / b["median_ms"], 4)
            ratios.append(row["ratio"])
        cycles.append(row)
    if not ratios:
        raise RuntimeError("no cycle had 3 or more counted steps on both sides; lengthen the segments")
    rng = random.Random(seed)
    boot = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(2000))
    cpu = {}
    for name in (numerator, denominator):
        shares = [seg["cpu_share"] for seg in segments if seg["side"] == name and "cpu_share" in seg]
        if shares:
            cpu[name] = {k: round(statistics.median(s[k] for s in shares), 4) for k in shares[0]}
    return {"cycles": cycles, "ratios": ratios, "cycles_left_out": len(cycles) - len(ratios),
            "median_cpu_share_in_segments": cpu,
            "median_ratio": round(statistics.median(ratios), 4),
            "bootstrap_95": [round(boot[int(0.025 * len(boot))], 4), round(boot[int(0.975 * len(boot)) - 1], 4)]}


def wait_for_steps(sides: list[Side], steps: int, timeout_s: float, running) -> None:
    """Until every side has stamped `steps` steps (both running at once: the shared warm-up)."""
    deadline = time.monotonic() + timeout_s
    while any(len(read_stamps(s.stamp_file)) < steps for s in sides):
        if time.monotonic() > deadline or not running():
            counts = {s.name: len(read_stamps(s.stamp_file)) for s in sides}
            raise RuntimeError(f"the runs did not reach {steps} steps in {timeout_s:.0f} s: {counts}")
        time.sleep(0.5)


def main(pair: tuple[str, str], cycles: int, segment_s: float, out: Path) -> dict:
    from pipeline.ray_edge import ensure_ray, keep_ray_on_loopback

    keep_ray_on_loopback()
    me = os.getpid()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        from components.data.prepare import prepare_dataset
        from pipeline.config import load_config

        prepare_dataset(load_config(REPO / "configs" / "default.yaml").data, tmp / "data")
        children, sides, failures = [], [], []
        steps = steps_for(cycles, segment_s)
        for i, kind in enumerate(pair):
            name = f"{kind}_{i}" if pair[0] == pair[1] else kind
            stamp_file = tmp / f"{name}.steps"
            if kind == "ddp":
                child = subprocess.Popen([sys.executable, "-m", "bench.interleaved_bench", "--ddp-child",
                                          str(tmp / "data"), str(stamp_file), str(steps)], cwd=REPO)
                children.append(child)
                sides.append(Side(name, stamp_file, lambda c=child: tree(c.pid)))
            else:
                ensure_ray(None, 2)
                config = trainer_bench.loop_config(tmp / "data", 2, steps).with_overrides(stamp_file=str(stamp_file))

                def fit(config=config):
                    try:
                        trainer_bench.run_torch_trainer(config, tmp / "ray_results", "interleaved",
                                                        loop_fn=ray_stamped_loop, placement_group_cleaner=False,
                                                        autoscaling_requests=False)
                    except BaseException as e:  # the cluster is shut down under it at the end
                        failures.append(repr(e))

                threading.Thread(target=fit, daemon=True).start()
                # The whole local cluster: every process this driver started but the DDP side's trees.
                sides.append(Side(name, stamp_file, lambda: tree(me) - {me} - set().union(
                    *(tree(c.pid) for c in children))))
        try:
            print(f"interleaved bench: starting {' and '.join(s.name for s in sides)} ...", flush=True)
            wait_for_steps(sides, trainer_bench.WARMUP, 300,
                           lambda: all(c.poll() is None for c in children) and not failures)
            print(f"interleaved bench: {cycles} cycles of {segment_s:.0f}-s segments", flush=True)
            segments = take_turns(sides, cycles, segment_s, log=lambda line: print(line, flush=True))
            stamps = {s.name: read_stamps(s.stamp_file) for s in sides}
        finally:
            for child in children:
                signal_all(tree(child.pid), signal.SIGKILL)
            if "ray" in pair:
                import ray

                ray.shutdown()
    result = {
        "machine": {"cpus": os.cpu_count()},
        "malloc": trainer_bench.malloc_setting(),
        "command": f"python -m bench.interleaved_bench --pair {','.join(pair)} --cycles {cycles} "
                   f"--segment-s {segment_s:g}",
        "config": "the trainer bench's: document widths at 32x32, batch 64 per worker, 2 workers, 1 thread each",
        "segment_s": segment_s,
        "ratio": f"{sides[0].name} ms/step over {sides[1].name} ms/step per cycle "
                 f"(= {sides[1].name}'s throughput relative to {sides[0].name}'s)",
        **analyse(segments, stamps, sides[0].name, sides[1].name),
        "target": 0.95 if pair == ("ddp", "ray") else None,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "cycles"}, indent=2))
    return result


if __name__ == "__main__":
    import argparse

    if sys.argv[1:2] == ["--ddp-child"]:
        ddp_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", default="ddp,ray", help="ddp,ray (the comparison) or ddp,ddp (an A/A check)")
    parser.add_argument("--cycles", type=int, default=CYCLES, help="DDP + Ray segment pairs")
    parser.add_argument("--segment-s", type=float, default=SEGMENT_S, help="seconds each side runs per turn")
    parser.add_argument("--out", type=Path, help="result JSON (default: bench/results/trainer_interleaved*.json)")
    args = parser.parse_args()
    pair = tuple(args.pair.split(","))
    if pair not in (("ddp", "ray"), ("ddp", "ddp")):
        parser.error(f"--pair must be ddp,ray or ddp,ddp, got {args.pair!r}")
    if args.cycles < 2 or args.segment_s < 5:
        parser.error("--cycles must be at least 2 and --segment-s at least 5")
    if not Path("/proc/self/task").exists():
        parser.error("this benchmark freezes processes by pid and reads /proc; run it on Linux")
    out = args.out or RESULTS / ("trainer_interleaved.json" if pair[1] == "ray" else "trainer_interleaved_aa.json")
    trainer_bench.reexec_with_malloc("tuned")
    main(pair, args.cycles, args.segment_s, out)
