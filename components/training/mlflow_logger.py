"""Rank-0 metric and image logging into an existing MLflow run (the thin MLflow edge of training)."""
from __future__ import annotations

import time


class MlflowRunLogger:
    """Logs step metrics and PNGs to run `run_id` at `tracking_uri`; used by rank 0 only.

    A worker group that Ray Train restarts from a checkpoint trains again the steps after it; the run
    already holds their metrics (logged before the crash), so steps up to the last one logged are not logged
    again: one row per metric and step."""

    def __init__(self, tracking_uri: str, run_id: str, prefix: str = "", watch: str = "d_loss"):
        from mlflow.tracking import MlflowClient

        self.client, self.run_id, self.prefix = MlflowClient(tracking_uri), run_id, prefix
        history = self.client.get_metric_history(run_id, prefix + watch)
        self.logged_through = max((m.step for m in history), default=-1)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        if step <= self.logged_through:
            return
        now = int(time.time() * 1000)
        batch = [Metric(self.prefix + k, float(v), now, step) for k, v in metrics.items()
                 if k != "step" and isinstance(v, (int, float))]
        self.client.log_batch(self.run_id, metrics=batch, synchronous=True)

    def log_png(self, image, artifact_file: str) -> None:
        import os
        import tempfile

        from components.plots import png_bytes  # matplotlib and torch: only when an image is logged

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, os.path.basename(artifact_file))
            with open(path, "wb") as f:
                f.write(png_bytes(image))
            self.client.log_artifact(self.run_id, path, os.path.dirname(artifact_file) or None)
