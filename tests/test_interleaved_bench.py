"""The interleaved Ray-Train-vs-DDP benchmark's parts: step stamps, segment figures, turns, CPU shares."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import interleaved_bench as ib

REPO = Path(__file__).resolve().parent.parent


def test_stamped_steps_keep_the_trace_and_write_whole_lines(tmp_path):
    steps = ib.StampedSteps(str(tmp_path / "s.steps"))
    for duration in (0.5, 0.25, 0.125):
        steps.append(duration)
    assert list(steps) == [0.5, 0.25, 0.125]  # still the loop's trace list
    with open(tmp_path / "s.steps", "a") as f:
        f.write("123.4")  # a line being written when the file was read
    stamps = ib.read_stamps(tmp_path / "s.steps")
    assert len(stamps) == 3
    assert [round(end - start, 6) for start, end in stamps] == [0.5, 0.25, 0.125]
    assert stamps[0][1] <= stamps[1][1] <= stamps[2][1] <= time.monotonic()
    assert ib.read_stamps(tmp_path / "missing.steps") == []


def one_second_steps(offset: float = 0.0, step_s: float = 1.0, n: int = 40):
    return [(offset + i * step_s, offset + (i + 1) * step_s) for i in range(n)]


def test_a_segment_counts_the_steps_wholly_inside_it_after_its_first():
    steps = one_second_steps(step_s=1.0) + [(40.0, 42.0)]
    # [2.5, 12.5]: steps starting 3..11 lie inside (9), the first of them is left out.
    assert ib.segment_ms(steps, 2.5, 12.5) == {"steps": 8, "median_ms": 1000.0}
    assert ib.segment_ms(steps, 2.5, 5.5) is None  # 2 counted steps are too few


def test_analyse_gives_one_ratio_per_cycle_and_leaves_out_thin_cycles():
    ddp = one_second_steps(0.0, 1.0, 100)
    ray = [(s, s + 1.05) for s in (i * 1.05 for i in range(100))]
    segments, t = [], 0.0
    for cycle in range(4):
        for side in ("ddp", "ray"):
            length = 2.0 if cycle == 3 else 10.0  # the last cycle is too short to count
            segments.append({"cycle": cycle, "side": side, "start": t, "end": t + length,
                             "cpu_share": {"running_side": 0.9, "idle": 0.1}})
            t += length
    result = ib.analyse(segments, {"ddp": ddp, "ray": ray}, "ddp", "ray")
    assert result["ratios"] == [round(1000 / 1050, 4)] * 3 and result["cycles_left_out"] == 1
    assert result["median_ratio"] == round(1000 / 1050, 4)
    assert result["bootstrap_95"][0] <= result["median_ratio"] <= result["bootstrap_95"][1]
    assert result["median_cpu_share_in_segments"]["ray"] == {"running_side": 0.9, "idle": 0.1}
    with pytest.raises(RuntimeError, match="lengthen the segments"):
        ib.analyse(segments[-2:], {"ddp": ddp, "ray": ray}, "ddp", "ray")


def test_where_ticks_went_splits_a_segments_ticks():
    before, after = {1: 0, 2: 0, 3: 0, 9: 0}, {1: 60, 2: 0, 3: 5, 9: 10}
    cpu_before = {"user": 0, "idle": 0, "iowait": 0}
    cpu_after = {"user": 75, "idle": 20, "iowait": 5}
    shares = ib.where_ticks_went(before, after, cpu_before, cpu_after, running={1, 3}, frozen={2}, driver=3)
    assert shares == {"running_side": 0.6, "frozen_side": 0.0, "driver": 0.05, "idle": 0.25,
                      "everything_else": 0.1}


def busy_process() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def state_of(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads Linux's /proc")
def test_take_turns_runs_one_side_at_a_time_and_thaws_both_at_the_end():
    a, b = busy_process(), busy_process()
    try:
        sides = [ib.Side("a", Path("unused"), lambda: {a.pid}), ib.Side("b", Path("unused"), lambda: {b.pid})]
        segments = ib.take_turns(sides, cycles=2, segment_s=1.0, log=lambda _: None)
        assert [(s["cycle"], s["side"]) for s in segments] == [(0, "a"), (0, "b"), (1, "b"), (1, "a")]
        for seg in segments:
            # At least the segment; an upper bound only against a hang (a loaded machine oversleeps).
            assert 1.0 <= seg["end"] - seg["start"] < 10.0
            # The running side gets CPU (about half of two idle cores; less on a loaded machine) and the frozen
            # one none: a stopped process cannot run, however busy the machine is.
            assert seg["cpu_share"]["running_side"] > 0.02, seg
            assert seg["cpu_share"]["frozen_side"] < 0.01, seg
        assert state_of(a.pid) != "T" and state_of(b.pid) != "T"  # neither is left stopped
    finally:
        for p in (a, b):
            p.kill()
            p.wait()


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads Linux's /proc")
def test_tree_finds_a_process_and_its_descendants():
    parent = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30; wait"])
    try:
        deadline = time.monotonic() + 5
        while len(ib.tree(parent.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        found = ib.tree(parent.pid)
        assert parent.pid in found and len(found) == 3
        assert os.getpid() not in found
    finally:
        for pid in ib.tree(parent.pid):
            os.kill(pid, signal.SIGKILL)
        parent.wait()


@pytest.mark.parametrize("args, message", [
    (["--pair", "ray,ray"], "--pair must be ddp,ray or ddp,ddp"),
    (["--cycles", "1"], "--cycles must be at least 2"),
])
def test_bad_arguments_are_usage_errors(args, message):
    done = subprocess.run([sys.executable, "-m", "bench.interleaved_bench", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr


def test_each_run_has_steps_for_all_its_segments():
    assert ib.steps_for(16, 12.0) == ib.MIN_STEPS
    # 400 cycles of 12 s: 4,800 s per side, at up to 2.5 steps a second.
    assert ib.steps_for(400, 12.0) == 12_100
