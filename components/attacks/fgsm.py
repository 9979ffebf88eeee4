"""Fast Gradient Sign Method (Goodfellow et al. 2015), L-inf."""
from __future__ import annotations

from typing import Callable

import torch


def fgsm(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float,
         clamp: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """x + eps * sign(grad_x loss_fn(x)), clipped to the valid pixel range. loss_fn returns a scalar."""
    x_adv = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_fn(x_adv), x_adv)
    return (x + eps * grad.sign()).clamp(*clamp).detach()
