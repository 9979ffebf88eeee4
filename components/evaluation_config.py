"""Typed config of the evaluation: sample counts, the evaluator, attacks and standard FID."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from components.config_base import Section


class EvaluateConfig(Section):
    """Sample quality, per-class metrics and robustness of the candidate."""

    samples_per_class: int = Field(100, ge=2, description="Generated samples per class.")
    classifier_steps: int = Field(600, ge=1, description="Training steps of the evaluator CNN.")
    autoencoder_steps: int = Field(400, ge=1, description="Training steps of the feature autoencoder, whose "
                                                          "space keeps the variation within a class.")
    fgsm_eps: float = Field(0.05, ge=0.0, description="L-inf budget (on [-1, 1] images) of the headline numbers.")
    robustness_eps: list[float] = Field([0.02, 0.05, 0.1], description="L-inf budgets of the robustness curves.")
    pgd_steps: int = Field(10, ge=1, description="PGD iterations.")
    kid_subsets: int = Field(10, ge=1, description="KID: number of random subsets averaged.")
    kid_subset_size: int = Field(100, ge=2, description="KID: samples per subset.")
    nn_k: int = Field(5, ge=1, description="k of the k-NN balls of precision/recall/density/coverage.")
    seed: int = Field(0, description="Seed of sampling and the evaluator.")
    inception_weights: str | None = Field(
        None, description="Local InceptionV3 FID weights (pt_inception-2015-12-05-6726825d.pth); when set, "
                          "standard FID/KID are computed too (needs torch-fidelity). Never downloaded.")
    inception_samples: int = Field(1000, ge=2, description="Generated and real images compared by FID/KID.")

    @field_validator("inception_weights")
    @classmethod
    def _weights_exist(cls, path: str | None) -> str | None:
        if path is not None and not Path(path).expanduser().is_file():
            raise ValueError(f"{path} is not a file; point it to local InceptionV3 weights or leave it unset")
        return path
