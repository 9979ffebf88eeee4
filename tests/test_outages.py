"""A tracking server that stops answering, and a disk that fills up: training buffers its metrics and goes on,
the driver gives up after tracking.patience_s with one line, and nothing half-written is left behind."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from PIL import Image
from mlflow.exceptions import MlflowException

from components.errors import RunFailed, environment_failure
from components.tracking_outage import http_retry_env, is_unreachable, total_backoff_s
from components.training.mlflow_logger import MlflowRunLogger

DOWN = MlflowException("API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/log-batch failed with exception "
                       "HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded")


class FlakyClient:
    """An MlflowClient's logging surface whose server is down while `down` is true; keeps what it received."""

    def __init__(self):
        self.down, self.rows, self.artifacts, self.calls = False, [], [], 0

    def _serve(self):
        self.calls += 1
        if self.down:
            raise DOWN

    def get_metric_history(self, run_id, key):
        self._serve()
        return [m for m in self.rows if m.key == key]

    def get_run(self, run_id):
        self._serve()

    def log_batch(self, run_id, metrics, synchronous=True):
        self._serve()
        self.rows += metrics

    def log_artifact(self, run_id, path, artifact_path=None):
        self._serve()
        self.artifacts.append(Path(path).name)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.now += s


def _logger(client, clock, patience=60.0):
    return MlflowRunLogger("http://127.0.0.1:5000", "run", patience_s=patience, retry_every_s=5.0, clock=clock,
                           sleep=clock.sleep, client=client)


def test_an_outage_mid_training_buffers_metrics_then_writes_each_row_once_in_step_order():
    client, clock = FlakyClient(), Clock()
    log = _logger(client, clock)
    image = Image.new("L", (8, 8))
    for step in range(10, 201, 10):
        client.down = 50 <= step < 120  # the server is away for 7 reports
        log.log_metrics({"d_loss": step / 10, "g_loss": 1.0}, step)
        if step % 40 == 0:
            log.log_png(image, f"samples/step_{step:06d}.png")
        clock.now += 3.0
    log.finish()
    steps = [m.step for m in client.rows if m.key == "d_loss"]
    assert steps == list(range(10, 201, 10))  # none lost, none twice, in order
    counts = {m.key: m.value for m in client.rows if m.key.startswith("tracking_")}
    # Retries 5 s apart, reports 3 s apart: the attempt at step 110 still fails, the report at 120 comes before
    # the next retry, so steps 50-130 (9 reports, 2 metrics each) wait, and the grids of 80 and 120 are skipped.
    assert counts == {"tracking_rows_delayed": 18.0, "tracking_images_skipped": 2.0}
    assert client.artifacts == ["step_000040.png", "step_000160.png", "step_000200.png"]


def test_while_the_server_is_down_a_report_costs_no_request_until_a_retry_is_due():
    client, clock = FlakyClient(), Clock()
    log = _logger(client, clock)
    client.down = True
    log.log_metrics({"d_loss": 1.0}, 10)
    calls = client.calls
    for step in range(20, 60, 10):  # 1 s apart: within the 5 s retry interval
        clock.now += 1.0
        log.log_metrics({"d_loss": 1.0}, step)
    assert client.calls == calls
    clock.now += 5.0
    log.log_metrics({"d_loss": 1.0}, 60)
    assert client.calls == calls + 1


def test_finish_waits_for_the_server_then_gives_up_in_one_line_after_patience():
    client, clock = FlakyClient(), Clock()
    log = _logger(client, clock, patience=30.0)
    client.down = True
    log.log_metrics({"d_loss": 1.0}, 10)
    with pytest.raises(RunFailed, match=r"unreachable for 30s \(tracking.patience_s\)"):
        log.finish()
    assert 30.0 <= clock.now <= 36.0


def test_a_restarted_worker_skips_the_steps_the_run_already_holds():
    client, clock = FlakyClient(), Clock()
    first = _logger(client, clock)
    for step in (10, 20, 30):
        first.log_metrics({"d_loss": 1.0}, step)
    again = _logger(client, clock)  # resumed from the checkpoint at step 20
    for step in (30, 40):
        again.log_metrics({"d_loss": 2.0}, step)
    assert [(m.step, m.value) for m in client.rows] == [(10, 1.0), (20, 1.0), (30, 1.0), (40, 2.0)]


def test_a_refused_request_is_not_mistaken_for_an_outage():
    client, clock = FlakyClient(), Clock()
    log = _logger(client, clock)

    def refuse(*args, **kwargs):
        raise MlflowException("Invalid metric name", error_code="INVALID_PARAMETER_VALUE")

    client.log_batch = refuse
    with pytest.raises(MlflowException, match="Invalid metric name"):
        log.log_metrics({"d_loss": 1.0}, 10)


def test_patience_maps_to_http_retries_that_wait_about_that_long():
    assert http_retry_env(0)["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
    for patience in (5, 30, 300, 600, 1080):  # 1080 s: MLflow's 10 retries at urllib3's 2-minute cap
        env = http_retry_env(patience)
        retries, factor = int(env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]), float(env["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"])
        assert retries <= 10
        assert patience <= total_backoff_s(retries, factor) <= 2.5 * patience + 4, (patience, env)


def test_unreachable_and_full_disk_become_one_line_failures_and_other_errors_do_not(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://admin:hunter2@127.0.0.1:5000")
    assert is_unreachable(DOWN) and not is_unreachable(MlflowException("no such run",
                                                                      error_code="RESOURCE_DOES_NOT_EXIST"))
    down = environment_failure(DOWN)
    assert isinstance(down, RunFailed) and "hunter2" not in str(down) and "rerun the same command" in str(down)
    full = environment_failure(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/out/checkpoint.pt"))
    assert "no space left on device writing /data/out/checkpoint.pt" in str(full)
    assert environment_failure(ValueError("x")) is None and environment_failure(OSError(errno.EACCES, "x")) is None


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_previous_one_and_no_partial_file(tmp_path, monkeypatch):
    import components.training.checkpoint as checkpoint
    from tests.helpers import fresh_state, smoke_loop_config

    state, _, loss = fresh_state(smoke_loop_config(tmp_path / "data"))
    saved = checkpoint.save_checkpoint(state, tmp_path / "ckpt", {}, loss)
    before = saved.read_bytes()

    def fill_the_disk(obj, path):
        Path(path).write_bytes(before[: len(before) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(checkpoint.torch, "save", fill_the_disk)
    state.step += 50
    with pytest.raises(OSError) as raised:
        checkpoint.save_checkpoint(state, tmp_path / "ckpt", {}, loss)
    assert raised.value.errno == errno.ENOSPC
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["checkpoint.pt"]
    assert saved.read_bytes() == before


def test_a_full_disk_while_publishing_keeps_the_old_output_and_fails_in_one_line(tmp_path, monkeypatch, capsys):
    import mlflow

    import pipeline.outputs
    from pipeline.cli import main
    from pipeline.outputs import output_problem, read_marker
    from tests.conftest import REPO, smoke_overrides

    argv = ["run", "--config", str(REPO / "configs" / "smoke.yaml"), "--only", "prepare",
            *[x for s in smoke_overrides(tmp_path) for x in ("--set", s)]]
    assert main(argv) == 0
    stage_dirs = tmp_path / "outputs" / "stages" / "prepare"
    (final,) = stage_dirs.iterdir()
    before = {p.relative_to(final): p.read_bytes() for p in final.rglob("*") if p.is_file()}

    def fill_the_disk(file, record):
        Path(file).write_text('{"stage": "prep')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))

    monkeypatch.setattr(pipeline.outputs, "write_marker", fill_the_disk)
    capsys.readouterr()
    assert main([*argv, "--force", "prepare"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("failed: no space left on device writing "), err
    assert sorted(p.name for p in stage_dirs.iterdir()) == [final.name]  # no scratch, nothing renamed aside
    assert {p.relative_to(final): p.read_bytes() for p in final.rglob("*") if p.is_file()} == before
    assert output_problem(str(final), read_marker(str(final))) is None
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], order_by=["start_time"])
    assert [(r.info.run_name, r.info.status) for r in runs if r.info.run_name == "prepare"] == [
        ("prepare", "FINISHED"), ("prepare", "FAILED")]
    assert "RUNNING" not in {r.info.status for r in runs}
