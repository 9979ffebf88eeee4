"""Injected faults the pipeline survives: a training worker SIGKILLed mid-run, one killed more often than
train.max_failures allows, the driver SIGKILLed mid-training, and the tracking server stopped mid-training and
at publish time. Each checks the exit status, that no MLflow run is left RUNNING, that no marker stands without
its outputs, and that the metric history has one row per step."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.outputs import output_problem, read_marker
from tests.conftest import REPO, MlflowServer, smoke_overrides

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


def _check_nothing_left_half_done(tmp: Path, tracking_uri: str | None = None) -> MlflowClient:
    client = MlflowClient(tracking_uri or f"sqlite:///{tmp / 'mlflow.db'}")
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


def _run_watching(tmp: Path, server: MlflowServer, *args: str, stop_at: str | None = None,
                  outage_s: float = 0.0, env: dict | None = None) -> tuple[int, str]:
    """`pipeline run` tracking to `server`; when a line matches `stop_at`, stop the server for `outage_s`
    seconds (then start it again), or for good if 0, then create GANPIPE_TEST_PUBLISH_RESUME_FILE if `env`
    names one. Returns (exit status, output)."""
    sets = [*smoke_overrides(tmp), f"tracking.uri={server.uri}", *TRAINING]
    cli = [sys.executable, "-m", "pipeline", "run", "--config", "configs/smoke.yaml", *args,
           *[x for s in sets for x in ("--set", s)]]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
    proc = subprocess.Popen(cli, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, restart = [], None
    for line in proc.stdout:
        seen.append(line)
        if stop_at and re.search(stop_at, line):
            stop_at = None
            server.stop()
            if outage_s:
                restart = threading.Timer(outage_s, server.start)
                restart.start()
            if "GANPIPE_TEST_PUBLISH_RESUME_FILE" in env:
                Path(env["GANPIPE_TEST_PUBLISH_RESUME_FILE"]).touch()
    proc.wait(timeout=600)
    if restart is not None:
        restart.join()
    assert stop_at is None, "".join(seen[-40:])
    return proc.returncode, "".join(seen)


def test_the_tracking_server_stopped_at_publish_time_then_for_30s_mid_training(tmp_path):
    server = MlflowServer(tmp_path).start()
    try:
        # Stopped for good while prepare's outputs are published: one line and exit 1 after tracking.patience_s.
        code, out = _run_watching(tmp_path, server, "--only", "prepare", "--set", "tracking.patience_s=5",
                                  stop_at="publish: between renames",
                                  env={"GANPIPE_TEST_PUBLISH_PAUSE_S": "300",
                                       "GANPIPE_TEST_PUBLISH_RESUME_FILE": str(tmp_path / "resume")})
        last = out.strip().splitlines()[-1]
        assert code == 1 and last.startswith(f"failed: the MLflow tracking server {server.uri} did not answer"), \
            out[-3000:]
        assert "Traceback" not in out

        # Back, then stopped for 30 s from step 100 of 400: prepare's output is not trusted (its run never
        # ended FINISHED) and runs again; training goes on, buffers its metrics, and writes each row once.
        server.start()
        code, out = _run_watching(tmp_path, server, "--only", "train", stop_at=r"train step (1\d\d|[2-9]\d\d)/",
                                  outage_s=30)
        assert code == 0, out[-3000:]
        assert "marked 2 run(s) KILLED" in out and "ended KILLED, not FINISHED; rerunning it afresh" in out, out[:3000]
        assert "tracking server unreachable" in out and "tracking server back after" in out, out[-3000:]
        client = _check_nothing_left_half_done(tmp_path, server.uri)
        train = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                   "attributes.run_name = 'train'")
        assert [r.info.status for r in train] == ["FINISHED"]
        assert _d_loss_steps(client, train[0].info.run_id) == list(range(10, 401, 10))
        assert train[0].data.metrics["tracking_rows_delayed"] > 0
    finally:
        server.stop()
