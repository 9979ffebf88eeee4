"""Typed config of the GAN loss, apart from its maths so that loading a config imports no torch code."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from components.config_base import Section


class LossConfig(Section):
    """Objective, loss weights and regularisers."""

    objective: Literal["bce", "hinge", "lsgan", "wgan_gp"] = Field(
        "bce", description="Adversarial objective on logits; bce is the document's (non-saturating for G).")
    lambda_rec: float = Field(1.0, ge=0.0, description="Weight of MSE(G(x), x), the document's reconstruction.")
    lambda_adv: float = Field(1.0, ge=0.0, description="Weight of the adversarial term for G.")
    lambda_kl: float = Field(0.05, ge=0.0, description="Weight of KL(q(z|x) || N(0, I)).")
    lambda_ac: float = Field(1.0, ge=0.0, description="Weight of the class cross-entropy when D is an auxiliary classifier.")
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="One-sided: real targets become 1 - s.")
    r1_gamma: float = Field(0.0, ge=0.0, description="R1 penalty gamma/2 * ||grad D(x_real)||^2; 0 disables.")
    r1_every: int = Field(16, ge=1, description="Lazy R1: apply every k D steps, scaled by k.")
    gp_lambda: float | None = Field(
        None, ge=0.0, description="WGAN-GP penalty weight; default 10 for wgan_gp, 0 (off) otherwise.")
    lecam_lambda: float = Field(0.0, ge=0.0, description="LeCam regulariser weight; 0 disables.")
    lecam_decay: float = Field(0.99, ge=0.0, lt=1.0, description="EMA decay of LeCam's logit anchors.")
    instance_noise: float = Field(0.0, ge=0.0, description="Initial std of Gaussian noise on D's inputs; 0 disables.")
    instance_noise_steps: int = Field(1000, ge=1, description="Steps over which instance noise decays to 0.")
    diffaugment: list[Literal["translation", "cutout", "color"]] = Field(
        default_factory=list, description="DiffAugment policy applied to every D input (real and fake).")
    ada_target: float | None = Field(
        None, gt=-1.0, lt=1.0, description="Adaptive augmentation (StyleGAN2-ADA): each D input is augmented with "
                                           "probability p, and p follows r_t = E[sign D(real)] towards this target "
                                           "(0.6 in the paper); null augments every input.")
    ada_kimg: float = Field(20.0, gt=0.0, description="Thousands of images over which p can move from 0 to 1.")
    ada_interval: int = Field(4, ge=1, description="Steps between adjustments of p.")
    gsr_lambda: float = Field(
        0.0, ge=0.0, description="Group spectral regularisation of G's class-conditional parameters (gSR, "
                                 "Rangwani et al. 2022), weighted towards tail classes; 0 disables.")
    adv_train_eps: float = Field(
        0.0, ge=0.0, description="Adversarial training of D: L-inf PGD budget on [-1, 1] images; 0 disables.")
    adv_train_steps: int = Field(3, ge=1, description="PGD steps of adversarial training.")
    adv_train_fraction: float = Field(
        0.5, gt=0.0, le=1.0, description="Share of real and of fake D inputs replaced by PGD-perturbed ones.")

    @property
    def effective_gp_lambda(self) -> float:
        return self.gp_lambda if self.gp_lambda is not None else (10.0 if self.objective == "wgan_gp" else 0.0)

    @model_validator(mode="after")
    def _ada_needs_a_policy(self) -> "LossConfig":
        if self.ada_target is not None and not self.diffaugment:
            raise ValueError("ada_target: adaptive augmentation adjusts how often the DiffAugment policy applies; "
                             "set loss.diffaugment (e.g. [translation, cutout, color]) or loss.ada_target: null")
        return self
