"""Class-imbalance maths: long-tail construction, stratified splits, class statistics and weights."""
from __future__ import annotations

import math

import numpy as np

from components.errors import UserError


def longtail_counts(available: np.ndarray, rho: float) -> np.ndarray:
    """CIFAR-LT protocol: keep n_c = int(n_max * rho^(-c/(C-1))) of class c, capped by what exists."""
    n_classes = len(available)
    if rho <= 1.0 or n_classes < 2:
        return available.copy()
    n_max = int(available.max())
    target = np.array([int(n_max * rho ** (-c / (n_classes - 1))) for c in range(n_classes)])
    return np.minimum(target, available)


def longtail_indices(labels: np.ndarray, n_classes: int, rho: float, seed: int) -> np.ndarray:
    """Indices of a long-tailed subset, drawn per class with a fixed seed, in original order."""
    rng = np.random.default_rng(seed)
    available = np.bincount(labels, minlength=n_classes)
    keep = longtail_counts(available, rho)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[: keep[c]] for c in range(n_classes)]
    return np.sort(np.concatenate(chosen))


def stratified_split(labels: np.ndarray, n_classes: int, val_fraction: float, test_fraction: float,
                     seed: int, class_names: list[str]) -> np.ndarray:
    """Assign 'train' / 'val' / 'test' per class so every class is in every (non-empty) split."""
    rng = np.random.default_rng(seed + 1)
    split = np.empty(len(labels), dtype=object)
    wanted = ["val"] + (["test"] if test_fraction > 0 else [])
    for c in range(n_classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = max(1, round(val_fraction * len(idx)))
        n_test = max(1, round(test_fraction * len(idx))) if test_fraction > 0 else 0
        if len(idx) - n_val - n_test < 1:
            need = len(wanted) + 1
            raise UserError(
                f"class '{class_names[c]}' has {len(idx)} image(s) but needs at least {need} to appear in "
                f"train/{'/'.join(wanted)}: lower data.imbalance_ratio or the split fractions, or add images")
        split[idx[:n_val]] = "val"
        split[idx[n_val:n_val + n_test]] = "test"
        split[idx[n_val + n_test:]] = "train"
    return split.astype(str)


def class_weights(counts: np.ndarray, scheme: str, beta: float) -> np.ndarray:
    """Per-class loss weights, normalised so the mean weight over training samples is 1."""
    counts = counts.astype(np.float64)
    if scheme == "inverse":
        raw = 1.0 / counts
    elif scheme == "sqrt":
        raw = 1.0 / np.sqrt(counts)
    elif scheme == "effective":  # Cui et al. 2019: weight ∝ 1 / E_n, E_n = (1 - beta^n) / (1 - beta)
        raw = (1.0 - beta) / (1.0 - np.power(beta, counts))
    else:
        raise ValueError(f"unknown weight scheme {scheme!r}")
    return raw * counts.sum() / (raw * counts).sum()


def class_statistics(counts: np.ndarray, beta: float) -> dict:
    """Imbalance ratio, normalised entropy, effective numbers and all three weight schemes."""
    counts = np.asarray(counts, dtype=np.int64)
    p = counts / counts.sum()
    nz = p[p > 0]
    entropy = float(-(nz * np.log(nz)).sum() / math.log(len(counts))) if len(counts) > 1 else 1.0
    return {
        "imbalance_ratio": float(counts.max() / max(counts.min(), 1)),
        "normalized_entropy": entropy,
        "effective_number": ((1 - np.power(beta, counts)) / (1 - beta)).tolist(),
        "weights": {s: class_weights(counts, s, beta).tolist() for s in ("inverse", "sqrt", "effective")},
    }


def check_labels(labels: np.ndarray, n_classes: int, source: str) -> None:
    """Every label in [0, n_classes); every class present."""
    bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
    if len(bad):
        raise UserError(f"source '{source}': label {int(labels[bad[0]])} at row {int(bad[0])} is out of range "
                        f"[0, {n_classes - 1}]; fix the labels or set data.num_classes")
    missing = np.flatnonzero(np.bincount(labels, minlength=n_classes) == 0).tolist()
    if missing:
        raise UserError(f"source '{source}': class {missing[0]} has no images; every class needs images")
