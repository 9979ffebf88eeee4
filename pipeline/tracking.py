"""The MLflow edge of the pipeline: resolve the tracking URI, find the experiment, open runs."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import mlflow

from components.errors import UserError


def absolute_tracking_uri(uri: str) -> str:
    """Make `sqlite:///relative.db` absolute, so Ray workers with another cwd write to the same file."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    if "://" not in uri:
        raise UserError(f"tracking.uri {uri!r} is a plain path; MLflow 3 needs a database or server URI, "
                        "e.g. sqlite:///mlflow.db or http://127.0.0.1:5000")
    return uri


def artifact_location(root: str, tracking_uri: str) -> str | None:
    """Where a new experiment keeps artifacts. A tracking server decides itself (proxied artifacts), unless
    a URI is given; locally, a folder becomes an absolute file URI."""
    if "://" in root or root.startswith("mlflow-artifacts:"):
        return root
    return None if tracking_uri.startswith(("http://", "https://")) else Path(root).resolve().as_uri()


def setup_tracking(uri: str, experiment: str, artifact_root: str) -> tuple[str, str]:
    """Point MLflow at `uri`, create the experiment if needed; returns (absolute uri, experiment id)."""
    uri = absolute_tracking_uri(uri)
    for noisy in ("mlflow.store.db.utils", "alembic", "mlflow.tracking.fluent"):  # schema-migration chatter
        logging.getLogger(noisy).setLevel(logging.WARNING)
    mlflow.set_tracking_uri(uri)
    os.environ["MLFLOW_TRACKING_URI"] = uri  # inherited by Ray workers started from this process
    exp = mlflow.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else mlflow.create_experiment(experiment, artifact_location(artifact_root, uri))
    mlflow.set_experiment(experiment_id=exp_id)
    return uri, exp_id
