"""The Ray Train edge: `train_loop_per_worker` wraps the networks in DDP and runs the shared worker routine
(components.training.worker) with a Ray Train session; `run_torch_trainer` launches it."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from components.data.ray_reader import ray_dataset, shard_tensors
from components.data.shards import read_manifest
from components.plots import class_sample_grid
from components.storage import localize, ray_storage_args
from components.training.checkpoint import load_checkpoint, rank_rng_state, restore_state
from components.training.mlflow_logger import MlflowRunLogger
from components.training.ray_private import lean_torch_trainer_class, quiet_report_logging
from components.training.worker import build_worker_state, run_worker
from components.training.worker_config import WorkerConfig


class RayTrainSession:
    """WorkerSession of a Ray Train worker: checkpoints every `checkpoint_every` steps and at the end, rank 0
    prints progress and logs to MLflow, and the final report says where every rank ran and whether their
    parameters agree."""

    def __init__(self, config: WorkerConfig, rank: int, world: int, device: torch.device):
        self.config, self.cfg, self.rank, self.world = config, config.train, rank, world
        self.nodes = worker_node_ids(world)  # gathered up front: every rank must join the collective
        target = config.mlflow
        self.logger = MlflowRunLogger(target.tracking_uri, target.run_id, patience_s=target.patience_s) \
            if rank == 0 and target else None
        self.z_fixed = torch.randn(8, config.model.z_dim, generator=torch.Generator().manual_seed(1234)).to(device)

    def restore(self, state, loss) -> bool:
        import ray.train

        resumed = ray.train.get_checkpoint()
        if resumed is None:
            return False
        with resumed.as_directory() as d:
            restore_state(state, load_checkpoint(d), loss)
        if self.rank == 0:
            print(f"  train: resuming from the checkpoint at step {state.step}", flush=True)
        return True

    def checkpoint_due(self, step: int, last_checkpoint: int, final: bool) -> bool:
        return final or step - last_checkpoint >= self.cfg.checkpoint_every

    def annotate(self, st, metrics: dict[str, float], final: bool) -> dict:
        if self.rank == 0:
            print(progress_line("train", st.step, self.cfg.steps, self.cfg.batch_size, metrics), flush=True)
        if final:
            digests = gather_from_ranks(param_digest(st), self.world)
            metrics = {**metrics, "worker_nodes": self.nodes, "param_digests": digests,
                       "ranks_in_sync": float(len(set(digests)) == 1)}
        if self.logger is not None:
            self._log(st, metrics, final)
        return metrics

    def _log(self, st, metrics: dict, final: bool) -> None:
        self.logger.log_metrics(metrics, st.step)
        if final:  # what follows needs the server: wait for it, and write what was buffered meanwhile
            self.logger.finish()
        if final or st.step % self.cfg.sample_grid_every == 0:
            self.logger.log_png(class_sample_grid(st.G_ema, st.num_classes, self.z_fixed),
                                f"samples/step_{st.step:06d}.png")
        if final:  # the final EMA generator as an MLflow model with a signature, from rank 0 only
            from components.registry import generator_arch, log_generator

            arch = generator_arch(st.G_ema, self.config.model.g_base_channels, self.config.model.g_norm)
            log_generator(st.G_ema, arch, "generator", self.config.mlflow.run_id, self.config.mlflow.tracking_uri)

    def rank_rngs(self, st) -> list:
        return gather_from_ranks(rank_rng_state(st), self.world)

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)


def train_loop_per_worker(config: WorkerConfig) -> None:
    """Ray Train entry: DDP G and D on this worker's device, then the shared worker routine."""
    import ray.train
    import ray.train.torch

    quiet_ddp_stride_warning()
    quiet_report_logging()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(config.train.threads_per_worker)
    device = ray.train.torch.get_device()
    use_cuda = device.type == "cuda"

    def wrap(module: torch.nn.Module) -> torch.nn.Module:
        if use_cuda and world > 1:  # SyncBatchNorm only runs on accelerators; CPU DDP keeps per-rank BN.
            module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return ray.train.torch.prepare_model(module) if world > 1 else module.to(device)

    shard = None
    if config.reader == "ray_data":
        shape = read_manifest(localize(config.data_uri))["image_shape_hwc"]
        shard = shard_tensors(ray.train.get_dataset_shard("train"), shape)
    state, cfg, loss = build_worker_state(config, rank, world, wrap, device, shard)
    run_worker(config, RayTrainSession(config, rank, world, device), state, cfg, loss)


def quiet_ddp_stride_warning() -> None:
    """Single-input-channel convs give grads with other (equivalent) strides than DDP's buckets: harmless."""
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")


def gather_from_ranks(value, world: int) -> list:
    """`value` from every rank, in rank order (all ranks must call this)."""
    import torch.distributed as dist

    if world == 1 or not dist.is_initialized():
        return [value]
    gathered: list = [None] * world
    dist.all_gather_object(gathered, value)
    return gathered


def worker_node_ids(world: int) -> list[str]:
    """The Ray node id of every rank, in rank order."""
    import ray

    return gather_from_ranks(ray.get_runtime_context().get_node_id(), world)


def param_digest(state) -> str:
    """sha256 of G's and D's parameters on this rank: equal on every rank if DDP kept them in sync."""
    import hashlib

    h = hashlib.sha256()
    for module in (state.G, state.D):
        for p in module.parameters():
            h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def progress_line(what: str, step: int, total: int, batch: int, m: dict[str, float]) -> str:
    """One human-readable progress line with an ETA from the current throughput."""
    eta_s = (total - step) * batch / max(m["images_per_s"], 1e-9)
    privacy = f"  epsilon {m['epsilon']:.2f}" if "epsilon" in m else ""  # DP-SGD: the budget spent so far
    return (f"  {what} step {step}/{total}  d_loss {m['d_loss']:.3f}  g_loss {m['g_loss']:.3f}  "
            f"rec {m['rec_loss']:.3f}  D(x) {m['d_real']:.2f}  D(G(z)) {m['d_fake']:.2f}{privacy}  "
            f"{m['images_per_s']:.0f} img/s  ETA {eta_s:.0f}s")


def build_torch_trainer(config: WorkerConfig, storage: Path | str, run_name: str, callbacks: list | None = None,
                        loop_fn=train_loop_per_worker, placement_group_cleaner: bool = True,
                        autoscaling_requests: bool = True):
    """The TorchTrainer for `loop_fn` (default `train_loop_per_worker`); `run_torch_trainer` fits it.

    storage: a local path or a storage URI (s3://...), where Ray Train keeps checkpoints.
    callbacks: Ray Train callbacks, e.g. Tune's TuneReportCallback when a tune trial launches it.
    loop_fn: a wrapper of train_loop_per_worker (the trainer benchmark times the worker side with one).
    placement_group_cleaner, autoscaling_requests: see `lean_torch_trainer_class`."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig

    cfg = config.train
    backend = {"auto": "nccl" if cfg.use_gpu else "gloo"}.get(cfg.backend, cfg.backend)
    storage_path, storage_fs = ray_storage_args(storage)
    datasets = {"train": ray_dataset(config.data_uri, "train")} if config.reader == "ray_data" else None
    return lean_torch_trainer_class(placement_group_cleaner, autoscaling_requests)(
        loop_fn,
        train_loop_config=config,
        torch_config=TorchConfig(backend=backend),
        datasets=datasets,
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker=cfg.resources_per_worker or {
                                         "CPU": cfg.threads_per_worker, **({"GPU": 1} if cfg.use_gpu else {})}),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path, storage_filesystem=storage_fs,
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            logging_config=LoggingConfig(log_level="WARNING"),  # our own progress lines say enough
            callbacks=callbacks or [],
        ),
    )


def run_torch_trainer(config: WorkerConfig, storage: Path | str, run_name: str, callbacks: list | None = None,
                      loop_fn=train_loop_per_worker, placement_group_cleaner: bool = True,
                      autoscaling_requests: bool = True):
    """Fit `build_torch_trainer(...)`; returns the Ray Train Result."""
    return build_torch_trainer(config, storage, run_name, callbacks, loop_fn, placement_group_cleaner,
                               autoscaling_requests).fit()
