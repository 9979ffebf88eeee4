"""Scoring a GAN while it trains, for tuning campaigns: stability over the trace plus mode coverage of the
current EMA generator, judged by the evaluator classifier on a fixed batch of samples, and within-class
collapse: how much less the samples of each class vary, in pixels, than its real training images.

The same scorer runs in a one-worker trial's process and on rank 0 of a multi-worker trial's Ray Train
workers, so both kinds of trial report identical metrics.
"""
from __future__ import annotations


import numpy as np
import torch

from components.metrics.classifier import load_classifier, predict
from components.metrics.diversity import collapse_term, diversity_ratios
from components.metrics.quality import class_histogram, frechet_distance
from components.metrics.scoring_config import ScoringSpec
from components.metrics.stability import mode_terms, stability_score
from components.storage import localize


REAL_PER_CLASS = 64


class TrialScorer:
    """`scorer(state) -> metrics`, scored as the campaign's ScoringSpec says."""

    def __init__(self, spec: ScoringSpec, channels: int, resolution: int, num_classes: int):
        self.spec, self.num_classes = spec, num_classes
        self.classifier = None
        if spec.evaluator:
            self.classifier = load_classifier(localize(spec.evaluator), channels, resolution, num_classes)
        self.real_features = np.load(localize(spec.real_features)) if spec.real_features else None
        self.real_spread: np.ndarray | None = None  # per class, from the worker's own training data

    @torch.no_grad()
    def modes(self, G, real) -> dict[str, float] | None:
        if self.classifier is None:
            return None
        per_class = self.spec.per_class
        y = torch.arange(self.num_classes).repeat_interleave(per_class)
        z = torch.randn(len(y), G.z_dim, generator=torch.Generator().manual_seed(2024))  # fixed batch
        device = next(G.parameters()).device
        images = G.generate(z.to(device), y.to(device)).float().cpu()
        feats, pred = predict(self.classifier, images)
        fcd = None
        if self.real_features is not None:
            fcd = frechet_distance(self.real_features, feats.numpy())["fd"]
        # Every class is requested equally often, so the ideal histogram of predictions is uniform.
        terms = mode_terms(class_histogram(pred.numpy(), self.num_classes), self.num_classes, fcd)
        ratios = diversity_ratios(images.flatten(1).numpy(), y.numpy(), *real, self.num_classes,
                                  prefix="diversity_pixel")
        return {**terms, "diversity_pixel_mean": ratios["diversity_pixel_mean"],
                "collapse": collapse_term(ratios, prefix="diversity_pixel")}

    def real_reference(self, data) -> tuple[np.ndarray, np.ndarray]:
        """Up to REAL_PER_CLASS training images of each class, flattened, with their labels: the spread that
        generated samples are measured against (fixed for the trial, so reports compare)."""
        if self.real_spread is None:
            labels = data.labels.numpy()
            keep = np.concatenate([np.flatnonzero(labels == c)[:REAL_PER_CLASS] for c in range(self.num_classes)])
            self.real_spread = (data.images_float()[keep].flatten(1).numpy(), labels[keep])
        return self.real_spread

    def __call__(self, state) -> dict[str, float]:
        w = self.spec.weights
        modes = None if state.diverged else self.modes(state.G_ema, self.real_reference(state.sampler.data))
        return stability_score(state.trace, self.spec.window, w.oscillation, w.balance, w.grad_spikes,
                               w.r_target, self.spec.divergence_bound, modes=modes, w_kl=w.class_kl,
                               w_cov=w.coverage, w_fcd=w.fcd, w_collapse=w.collapse)
