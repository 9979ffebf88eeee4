"""The source document's conv discriminator, one logit per image, with projection conditioning.

Conv 4x4/2 + norm + LeakyReLU(0.2) until 4x4, then the document's final 4x4 conv to 1x1. The document's
five layers fit 64x64; at 32x32 one downsampling layer fewer keeps the 4x4 head. No sigmoid: losses
take logits, which is stable and safe under autocast.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import spectral_norm


def _maybe_sn(layer: nn.Module, norm: str) -> nn.Module:
    return spectral_norm(layer) if norm == "spectral" else layer


class Discriminator(nn.Module):
    """Real/fake logit for (image, label) pairs.

    conditioning="projection" (Miyato & Koyama 2018): logit = head(h) + <embed(y), sum_hw(h)>.
    conditioning="auxiliary" (AC-GAN, Odena et al. 2017): logit = head(h), plus class logits from sum_hw(h)
    when asked for with `with_classes=True` (a forward kwarg, so DDP still sees one forward)."""

    def __init__(self, channels: int, resolution: int, num_classes: int, base: int = 64, norm: str = "batch",
                 conditioning: str = "projection"):
        super().__init__()
        if conditioning not in ("projection", "auxiliary"):
            raise ValueError(f"conditioning must be projection or auxiliary, got {conditioning!r}")
        self.conditioning = conditioning
        n_down = int(math.log2(resolution // 4))  # 32 -> 3, 64 -> 4 (the document's layout)
        if 4 * 2 ** n_down != resolution:
            raise ValueError(f"resolution must be 4 * 2^k, got {resolution}")
        layers: list[nn.Module] = [_maybe_sn(nn.Conv2d(channels, base, 4, 2, 1), norm), nn.LeakyReLU(0.2)]
        width = base
        for _ in range(n_down - 1):
            layers.append(_maybe_sn(nn.Conv2d(width, 2 * width, 4, 2, 1), norm))
            if norm == "batch":
                layers.append(nn.BatchNorm2d(2 * width))
            layers.append(nn.LeakyReLU(0.2))
            width *= 2
        self.features = nn.Sequential(*layers)
        self.head = _maybe_sn(nn.Conv2d(width, 1, 4, 1, 0), norm)
        if conditioning == "projection":
            self.projection = _maybe_sn(nn.Embedding(num_classes, width), norm)
        else:
            self.classifier = _maybe_sn(nn.Linear(width, num_classes), norm)

    def forward(self, x_bchw: torch.Tensor, y_b: torch.Tensor, with_classes: bool = False):
        """Logits (B,); with with_classes=True, (logits (B,), class logits (B, K)) for an auxiliary D."""
        h = self.features(x_bchw)  # (B, W, 4, 4)
        logit = self.head(h).flatten()
        pooled = h.sum(dim=(2, 3))
        if self.conditioning == "projection":
            return logit + (self.projection(y_b) * pooled).sum(dim=1)
        return (logit, self.classifier(pooled)) if with_classes else logit
