"""`promote`, `rollback` and `generate`: registry commands that work on any registered version."""
from __future__ import annotations

import json
from pathlib import Path

from components.errors import UserError


def _client(cfg):
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import setup_tracking

    uri, _ = setup_tracking(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.artifact_root)
    return MlflowClient(uri)


def _require_version(client, name: str, version: str) -> None:
    import mlflow

    try:
        client.get_model_version(name, version)
    except mlflow.exceptions.MlflowException:
        raise UserError(f"model '{name}' has no version {version} in the registry "
                        "(check --model/--version and MLFLOW_TRACKING_URI)") from None


def cmd_promote(args, cfg) -> int:
    """Judge a registered version by the configured gates; move aliases unless --dry-run."""
    from components.promotion import decide
    from pipeline.stages.promote import print_decision

    client = _client(cfg)
    _require_version(client, args.model, str(args.version))
    decision = decide(client, args.model, str(args.version), cfg.promote.gates.model_dump(), args.dry_run)
    print_decision(decision)
    if args.dry_run:
        print("  (dry run: no alias moved)")
    print(json.dumps({k: decision[k] for k in ("model_name", "version", "promoted", "failed_gates")}))
    return 0


def cmd_rollback(args, cfg) -> int:
    """champion -> previous-champion."""
    from components.promotion import rollback

    old, new = rollback(_client(cfg), args.model)
    print(f"{args.model}: champion moved from version {old} back to version {new}")
    return 0


def cmd_generate(args, cfg) -> int:
    """Sample a per-class grid PNG from a registered model URI (models:/NAME@alias or models:/NAME/V)."""
    import mlflow
    import pandas as pd
    import torch

    from components.plots import image_grid

    _client(cfg)
    try:
        model = mlflow.pyfunc.load_model(args.model)
    except mlflow.exceptions.MlflowException as err:
        raise UserError(f"cannot load {args.model}: {str(err).splitlines()[0][:200]}") from None
    generator = model.unwrap_python_model().generator
    labels = [c for c in range(generator.num_classes) for _ in range(args.per_class)]
    seeds = [args.seed + i for i in range(len(labels))]
    images = model.predict(pd.DataFrame({"label": labels, "seed": seeds}))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image_grid(torch.from_numpy(images), args.per_class).save(out)
    print(f"wrote {out} ({generator.num_classes} classes x {args.per_class})")
    return 0


def cmd_report(args, cfg) -> int:
    """Rebuild the HTML report of a pipeline run from its stages' MLflow artifacts."""
    import tempfile

    import mlflow

    from pipeline.report import build_html, sources_from_mlflow

    client = _client(cfg)
    try:
        client.get_run(args.run_id)
    except mlflow.exceptions.MlflowException:
        raise UserError(f"no MLflow run {args.run_id} at {cfg.tracking.uri}; pass the pipeline's parent run id") from None
    with tempfile.TemporaryDirectory() as tmp:
        sources = sources_from_mlflow(client, args.run_id, Path(tmp))
        if not sources:
            raise UserError(f"run {args.run_id} is not a pipeline parent run (it has no stage_run.* tags)")
        page = build_html(sources, f"pipeline run {args.run_id[:12]}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    print(f"wrote {out}")
    return 0
