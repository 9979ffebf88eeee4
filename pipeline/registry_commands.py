"""`promote`, `rollback` and `generate`: registry commands that work on any registered version."""
from __future__ import annotations

import json
from pathlib import Path

from components.errors import UserError

REJECTED_EXIT = 3  # `promote --fail-if-rejected` when a gate fails: distinct from 2, bad input
from pipeline.command_config import command_config, tracking_uri_of
from pipeline.tracking import absolute_tracking_uri


def _client(cfg):
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import setup_tracking

    uri, _ = setup_tracking(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.artifact_root,
                            cfg.tracking.patience_s)
    return MlflowClient(uri)


def _version_run_id(args) -> str:
    """The run that logged model version --version of --model (its config holds the gates it was made under)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(absolute_tracking_uri(tracking_uri_of(args)))
    _require_version(client, args.model, str(args.version))
    return client.get_model_version(args.model, str(args.version)).run_id


def _require_version(client, name: str, version: str) -> None:
    import mlflow

    try:
        client.get_model_version(name, version)
    except mlflow.exceptions.MlflowException:
        raise UserError(f"model '{name}' has no version {version} in the registry "
                        "(check --model/--version and MLFLOW_TRACKING_URI)") from None


def cmd_promote(args) -> int:
    """Judge a registered version by the gates (of --config, else of the config the version was made under);
    move aliases unless --dry-run."""
    from components.promotion import decide
    from pipeline.stages.promote import print_decision

    from pipeline.tracking import registry_lock

    cfg = command_config(args, _version_run_id(args))
    client = _client(cfg)
    decision = decide(client, args.model, str(args.version), cfg.promote.gates, args.dry_run,
                      lock=registry_lock(cfg.tracking.uri, args.model))
    print_decision(decision)
    if args.dry_run:
        print("  (dry run: no alias moved)")
    print(json.dumps({k: decision[k] for k in ("model_name", "version", "promoted", "failed_gates")}))
    return REJECTED_EXIT if args.fail_if_rejected and not decision["promoted"] else 0


def cmd_rollback(args) -> int:
    """champion -> previous-champion; the demoted version is tagged rolled_back and never returns."""
    from components.promotion import PREVIOUS, alias_version, rollback
    from pipeline.tracking import registry_lock

    cfg = command_config(args)
    client = _client(cfg)
    old, new = rollback(client, args.model, lock=registry_lock(cfg.tracking.uri, args.model))
    before = alias_version(client, args.model, PREVIOUS)
    print(f"{args.model}: champion moved from version {old} back to version {new} (version {old} tagged "
          f"rolled_back); {PREVIOUS} is now {before or 'unset'}")
    return 0


def cmd_generate(args) -> int:
    """Sample a per-class grid PNG from a registered model URI (models:/NAME@alias or models:/NAME/V)."""
    import mlflow
    import pandas as pd
    import torch

    from components.plots import image_grid

    _client(command_config(args))
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


def cmd_report(args) -> int:
    """Rebuild the HTML report of a pipeline run from its stages' MLflow artifacts."""
    import tempfile

    import mlflow

    from pipeline.report import build_html, sources_from_mlflow

    cfg = command_config(args)
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


def model_run_id(ref: str) -> str | None:
    """The MLflow run behind a model reference: a run id, runs:/ID/..., or a registered version
    (models:/NAME/V, models:/NAME@alias); None for a checkpoint file."""
    import re

    import mlflow

    if re.fullmatch(r"[0-9a-f]{32}", ref):
        return ref
    if ref.startswith("runs:/"):
        return ref.removeprefix("runs:/").split("/", 1)[0]
    match = re.fullmatch(r"models:/([^/@]+)(?:/(\d+)|@([\w-]+))", ref)
    if match is None:
        return None
    client = mlflow.tracking.MlflowClient()
    name, version, alias = match.groups()
    try:
        mv = client.get_model_version(name, version) if version else client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None  # load_any_model has already said what is wrong with the reference
    return mv.run_id


def load_any_model(ref: str):
    """(G, D or None) from a checkpoint path, a model URI (models:/NAME@alias, runs:/ID/generator) or a run id
    (its `generator` model). Registry models hold G only, so D robustness is skipped for them."""
    import re

    import mlflow

    from components.registry import load_generator_file
    from components.training.checkpoint import load_checkpoint, models_from_checkpoint

    if Path(ref).exists():
        ckpt = load_checkpoint(ref)
        missing = [k for k in ("G_ema", "D", "config_json", "shape") if not isinstance(ckpt, dict) or k not in ckpt]
        if missing:
            raise UserError(f"--model {ref} is not a training checkpoint (it has no {', '.join(missing)}); pass a "
                            "checkpoint.pt the pipeline wrote, or a models:/ URI")
        G, D, _ = models_from_checkpoint(ckpt)
        return G, D
    if re.fullmatch(r"[0-9a-f]{32}", ref):
        ref = f"runs:/{ref}/generator"
    if not ref.startswith(("models:/", "runs:/")):
        raise UserError(f"--model {ref}: not a checkpoint file, a models:/ or runs:/ URI, or a run id")
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref))
    except mlflow.exceptions.MlflowException as err:
        raise UserError(f"--model {ref}: cannot load it from MLflow ({str(err).splitlines()[0][:160]}); "
                        "check the name, alias and MLFLOW_TRACKING_URI") from None
    weights = next(local.rglob("generator.pt"), None)
    if weights is None:
        raise UserError(f"--model {ref}: no generator.pt inside; is it a model logged by this pipeline?")
    return load_generator_file(weights), None


EVALUATION_MARK = ".ganpipe-evaluation"  # in every --out dir `evaluate` writes: only those are replaced


def refuse_foreign_dir(out: Path, mark: str) -> None:
    """`out` is replaced whole; refuse unless it is absent, empty, or one this command wrote before."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not (out / mark).is_file():
        raise UserError(f"--out {out} exists and was not written by this command; it would be replaced, so "
                        "give a new or empty directory")


def cmd_evaluate(args) -> int:
    """Evaluate any saved model outside the DAG, on the data and evaluation settings of --config, else of the
    config its run was made under (cached or freshly prepared data)."""
    import os
    import shutil

    import mlflow

    from components.evaluation import evaluate_models
    from pipeline.runner import run_pipeline

    mlflow.set_tracking_uri(absolute_tracking_uri(tracking_uri_of(args)))  # what models:/ and runs:/ resolve against
    out = Path(args.out).resolve()
    refuse_foreign_dir(out, EVALUATION_MARK)  # before any work: a wrong --out costs nothing
    G, D = load_any_model(args.model)
    cfg = command_config(args, model_run_id(args.model))
    data_dir = Path(run_pipeline(cfg, until="prepare")["stage_dirs"]["prepare"]) / "data"
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:  # into a temp dir, renamed on success: no half-written output
        result = evaluate_models(G, D, data_dir, cfg.evaluate, Path(cfg.work_dir).resolve() / "cache", tmp,
                                 {"model": args.model})
        (tmp / EVALUATION_MARK).write_text(f"written by ganpipe evaluate --model {args.model}\n")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    keys = ("fcd", "fcd_ratio", "kid", "precision", "recall", "coverage", "class_kl", "tail_head_fcd_ratio",
            "tail_recall", "d_fgsm_accuracy")
    print(json.dumps({k: result[k] for k in keys if k in result}))
    print(f"evaluation written to {out}")
    return 0
