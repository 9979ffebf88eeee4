"""Typed config of the training schedule."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from components.config_base import Section


class TrainConfig(Section):
    """Schedule, optimisers and distribution of one training run."""

    num_workers: int = Field(2, ge=1, description="Ray Train workers (DDP ranks).")
    use_gpu: bool = Field(False, description="Put each worker on a GPU (NCCL); false means CPU and gloo.")
    backend: Literal["auto", "nccl", "gloo"] = Field(
        "auto", description="torch.distributed backend; auto means NCCL on GPUs, gloo on CPUs.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Autocast dtype of the forward passes; fp16 adds a GradScaler (saved in checkpoints).")
    channels_last: bool = Field(False, description="NHWC memory format for networks and inputs (faster convs on GPUs).")
    sync: Literal["auto", "step", "report"] = Field(
        "auto", description="When the host waits for the device: every step (statistics read back, batches "
                            "copied from host memory) or once per report (batches drawn on the device, statistics "
                            "kept there); auto is report on GPUs, step on CPUs, where reading back is free.")
    compile: Literal["off", "default", "reduce-overhead", "max-autotune"] = Field(
        "off", description="torch.compile mode for G and D; reduce-overhead adds CUDA graphs (static shapes). "
                           "Not with R1 or the gradient penalty, whose double backward it cannot compile.")
    threads_per_worker: int = Field(1, ge=1, description="torch intra-op threads per worker.")
    resources_per_worker: dict[str, float] | None = Field(
        None, description="Ray resources per worker; default {CPU: threads_per_worker, GPU: 1 if use_gpu}.")
    steps: int = Field(1000, ge=1, description="Optimisation steps (one D step + one G step each).")
    batch_size: int = Field(64, ge=1, description="Global batch, split evenly across workers.")
    lr_g: float = Field(2e-4, gt=0.0, description="Generator learning rate (TTUR: may differ from lr_d).")
    lr_d: float = Field(2e-4, gt=0.0, description="Discriminator learning rate.")
    betas_g: tuple[float, float] = Field((0.5, 0.999), description="Adam betas of G.")
    betas_d: tuple[float, float] = Field((0.5, 0.999), description="Adam betas of D.")
    weight_decay: float = Field(0.0, ge=0.0, description="Decoupled (AdamW) weight decay on both networks.")
    d_steps_per_g: int = Field(1, ge=1, description="D (critic) steps per G step; WGAN-GP usually takes 5.")
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0, description="EMA of G's weights; 0 disables averaging.")
    grad_clip: float | None = Field(None, gt=0.0, description="Clip each network's gradient norm to this.")
    target_labels: Literal["uniform", "data"] = Field(
        "uniform", description="Class distribution of the labels G is asked to generate.")
    report_every: int = Field(50, ge=1, description="Steps between metric reports.")
    checkpoint_every: int = Field(500, ge=1, description="Steps between checkpoints.")
    sample_grid_every: int = Field(500, ge=1, description="Steps between sample-grid PNGs sent to MLflow.")
    max_failures: int = Field(1, ge=0, description="Worker-group restarts after a crash.")
    divergence_bound: float = Field(1e4, gt=0.0, description="A loss above this counts as divergence.")
    seed: int = Field(0, description="Base seed; rank r uses seed * world + r.")

    def syncs_every_step(self, device_type: str) -> bool:
        """`sync` resolved for a device type: auto waits every step on CPUs, once per report elsewhere."""
        return self.sync == "step" or (self.sync == "auto" and device_type == "cpu")

    @model_validator(mode="after")
    def _batch_splits_across_workers(self) -> "TrainConfig":
        if self.batch_size < self.num_workers:
            raise ValueError(f"batch_size: {self.batch_size} must be >= num_workers ({self.num_workers}); raise train.batch_size or lower train.num_workers")
        if self.batch_size % self.num_workers:
            raise ValueError(f"batch_size: {self.batch_size} must be divisible by num_workers ({self.num_workers}); raise train.batch_size or lower train.num_workers")
        if self.backend == "nccl" and not self.use_gpu:
            raise ValueError("backend: nccl needs GPUs; set train.use_gpu: true or train.backend: gloo")
        return self


def compile_conflict(train: TrainConfig, loss) -> str | None:
    """Why train.compile cannot run with this loss (a one-line message with the fix), or None."""
    if train.compile == "off":
        return None
    if loss.r1_gamma > 0 or loss.effective_gp_lambda > 0:
        return (f"train.compile: {train.compile} cannot compile the double backward of R1 or the gradient "
                "penalty; set train.compile: off, or loss.r1_gamma: 0 and loss.gp_lambda: 0")
    if train.compile == "reduce-overhead" and not train.use_gpu:
        return "train.compile: reduce-overhead records CUDA graphs; set train.use_gpu: true or train.compile: default"
    return None
