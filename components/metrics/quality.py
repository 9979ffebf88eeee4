"""Sample-quality metrics on classifier features and class predictions."""
from __future__ import annotations

import numpy as np
from scipy import linalg


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> dict[str, float]:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between two (N, F) feature sets."""
    mu_a, mu_b = feats_a.mean(0), feats_b.mean(0)
    s_a, s_b = np.cov(feats_a, rowvar=False), np.cov(feats_b, rowvar=False)
    covmean = linalg.sqrtm(s_a @ s_b)
    if not np.all(np.isfinite(covmean)):  # near-singular product: regularise as in the reference FID code
        eye = np.eye(len(s_a)) * 1e-6
        covmean = linalg.sqrtm((s_a + eye) @ (s_b + eye))
    fd = float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean.real))
    return {"fd": max(fd, 0.0)}


def class_histogram(pred_labels: np.ndarray, num_classes: int, target: np.ndarray | None = None) -> dict[str, float]:
    """Generated class shares, KL(generated || target) and the number of classes covered (share >= 1/(4C))."""
    target = np.full(num_classes, 1.0 / num_classes) if target is None else np.asarray(target, np.float64)
    hist = np.bincount(pred_labels, minlength=num_classes).astype(np.float64)
    p = hist / max(hist.sum(), 1.0)
    eps = 1e-12
    kl = float(np.sum(np.where(p > 0, p * np.log((p + eps) / (target + eps)), 0.0)))
    out = {f"share_class_{c}": float(p[c]) for c in range(num_classes)}
    out.update(class_kl=kl, classes_covered=float((p >= 0.25 / num_classes).sum()))
    return out


def class_recall(pred_labels: np.ndarray, requested_labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """Share of samples requested as class c that the evaluator classifies as c, per class and mean."""
    out = {}
    for c in range(num_classes):
        mask = requested_labels == c
        out[f"recall_class_{c}"] = float((pred_labels[mask] == c).mean()) if mask.any() else 0.0
    out["recall_mean"] = float(np.mean([out[f"recall_class_{c}"] for c in range(num_classes)]))
    return out


QUALITY_METRICS = {
    "frechet_distance": frechet_distance,
    "class_histogram": class_histogram,
    "class_recall": class_recall,
}
