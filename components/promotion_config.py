"""Typed promotion gates: what a registered version must pass for `champion` to move to it."""
from __future__ import annotations

from pydantic import Field

from components.config_base import Section


class GatesConfig(Section):
    """Promotion gates: every one must pass for `champion` to move. The defaults pass the default recipe's
    model on the bundled digits (class-matched FCD about 2x real-vs-real, class KL under 0.01, every class
    recalled) and reject a collapsed or copying one; set a gate to null to skip it."""

    max_fcd_ratio: float | None = Field(4.0, gt=0.0, description=(
        "Maximum class-matched FCD ÷ real-vs-real FCD: quality relative to the evaluator's own noise floor, so "
        "it means the same on any data set and evaluator, and does not charge for the class mixture."))
    max_fcd: float | None = Field(None, gt=0.0, description="Maximum raw classifier-feature Frechet distance "
                                                           "(depends on the data and the evaluator; prefer max_fcd_ratio).")
    max_class_kl: float | None = Field(0.1, ge=0.0, description="Maximum KL(generated classes || uniform).")
    min_tail_recall: float | None = Field(0.7, ge=0.0, le=1.0, description="Minimum recall of the rarest third.")
    min_d_fgsm_accuracy: float | None = Field(None, ge=0.0, le=1.0, description="Minimum D accuracy under FGSM.")
    max_copy_share: float | None = Field(0.2, ge=0.0, le=1.0, description=(
        "Maximum share of samples nearer to a training image (evaluator features) than the nearest 5% of "
        "held-out images are; about 0.05 without copying, 1.0 for a generator that memorised its data."))
    min_diversity_ratio: float | None = Field(None, ge=0.0, description=(
        "Minimum mean within-class diversity (generated ÷ real spread in autoencoder features): about 1 when "
        "each class varies like its data, towards 0 when a class collapses to one image."))
    min_tail_diversity_ratio: float | None = Field(None, ge=0.0, description=(
        "Minimum within-class diversity of the rarest third of the classes."))
    max_epsilon: float | None = Field(None, gt=0.0, description=(
        "Maximum epsilon of DP-SGD training (privacy.enabled) at the run's delta; a version trained without DP "
        "has no epsilon and fails this gate."))
    require_no_divergence: bool = Field(True, description="Training must not have diverged.")
    min_improvement: float = Field(0.0, ge=0.0, description="Must beat the champion's FCD by this margin.")
