"""Everything a GAN run carries between steps, and how to build it for one rank."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from components.data.reader import BatchSampler, PoissonSampler, SplitTensors
from components.models import ModelConfig, build_models
from components.privacy.config import PrivacyConfig
from components.privacy.dp_sgd import DPSGD
from components.training.config import TrainConfig


@dataclass
class GanState:
    """Networks, optimisers, samplers and the per-step trace of one rank."""

    G: nn.Module
    D: nn.Module
    G_ema: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    sampler: BatchSampler
    noise: torch.Generator
    num_classes: int
    label_probs: torch.Tensor
    device: torch.device = torch.device("cpu")
    rank: int = 0
    world: int = 1
    step: int = 0
    diverged: bool = False
    trace: dict[str, list[float]] = field(default_factory=dict)
    scaler: torch.amp.GradScaler | None = None  # fp16 only; bf16 and fp32 need no loss scaling
    # Adaptive augmentation: p, and the sum and count of sign D(real) since p last moved (float64 device
    # tensors, so a checkpoint's Python floats restore them exactly). None while ADA is off.
    ada_p: torch.Tensor | None = None
    ada_sign_sum: torch.Tensor | None = None
    ada_count: int = 0
    dp: DPSGD | None = None  # DP-SGD on D (privacy.enabled): per-sample hooks, noise and the accountant


def make_state(model_cfg: ModelConfig, cfg: TrainConfig, data: SplitTensors, num_classes: int,
               rebalance: str, class_weights: list[float] | None, rank: int = 0, world: int = 1,
               wrap: Callable[[nn.Module], nn.Module] = lambda m: m,
               device: torch.device = torch.device("cpu"), shared_data: bool = True,
               privacy: PrivacyConfig | None = None) -> GanState:
    """Seed rank `rank`, build G, D, EMA-G and optimisers; `wrap` adds DDP at the Ray edge.

    shared_data: every rank holds the whole split (global batches sliced per rank) rather than a shard."""
    seed = cfg.seed * world + rank
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    _, c, h, _ = data.images_u8.shape
    G, D = build_models(model_cfg, c, h, num_classes)
    if cfg.channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False).to(device)
    torch.manual_seed(seed)  # per-rank stream for reparameterisation noise
    if cfg.compile != "off":
        compile_networks(G, D, cfg.compile)
    G, D = wrap(G), wrap(D)
    opt_g = torch.optim.AdamW(G.parameters(), lr=cfg.lr_g, betas=cfg.betas_g, weight_decay=cfg.weight_decay)
    opt_d = torch.optim.AdamW(D.parameters(), lr=cfg.lr_d, betas=cfg.betas_d, weight_decay=cfg.weight_decay)
    per_rank = cfg.batch_size // world
    private = privacy is not None and privacy.enabled
    sampler = (PoissonSampler if private else BatchSampler)(data, num_classes, rebalance, class_weights, per_rank,
                                                            cfg.seed, rank, world, shared=shared_data)
    if not cfg.syncs_every_step(device.type):
        sampler.to(device)
    counts = torch.bincount(data.labels, minlength=num_classes).float()
    label_probs = torch.full((num_classes,), 1.0 / num_classes) if cfg.target_labels == "uniform" else counts / counts.sum()
    noise = torch.Generator().manual_seed(cfg.seed + 7919)  # shared: global noise batches, sliced per rank
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    dp = DPSGD(D, privacy, sampler, cfg.steps * cfg.d_steps_per_g, cfg.seed) if private else None
    return GanState(G, D, G_ema, opt_g, opt_d, sampler, noise, num_classes, label_probs, device, rank, world,
                    scaler=scaler, dp=dp)


def compile_networks(G: nn.Module, D: nn.Module, mode: str) -> None:
    """torch.compile G's and D's forwards, and G's sampling path, in place: parameter names and state dicts
    stay those of the eager modules, so checkpoints are interchangeable between compiled and eager runs."""
    G.compile(mode=mode)
    D.compile(mode=mode)
    G.generate = torch.compile(G.generate, mode=mode)


def apply_hyperparameters(state: GanState, cfg: TrainConfig) -> None:
    """Re-apply optimiser settings after a restore, so the config's (possibly mutated) values win over the
    ones saved in the optimiser state. Ray's PBT-DCGAN example misses this and keeps the saved lr."""
    for opt, lr, betas in ((state.opt_g, cfg.lr_g, cfg.betas_g), (state.opt_d, cfg.lr_d, cfg.betas_d)):
        for group in opt.param_groups:
            group.update(lr=lr, betas=tuple(betas), weight_decay=cfg.weight_decay)
