"""Typed promotion gates: what a registered version must pass for `champion` to move to it."""
from __future__ import annotations

from pydantic import Field

from components.config_base import Section


class GatesConfig(Section):
    """Promotion gates: every one must pass for `champion` to move."""

    max_fcd: float | None = Field(None, gt=0.0, description="Maximum classifier-feature Frechet distance.")
    max_class_kl: float | None = Field(None, ge=0.0, description="Maximum KL(generated classes || uniform).")
    min_tail_recall: float | None = Field(None, ge=0.0, le=1.0, description="Minimum recall of the rarest third.")
    min_d_fgsm_accuracy: float | None = Field(None, ge=0.0, le=1.0, description="Minimum D accuracy under FGSM.")
    max_copy_share: float | None = Field(None, ge=0.0, le=1.0, description=(
        "Maximum share of samples nearer to a training image (evaluator features) than the nearest 5% of "
        "held-out images are; about 0.05 without copying, 1.0 for a generator that memorised its data."))
    require_no_divergence: bool = Field(True, description="Training must not have diverged.")
    min_improvement: float = Field(0.0, ge=0.0, description="Must beat the champion's FCD by this margin.")
