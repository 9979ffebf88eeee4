"""The source document's encoder-decoder generator, with padding fixed and a class-conditional latent.

Two uses share one decoder:
- reconstruction G(x) = Dec(Enc(x), y), as in the document;
- generation Dec(z, y) with z ~ N(0, I), which is what creates new minority-class samples.
The encoder outputs a Gaussian posterior (mu, logvar) so a KL term can pull it towards the prior.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def _down(c_in: int, c_out: int) -> nn.Module:
    # 4x4 stride 2 with padding 1 halves the size exactly (the document forgot the padding).
    return nn.Sequential(nn.Conv2d(c_in, c_out, 4, 2, 1), nn.ReLU())


def _up(c_in: int, c_out: int, norm: str) -> nn.Module:
    layers = [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1)]
    if norm == "batch":
        layers.append(nn.BatchNorm2d(c_out))
    return nn.Sequential(*layers, nn.ReLU())


class EncoderDecoder(nn.Module):
    """The document's contract, shared by both model families: an encoder to a Gaussian posterior and a
    class-conditional decoder. Subclasses set `encoder`, `to_posterior` and `generate`."""

    def encode(self, x_bchw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance, each (B, z_dim)."""
        mu, logvar = self.to_posterior(self.encoder(x_bchw)).chunk(2, dim=1)
        return mu, logvar.clamp(-10.0, 10.0)

    def reconstruct(self, x_bchw: torch.Tensor, y_b: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction Dec(mu(x), y)."""
        mu, _ = self.encode(x_bchw)
        return self.generate(mu, y_b)

    def forward(self, x_bchw: torch.Tensor, y_b: torch.Tensor, z_bz: torch.Tensor, y_fake_b: torch.Tensor,
                eps_bz: torch.Tensor | None = None):
        """Both uses in one decoder pass (one DDP forward): (reconstruction, samples, mu, logvar).

        eps_bz is the reparameterisation noise; pass it to make the step a pure function of its inputs."""
        mu, logvar = self.encode(x_bchw)
        eps = torch.randn_like(mu) if eps_bz is None else eps_bz
        z_post = mu + eps * (0.5 * logvar).exp()
        out = self.generate(torch.cat([z_post, z_bz]), torch.cat([y_b, y_fake_b]))
        rec, fake = out.split([len(x_bchw), len(z_bz)])
        return rec, fake, mu, logvar


class Generator(EncoderDecoder):
    """Encoder (Conv 4x4/2 x3 -> z) and decoder (ConvTranspose x3), output size = input size."""

    def __init__(self, channels: int, resolution: int, num_classes: int, base: int = 64, z_dim: int = 64,
                 norm: str = "batch"):
        super().__init__()
        if resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8, got {resolution}")
        self.channels, self.resolution, self.num_classes, self.z_dim = channels, resolution, num_classes, z_dim
        self.bottom = resolution // 8  # spatial size after three stride-2 convs
        feat = 4 * base * self.bottom * self.bottom
        self.encoder = nn.Sequential(_down(channels, base), _down(base, 2 * base), _down(2 * base, 4 * base),
                                     nn.Flatten())
        self.to_posterior = nn.Linear(feat, 2 * z_dim)
        self.label_embedding = nn.Embedding(num_classes, z_dim)
        self.from_latent = nn.Linear(2 * z_dim, feat)
        self.decoder = nn.Sequential(
            _up(4 * base, 2 * base, norm), _up(2 * base, base, norm),
            nn.ConvTranspose2d(base, channels, 4, 2, 1), nn.Tanh(),
        )

    def class_tables(self) -> list[torch.Tensor]:
        """The class-specific parameter tables, each (num_classes, width): here the label embedding."""
        return [self.label_embedding.weight]

    def generate(self, z_bz: torch.Tensor, y_b: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [-1, 1] from latents and class labels."""
        h = self.from_latent(torch.cat([z_bz, self.label_embedding(y_b)], dim=1))
        h = torch.relu(h).view(len(z_bz), -1, self.bottom, self.bottom)
        return self.decoder(h)
