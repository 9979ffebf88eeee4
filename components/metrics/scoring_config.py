"""Typed settings of a tuning trial's score: the weights (part of the config) and the spec a trial scores by."""
from __future__ import annotations

from pydantic import Field

from components.config_base import Section


class StabilityWeights(Section):
    """Weights of the composite stability score (lower is better); see components/metrics/stability.py."""

    # Chosen by bench/tune_study.py on 24 design trials and checked on 12 held-out ones (docs/tuning.md): the
    # report-time FCD and the mode terms rank trials by quality; the stability terms stay to flag runs going
    # wrong early, at a weight that no longer drowns the quality terms.
    oscillation: float = Field(1.0, ge=0.0, description="Weight of the windowed (detrended) std of D and G losses.")
    balance: float = Field(1.0, ge=0.0, description="Weight of |r_t - target| (D overfitting signal).")
    grad_spikes: float = Field(1.0, ge=0.0, description="Weight of the gradient-spike rate.")
    r_target: float = Field(0.6, ge=-1.0, le=1.0, description="Target of r_t = E[sign D(real)].")
    class_kl: float = Field(3.0, ge=0.0, description="Weight of KL(generated class histogram || target).")
    coverage: float = Field(3.0, ge=0.0, description="Weight of the share of classes not covered.")
    fcd: float = Field(0.5, ge=0.0, description="Weight of FCD/100 of the scored samples against the real validation "
                                                "features (the cheap quality term; 0 leaves it out).")
    collapse: float = Field(3.0, ge=0.0, description="Weight of within-class collapse: the mean over classes of "
                                                     "max(0, 1 - pixel diversity ratio) of the scored samples.")


class ScoringSpec(Section):
    """What a trial needs to score itself while it trains (see components.metrics.trial_scoring)."""

    window: int = Field(ge=2, description="Trailing steps of the stability terms.")
    weights: StabilityWeights = Field(default_factory=StabilityWeights, description="Weights of the score.")
    divergence_bound: float = Field(gt=0.0, description="A loss above this counts as divergence.")
    per_class: int = Field(10, ge=0, description="Generated samples per class for coverage; 0 skips it.")
    evaluator: str | None = Field(None, description="URI of the evaluator classifier's weights.")
    real_features: str | None = Field(None, description="URI of the real features (.npy) for the FCD term.")
