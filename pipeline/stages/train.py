"""train: Ray Train TorchTrainer (DDP) on the prepared data.

Reads:  prepare's data/ (shards + manifest).
Writes: checkpoint.pt (G, D, EMA-G, optimisers, RNG, trace, config), metrics.json, training_curves.png;
        rank 0 logs metrics, sample grids and the final EMA generator (pyfunc model `generator`, with a
        signature) into this stage's MLflow run. Other ranks never touch MLflow.
"""
from __future__ import annotations

import shutil
from pathlib import Path


from components.errors import UserError
from components.plots import line_chart
from components.storage import Location, is_remote, join
from components.training.checkpoint import CHECKPOINT_FILE, load_checkpoint
from components.training.ray_train import run_torch_trainer
from pipeline.config import PipelineConfig
from pipeline.ray_edge import owns_local_cluster
from pipeline.stages.context import StageContext


def build_loop_config(cfg: PipelineConfig, data_dir: Path | str, mlflow_target: dict | None = None,
                      train_overrides: dict | None = None) -> dict:
    """The plain-dict config that travels to Ray workers (and to in-process training in tests).
    data_dir: a local path or a storage URI (workers `localize` it)."""
    train = {**cfg.train.model_dump(), **(train_overrides or {})}
    return {
        "model": cfg.model.model_dump(), "loss": cfg.loss.model_dump(), "train": train,
        "data_dir": data_dir if is_remote(data_dir) else str(Path(data_dir).resolve()), "rebalance": cfg.data.rebalance,
        "weight_scheme": cfg.data.weight_scheme, "reader": cfg.data.reader, "mlflow": mlflow_target,
        "resolved_config": {**cfg.model_dump(mode="json"), "train": train},
    }


def loop_config(ctx: StageContext, data_dir: Path | str, train_overrides: dict | None = None) -> dict:
    """build_loop_config for a stage run: rank 0 logs into the stage's MLflow run."""
    return build_loop_config(ctx.cfg, data_dir, {"tracking_uri": ctx.tracking_uri, "run_id": ctx.run_id},
                             train_overrides)


def check_gpu_request(use_gpu: bool, num_workers: int) -> None:
    """Fail early, in one line, when GPUs are asked for and the cluster has too few."""
    import ray

    if use_gpu and ray.cluster_resources().get("GPU", 0) < num_workers:
        have = int(ray.cluster_resources().get("GPU", 0))
        raise UserError(f"train.use_gpu is true but the Ray cluster has {have} GPU(s) for {num_workers} "
                        "worker(s): set train.use_gpu=false or submit to a GPU cluster")


def fit_and_collect(ctx: StageContext, config: dict, run_name: str, out_dir: Path) -> dict:
    """Run the TorchTrainer, copy its final checkpoint to out_dir, and return the final metrics."""
    check_gpu_request(config["train"]["use_gpu"], config["train"]["num_workers"])
    storage = ctx.ray_storage()
    if ctx.forced:  # a run with the same name would resume from its latest checkpoint
        Location(join(storage, run_name)).delete()
    # Driven from the driver of a local cluster it owns, the run's placement group cannot outlive the cluster,
    # and no autoscaler reads resource requests (see lean_torch_trainer_class).
    owned = owns_local_cluster()
    result = run_torch_trainer(config, storage, run_name, placement_group_cleaner=not owned,
                               autoscaling_requests=not owned)
    if result.error is not None:
        raise RuntimeError(f"training failed: {result.error}")
    with result.checkpoint.as_directory() as d:
        shutil.copy2(Path(d) / CHECKPOINT_FILE, out_dir / CHECKPOINT_FILE)
    return dict(result.metrics or {})


def run(ctx: StageContext) -> dict:
    import mlflow  # here, not at the top: the helpers above also run where MLflow is absent (bench/)

    config = loop_config(ctx, ctx.input_uri("prepare", "data"))
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
