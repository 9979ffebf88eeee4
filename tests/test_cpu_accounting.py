"""The CPU accounting benchmark: roles, the split of a window's ticks, and a live window over spawned workers."""
import multiprocessing
import os
import threading
import time

import pytest

from bench import cpu_accounting as acct
from bench.cpu_accounting import ThreadTicks

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads Linux's /proc")


@pytest.mark.parametrize("cmdline, role", [
    ("", "kernel threads"),
    ("ray::TrainController.run", "Ray TrainController"),
    ("ray::_AutoscalingCoordinatorActor", "Ray _AutoscalingCoordinatorActor"),
    ("ray-dashboard-NodeHead-0 (/x/python -B -c ...)", "Ray dashboard modules"),
    ("/x/python /x/site-packages/ray/dashboard/dashboard.py --host=127.0.0.1", "Ray dashboard"),
    ("/x/python -u /x/site-packages/ray/_private/log_monitor.py --session-dir=/tmp", "Ray log monitor"),
    ("/x/site-packages/ray/core/src/ray/raylet/raylet --raylet_socket_name=x", "Ray raylet"),
    ("/x/python -B -c from multiprocessing.spawn import spawn_main; spawn_main()", "DDP worker"),
    ("/process_api --firecracker-init", "other: process_api"),
])
def test_each_process_gets_a_role_from_its_command_line(cmdline, role):
    assert acct.role_of(cmdline) == role


def _threads(ticks: dict) -> dict:
    names = {1: ("ddp", "python"), 2: ("ddp", "gloo_tcp_loop"), 3: ("ddp", "python"),
             10: ("ddp", "python"), 11: ("ddp", "gloo_tcp_loop"),
             20: ("/x/ray/core/src/ray/raylet/raylet --x", "raylet"), 30: ("", "kdamond.0")}
    pids = {1: 1, 2: 1, 3: 1, 10: 10, 11: 10, 20: 20, 30: 30}
    return {(pids[tid], tid): ThreadTicks(names[tid][0], names[tid][1], 0, t) for tid, t in ticks.items()}


def test_a_window_splits_into_training_threads_idle_and_roles():
    before = _threads({1: 100, 2: 5, 3: 7, 10: 200, 11: 9, 20: 50, 30: 0})
    after = _threads({1: 900, 2: 25, 3: 12, 10: 980, 11: 30, 20: 90, 30: 30})
    cpu_before = dict.fromkeys(("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"), 0)
    cpu_after = {**cpu_before, "user": 1_700, "system": 60, "idle": 200, "iowait": 20, "steal": 20}  # 2,000 ticks
    hz = os.sysconf("SC_CLK_TCK")
    out = acct.account(before, after, cpu_before, cpu_after, {1, 10}, steps_in_window=4.0)
    assert out["machine_ticks"] == 2_000
    # the busiest threads: 800 + 780 ticks of 2,000; idle counts iowait too
    assert out["share"] == {"training_threads": 0.79, "idle": 0.11, "steal": 0.01, "everything_else": 0.09}
    assert out["not_attributed"] == pytest.approx((180 - 116) / 2_000)  # else 180 ticks, 116 of them by role
    assert out["training_thread_cpu_s_per_step"] == [round(800 / hz / 4, 4), round(780 / hz / 4, 4)]
    assert out["everything_else_ticks_by_role"] == {
        "training processes' gloo threads": 41, "Ray raylet": 40, "kernel threads": 30,
        "training processes' other threads": 5}


def test_the_comparison_splits_throughput_into_share_and_cpu_per_step():
    ddp = {"ms_per_step": 1000.0, "share": {"training_threads": 0.9}, "training_thread_cpu_s_per_step": [1.0, 1.0]}
    ray = {"ms_per_step": 1100.0, "share": {"training_threads": 0.81}, "training_thread_cpu_s_per_step": [0.8, 1.0]}
    assert acct.compare(ddp, ray) == {"throughput_ratio": 0.909, "share_ratio": 0.9, "cpu_per_step_ratio": 1.111}


def test_a_snapshot_sees_a_busy_thread_of_this_process():
    ready, go, burnt, done = threading.Event(), threading.Event(), threading.Event(), threading.Event()
    tids = []

    def spin():
        tids.append(threading.get_native_id())
        ready.set()
        go.wait()
        start = time.thread_time()
        while time.thread_time() - start < 0.6:  # 0.6 s of CPU, however much wall time that takes here
            pass
        burnt.set()
        done.wait()  # alive for the second snapshot, which reads live threads only

    worker = threading.Thread(target=spin)
    worker.start()
    ready.wait()
    before = acct.snapshot()
    go.set()
    burnt.wait()
    after = acct.snapshot()
    done.set()
    worker.join()
    key = (os.getpid(), tids[0])
    assert after[key].ticks - before[key].ticks >= 0.5 * os.sysconf("SC_CLK_TCK")  # its 0.6 s, in whole ticks


def _burn_until(stop: str, ready: str) -> str:
    """Source for a spawned child (run by builtins.exec, so it imports nothing of ours): say so, then spin."""
    return (f"import os\nopen({ready!r}, 'w').close()\n"
            f"while not os.path.exists({stop!r}):\n    pass\n")


def test_a_measured_run_finds_both_spawned_workers_and_times_their_window(tmp_path):
    # Both workers spin from before the run is measured until its window has closed: the test, not the
    # machine's speed, decides that they are alive and busy for the whole window.
    ctx = multiprocessing.get_context("spawn")
    stop = tmp_path / "stop"
    procs = [ctx.Process(target=exec, args=(_burn_until(str(stop), str(tmp_path / f"ready-{i}")),)) for i in range(2)]
    for p in procs:
        p.start()
    try:
        while len(list(tmp_path.glob("ready-*"))) < 2:
            time.sleep(0.01)

        def run():
            next(t for t in threading.enumerate() if t.name == acct.SAMPLER_THREAD).join()
            return {"ms_per_step": 100.0, "steps": 40, "startup_s": 0.5, "wall_s": 4.0}

        row = acct.measured_run("torch_ddp", run, delay_s=1.5, window_s=1.0)
    finally:
        stop.touch()
        for p in procs:
            p.join()
    # The window is the 1-s sleep between two snapshots, timed at their midpoints: a snapshot's own length
    # moves it by half of that, either way.
    assert 0.9 <= row["window_s"] < 1.5
    assert row["steps_in_window"] == pytest.approx(row["window_s"] / 0.1, abs=0.1)
    assert len(row["training_thread_cpu_s_per_step"]) == 2
    # two busy processes on this machine's cores: each thread burns most of each 0.1 s "step"
    assert all(s >= 0.02 for s in row["training_thread_cpu_s_per_step"])
    assert row["share"]["training_threads"] > 0.3


def test_a_window_outside_the_steady_steps_is_refused():
    with pytest.raises(RuntimeError, match="not inside the steady steps"):  # the loop ended before the window did
        acct.measured_run("torch_ddp", lambda: {"ms_per_step": 100.0, "steps": 40, "startup_s": 0.0, "wall_s": 0.15},
                          delay_s=0.1, window_s=0.1)
    with pytest.raises(RuntimeError, match="not inside the steady steps"):  # it began during start-up
        acct.measured_run("torch_ddp", lambda: {"ms_per_step": 100.0, "steps": 40, "startup_s": 1.0, "wall_s": 9.0},
                          delay_s=0.1, window_s=0.1)
