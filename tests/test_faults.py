"""Injected faults the pipeline survives: a training worker SIGKILLed mid-run, one killed more often than
train.max_failures allows, and the driver SIGKILLed mid-training. Each checks the exit status, that no MLflow run is left RUNNING, that no marker
stands without its outputs, and that the metric history has one row per step."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.outputs import output_problem, read_marker
from tests.conftest import REPO, smoke_overrides

pytestmark = pytest.mark.slow

# Long enough after each kill point that a kill lands mid-training however late Ray delivers the log line.
TRAINING = ("train.steps=400", "train.report_every=10", "train.checkpoint_every=40",
            'tune.search_space={"train.lr_g": {type: grid, values: [0.0002]}}', "tune.steps=10",
            "tune.report_every=5", "tune.window=5")


def _run_killing_a_worker(tmp: Path, *sets: str, kill_at: tuple[int, ...] = (),
                          kill_driver_at: int | None = None) -> tuple[int, str]:
    """The smoke DAG; each time rank 0 prints a step at or past the next of `kill_at`, SIGKILL that worker
    process (by the pid Ray puts in front of its lines); at `kill_driver_at`, SIGKILL the driver and all it
    started. Returns (exit status, output)."""
    cli = [sys.executable, "-m", "pipeline", "run", "--config", "configs/smoke.yaml",
           *[x for s in [*smoke_overrides(tmp), *TRAINING, *sets] for x in ("--set", s)]]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(cli, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen, pending = [], list(kill_at)
    for line in proc.stdout:
        seen.append(line)
        match = re.search(r"pid=(\d+)\).*train step (\d+)/", line)
        if pending and match and int(match[2]) >= pending[0]:
            os.kill(int(match[1]), signal.SIGKILL)
            pending.pop(0)
        if kill_driver_at is not None and match and int(match[2]) >= kill_driver_at:
            os.killpg(proc.pid, signal.SIGKILL)
            kill_driver_at = None
    proc.wait(timeout=600)
    assert not pending and kill_driver_at is None, "".join(seen[-40:])
    return proc.returncode, "".join(seen)


def _check_nothing_left_half_done(tmp: Path) -> MlflowClient:
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert "RUNNING" not in {r.info.status for r in runs}
    for marker in (tmp / "outputs" / "stages").glob("*/*/_stage.json"):
        assert output_problem(str(marker.parent), read_marker(str(marker.parent))) is None, marker
    assert not list((tmp / "outputs" / "stages").glob("*/.tmp-*"))  # no scratch left behind
    return client


def _d_loss_steps(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "d_loss"))


def test_killed_workers_restart_then_fail_past_max_failures_and_reruns_resume_even_after_a_driver_kill(tmp_path):
    # max_failures=1: the first kill restarts the worker group from its checkpoint, the second fails the run.
    code, out = _run_killing_a_worker(tmp_path, kill_at=(60, 150))
    assert code == 1, out[-3000:]
    assert re.search(r"resuming from the checkpoint at step \d+", out), out[-3000:]  # restarted once
    last = out.strip().splitlines()[-1]
    assert last.startswith("failed: train: ") and "rerunning the same command resumes" in last, last
    client = _check_nothing_left_half_done(tmp_path)
    experiments = [e.experiment_id for e in client.search_experiments()]
    train = client.search_runs(experiments, "attributes.run_name = 'train'")
    assert [r.info.status for r in train] == ["FAILED"]
    steps = _d_loss_steps(client, train[0].info.run_id)  # steps 50-60 trained twice, logged once
    assert steps == list(range(10, steps[-1] + 1, 10)) and steps[-1] >= 140, steps
    assert not list((tmp_path / "outputs" / "stages").glob("train/*/_stage.json"))  # the cache is untouched

    # The same command again resumes; its driver is then SIGKILLed with everything it started.
    code, out = _run_killing_a_worker(tmp_path, kill_driver_at=180)
    resumed = [int(n) for n in re.findall(r"resuming from the checkpoint at step (\d+)", out)]
    assert code == -signal.SIGKILL and resumed and resumed[0] >= 120, out[-3000:]

    code, out = _run_killing_a_worker(tmp_path)  # and once more: prepare is reused, training resumes again
    assert code == 0, out[-3000:]
    assert "prepare: cached" in out and "marked 2 run(s) KILLED" in out, out[-3000:]
    again = [int(n) for n in re.findall(r"resuming from the checkpoint at step (\d+)", out)]
    assert again and again[0] >= 160, out[-3000:]
    _check_nothing_left_half_done(tmp_path)
