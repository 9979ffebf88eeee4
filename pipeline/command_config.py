"""Settings for the commands that work on what a pipeline run left in MLflow (promote, rollback, generate,
evaluate --model, report). They need only a tracking URI, so they run from any directory; a config file is
only for overrides.
"""
from __future__ import annotations

import os

import yaml

from components.errors import UserError
from pipeline.config import PipelineConfig, apply_override, build, load_config

NO_TRACKING_URI = ("no tracking URI: set MLFLOW_TRACKING_URI or pass --tracking-uri, e.g. "
                   "--tracking-uri sqlite:////abs/path/to/mlflow.db (or --config FILE to read it from a config)")


def tracking_uri_of(args, environ=os.environ) -> str:
    """--tracking-uri, else --set tracking.uri=..., else MLFLOW_TRACKING_URI, else the --config file's."""
    if getattr(args, "tracking_uri", None):
        return args.tracking_uri
    explicit = [s.split("=", 1)[1] for s in args.set if s.startswith("tracking.uri=")]
    if explicit:
        return explicit[-1]
    if environ.get("MLFLOW_TRACKING_URI"):
        return environ["MLFLOW_TRACKING_URI"]
    if args.config:
        return load_config(args.config, args.set).tracking.uri
    raise UserError(NO_TRACKING_URI)


def command_config(args, logged_run_id: str | None = None) -> PipelineConfig:
    """The settings: --config with --set if given; else the config logged with run `logged_run_id` (the run
    that made the model version); else built-in defaults. Its tracking.uri is always tracking_uri_of(args)."""
    uri = tracking_uri_of(args)
    sets = [*args.set, f"tracking.uri={uri}"]
    if args.config:
        return load_config(args.config, sets)
    tree = _logged_tree(uri, logged_run_id) if logged_run_id else {}
    for assignment in sets:
        apply_override(tree, assignment)
    try:
        return build(PipelineConfig, tree)
    except UserError as err:
        where = f"the config logged with run {logged_run_id}" if logged_run_id else "the built-in defaults"
        raise UserError(f"{where}: {err}; pass --config FILE to give the settings") from None


def _logged_tree(uri: str, run_id: str) -> dict:
    """config.yaml of an MLflow run as a plain tree; {} (built-in defaults) when the run logged none."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    try:
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/config.yaml")
    except (mlflow.exceptions.MlflowException, OSError):
        print(f"  settings: run {run_id} logged no config.yaml; using built-in defaults", flush=True)
        return {}
    tree = yaml.safe_load(text)
    return tree if isinstance(tree, dict) else {}
