"""The Ray Train edge: `train_loop_per_worker` wraps the pure loop in DDP, reports and checkpoints."""
from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path

import torch

from components.data.ray_reader import ray_dataset, shard_tensors
from components.data.reader import SplitTensors, load_split
from components.data.shards import read_manifest
from components.losses import GANLoss, LossConfig
from components.metrics.trial_scoring import TrialScorer
from components.models import ModelConfig
from components.plots import class_sample_grid
from components.training.checkpoint import load_checkpoint, rank_rng_state, restore_state, save_checkpoint
from components.training.config import TrainConfig
from components.training.loop import train_steps
from components.training.mlflow_logger import MlflowRunLogger
from components.storage import localize, ray_storage_args
from components.training.state import apply_hyperparameters, make_state


def build_worker_state(loop_config: dict, rank: int, world: int, wrap=lambda m: m, device=torch.device("cpu"),
                       data: SplitTensors | None = None):
    """Configs, data and GanState for one rank, from the plain-dict loop config (data: this rank's shard)."""
    model_cfg = ModelConfig(**loop_config["model"])
    train_cfg = TrainConfig(**loop_config["train"])
    data_dir = localize(loop_config["data_dir"])  # a node-local copy when the data sit in remote storage
    manifest = read_manifest(data_dir)
    data = data if data is not None else load_split(data_dir, "train")
    rebalance = loop_config["rebalance"]
    weights = manifest["train_statistics"]["weights"][loop_config["weight_scheme"]]
    state = make_state(model_cfg, train_cfg, data, manifest["num_classes"], rebalance, weights, rank, world,
                       wrap=wrap, device=device, shared_data=loop_config.get("reader", "local") != "ray_data")
    return state, train_cfg, GANLoss(LossConfig(**loop_config["loss"]))


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train entry: DDP G and D, resume from the latest checkpoint, report every interval."""
    import ray.train
    import ray.train.torch

    quiet_ddp_stride_warning()
    quiet_report_logging()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(loop_config["train"].get("threads_per_worker", 1))
    device = ray.train.torch.get_device()
    use_cuda = device.type == "cuda"

    def wrap(module: torch.nn.Module) -> torch.nn.Module:
        if use_cuda and world > 1:  # SyncBatchNorm only runs on accelerators; CPU DDP keeps per-rank BN.
            module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return ray.train.torch.prepare_model(module) if world > 1 else module.to(device)

    shard = None
    if loop_config.get("reader") == "ray_data":
        shape = read_manifest(localize(loop_config["data_dir"]))["image_shape_hwc"]
        shard = shard_tensors(ray.train.get_dataset_shard("train"), shape)
    state, cfg, loss = build_worker_state(loop_config, rank, world, wrap, device, shard)
    resumed = ray.train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as d:
            restore_state(state, load_checkpoint(d), loss)
        if rank == 0:
            print(f"  train: resuming from the checkpoint at step {state.step}", flush=True)
    elif loop_config.get("init_checkpoint"):  # warm start (tune trials continue the trained networks)
        restore_state(state, load_checkpoint(localize(loop_config["init_checkpoint"])), loss)
    apply_hyperparameters(state, cfg)
    scorer = None
    if loop_config.get("scoring") and rank == 0:
        _, c, h, _ = state.sampler.data.images_u8.shape
        scorer = TrialScorer(loop_config["scoring"], c, h, state.num_classes)

    nodes = worker_node_ids(world)  # gathered up front: every rank must join the collective
    mlflow_cfg = loop_config.get("mlflow")
    logger = MlflowRunLogger(mlflow_cfg["tracking_uri"], mlflow_cfg["run_id"]) if rank == 0 and mlflow_cfg else None
    z_fixed = torch.randn(8, state.G_ema.z_dim, generator=torch.Generator().manual_seed(1234)).to(device)
    last_ckpt = [state.step]

    def on_report(st, metrics: dict[str, float]) -> None:
        final = st.step >= cfg.steps or st.diverged
        due = final or st.step - last_ckpt[0] >= cfg.checkpoint_every
        if rank == 0:
            print(progress_line("train", st.step, cfg.steps, cfg.batch_size, metrics), flush=True)
        if scorer is not None:  # rank 0's metrics are the ones Tune sees
            metrics = {**metrics, **scorer(st)}
        if final:
            digests = gather_from_ranks(param_digest(st), world)
            metrics = {**metrics, "worker_nodes": nodes, "param_digests": digests,
                       "ranks_in_sync": float(len(set(digests)) == 1)}
        if logger is not None:
            logger.log_metrics(metrics, st.step)
            if final or st.step % cfg.sample_grid_every == 0:
                logger.log_png(class_sample_grid(st.G_ema, st.num_classes, z_fixed),
                               f"samples/step_{st.step:06d}.png")
            if final:  # the final EMA generator as an MLflow model with a signature, from rank 0 only
                from components.registry import generator_arch, log_generator_to_run

                arch = generator_arch(st.G_ema, loop_config["model"]["g_base_channels"], loop_config["model"]["g_norm"])
                log_generator_to_run(mlflow_cfg["tracking_uri"], mlflow_cfg["run_id"], st.G_ema, arch)
        rank_rngs = gather_from_ranks(rank_rng_state(st), world) if due else None
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if due and rank == 0:
                save_checkpoint(st, tmp, loop_config["resolved_config"], loss, rank_rngs)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            if due:
                last_ckpt[0] = st.step
            ray.train.report(metrics, checkpoint=checkpoint)

    train_steps(state, loss, cfg, cfg.steps, on_report)


def quiet_ddp_stride_warning() -> None:
    """Single-input-channel convs give grads with other (equivalent) strides than DDP's buckets: harmless."""
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")


def quiet_report_logging() -> None:
    """Ray Train 2.60 logs every `report` at INFO through a logger named after its file path, so neither
    `ray.train`'s level nor LoggingConfig reaches it; our own progress lines already say what a report holds."""
    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:  # another Ray layout: nothing to quieten
        return
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


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
    return (f"  {what} step {step}/{total}  d_loss {m['d_loss']:.3f}  g_loss {m['g_loss']:.3f}  "
            f"rec {m['rec_loss']:.3f}  D(x) {m['d_real']:.2f}  D(G(z)) {m['d_fake']:.2f}  "
            f"{m['images_per_s']:.0f} img/s  ETA {eta_s:.0f}s")


def lean_torch_trainer_class(placement_group_cleaner: bool = True, autoscaling_requests: bool = True):
    """TorchTrainer without the helper actors a run does not use; each is one more Python process to start,
    and one more that wakes 100 times a second while the run trains.

    - Ray Train starts a DatasetManager actor for every run, with or without Ray Datasets; without any it
      serves nothing.
    - placement_group_cleaner=False drops the detached actor that removes the run's placement group if the
      controller dies without cleaning up (it also asks the state API every second). Only for a run whose
      placement group cannot outlive its driver anyway: one started by the driver of a local cluster it
      owns, where a dead controller fails the run and the cluster ends with the driver. Not for a Tune
      trial: a scheduler that stops it early kills its controller while the campaign goes on.
    - autoscaling_requests=False: a fixed-size run does not register its workers' resources with Ray's
      autoscaling coordinator, a detached actor its controller creates on first use and that then lives as
      long as the cluster. The requests tell an autoscaler what to add; on a local cluster its driver
      started there is none, so the actor only costs a process (0.4 % of two cores while training, in
      bench.cpu_accounting).
      Elastic runs keep it: they also read back what it reserved.
    Falls back to TorchTrainer where this Ray lays out its callbacks differently."""
    from ray.train.torch import TorchTrainer

    try:
        from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
        from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
        from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy
    except ImportError:
        return TorchTrainer

    class UnannouncedFixedScalingPolicy(FixedScalingPolicy):
        """FixedScalingPolicy minus its calls to the autoscaling coordinator (registering on start, renewing
        every 20 s, cancelling on shutdown): the worker group's own placement group still reserves the CPUs."""

        def after_controller_start(self, train_run_context):
            pass

        def _maybe_send_resource_request(self):
            pass

        def _send_resource_request(self):
            pass

        def _cancel_resource_request(self):
            pass

    class LeanTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self):
            unused = () if self.datasets else (DatasetsCallback,)
            if not placement_group_cleaner:
                unused += (PlacementGroupCleanerCallback,)
            return [cb for cb in super()._create_default_callbacks() if not isinstance(cb, unused)]

        def _initialize_and_run_controller(self, **controller_init_kwargs):
            policy = controller_init_kwargs.get("scaling_policy")
            if not autoscaling_requests and type(policy) is FixedScalingPolicy:
                controller_init_kwargs["scaling_policy"] = UnannouncedFixedScalingPolicy(policy.scaling_config)
            return super()._initialize_and_run_controller(**controller_init_kwargs)

    return LeanTorchTrainer


def build_torch_trainer(loop_config: dict, storage: Path | str, run_name: str, callbacks: list | None = None,
                        loop_fn=train_loop_per_worker, placement_group_cleaner: bool = True,
                        autoscaling_requests: bool = True):
    """The TorchTrainer for `loop_fn` (default `train_loop_per_worker`); `run_torch_trainer` fits it.

    storage: a local path or a storage URI (s3://...), where Ray Train keeps checkpoints.
    callbacks: Ray Train callbacks, e.g. Tune's TuneReportCallback when a tune trial launches it.
    loop_fn: a wrapper of train_loop_per_worker (the trainer benchmark times the worker side with one).
    placement_group_cleaner, autoscaling_requests: see `lean_torch_trainer_class`."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig

    cfg = TrainConfig(**loop_config["train"])
    backend = {"auto": "nccl" if cfg.use_gpu else "gloo"}.get(cfg.backend, cfg.backend)
    storage_path, storage_fs = ray_storage_args(storage)
    datasets = {"train": ray_dataset(loop_config["data_dir"], "train")} if loop_config.get("reader") == "ray_data" else None
    return lean_torch_trainer_class(placement_group_cleaner, autoscaling_requests)(
        loop_fn,
        train_loop_config=loop_config,
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


def run_torch_trainer(loop_config: dict, storage: Path | str, run_name: str, callbacks: list | None = None,
                      loop_fn=train_loop_per_worker, placement_group_cleaner: bool = True,
                      autoscaling_requests: bool = True):
    """Fit `build_torch_trainer(...)`; returns the Ray Train Result."""
    return build_torch_trainer(loop_config, storage, run_name, callbacks, loop_fn, placement_group_cleaner,
                               autoscaling_requests).fit()
