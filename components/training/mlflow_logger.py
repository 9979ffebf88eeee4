"""Rank-0 metric and image logging into an existing MLflow run (the thin MLflow edge of training)."""
from __future__ import annotations

import os
import time

from components.errors import RunFailed, first_line
from components.storage import redact
from components.tracking_outage import is_unreachable, patience

BATCH_LIMIT = 1000  # metrics per log_batch request (MLflow's limit)


class MlflowRunLogger:
    """Logs step metrics and PNGs to run `run_id` at `tracking_uri`; used by rank 0 only.

    A tracking server that stops answering must not stop training, so requests here fail fast and the logger
    keeps what it could not send: metric rows wait in a buffer and go out, in step order, once the server
    answers again (tried at most every `retry_every_s`); sample grids due meanwhile are skipped and counted.
    `finish` waits up to `patience_s` for the buffer to drain, then logs the counts: `tracking_rows_delayed`
    and `tracking_images_skipped`.

    A worker group that Ray Train restarts from a checkpoint trains again the steps after it; the run
    already holds their metrics (logged before the crash), so steps up to the last one logged are not logged
    again: one row per metric and step."""

    def __init__(self, tracking_uri: str, run_id: str, prefix: str = "", watch: str = "d_loss",
                 patience_s: float = 300.0, retry_every_s: float = 5.0, clock=time.monotonic, sleep=time.sleep,
                 client=None):
        from mlflow.tracking import MlflowClient

        self.client, self.run_id, self.prefix = client or MlflowClient(tracking_uri), run_id, prefix
        self.patience_s, self.retry_every_s, self.clock, self.sleep = patience_s, retry_every_s, clock, sleep
        self.pending: list = []
        self.delayed_rows = self.skipped_images = 0
        self.down_since: float | None = None
        self.next_try = 0.0
        history = self._patiently(lambda: self._call(self.client.get_metric_history, run_id, prefix + watch),
                                  "read the run")
        self.logged_through = max((m.step for m in history), default=-1)

    @property
    def reachable(self) -> bool:
        return self.down_since is None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if step <= self.logged_through:
            return
        self.pending += [_metric(self.prefix + k, v, step) for k, v in metrics.items()
                         if k != "step" and isinstance(v, (int, float))]
        self.logged_through = step
        self._try_flush()

    def log_png(self, image, artifact_file: str) -> None:
        """Log a PNG now, or count it skipped while the server is away (images are not buffered)."""
        if not self._try_flush():
            self.skipped_images += 1
            return
        try:
            self._send_png(image, artifact_file)
        except Exception as err:
            if not is_unreachable(err):
                raise
            self._went_down(err)
            self.skipped_images += 1

    def finish(self) -> None:
        """Send everything still buffered, waiting up to `patience_s` for the server, then the outage counts.
        RunFailed if the server stays away that long."""
        self._patiently(self._flush_or_raise, "write the buffered metrics")
        counts = {"tracking_rows_delayed": self.delayed_rows, "tracking_images_skipped": self.skipped_images}
        if any(counts.values()):
            self.pending += [_metric(self.prefix + k, v, self.logged_through) for k, v in counts.items()]
            self._patiently(self._flush_or_raise, "write the buffered metrics")

    def _try_flush(self) -> bool:
        """Send the buffer if the server is believed up or a retry is due; whether it is now reachable with
        nothing buffered."""
        if self.reachable and not self.pending:
            return True
        if not self.reachable and self.clock() < self.next_try:
            return False
        try:
            self._flush_or_raise()
        except Exception as err:
            if not is_unreachable(err):
                raise
            self._went_down(err)
            return False
        return True

    def _flush_or_raise(self) -> None:
        if not self.reachable and not self.pending:  # nothing to send: ask whether it is back
            self._call(self.client.get_run, self.run_id)
        while self.pending:
            batch = self.pending[:BATCH_LIMIT]
            self._call(self.client.log_batch, self.run_id, metrics=batch, synchronous=True)
            del self.pending[:len(batch)]
            if not self.reachable:
                self.delayed_rows += len(batch)
        self._came_back()

    def _went_down(self, err: BaseException) -> None:
        if self.down_since is None:
            self.down_since = self.clock()
            reason = redact(first_line(err, 160))
            print(f"  mlflow: tracking server unreachable ({reason}); training goes on, metrics are buffered",
                  flush=True)
        self.next_try = self.clock() + self.retry_every_s

    def _came_back(self) -> None:
        if self.down_since is not None:
            print(f"  mlflow: tracking server back after {self.clock() - self.down_since:.0f}s; "
                  f"{self.delayed_rows} buffered metric rows written, {self.skipped_images} sample grid(s) skipped",
                  flush=True)
            self.down_since = None

    @staticmethod
    def _call(method, *args, **kwargs):
        """One MLflow request that fails at once when the server does not answer: the logger retries itself,
        between training steps, rather than stalling a step in the client's backoff."""
        with patience(0):
            return method(*args, **kwargs)

    def _patiently(self, call, what: str):
        """`call()`, retried every `retry_every_s` while the server is unreachable, for up to `patience_s`."""
        deadline = self.clock() + self.patience_s
        while True:
            try:
                return call()
            except Exception as err:
                if not is_unreachable(err):
                    raise
                self._went_down(err)
                if self.clock() >= deadline:
                    raise RunFailed(f"the MLflow tracking server was unreachable for {self.patience_s:.0f}s "
                                    f"(tracking.patience_s) when training tried to {what}; start it and rerun "
                                    "the same command") from None
                self.sleep(min(self.retry_every_s, max(0.0, deadline - self.clock())))

    def _send_png(self, image, artifact_file: str) -> None:
        import tempfile

        from components.plots import png_bytes  # matplotlib and torch: only when an image is logged

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, os.path.basename(artifact_file))
            with open(path, "wb") as f:
                f.write(png_bytes(image))
            self._call(self.client.log_artifact, self.run_id, path, os.path.dirname(artifact_file) or None)


def _metric(key: str, value: float, step: int):
    from mlflow.entities import Metric

    return Metric(key, float(value), int(time.time() * 1000), step)
