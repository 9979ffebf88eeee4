"""GAN maths: the D step and the G step, regularisers included. The training loop only schedules them.

The document's objective for G is  lambda_rec * MSE(G(x), x) + lambda_adv * BCE(D(G(x)), real).
We add the same adversarial term on samples Dec(z, y) from noise, and a KL term that keeps the
encoder's posterior near N(0, I) so that sampling z works. Every term takes per-sample weights, so
`reweight` rebalancing reaches both D and G.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from components import regularizers
from components.attacks.pgd import pgd
from components.loss_config import LossConfig


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
    elif objective == "wgan_gp":  # critic: maximise D(real) - D(fake)
        real, fake = -real_logits, fake_logits
    else:
        raise ValueError(f"unknown objective {objective!r}")
    return real, fake


def g_adversarial(objective: str, fake_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample G losses: make D call fakes real (non-saturating for BCE)."""
    if objective == "bce":
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits), reduction="none")
    if objective in ("hinge", "wgan_gp"):
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
    and eps (B,Z), the reparameterisation noise of the encoder's posterior (None: drawn inside G).

    The loop's schedule rides along: the current instance-noise std, whether lazy R1 is due, and the
    adaptive augmentation probability (None: augment every input)."""

    x: torch.Tensor
    y: torch.Tensor
    w: torch.Tensor
    z: torch.Tensor
    y_fake: torch.Tensor
    eps: torch.Tensor | None = None
    noise_std: float = 0.0
    r1_due: bool = False
    aug_p: torch.Tensor | None = None


class GANLoss:
    """Owns every G and D forward pass of a step; returns the loss to backprop and detached statistics.

    Stateful only through LeCam's logit anchors, which `state_dict` exposes for checkpoints. They become
    float64 device tensors once updated, so a step never waits for the device to read them."""

    def __init__(self, cfg: LossConfig, class_weights: list[float] | None = None, private: bool = False):
        """class_weights: one per class, heavier for rarer classes; gSR weighs each class's penalty by them
        (uniform when None). private: DP-SGD trains D, so G must not read private images: its loss is the
        adversarial loss of samples from noise alone (no reconstruction path)."""
        self.cfg, self.private = cfg, private
        self.class_weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.anchors: dict[str, float | torch.Tensor] = {"real": 0.0, "fake": 0.0}

    def state_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.anchors.items()}

    def load_state_dict(self, anchors: dict) -> None:
        self.anchors = {k: float(v) for k, v in anchors.items()}

    def _d_view(self, images: torch.Tensor, noise_std: float, aug_p: torch.Tensor | None = None) -> torch.Tensor:
        """What D sees: instance noise, then the DiffAugment policy (both differentiable)."""
        images = regularizers.add_instance_noise(images, noise_std)
        return regularizers.diff_augment(images, self.cfg.diffaugment, aug_p) if self.cfg.diffaugment else images

    def d_loss(self, G, D, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """D on cat(real, fake[, interpolates]) in one forward: one BN pass and one DDP buffer broadcast, no
        in-place clash between two forwards before one backward."""
        cfg = self.cfg
        with torch.no_grad():
            fake = _unwrap(G).generate(batch.z, batch.y_fake)
        x_real = batch.x
        if cfg.adv_train_eps > 0:
            x_real, fake = self._adversarial_inputs(D, x_real, batch.y, fake, batch.y_fake)
        r1 = cfg.r1_gamma > 0 and batch.r1_due
        x_real = x_real.detach().requires_grad_(True) if r1 else x_real
        inputs, labels = [self._d_view(torch.cat([x_real, fake]), batch.noise_std, batch.aug_p)], [batch.y, batch.y_fake]
        gp_lambda = cfg.effective_gp_lambda
        if gp_lambda > 0:
            alpha = torch.rand(len(batch.x), device=batch.x.device)
            x_hat = regularizers.interpolate(batch.x, fake[: len(batch.x)], alpha)
            inputs.append(x_hat)
            labels.append(batch.y)
        logits, class_logits = _d_forward(D, torch.cat(inputs), torch.cat(labels))
        n_real, n_fake = len(batch.x), len(fake)
        real_l, fake_l, interp_l = logits.split([n_real, n_fake, len(logits) - n_real - n_fake])
        loss_real, loss_fake = d_adversarial(cfg.objective, real_l, fake_l, cfg.label_smoothing)
        adversarial = _wmean(loss_real, batch.w) + loss_fake.mean()
        loss = adversarial
        stats = {}
        if class_logits is not None:
            cls_real, cls_fake, _ = class_logits.split([n_real, n_fake, len(logits) - n_real - n_fake])
            ac = _wmean(F.cross_entropy(cls_real, batch.y, reduction="none"), batch.w) \
                + F.cross_entropy(cls_fake, batch.y_fake)
            loss = loss + cfg.lambda_ac * ac
            stats["d_ac"] = ac.detach()
        if r1:
            penalty = _wmean(regularizers.r1_penalty(real_l, x_real), batch.w)
            loss = loss + 0.5 * cfg.r1_gamma * cfg.r1_every * penalty  # lazy: k-times rarer, k-times stronger
            stats["r1"] = penalty.detach()
        if gp_lambda > 0:
            penalty = regularizers.gradient_penalty(interp_l, x_hat).mean()
            loss = loss + gp_lambda * penalty
            stats["gp"] = penalty.detach()
        if cfg.lecam_lambda > 0:
            penalty = regularizers.lecam(real_l, fake_l, self.anchors["real"], self.anchors["fake"])
            loss = loss + cfg.lecam_lambda * penalty
            stats["lecam"] = penalty.detach()
            self._update_anchors(real_l.detach(), fake_l.detach())
        stats.update({
            # d_loss is the adversarial objective alone: lazy R1 would otherwise look like oscillation.
            "d_loss": adversarial.detach(),
            "d_total": loss.detach(),
            "d_real": torch.sigmoid(real_l.detach()).mean(),
            "d_fake": torch.sigmoid(fake_l.detach()).mean(),
            "d_acc_real": (real_l.detach() > 0).float().mean(),
            "d_acc_fake": (fake_l.detach() < 0).float().mean(),
            "d_sign_real": torch.sign(real_l.detach()).mean(),
        })
        return loss, stats

    def d_row_denominators(self, batch: Batch) -> torch.Tensor:
        """What each row of d_loss's cat(real, fake) batch is divided by in the loss: the real rows' weight sum
        (their weighted mean) and the number of fake rows. A row's share of the gradient times this is the row's
        own gradient, which DP-SGD clips."""
        n_fake = len(batch.z)
        return torch.cat([torch.full_like(batch.w, float(batch.w.sum())),
                          torch.full((n_fake,), float(n_fake), device=batch.w.device)])

    def _adversarial_inputs(self, D, real, y_real, fake, y_fake):
        """Replace a fraction of real and fake inputs by PGD perturbations that push real towards 'fake' and
        fake towards 'real'. The attack runs on the bare D in eval mode: no DDP forward before the training
        forward, no BN statistics or spectral-norm iterations from attack passes."""
        cfg, bare = self.cfg, _unwrap(D)
        k_real, k_fake = (max(1, round(cfg.adv_train_fraction * len(t))) for t in (real, fake))
        was_training = bare.training
        bare.eval()
        try:
            with torch.enable_grad():
                real_adv = pgd(lambda x: -bare(x, y_real[:k_real]).sum(), real[:k_real], cfg.adv_train_eps,
                               cfg.adv_train_steps)
                fake_adv = pgd(lambda x: bare(x, y_fake[:k_fake]).sum(), fake[:k_fake], cfg.adv_train_eps,
                               cfg.adv_train_steps)
        finally:
            bare.train(was_training)
        return torch.cat([real_adv, real[k_real:]]), torch.cat([fake_adv, fake[k_fake:]])

    def _update_anchors(self, real_l: torch.Tensor, fake_l: torch.Tensor) -> None:
        decay = self.cfg.lecam_decay
        # float64, like the Python floats that checkpoints store: a resumed run continues bit for bit.
        self.anchors["real"] = decay * self.anchors["real"] + (1 - decay) * real_l.float().mean().double()
        self.anchors["fake"] = decay * self.anchors["fake"] + (1 - decay) * fake_l.float().mean().double()

    def g_loss(self, G, D, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """lambda_rec * MSE + lambda_adv * adversarial (reconstructions and samples) + lambda_kl * KL
        (+ lambda_ac * class cross-entropy of the samples for an auxiliary-classifier D)."""
        cfg = self.cfg
        if self.private:
            return self._g_loss_from_noise(G, D, batch)
        rec, fake, mu, logvar = G(batch.x, batch.y, batch.z, batch.y_fake, batch.eps)
        logits, class_logits = _d_forward(D, self._d_view(torch.cat([rec, fake]), batch.noise_std, batch.aug_p),
                                          torch.cat([batch.y, batch.y_fake]))
        rec_l, fake_l = logits.split([len(rec), len(fake)])
        adv = 0.5 * (_wmean(g_adversarial(cfg.objective, rec_l), batch.w)
                     + g_adversarial(cfg.objective, fake_l).mean())
        rec_loss = _wmean((rec - batch.x).pow(2).flatten(1).mean(dim=1), batch.w)
        kl = _wmean(kl_to_standard_normal(mu.float(), logvar.float()), batch.w)
        loss = cfg.lambda_rec * rec_loss + cfg.lambda_adv * adv + cfg.lambda_kl * kl
        stats = {"g_adv": adv.detach(), "rec_loss": rec_loss.detach(), "kl": kl.detach()}
        return self._class_terms(G, loss, stats, None if class_logits is None else class_logits[len(rec):], batch.y_fake)

    def _g_loss_from_noise(self, G, D, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """G's loss under DP: samples from noise through D, nothing of the real batch (whose size and content
        are private); the reconstruction and KL terms are zero by the config's checks."""
        cfg = self.cfg
        fake = _unwrap(G).generate(batch.z, batch.y_fake)
        logits, class_logits = _d_forward(D, self._d_view(fake, batch.noise_std, batch.aug_p), batch.y_fake)
        adv = g_adversarial(cfg.objective, logits).mean()
        loss = cfg.lambda_adv * adv
        zero = torch.zeros((), device=adv.device)
        stats = {"g_adv": adv.detach(), "rec_loss": zero, "kl": zero}
        return self._class_terms(G, loss, stats, class_logits, batch.y_fake)

    def _class_terms(self, G, loss: torch.Tensor, stats: dict, class_logits_fake: torch.Tensor | None,
                     y_fake: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """G's class terms: an auxiliary-classifier D's cross-entropy on the samples, and gSR."""
        cfg = self.cfg
        if class_logits_fake is not None:
            ac = F.cross_entropy(class_logits_fake, y_fake)
            loss = loss + cfg.lambda_ac * ac
            stats["g_ac"] = ac.detach()
        if cfg.gsr_lambda > 0:
            gsr = self._group_spectral(_unwrap(G).class_tables())
            loss = loss + cfg.gsr_lambda * gsr
            stats["gsr"] = gsr.detach()
        stats["g_loss"] = loss.detach()
        return loss, stats

    def _group_spectral(self, tables: list[torch.Tensor]) -> torch.Tensor:
        """gSR over G's class tables, weighted by the class weights (uniform when none were given)."""
        k = len(tables[0])
        weights = torch.ones(k) if self.class_weights is None else self.class_weights
        if len(weights) != k:
            raise ValueError(f"gSR: {len(weights)} class weights for a generator of {k} classes")
        self.class_weights = weights.to(tables[0].device)  # moved once: later steps find it on the device
        return regularizers.group_spectral_penalty(tables, self.class_weights)


def _d_forward(D, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(real/fake logits, class logits or None): class logits only from an auxiliary-classifier D."""
    if getattr(_unwrap(D), "conditioning", "projection") == "auxiliary":
        return D(images, labels, with_classes=True)
    return D(images, labels), None


def _unwrap(module):
    """The bare module inside a DDP wrapper (or the module itself)."""
    return getattr(module, "module", module)
