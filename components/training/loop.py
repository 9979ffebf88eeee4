"""train_steps: the schedule of D and G steps, EMA, divergence checks and reporting. No Ray, no MLflow.

A step never waits for the device on its own account: its statistics stay device tensors until
`train_steps` reads a window of them back in one transfer (every step on CPUs, where reading is free; once
per report on GPUs, see TrainConfig.sync), and divergence is judged on what was read back."""
from __future__ import annotations

import contextlib
import math
import time
from typing import Callable

import torch
import torch.distributed as dist

from components import regularizers
from components.losses import Batch, GANLoss
from components.training.config import TrainConfig
from components.training.state import GanState

ReportFn = Callable[[GanState, dict[str, float]], None]


def _grad_norm(module: torch.nn.Module, clip: float | None) -> torch.Tensor:
    params = [p for p in module.parameters() if p.grad is not None]
    if clip is not None:
        return torch.nn.utils.clip_grad_norm_(params, clip)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))


@contextlib.contextmanager
def _frozen_and_unsynced(D: torch.nn.Module):
    """During the G step: no grads for D's weights, and no DDP all-reduce of D (its grads are discarded)."""
    D.requires_grad_(False)
    try:
        with (D.no_sync() if hasattr(D, "no_sync") else contextlib.nullcontext()):
            yield
    finally:
        D.requires_grad_(True)


def next_batch(state: GanState) -> Batch:
    """Real batch from the sampler, plus noise, target labels and reparameterisation noise drawn for the
    global batch from the shared generator and sliced to this rank (so DDP matches one big batch)."""
    x, y, w = state.sampler.next_batch()
    n, z_dim = len(x), state.G_ema.z_dim
    mine = slice(state.rank * n, (state.rank + 1) * n)
    z = torch.randn(n * state.world, z_dim, generator=state.noise)[mine]
    y_fake = torch.multinomial(state.label_probs, n * state.world, replacement=True, generator=state.noise)[mine]
    eps = torch.randn(n * state.world, z_dim, generator=state.noise)[mine]
    return Batch(*(to_device(t, state.device) for t in (x, y, w, z, y_fake, eps)))


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a host tensor to the device without making the host wait: a copy from pageable memory waits for
    the stream, one from pinned memory is queued. Tensors already there pass through."""
    if t.device == device:
        return t
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


@torch.no_grad()
def update_ema(G_ema: torch.nn.Module, G: torch.nn.Module, decay: float) -> None:
    """G_ema <- decay * G_ema + (1 - decay) * G; buffers (BN statistics) are copied."""
    src = getattr(G, "module", G)
    for p_ema, p in zip(G_ema.parameters(), src.parameters()):
        p_ema.lerp_(p, 1.0 - decay)
    for b_ema, b in zip(G_ema.buffers(), src.buffers()):
        b_ema.copy_(b)


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def read_back(pending: list[dict[str, torch.Tensor]]) -> list[dict[str, float]]:
    """Per-step device statistics as host floats, in one device-to-host transfer for the whole window."""
    keys = [list(row) for row in pending]
    flat = [v.detach().reshape(()).float() for row in pending for v in row.values()]
    values = iter(torch.stack(flat).tolist()) if flat else iter(())
    return [{k: next(values) for k in row_keys} for row_keys in keys]


def _mean_across_ranks(values: dict[str, float]) -> dict[str, float]:
    if _world() == 1:
        return values
    keys = sorted(values)
    # NCCL reduces device tensors only; gloo reduces host tensors.
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, (t / _world()).tolist()))


def _autocast(state: GanState, cfg: TrainConfig):
    if cfg.precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float16
    return torch.autocast(state.device.type, dtype=dtype)


def _backward_and_step(loss_value: torch.Tensor, opt: torch.optim.Optimizer, module: torch.nn.Module,
                       cfg: TrainConfig, scaler: torch.amp.GradScaler | None) -> torch.Tensor:
    """Backward, (unscale,) measure or clip the gradient norm, step; returns the pre-clip norm (on the
    device). fp16's GradScaler reads its inf check back every step; bf16 needs no scaler."""
    if scaler is None:
        loss_value.backward()
        norm = _grad_norm(module, cfg.grad_clip)
        opt.step()
        return norm
    scaler.scale(loss_value).backward()
    scaler.unscale_(opt)  # clip and measure true gradients, not scaled ones
    norm = _grad_norm(module, cfg.grad_clip)
    scaler.step(opt)
    return norm


def _schedule(state: GanState, loss: GANLoss, d_step: int) -> dict:
    """This D step's instance-noise std, whether lazy R1 is due, and the augmentation probability (the loop
    owns the schedule)."""
    lc = loss.cfg
    return {"noise_std": regularizers.instance_noise_std(lc.instance_noise, lc.instance_noise_steps, state.step),
            "r1_due": d_step % lc.r1_every == 0, "aug_p": state.ada_p}


def _adapt_augmentation(state: GanState, loss: GANLoss, cfg: TrainConfig) -> None:
    """ADA's controller, on the device: every `ada_interval` steps, move p by batch * interval / (ada_kimg *
    1000) so that r_t, the mean of sign D(real) over the D steps since the last move, heads for `ada_target`.
    Every rank takes the same D steps, so pooling the ranks' sums keeps one p on all of them."""
    lc = loss.cfg
    if (state.step + 1) % lc.ada_interval:
        return
    total = state.ada_sign_sum
    if _world() > 1:
        total = total.clone()
        dist.all_reduce(total)
    step = cfg.batch_size * lc.ada_interval / (lc.ada_kimg * 1000)
    state.ada_p = regularizers.ada_adjust(state.ada_p, total / (state.ada_count * _world()), lc.ada_target, step)
    state.ada_sign_sum, state.ada_count = torch.zeros_like(state.ada_sign_sum), 0


def _private_step(state: GanState, loss: GANLoss, d_loss: torch.Tensor, batch: Batch) -> torch.Tensor:
    """D's DP-SGD step: backward, then the mechanism clips, sums and noises each row's own gradient."""
    d_loss.backward()
    norm = state.dp.privatise(state.D, loss.d_row_denominators(batch))
    state.opt_d.step()
    return norm


def one_step(state: GanState, loss: GANLoss, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """`d_steps_per_g` D steps, then one G step on the last batch; returns this rank's statistics as 0-d
    device tensors (reading them here would make the host wait for the device every step)."""
    if cfg.compile == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()  # this step may overwrite the last one's graph outputs
    adaptive = loss.cfg.ada_target is not None
    if adaptive and state.ada_p is None:
        state.ada_p = torch.zeros((), dtype=torch.float64, device=state.device)
        state.ada_sign_sum = torch.zeros((), dtype=torch.float64, device=state.device)
    for i in range(cfg.d_steps_per_g):
        batch = next_batch(state)
        for key, value in _schedule(state, loss, state.step * cfg.d_steps_per_g + i).items():
            setattr(batch, key, value)
        state.opt_d.zero_grad(set_to_none=True)
        with _autocast(state, cfg):
            d_loss, d_stats = loss.d_loss(state.G, state.D, batch)
        if state.dp is not None:
            gn_d = _private_step(state, loss, d_loss, batch)
        else:
            gn_d = _backward_and_step(d_loss, state.opt_d, state.D, cfg, state.scaler)
        if adaptive:
            state.ada_sign_sum = state.ada_sign_sum + d_stats["d_sign_real"].double()
            state.ada_count += 1

    state.opt_g.zero_grad(set_to_none=True)
    with _frozen_and_unsynced(state.D), (state.dp.hooks_paused() if state.dp else contextlib.nullcontext()):
        with _autocast(state, cfg):
            g_loss, g_stats = loss.g_loss(state.G, state.D, batch)
        gn_g = _backward_and_step(g_loss, state.opt_g, state.G, cfg, state.scaler)
    if state.scaler is not None:
        state.scaler.update()
    if adaptive:
        g_stats["ada_p"] = state.ada_p  # the p this step trained with
        _adapt_augmentation(state, loss, cfg)
    # Ramp the EMA decay so early averages are not dominated by the random initialisation.
    update_ema(state.G_ema, state.G, min(cfg.ema_decay, (1 + state.step) / (10 + state.step)))
    return {**d_stats, **g_stats, "grad_norm_d": gn_d, "grad_norm_g": gn_g}


def _is_divergent(stats: dict[str, float], bound: float) -> bool:
    return any(not math.isfinite(v) for v in stats.values()) or max(abs(stats["d_loss"]), abs(stats["g_loss"])) > bound


def train_steps(state: GanState, loss: GANLoss, cfg: TrainConfig, until_step: int,
                on_report: ReportFn | None = None) -> GanState:
    """Run steps until `state.step == until_step` (or divergence), reporting every `cfg.report_every`.

    Statistics are read back every step or once per report (TrainConfig.syncs_every_step); a divergence is seen
    when they are, so with per-report reads a diverging run stops at the end of that report's window."""
    every_step = cfg.syncs_every_step(state.device.type)
    window: dict[str, list[float]] = {}
    pending: list[dict[str, torch.Tensor]] = []
    t0, images = time.perf_counter(), 0
    t_read = t0
    while state.step < until_step and not state.diverged:
        pending.append(one_step(state, loss, cfg))
        state.step += 1
        images += cfg.batch_size
        report_due = state.step % cfg.report_every == 0 or state.step == until_step
        if not (every_step or report_due):
            continue
        rows = read_back(pending)
        # In the trace for robust (median) speed figures; a window read at once shares its mean step time.
        step_time = (time.perf_counter() - t_read) / len(rows)
        pending, t_read = [], time.perf_counter()
        for stats in rows:
            stats["step_time_s"] = step_time
            for k, v in stats.items():
                state.trace.setdefault(k, []).append(v)
                window.setdefault(k, []).append(v)
            state.diverged = state.diverged or _is_divergent(stats, cfg.divergence_bound)
        if report_due or state.diverged:
            # Section: reporting (all ranks join the all-reduce, then the caller's hook).
            elapsed = time.perf_counter() - t0
            means = _mean_across_ranks({k: sum(v) / len(v) for k, v in window.items()})
            means.update(lr_g=state.opt_g.param_groups[0]["lr"], lr_d=state.opt_d.param_groups[0]["lr"],
                         images_per_s=images / max(elapsed, 1e-9), step=state.step, diverged=float(state.diverged))
            if state.dp is not None:  # epsilon so far, at the run's delta (one rank: no all-reduce needed)
                means.update(epsilon=state.dp.epsilon(), delta=state.dp.delta)
            if on_report is not None:
                on_report(state, means)
            window, t0, images = {}, time.perf_counter(), 0
            t_read = t0
    return state
