"""GAN maths: the D step and the G step, regularisers included. The training loop only schedules them.

The document's objective for G is  lambda_rec * MSE(G(x), x) + lambda_adv * BCE(D(G(x)), real).
We add the same adversarial term on samples Dec(z, y) from noise, and a KL term that keeps the
encoder's posterior near N(0, I) so that sampling z works. Every term takes per-sample weights, so
`reweight` rebalancing reaches both D and G.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from components.config_base import Section


class LossConfig(Section):
    """Objective and loss weights."""

    objective: Literal["bce", "hinge", "lsgan"] = Field("bce", description="Adversarial objective on logits.")
    lambda_rec: float = Field(1.0, ge=0.0, description="Weight of MSE(G(x), x), the document's reconstruction.")
    lambda_adv: float = Field(1.0, ge=0.0, description="Weight of the adversarial term for G.")
    lambda_kl: float = Field(0.05, ge=0.0, description="Weight of KL(q(z|x) || N(0, I)).")
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="One-sided: real targets become 1 - s.")


def _wmean(values_b: torch.Tensor, w_b: torch.Tensor) -> torch.Tensor:
    return (values_b * w_b).sum() / w_b.sum()


def d_adversarial(objective: str, real_logits: torch.Tensor, fake_logits: torch.Tensor, smoothing: float = 0.0):
    """Per-sample D losses (real, fake)."""
    if objective == "bce":
        real = F.binary_cross_entropy_with_logits(
            real_logits, torch.full_like(real_logits, 1.0 - smoothing), reduction="none")
        fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits), reduction="none")
    elif objective == "hinge":
        real, fake = F.relu(1.0 - real_logits), F.relu(1.0 + fake_logits)
    elif objective == "lsgan":
        real, fake = (real_logits - (1.0 - smoothing)) ** 2, fake_logits ** 2
    else:
        raise ValueError(f"unknown objective {objective!r}")
    return real, fake


def g_adversarial(objective: str, fake_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample G losses: make D call fakes real (non-saturating for BCE)."""
    if objective == "bce":
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits), reduction="none")
    if objective == "hinge":
        return -fake_logits
    if objective == "lsgan":
        return (fake_logits - 1.0) ** 2
    raise ValueError(f"unknown objective {objective!r}")


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(N(mu, exp(logvar)) || N(0, I)), summed over latent dims and divided by z_dim."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).mean(dim=1)


@dataclass
class Batch:
    """One step's inputs: real x (B,C,H,W), labels y (B,), weights w (B,), noise z (B',Z), labels y_fake (B'),
    and eps (B,Z), the reparameterisation noise of the encoder's posterior (None: drawn inside G)."""

    x: torch.Tensor
    y: torch.Tensor
    w: torch.Tensor
    z: torch.Tensor
    y_fake: torch.Tensor
    eps: torch.Tensor | None = None


class GANLoss:
    """Owns every G and D forward pass of a step; returns the loss to backprop and detached statistics."""

    def __init__(self, cfg: LossConfig):
        self.cfg = cfg

    def d_loss(self, G, D, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """D on cat(real, fake) in one forward: one BN pass and one DDP buffer broadcast, no in-place clash."""
        with torch.no_grad():
            fake = _unwrap(G).generate(batch.z, batch.y_fake)
        logits = D(torch.cat([batch.x, fake]), torch.cat([batch.y, batch.y_fake]))
        real_l, fake_l = logits.split([len(batch.x), len(fake)])
        loss_real, loss_fake = d_adversarial(self.cfg.objective, real_l, fake_l, self.cfg.label_smoothing)
        loss = _wmean(loss_real, batch.w) + loss_fake.mean()
        stats = {
            "d_loss": loss.detach(),
            "d_real": torch.sigmoid(real_l.detach()).mean(),
            "d_fake": torch.sigmoid(fake_l.detach()).mean(),
            "d_acc_real": (real_l.detach() > 0).float().mean(),
            "d_acc_fake": (fake_l.detach() < 0).float().mean(),
            "d_sign_real": torch.sign(real_l.detach()).mean(),
        }
        return loss, stats

    def g_loss(self, G, D, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """lambda_rec * MSE + lambda_adv * adversarial (reconstructions and samples) + lambda_kl * KL."""
        rec, fake, mu, logvar = G(batch.x, batch.y, batch.z, batch.y_fake, batch.eps)
        logits = D(torch.cat([rec, fake]), torch.cat([batch.y, batch.y_fake]))
        rec_l, fake_l = logits.split([len(rec), len(fake)])
        adv = 0.5 * (_wmean(g_adversarial(self.cfg.objective, rec_l), batch.w)
                     + g_adversarial(self.cfg.objective, fake_l).mean())
        rec_loss = _wmean((rec - batch.x).pow(2).flatten(1).mean(dim=1), batch.w)
        kl = _wmean(kl_to_standard_normal(mu, logvar), batch.w)
        loss = self.cfg.lambda_rec * rec_loss + self.cfg.lambda_adv * adv + self.cfg.lambda_kl * kl
        stats = {"g_loss": loss.detach(), "g_adv": adv.detach(), "rec_loss": rec_loss.detach(), "kl": kl.detach()}
        return loss, stats


def _unwrap(module):
    """The bare module inside a DDP wrapper (or the module itself)."""
    return getattr(module, "module", module)
