"""EAD: elastic-net attack (Chen et al. 2018), solved with ISTA.

Maximises c * loss(x + d) - ||d||_2^2 - beta * ||d||_1: a gradient step on the smooth part, then the L1
proximal step (soft thresholding), which sets small coordinates exactly to zero, so perturbations are
sparse. Clipped to the valid pixel range.
"""
from __future__ import annotations

from typing import Callable

import torch


def soft_threshold(z: torch.Tensor, t: float) -> torch.Tensor:
    """prox of t * ||.||_1: sign(z) * max(|z| - t, 0)."""
    return z.sign() * (z.abs() - t).clamp_min(0.0)


def ead(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, c: float = 1.0, beta: float = 1e-2,
        steps: int = 50, lr: float = 1e-2, clamp: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """The elastic-net adversarial example of x for loss_fn (a scalar to maximise)."""
    x = x.detach()
    delta = torch.zeros_like(x)
    for _ in range(steps):
        delta.requires_grad_(True)
        smooth = -c * loss_fn(x + delta) + delta.pow(2).sum()
        (grad,) = torch.autograd.grad(smooth, delta)
        delta = soft_threshold(delta.detach() - lr * grad, lr * beta)
        delta = (x + delta).clamp(*clamp) - x
    return (x + delta).detach()
