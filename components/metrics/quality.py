"""Sample-quality metrics on classifier features and class predictions."""
from __future__ import annotations

import math

import numpy as np
from scipy import linalg

from components.metrics.diversity import diversity_ratios


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> dict[str, float]:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between two (N, F) feature sets; NaN when either
    set has fewer than two samples."""
    n, m, f = len(feats_a), len(feats_b), feats_a.shape[1]
    if min(n, m) < 2:  # one sample has no covariance: undefined
        return {"fd": math.nan}
    mu_a, mu_b = feats_a.mean(0), feats_b.mean(0)
    if min(n, m) < f:  # fewer samples than features (2048-d Inception): the exact small-side form
        tr_covmean = trace_sqrt_cov_product(feats_a - mu_a, feats_b - mu_b)
        tr_a = float((feats_a - mu_a).var(0, ddof=1).sum())
        tr_b = float((feats_b - mu_b).var(0, ddof=1).sum())
    else:
        s_a, s_b = np.cov(feats_a, rowvar=False), np.cov(feats_b, rowvar=False)
        tr_covmean, tr_a, tr_b = trace_sqrt_product_psd(s_a, s_b), float(np.trace(s_a)), float(np.trace(s_b))
    fd = float(((mu_a - mu_b) ** 2).sum() + tr_a + tr_b - 2 * tr_covmean)
    return {"fd": max(fd, 0.0)}


def trace_sqrt_product_psd(s_a: np.ndarray, s_b: np.ndarray) -> float:
    """Tr((S_a S_b)^(1/2)) for symmetric positive semi-definite S_a, S_b, singular ones included.

    S_a S_b has the eigenvalues of the symmetric PSD matrix S_a^(1/2) S_b S_a^(1/2), so the trace is the sum
    of their square roots: two symmetric eigendecompositions. The general sqrtm of S_a S_b that reference FID
    code uses warns "Matrix is singular ... might be inaccurate" when a covariance is singular (features that
    never vary, fewer distinct samples than features; seen in this project's tests); rounding's tiny negative
    eigenvalues are clipped to 0 here."""
    w, v = linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    return float(np.sqrt(np.clip(linalg.eigvalsh(root_a @ s_b @ root_a), 0.0, None)).sum())


def trace_sqrt_cov_product(centred_a: np.ndarray, centred_b: np.ndarray) -> float:
    """Tr((S_a S_b)^(1/2)) from centred samples, without forming F x F matrices.

    S_a S_b = A^T A B^T B / c has the nonzero eigenvalues of (A B^T)(A B^T)^T / c, which are the squared
    singular values of A B^T / sqrt(c), c = (n-1)(m-1); so the trace is the nuclear norm of A B^T / sqrt(c).
    An SVD of an n x m matrix instead of sqrtm of F x F: exact, and stable for singular covariances."""
    n, m = len(centred_a), len(centred_b)
    return float(np.linalg.svd(centred_a @ centred_b.T, compute_uv=False).sum() / np.sqrt((n - 1) * (m - 1)))


def class_reweighted_frechet_distance(feats_a: np.ndarray, labels_a: np.ndarray, target_probs: np.ndarray,
                                      feats_b: np.ndarray) -> dict[str, float]:
    """Fréchet distance between feats_a, re-weighted so that its classes follow target_probs, and feats_b.

    Why: a Fréchet distance also measures the class mixture. Class-uniform samples scored against a
    long-tailed reference are far from it even if every class were perfect; weighting each sample of class c
    by target_c / count_c compares like with like. The weighted covariance is A^T A with rows
    sqrt(w_i / (1 - sum w^2)) (x_i - mu_w), so the trace term is a nuclear norm as in trace_sqrt_cov_product.
    Classes that feats_a lacks get no mass (the remaining target shares are renormalised)."""
    target = np.asarray(target_probs, np.float64)
    counts = np.bincount(labels_a, minlength=len(target)).astype(np.float64)
    w = target[labels_a] / counts[labels_a]
    w = w / w.sum()
    mu_a = w @ feats_a
    rows_a = np.sqrt(w / (1.0 - (w ** 2).sum()))[:, None] * (feats_a - mu_a)
    mu_b = feats_b.mean(0)
    rows_b = (feats_b - mu_b) / np.sqrt(len(feats_b) - 1)
    tr_covmean = float(np.linalg.svd(rows_a @ rows_b.T, compute_uv=False).sum())
    fd = float(((mu_a - mu_b) ** 2).sum() + (rows_a ** 2).sum() + (rows_b ** 2).sum() - 2 * tr_covmean)
    return {"fd": max(fd, 0.0)}


def class_histogram(pred_labels: np.ndarray, num_classes: int, target: np.ndarray | None = None) -> dict[str, float]:
    """Generated class shares, KL(generated || target), and the classes covered: generated share at least a
    quarter of the target share (count and fraction)."""
    target = np.full(num_classes, 1.0 / num_classes) if target is None else np.asarray(target, np.float64)
    hist = np.bincount(pred_labels, minlength=num_classes).astype(np.float64)
    p = hist / max(hist.sum(), 1.0)
    eps = 1e-12
    kl = float(np.sum(np.where(p > 0, p * np.log((p + eps) / (target + eps)), 0.0)))
    out = {f"share_class_{c}": float(p[c]) for c in range(num_classes)}
    covered = float((p >= 0.25 * target).sum())  # generated share at least 25% of the target share
    out.update(class_kl=kl, classes_covered=covered, class_coverage=covered / num_classes)
    return out


def class_recall(pred_labels: np.ndarray, requested_labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """Share of samples requested as class c that the evaluator classifies as c, per class and mean."""
    out = {}
    for c in range(num_classes):
        mask = requested_labels == c
        out[f"recall_class_{c}"] = float((pred_labels[mask] == c).mean()) if mask.any() else 0.0
    out["recall_mean"] = float(np.mean([out[f"recall_class_{c}"] for c in range(num_classes)]))
    return out


def kernel_inception_distance(feats_a: np.ndarray, feats_b: np.ndarray, subsets: int = 10, subset_size: int = 100,
                              seed: int = 0) -> dict[str, float]:
    """KID (Binkowski et al. 2018): unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, mean and std over subsets."""
    rng = np.random.default_rng(seed)
    m = min(subset_size, len(feats_a), len(feats_b))
    if m < 2:  # the unbiased estimate leaves out each point's kernel with itself: it needs two per set
        return {"kid": math.nan, "kid_std": math.nan}
    d = feats_a.shape[1]
    values = []
    for _ in range(subsets):
        a = feats_a[rng.choice(len(feats_a), m, replace=False)]
        b = feats_b[rng.choice(len(feats_b), m, replace=False)]
        k_aa, k_bb, k_ab = ((a @ a.T) / d + 1) ** 3, ((b @ b.T) / d + 1) ** 3, ((a @ b.T) / d + 1) ** 3
        off = m * (m - 1)
        values.append((k_aa.sum() - np.trace(k_aa)) / off + (k_bb.sum() - np.trace(k_bb)) / off
                      - 2 * k_ab.mean())
    return {"kid": float(np.mean(values)), "kid_std": float(np.std(values))}


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(sq, 0.0))


def _knn_radii(feats: np.ndarray, k: int) -> np.ndarray:
    """Distance from each point to its k-th nearest neighbour in the same set (itself excluded)."""
    dist = _pairwise(feats, feats)
    return np.sort(dist, axis=1)[:, k]  # column 0 is the point itself


def precision_recall_density_coverage(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float]:
    """k-NN manifold metrics: precision and recall (Kynkaanniemi et al. 2019), density and coverage
    (Naeem et al. 2020). A sample is on a manifold if it falls in some k-NN ball of that set. A set of k
    points or fewer has no k-th neighbour: every value is then NaN."""
    if min(len(real), len(fake)) <= k:
        return dict.fromkeys(("precision", "recall", "density", "coverage"), math.nan)
    r_real, r_fake = _knn_radii(real, k), _knn_radii(fake, k)
    real_to_fake = _pairwise(real, fake)  # (N_real, N_fake)
    in_real_ball = real_to_fake <= r_real[:, None]  # fake j inside real i's ball
    in_fake_ball = real_to_fake <= r_fake[None, :]  # real i inside fake j's ball
    return {
        "precision": float(in_real_ball.any(axis=0).mean()),
        "recall": float(in_fake_ball.any(axis=1).mean()),
        "density": float(in_real_ball.sum() / (k * fake.shape[0])),
        "coverage": float(in_real_ball.any(axis=1).mean()),
    }


def nearest_neighbour_memorisation(fake: np.ndarray, train: np.ndarray, heldout: np.ndarray,
                                   copy_quantile: float = 0.05) -> dict[str, float]:
    """Do generated samples sit closer to the training set than unseen real images do?

    Held-out real images are what "new, not copied" looks like: their distances to the nearest training image
    set the scale. nn_distance_ratio = median nearest-train distance of the samples / that of held-out images
    (about 1 for a generator that draws new images, towards 0 for one that copies). copy_share = share of
    samples nearer to a training image than the closest `copy_quantile` of held-out images are (about
    copy_quantile without copying, 1 if every sample is a copy). A low FD is no evidence of generalisation
    by itself: a generator that memorised the training set scores near 0 against it."""
    d_fake = _pairwise(fake, train).min(axis=1)
    d_held = _pairwise(heldout, train).min(axis=1)
    threshold = np.quantile(d_held, copy_quantile)
    return {"nn_distance_ratio": float(np.median(d_fake) / max(np.median(d_held), 1e-12)),
            "copy_share": float((d_fake < threshold).mean())}


def intra_class_fd(real: np.ndarray, real_labels: np.ndarray, fake: np.ndarray, fake_labels: np.ndarray,
                   num_classes: int, prefix: str = "fcd") -> dict[str, float]:
    """Frechet distance between real and generated features of each class (labels: real and requested), as
    `{prefix}_class_{c}`. NaN for a class with fewer than two real or generated images: one image has no
    covariance."""
    out = {}
    for c in range(num_classes):
        r, f = real[real_labels == c], fake[fake_labels == c]
        out[f"{prefix}_class_{c}"] = frechet_distance(r, f)["fd"]
    return out


def head_tail_gap(per_class: dict[str, float], metric: str, head: list[int], tail: list[int]) -> dict[str, float]:
    """Mean of `{metric}_class_{c}` over the head and the tail classes, their gap and ratio.

    A class whose value is undefined (NaN: the intra-class FCD of a class with one real image) is left out of
    its group's mean and counted in `{group}_{metric}_undefined`; a group with no defined class has mean NaN."""
    out = {}
    for group, classes in (("head", head), ("tail", tail)):
        values = [per_class[f"{metric}_class_{c}"] for c in classes]
        defined = [v for v in values if not math.isnan(v)]
        out[f"{group}_{metric}"] = float(np.mean(defined)) if defined else math.nan
        out[f"{group}_{metric}_undefined"] = float(len(values) - len(defined))
    h, t = out[f"head_{metric}"], out[f"tail_{metric}"]
    out[f"tail_head_{metric}_gap"] = t - h
    out[f"tail_head_{metric}_ratio"] = t / h if h else math.inf
    return out


QUALITY_METRICS = {
    "frechet_distance": frechet_distance,
    "class_reweighted_frechet_distance": class_reweighted_frechet_distance,
    "kernel_inception_distance": kernel_inception_distance,
    "precision_recall_density_coverage": precision_recall_density_coverage,
    "class_histogram": class_histogram,
    "class_recall": class_recall,
    "intra_class_fd": intra_class_fd,
    "nearest_neighbour_memorisation": nearest_neighbour_memorisation,
    "head_tail_gap": head_tail_gap,
    "diversity_ratios": diversity_ratios,
}
