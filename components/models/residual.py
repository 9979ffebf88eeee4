"""The residual family (`model.family: resnet`): SNGAN/BigGAN-style blocks at 32 and 64 px.

G keeps the source document's contract, an encoder-decoder trained with MSE reconstruction plus the
adversarial loss, so the loss and the loop are the same for both families:
- the decoder starts from z at 4x4 and upsamples with residual blocks whose batch norms are class-conditional
  (a per-class gain and bias, as in BigGAN), which is where the label enters;
- the encoder is a residual downsampling stack to the posterior (mu, logvar), like the seed family's.
D is residual downsampling blocks to 4x4, ReLU, sum-pooling, a linear logit and a projection term
(Miyato & Koyama 2018), or an auxiliary classifier head.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from components.models.generator import EncoderDecoder


def levels(resolution: int) -> int:
    """Number of 2x steps between 4x4 and `resolution` (32 -> 3, 64 -> 4)."""
    n = int(math.log2(resolution / 4)) if resolution >= 8 else 0
    if n < 1 or 4 * 2 ** n != resolution:
        raise ValueError(f"resolution must be 4 * 2^k with k >= 1, got {resolution}")
    return n


def widths(base: int, n: int) -> list[int]:
    """Channels at each scale from full resolution (index 0) down to 4x4 (index n): base, 2 base, 4 base, 4 base..."""
    return [base * min(4, 2 ** i) for i in range(n + 1)]


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm without its own affine, then a per-class gain (1 + g_y) and bias b_y.

    g and b start at zero, so every class starts from plain batch norm; their rows are the class-specific
    parameters that group spectral regularisation (components.regularizers.group_spectral_penalty) watches.
    With normalise=False (model.g_norm: none) only the class affine remains."""

    def __init__(self, channels: int, num_classes: int, normalise: bool = True):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False) if normalise else nn.Identity()
        self.gain = nn.Embedding(num_classes, channels)
        self.bias = nn.Embedding(num_classes, channels)
        nn.init.zeros_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x_bchw: torch.Tensor, y_b: torch.Tensor) -> torch.Tensor:
        gain, bias = 1.0 + self.gain(y_b), self.bias(y_b)
        return self.norm(x_bchw) * gain[:, :, None, None] + bias[:, :, None, None]


class UpBlock(nn.Module):
    """CBN-ReLU-up-conv3-CBN-ReLU-conv3, plus an upsampled 1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int, num_classes: int, normalise: bool):
        super().__init__()
        self.bn1 = ConditionalBatchNorm2d(c_in, num_classes, normalise)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.bn2 = ConditionalBatchNorm2d(c_out, num_classes, normalise)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, y)), scale_factor=2.0, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), y)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DownBlock(nn.Module):
    """(ReLU-)conv3-ReLU-conv3-avgpool, plus a 1x1 shortcut; the first block of a stack takes raw pixels,
    so it has no leading ReLU and pools before its shortcut conv (SNGAN's "optimised" block)."""

    def __init__(self, c_in: int, c_out: int, first: bool, wrap=lambda m: m):
        super().__init__()
        self.first = first
        self.conv1 = wrap(nn.Conv2d(c_in, c_out, 3, 1, 1))
        self.conv2 = wrap(nn.Conv2d(c_out, c_out, 3, 1, 1))
        self.shortcut = wrap(nn.Conv2d(c_in, c_out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)
        h = F.avg_pool2d(self.conv2(F.relu(self.conv1(h))), 2)
        skip = self.shortcut(F.avg_pool2d(x, 2)) if self.first else F.avg_pool2d(self.shortcut(x), 2)
        return h + skip


def down_stack(channels: int, base: int, n: int, wrap=lambda m: m) -> nn.Sequential:
    """n residual blocks from (channels, 4 * 2^n, 4 * 2^n) to (down_width(base, n), 4, 4): block i halves the
    size and outputs widths(base, n)[i]."""
    w_out = widths(base, n)[:n]
    w_in = [channels, *w_out[:-1]]
    return nn.Sequential(*(DownBlock(w_in[i], w_out[i], i == 0, wrap) for i in range(n)))


def down_width(base: int, n: int) -> int:
    """Channels that leave down_stack at 4x4."""
    return widths(base, n)[n - 1]


class ResidualGenerator(EncoderDecoder):
    """The residual decoder and encoder behind the seed family's interface (encode, generate, reconstruct, forward)."""

    def __init__(self, channels: int, resolution: int, num_classes: int, base: int = 32, z_dim: int = 64,
                 norm: str = "batch"):
        super().__init__()
        n = levels(resolution)
        self.channels, self.resolution, self.num_classes, self.z_dim = channels, resolution, num_classes, z_dim
        w = widths(base, n)
        self.top = w[-1]
        self.encoder = nn.Sequential(down_stack(channels, base, n), nn.ReLU(), nn.Flatten())
        self.to_posterior = nn.Linear(down_width(base, n) * 16, 2 * z_dim)
        self.from_latent = nn.Linear(z_dim, self.top * 16)
        self.blocks = nn.ModuleList(UpBlock(w[i + 1], w[i], num_classes, norm == "batch") for i in reversed(range(n)))
        self.out_norm = nn.BatchNorm2d(w[0]) if norm == "batch" else nn.Identity()
        self.to_image = nn.Conv2d(w[0], channels, 3, 1, 1)

    def class_tables(self) -> list[torch.Tensor]:
        """The class-specific parameter tables, each (num_classes, width): every conditional gain and bias."""
        return [t.weight for b in self.blocks for t in (b.bn1.gain, b.bn1.bias, b.bn2.gain, b.bn2.bias)]

    def generate(self, z_bz: torch.Tensor, y_b: torch.Tensor) -> torch.Tensor:
        h = self.from_latent(z_bz).view(len(z_bz), self.top, 4, 4)
        for block in self.blocks:
            h = block(h, y_b)
        return torch.tanh(self.to_image(F.relu(self.out_norm(h))))


class ResidualDiscriminator(nn.Module):
    """Same interface as components.models.discriminator.Discriminator: logits (B,), or with
    with_classes=True and an auxiliary head, (logits, class logits)."""

    def __init__(self, channels: int, resolution: int, num_classes: int, base: int = 32, norm: str = "spectral",
                 conditioning: str = "projection"):
        super().__init__()
        if conditioning not in ("projection", "auxiliary"):
            raise ValueError(f"conditioning must be projection or auxiliary, got {conditioning!r}")
        if norm == "batch":
            raise ValueError("the residual discriminator takes d_norm spectral or none (batch norm in D is the "
                             "seed family's option)")
        self.conditioning = conditioning
        n = levels(resolution)
        wrap = spectral_norm if norm == "spectral" else (lambda m: m)
        self.features = down_stack(channels, base, n, wrap)
        top = down_width(base, n)
        self.head = wrap(nn.Linear(top, 1))
        if conditioning == "projection":
            self.projection = wrap(nn.Embedding(num_classes, top))
        else:
            self.classifier = wrap(nn.Linear(top, num_classes))

    def forward(self, x_bchw: torch.Tensor, y_b: torch.Tensor, with_classes: bool = False):
        pooled = F.relu(self.features(x_bchw)).sum(dim=(2, 3))
        logit = self.head(pooled).flatten()
        if self.conditioning == "projection":
            return logit + (self.projection(y_b) * pooled).sum(dim=1)
        return (logit, self.classifier(pooled)) if with_classes else logit
