"""Injected faults the pipeline survives: a training worker SIGKILLed mid-run, one killed more often than
train.max_failures allows, the driver SIGKILLed mid-training, and the tracking server stopped for 12 s
mid-training and for good at publish time. Each checks the exit status, that no MLflow run is left RUNNING,
that no marker stands without its outputs, and that the metric history has one row per step."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.config import load_config
from pipeline.outputs import output_problem, read_marker
from pipeline.runner import run_pipeline
from tests.conftest import REPO, MlflowServer, smoke_overrides

pytestmark = pytest.mark.slow

# Long enough after each kill point that a kill lands mid-training however late Ray delivers the log line.
TRAINING = ("train.steps=300", "train.report_every=10", "train.checkpoint_every=40",
            'tune.search_space={"train.lr_g": {type: grid, values: [0.0002]}}', "tune.steps=10",
            "tune.report_every=5", "tune.window=5")


def _run(tmp: Path, server: MlflowServer, *args: str, kill_at: tuple[int, ...] = (),
         kill_driver_at: int | None = None, stop_server_at: str | None = None, outage_s: float = 0.0,
         env: dict | None = None) -> tuple[int, str]:
    """`pipeline run` on the smoke config, tracking to `server`, with `args` added. While it runs: each time
    rank 0 prints a step at or past the next of `kill_at`, SIGKILL that worker process (by the pid Ray puts in
    front of its lines); at `kill_driver_at`, SIGKILL the driver and all it started; at the first line that
    matches `stop_server_at`, stop the server for `outage_s` seconds, or for good if 0 (then create
    GANPIPE_TEST_PUBLISH_RESUME_FILE if `env` names one). Returns (exit status, output)."""
    sets = [*smoke_overrides(tmp), f"tracking.uri={server.uri}", *TRAINING]
    cli = [sys.executable, "-m", "pipeline", "run", "--config", "configs/smoke.yaml",
           *[x for s in sets for x in ("--set", s)], *args]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
    proc = subprocess.Popen(cli, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen, pending, restart = [], list(kill_at), None
    for line in proc.stdout:
        seen.append(line)
        match = re.search(r"pid=(\d+)\).*train step (\d+)/", line)
        if pending and match and int(match[2]) >= pending[0]:
            os.kill(int(match[1]), signal.SIGKILL)
            pending.pop(0)
        if kill_driver_at is not None and match and int(match[2]) >= kill_driver_at:
            os.killpg(proc.pid, signal.SIGKILL)
            kill_driver_at = None
        if stop_server_at and re.search(stop_server_at, line):
            stop_server_at = None
            server.stop()
            if outage_s:
                restart = threading.Timer(outage_s, server.start)
                restart.start()
            if "GANPIPE_TEST_PUBLISH_RESUME_FILE" in env:
                Path(env["GANPIPE_TEST_PUBLISH_RESUME_FILE"]).touch()
    proc.wait(timeout=600)
    if restart is not None:
        restart.join()
    assert not pending and kill_driver_at is None and stop_server_at is None, "".join(seen[-40:])
    return proc.returncode, "".join(seen)


def _check_nothing_left_half_done(tmp: Path, server: MlflowServer) -> MlflowClient:
    client = MlflowClient(server.uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert "RUNNING" not in {r.info.status for r in runs}
    for marker in (tmp / "outputs" / "stages").glob("*/*/_stage.json"):
        assert output_problem(str(marker.parent), read_marker(str(marker.parent))) is None, marker
    assert not list((tmp / "outputs" / "stages").glob("*/.tmp-*"))  # no scratch left behind
    return client


def _train_runs(client: MlflowClient) -> list:
    return client.search_runs([e.experiment_id for e in client.search_experiments()],
                              "attributes.run_name = 'train'", order_by=["attributes.start_time"])


def _d_loss_steps(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "d_loss"))


def _restore_env_after_test(monkeypatch) -> None:
    """run_pipeline in this process sets MLflow's environment variables; put them back afterwards."""
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One tracking server for this module's tests; each leaves no run RUNNING behind."""
    server = MlflowServer(tmp_path_factory.mktemp("tracking")).start()
    yield server
    server.stop()


def test_killed_workers_a_killed_driver_and_a_12s_tracking_outage_lose_no_step_and_no_metric_row(tmp_path, server):
    # max_failures=1: the first kill restarts the worker group from its checkpoint, the second fails the run.
    code, out = _run(tmp_path, server, "--until", "train", kill_at=(60, 110))
    assert code == 1, out[-3000:]
    assert re.search(r"resuming from the checkpoint at step \d+", out), out[-3000:]  # restarted once
    last = out.strip().splitlines()[-1]
    assert last.startswith("failed: train: ") and "rerunning the same command resumes" in last, last
    client = _check_nothing_left_half_done(tmp_path, server)
    (train,) = _train_runs(client)
    assert train.info.status == "FAILED"
    steps = _d_loss_steps(client, train.info.run_id)  # steps 50-60 trained twice, logged once
    assert steps == list(range(10, steps[-1] + 1, 10)) and steps[-1] >= 100, steps
    assert not list((tmp_path / "outputs" / "stages").glob("train/*/_stage.json"))  # the cache is untouched

    # The same command again resumes; its driver is then SIGKILLed with everything it started.
    code, out = _run(tmp_path, server, "--until", "train", kill_driver_at=150)
    resumed = [int(n) for n in re.findall(r"resuming from the checkpoint at step (\d+)", out)]
    assert code == -signal.SIGKILL and resumed and resumed[0] >= 80, out[-3000:]

    # The same training uninterrupted, for comparison at the end: in its own work dir and store, alongside
    # the next run, whose 12-s outage would otherwise leave the machine idle.
    baseline = tmp_path / "uninterrupted"
    baseline.mkdir()
    sets = [*smoke_overrides(baseline), *TRAINING, "train.checkpoint_every=300"]  # one checkpoint, at the end
    with open(baseline / "log", "w") as log:
        uninterrupted = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", "--config", "configs/smoke.yaml", "--until", "train",
             *[x for s in sets for x in ("--set", s)]], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"})

    # And once more: prepare is reused and training resumes again. From its first step the tracking server
    # is stopped for 12 s: training goes on, buffers its metrics, and writes each row once when it is back.
    code, out = _run(tmp_path, server, "--until", "train", stop_server_at=r"train step \d+/", outage_s=12)
    assert code == 0, out[-3000:]
    assert "prepare: cached" in out and "marked 2 run(s) KILLED" in out, out[-3000:]
    again = [int(n) for n in re.findall(r"resuming from the checkpoint at step (\d+)", out)]
    assert again and again[0] >= 120, out[-3000:]
    assert "tracking server unreachable" in out and "tracking server back after" in out, out[-3000:]
    client = _check_nothing_left_half_done(tmp_path, server)
    last_train = _train_runs(client)[-1]
    assert last_train.info.status == "FINISHED"
    assert _d_loss_steps(client, last_train.info.run_id) == list(range(again[0] + 10, 301, 10))
    assert last_train.data.metrics["tracking_rows_delayed"] > 0

    # The uninterrupted training ended with the same weights: every resume above was exact. Both ran on
    # this machine, so the comparison is exact.
    assert uninterrupted.wait(timeout=600) == 0, (baseline / "log").read_text()[-3000:]
    (resumed_ckpt,) = (tmp_path / "outputs" / "stages").glob("train/*/checkpoint.pt")
    (baseline_ckpt,) = (baseline / "outputs" / "stages").glob("train/*/checkpoint.pt")
    resumed, reference = (torch.load(p, weights_only=True) for p in (resumed_ckpt, baseline_ckpt))
    for net in ("G", "D", "G_ema"):
        assert resumed[net].keys() == reference[net].keys()
        assert all(torch.equal(resumed[net][k], reference[net][k]) for k in resumed[net]), net


def test_the_tracking_server_lost_at_publish_time_fails_in_one_line_and_the_output_is_redone(tmp_path, server,
                                                                                            monkeypatch, capsys):
    # Stopped for good while prepare's outputs are published: one line and exit 1 after tracking.patience_s.
    code, out = _run(tmp_path, server, "--only", "prepare", "--set", "tracking.patience_s=5",
                     stop_server_at="publish: between renames",
                     env={"GANPIPE_TEST_PUBLISH_PAUSE_S": "300",
                          "GANPIPE_TEST_PUBLISH_RESUME_FILE": str(tmp_path / "resume")})
    last = out.strip().splitlines()[-1]
    assert code == 1 and last.startswith(f"failed: the MLflow tracking server {server.uri} did not answer"), \
        out[-3000:]
    assert "Traceback" not in out
    assert (tmp_path / "outputs" / "stages" / "prepare").is_dir()  # published before the run could end

    # Back: the output's run never ended FINISHED, so it is not trusted; prepare runs again.
    _restore_env_after_test(monkeypatch)
    server.start()
    capsys.readouterr()
    run_pipeline(load_config(REPO / "configs" / "smoke.yaml", [*smoke_overrides(tmp_path),
                                                               f"tracking.uri={server.uri}"]), until="prepare")
    printed = capsys.readouterr().out
    assert "marked 2 run(s) KILLED" in printed and "ended KILLED, not FINISHED; rerunning it afresh" in printed
    _check_nothing_left_half_done(tmp_path, server)
