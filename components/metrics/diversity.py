"""Within-class diversity: does a generator draw each class in as many ways as the data does?

    diversity ratio of class c = mean pairwise distance among generated samples of class c
                                 / mean pairwise distance among real images of class c

It is about 1 when a class's samples vary as its real images do, and tends to 0 when the class collapses
to one image. A classifier's features cannot show this, because they are trained to ignore variation within
a class. The ratio is computed in pixels and in the autoencoder's features (components.metrics.autoencoder).
"""
from __future__ import annotations

import math

import numpy as np


def mean_pairwise_distance(x: np.ndarray, max_rows: int = 256, seed: int = 0) -> float:
    """Mean Euclidean distance over the distinct pairs of rows of x (N, D); NaN with fewer than two rows.
    Above max_rows rows, a fixed-seed subsample of max_rows keeps the cost quadratic in max_rows only."""
    if len(x) < 2:
        return math.nan
    if len(x) > max_rows:
        x = x[np.random.default_rng(seed).choice(len(x), max_rows, replace=False)]
    x = x.astype(np.float64)
    sq = (x * x).sum(1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0))
    n = len(x)
    return float(dist[np.triu_indices(n, 1)].mean())


def diversity_ratios(fake: np.ndarray, fake_labels: np.ndarray, real: np.ndarray, real_labels: np.ndarray,
                     num_classes: int, prefix: str = "diversity") -> dict[str, float]:
    """`{prefix}_class_{c}` for every class and `{prefix}_mean` over the defined ones. A class with fewer than
    two real or two generated images, or whose real images are all identical, has no ratio (NaN)."""
    out = {}
    for c in range(num_classes):
        real_spread = mean_pairwise_distance(real[real_labels == c])
        fake_spread = mean_pairwise_distance(fake[fake_labels == c])
        defined = not (math.isnan(real_spread) or math.isnan(fake_spread) or real_spread == 0)
        out[f"{prefix}_class_{c}"] = fake_spread / real_spread if defined else math.nan
    values = [v for v in out.values() if not math.isnan(v)]
    out[f"{prefix}_mean"] = float(np.mean(values)) if values else math.nan
    return out


def collapse_term(ratios: dict[str, float], prefix: str = "diversity") -> float:
    """How much diversity is missing, averaged over the classes: mean of max(0, 1 - ratio), in [0, 1].
    0 when every class varies at least as much as its real images, 1 when every class is a single image.
    More diversity than the data (noise) is not rewarded."""
    values = [v for k, v in ratios.items() if k.startswith(f"{prefix}_class_") and not math.isnan(v)]
    return float(np.mean([max(0.0, 1.0 - v) for v in values])) if values else 0.0
