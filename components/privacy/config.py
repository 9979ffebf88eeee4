"""Typed settings of DP-SGD, and the combinations that would void its guarantee."""
from __future__ import annotations

from pydantic import Field, model_validator

from components.config_base import Section


class PrivacyConfig(Section):
    """DP-SGD on the discriminator (the only network that reads private images; see docs/privacy.md)."""

    enabled: bool = Field(False, description="Train D with DP-SGD and account epsilon over the steps taken.")
    max_grad_norm: float = Field(1.0, gt=0.0, description="Per-sample gradient clipping bound C.")
    noise_multiplier: float | None = Field(
        None, gt=0.0, description="Gaussian noise std as a multiple of C; or give target_epsilon instead.")
    target_epsilon: float | None = Field(
        None, gt=0.0, description="Epsilon to reach at train.steps; the noise multiplier is derived from it.")
    delta: float | None = Field(None, gt=0.0, lt=1.0, description="Delta of (epsilon, delta)-DP; default 1/N.")

    @model_validator(mode="after")
    def _one_noise_source(self) -> "PrivacyConfig":
        if self.enabled and (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError("privacy: give exactly one of privacy.noise_multiplier and privacy.target_epsilon")
        return self


def dp_conflict(privacy: PrivacyConfig, model, loss, train, rebalance: str) -> str | None:
    """Why this training setup cannot run under DP-SGD with an honest epsilon (one line), or None."""
    if not privacy.enabled:
        return None
    checks = [
        (train.num_workers > 1, f"train.num_workers={train.num_workers}: DP-SGD runs in one worker (the noise "
                                "is added once to one clipped sum); set train.num_workers=1"),
        (rebalance in ("resample", "sqrt"), f"data.rebalance={rebalance}: class-balanced resampling gives each "
                                            "example a sampling rate that depends on its class's size, which the "
                                            "accountant cannot bound; use data.rebalance=none or reweight"),
        (model.d_norm != "none", f"model.d_norm={model.d_norm}: per-sample gradients need a D without batch or "
                                 "spectral norm; set model.d_norm=none"),
        (loss.r1_gamma > 0, "loss.r1_gamma: R1 is a gradient penalty, and per-sample gradients of it are not "
                            "computed; set loss.r1_gamma=0"),
        (loss.effective_gp_lambda > 0, "loss.gp_lambda / objective wgan_gp: a gradient penalty has no per-sample "
                                       "gradients here; use objective bce, hinge or lsgan"),
        (loss.lecam_lambda > 0, "loss.lecam_lambda: LeCam's anchors average D over private batches outside "
                                "the privatised gradient; set loss.lecam_lambda=0"),
        (loss.ada_target is not None, "loss.ada_target: adaptive augmentation steers on D's outputs on private "
                                      "images; set loss.ada_target=null (fixed DiffAugment is fine)"),
        (loss.adv_train_eps > 0, "loss.adv_train_eps: adversarial training attacks private images outside the "
                                 "privatised gradient; set loss.adv_train_eps=0"),
        (loss.lambda_rec > 0 or loss.lambda_kl > 0, "loss.lambda_rec / lambda_kl: under DP, G trains on noise "
                                                    "only (its encoder would read private images outside D's "
                                                    "privatised gradients); set loss.lambda_rec=0 and "
                                                    "loss.lambda_kl=0"),
        (train.precision != "fp32", f"train.precision={train.precision}: DP-SGD runs in fp32"),
        (train.compile != "off", f"train.compile={train.compile}: DP-SGD's per-sample hooks run eagerly; set "
                                 "train.compile=off"),
    ]
    return next((f"privacy.enabled: {why}" for bad, why in checks if bad), None)
