"""Projected Gradient Descent (Madry et al. 2018), L-inf and L2, with a random start."""
from __future__ import annotations

from typing import Callable

import torch


def _l2_normalise(g: torch.Tensor) -> torch.Tensor:
    norms = g.flatten(1).norm(dim=1).clamp_min(1e-12)
    return g / norms.view(-1, *([1] * (g.dim() - 1)))


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project a perturbation batch onto the eps-ball of the given norm."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    factor = (eps / norms).clamp(max=1.0)
    return delta * factor.view(-1, *([1] * (delta.dim() - 1)))


def pgd(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float, steps: int = 10,
        step_size: float | None = None, norm: str = "linf", random_start: bool = True,
        clamp: tuple[float, float] = (-1.0, 1.0), generator: torch.Generator | None = None) -> torch.Tensor:
    """Maximise loss_fn (a scalar) within the eps-ball around x and the valid pixel range."""
    step_size = step_size if step_size is not None else 2.5 * eps / steps
    x = x.detach()
    delta = torch.zeros_like(x)
    if random_start and eps > 0:
        noise = torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1
        delta = project(noise * eps, eps, norm)
    delta = (x + delta).clamp(*clamp) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(x + delta), delta)
        step = grad.sign() if norm == "linf" else _l2_normalise(grad)
        delta = project(delta.detach() + step_size * step, eps, norm)
        delta = (x + delta).clamp(*clamp) - x
    return (x + delta).detach()
