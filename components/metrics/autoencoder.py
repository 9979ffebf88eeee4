"""The second feature space: the bottleneck of a small convolutional autoencoder trained on the real
training split.

Why a second space: the evaluator classifier is trained to tell classes apart, so its features are built to
ignore how the images of one class differ (stroke, thickness, position, colour). A Fréchet distance or k-NN
metric computed on them barely moves when a class collapses to one image. An autoencoder has to reconstruct
every image, so its bottleneck keeps exactly that variation. It is trained like the evaluator: once per
(data digest, steps, seed), offline, on CPU in seconds for the bundled data, class-balanced so the tail
classes are learnt too, and cached beside the evaluator.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from components.data.reader import SplitTensors, sampling_probs
from components.metrics.model_cache import cached_module


class FeatureAutoencoder(nn.Module):
    """Three stride-2 convolutions to a `feature_dim` bottleneck, and their mirror image back to pixels."""

    def __init__(self, channels: int, resolution: int, feature_dim: int = 64):
        super().__init__()
        side = resolution // 8
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, 32, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(64, 128, 4, 2, 1), nn.ReLU(),
            nn.Flatten(), nn.Linear(128 * side * side, feature_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(feature_dim, 128 * side * side), nn.ReLU(), nn.Unflatten(1, (128, side, side)),
            nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(32, channels, 4, 2, 1), nn.Tanh(),
        )

    def features(self, x_bchw: torch.Tensor) -> torch.Tensor:
        """(B, feature_dim) bottleneck codes."""
        return self.encoder(x_bchw)

    def forward(self, x_bchw: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x_bchw))


def train_autoencoder(data: SplitTensors, num_classes: int, steps: int, seed: int,
                      batch: int = 64) -> FeatureAutoencoder:
    """MSE reconstruction on class-balanced batches."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    _, c, h, _ = data.images_u8.shape
    model = FeatureAutoencoder(c, h)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    probs = sampling_probs(data.labels, num_classes, "resample")
    x_all = data.images_float()
    for _ in range(steps):
        x = x_all[torch.multinomial(probs, batch, replacement=True, generator=gen)]
        loss = F.mse_loss(model(x), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def encode(model: FeatureAutoencoder, x_bchw: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """(N, feature_dim) codes, in batches."""
    return torch.cat([model.features(x_bchw[i:i + batch]) for i in range(0, len(x_bchw), batch)])


@torch.no_grad()
def reconstruction_mse(model: FeatureAutoencoder, x_bchw: torch.Tensor) -> float:
    """Mean squared reconstruction error on x: how much of the images the codes keep."""
    return float(F.mse_loss(model(x_bchw), x_bchw))


def cached_autoencoder(cache_dir: Path, digest: str, data: SplitTensors, num_classes: int, steps: int,
                       seed: int) -> FeatureAutoencoder:
    """Train the autoencoder once per (data digest, steps, seed); later runs load it."""
    key = hashlib.sha256(f"{digest}:{steps}:{seed}:autoencoder-v1".encode()).hexdigest()[:16]
    _, c, h, _ = data.images_u8.shape
    return cached_module(Path(cache_dir) / f"autoencoder-{key}.pt", FeatureAutoencoder(c, h),
                         lambda: train_autoencoder(data, num_classes, steps, seed),
                         f"the feature autoencoder on real data ({steps} steps)")
