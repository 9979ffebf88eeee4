"""train: Ray Train TorchTrainer (DDP) on the prepared data.

Reads:  prepare's data/ (shards + manifest).
Writes: checkpoint.pt (G, D, EMA-G, optimisers, RNG, trace, config), metrics.json, training_curves.png;
        rank 0 logs metrics, sample grids and the final EMA generator (pyfunc model `generator`, with a
        signature) into this stage's MLflow run. Other ranks never touch MLflow.
"""
from __future__ import annotations

import shutil
from pathlib import Path


from components.errors import RunFailed, UserError
from components.plots import line_chart
from components.storage import Location, join
from components.training.checkpoint import CHECKPOINT_FILE, load_checkpoint
from components.training.ray_train import run_torch_trainer
from components.training.worker_config import MlflowTarget, WorkerConfig
from pipeline.workers import build_worker_config
from pipeline.ray_edge import lean_runs
from pipeline.stages.context import StageContext


def worker_config(ctx: StageContext, data_uri: Path | str, train_overrides: dict | None = None) -> WorkerConfig:
    """build_worker_config for a stage run: rank 0 logs into the stage's MLflow run."""
    return build_worker_config(ctx.cfg, data_uri, MlflowTarget(tracking_uri=ctx.tracking_uri, run_id=ctx.run_id,
                                                                  patience_s=ctx.cfg.tracking.patience_s),
                               train_overrides)


def check_resources(config: WorkerConfig) -> None:
    """Fail early, in one line, when the cluster cannot run the workers: too few GPUs, or, with the Ray Data
    reader, no CPU left beside the workers for Ray Data's read tasks (the run would wait forever)."""
    import ray

    cfg, have = config.train, ray.cluster_resources()
    if cfg.use_gpu and have.get("GPU", 0) < cfg.num_workers:
        raise UserError(f"train.use_gpu is true but the Ray cluster has {int(have.get('GPU', 0))} GPU(s) for "
                        f"{cfg.num_workers} worker(s): set train.use_gpu=false or submit to a GPU cluster")
    if config.reader == "ray_data":
        taken = cfg.num_workers * (cfg.resources_per_worker or {"CPU": cfg.threads_per_worker}).get("CPU", 0)
        if have.get("CPU", 0) - taken < 1:
            raise UserError(f"data.reader=ray_data: the {cfg.num_workers} Train workers take {taken:g} of the "
                            f"cluster's {have.get('CPU', 0):g} CPUs, leaving none for Ray Data's read tasks; "
                            "lower train.threads_per_worker or train.resources_per_worker, or use data.reader=local")


def failure_line(error: BaseException) -> str:
    """The most telling line of a Ray Train failure: the worker's own exception if it names one."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line.split(":", 1)[0] and not line.startswith("File "):
            return line[:300]
    return (lines[0] if lines else type(error).__name__)[:300]


def fit_and_collect(ctx: StageContext, config: WorkerConfig, run_name: str, out_dir: Path) -> dict:
    """Run the TorchTrainer, copy its final checkpoint to out_dir, and return the final metrics."""
    check_resources(config)
    storage = ctx.ray_storage()
    if ctx.forced:  # a run with the same name would resume from its latest checkpoint
        Location(join(storage, run_name)).delete()
    from ray.train import TrainingFailedError

    lean = lean_runs()
    try:
        result = run_torch_trainer(config, storage, run_name, placement_group_cleaner=not lean,
                                   autoscaling_requests=not lean)
        error = result.error
    except TrainingFailedError as err:  # Ray Train raises once its worker group has failed too often
        error = err
    if error is not None:
        raise RunFailed(f"train: {failure_line(error)} (the worker group failed more than "
                        f"train.max_failures={config.train.max_failures} time(s)); its checkpoints are kept, so "
                        "rerunning the same command resumes from the last one") from None
    with result.checkpoint.as_directory() as d:
        shutil.copy2(Path(d) / CHECKPOINT_FILE, out_dir / CHECKPOINT_FILE)
    return dict(result.metrics or {})


def run(ctx: StageContext) -> dict:
    import mlflow  # here, not at the top: the helpers above also run where MLflow is absent (bench/)

    config = worker_config(ctx, ctx.input_uri("prepare", "data"))
    metrics = fit_and_collect(ctx, config, f"{ctx.cfg.name}-train-{ctx.fingerprint[:12]}", ctx.out_dir)
    ckpt = load_checkpoint(ctx.out_dir / CHECKPOINT_FILE)
    trace = {k: v.tolist() for k, v in ckpt["trace"].items()}
    summary = {"final": metrics, "steps": int(ckpt["step"]), "diverged": bool(ckpt["diverged"]),
               "worker_nodes": metrics.get("worker_nodes", [])}
    mlflow.set_tag("worker_nodes", ",".join(summary["worker_nodes"]))
    ctx.write_json("metrics.json", summary)
    fig = line_chart({k: trace[k] for k in ("d_loss", "g_loss", "rec_loss") if k in trace},
                     "Training losses (per step)", "step")
    fig.savefig(ctx.out_dir / "training_curves.png", dpi=100)
    mlflow.log_artifact(str(ctx.out_dir / "training_curves.png"))
    mlflow.log_artifact(str(ctx.out_dir / "metrics.json"))
    return {"checkpoint": ctx.out_dir / CHECKPOINT_FILE}
