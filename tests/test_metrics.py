"""Registered metrics on cases whose answer is known."""
import math

import numpy as np
import pytest
from scipy import linalg

from components.metrics import QUALITY_METRICS, STABILITY_METRICS, stability_score

fd = QUALITY_METRICS["frechet_distance"]


def test_frechet_of_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(size=(500, 8))
    assert fd(x, x)["fd"] == pytest.approx(0.0, abs=1e-6)


def test_frechet_matches_closed_form_for_gaussians():
    rng = np.random.default_rng(1)
    a = rng.normal(0.0, 1.0, size=(20000, 3))
    b = rng.normal(2.0, 2.0, size=(20000, 3))
    # mu diff^2 = 3 * 4; trace terms = 3 * (1 + 4 - 2 * sqrt(1 * 4)) = 3.
    assert fd(a, b)["fd"] == pytest.approx(15.0, rel=0.03)


def test_frechet_cross_checks_scipy_sqrtm():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(300, 4)), rng.normal(size=(300, 4)) @ rng.normal(size=(4, 4))
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s_a + s_b - 2 * linalg.sqrtm(s_a @ s_b).real)
    assert fd(a, b)["fd"] == pytest.approx(ref, rel=1e-6)


def test_the_psd_trace_form_matches_sqrtm_and_stays_exact_for_singular_covariances():
    import warnings

    from components.metrics.quality import trace_sqrt_cov_product, trace_sqrt_product_psd

    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(400, 6)), rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6))
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    assert trace_sqrt_product_psd(s_a, s_b) == pytest.approx(np.trace(linalg.sqrtm(s_a @ s_b).real), rel=1e-9)
    # Two features that never vary and one that copies another: both covariances singular (rank 3 of 6).
    a[:, 4:] = 0.0
    b[:, 4:] = 0.0
    a[:, 3], b[:, 3] = a[:, 2], b[:, 2]
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sqrtm warns "Matrix is singular" here
        got = trace_sqrt_product_psd(s_a, s_b)
        assert fd(a, b)["fd"] >= 0.0
    # The exact answer from the samples themselves (an SVD, no square root of a matrix).
    assert got == pytest.approx(trace_sqrt_cov_product(a - a.mean(0), b - b.mean(0)), rel=1e-9)


def test_small_sample_trace_form_matches_sqrtm():
    from components.metrics.quality import trace_sqrt_cov_product

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(60, 5)), rng.normal(size=(40, 5)) @ rng.normal(size=(5, 5))
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = np.trace(linalg.sqrtm(s_a @ s_b).real)
    assert trace_sqrt_cov_product(a - a.mean(0), b - b.mean(0)) == pytest.approx(ref, rel=1e-8)
    # Fewer samples than features takes that path; identical sets still give 0.
    wide = rng.normal(size=(30, 100))
    assert fd(wide, wide)["fd"] == pytest.approx(0.0, abs=1e-8)
    assert fd(wide, wide + 1.0)["fd"] == pytest.approx(100.0, rel=1e-8)  # a pure mean shift


def test_class_histogram_kl_and_coverage():
    uniform = QUALITY_METRICS["class_histogram"](np.repeat(np.arange(4), 25), 4)
    assert uniform["class_kl"] == pytest.approx(0.0, abs=1e-9) and uniform["classes_covered"] == 4
    collapsed = QUALITY_METRICS["class_histogram"](np.zeros(100, dtype=int), 4)
    assert collapsed["class_kl"] == pytest.approx(math.log(4)) and collapsed["classes_covered"] == 1


def test_class_recall():
    out = QUALITY_METRICS["class_recall"](np.array([0, 0, 1, 0]), np.array([0, 0, 1, 1]), 2)
    assert out["recall_class_0"] == 1.0 and out["recall_class_1"] == 0.5 and out["recall_mean"] == 0.75


def test_oscillation_std_and_trend():
    trace = {"d_loss": [0.0, 2.0] * 10, "g_loss": list(np.arange(20.0))}
    out = STABILITY_METRICS["oscillation"](trace, window=20)
    assert out["d_loss_std"] == pytest.approx(1.0, rel=0.01) and out["g_loss_trend"] == pytest.approx(1.0)
    assert out["g_loss_std"] == pytest.approx(0.0, abs=1e-9)  # a steady fall is a trend, not oscillation


def test_balance_r_t():
    out = STABILITY_METRICS["balance"]({"d_sign_real": [1.0] * 10, "d_acc_real": [1.0] * 10,
                                        "d_acc_fake": [0.5] * 10}, window=10, r_target=0.6)
    assert out["r_t"] == 1.0 and out["r_t_gap"] == pytest.approx(0.4) and out["d_acc_fake"] == 0.5


def test_grad_spike_rate():
    norms = [1.0] * 99 + [100.0]
    out = STABILITY_METRICS["grad_spikes"]({"grad_norm_d": norms, "grad_norm_g": [1.0] * 100}, window=50)
    assert out["grad_spike_rate"] == pytest.approx(1 / 99)


def test_divergence_gives_inf_score_never_nan():
    trace = {"d_loss": [0.5, float("nan")], "g_loss": [1.0, 1.0], "grad_norm_d": [1, 1], "grad_norm_g": [1, 1]}
    out = stability_score(trace, window=10)
    assert out["diverged"] == 1.0 and out["stability_score"] == math.inf


def test_calm_trace_scores_better_than_oscillating_one():
    calm = {"d_loss": [0.7] * 50, "g_loss": [1.0] * 50, "d_sign_real": [0.6] * 50,
            "grad_norm_d": [1.0] * 50, "grad_norm_g": [1.0] * 50}
    wild = {**calm, "d_loss": [0.1, 1.5] * 25, "d_sign_real": [1.0] * 50}
    assert stability_score(calm, 50)["stability_score"] < stability_score(wild, 50)["stability_score"]


def test_kid_is_near_zero_for_one_distribution_and_matches_brute_force():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
    same = QUALITY_METRICS["kernel_inception_distance"](a, b, subsets=20, subset_size=100)
    shifted = QUALITY_METRICS["kernel_inception_distance"](a, b + 1.0, subsets=20, subset_size=100)
    assert abs(same["kid"]) < 3 * same["kid_std"] + 1e-3 and shifted["kid"] > 10 * abs(same["kid"])
    # One subset of everything: the unbiased MMD^2 written out with loops.
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) + 0.5
    k = lambda u, v: (u @ v / 3 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(6) for j in range(6) if i != j) / 30
    yy = sum(k(y[i], y[j]) for i in range(6) for j in range(6) if i != j) / 30
    xy = sum(k(x[i], y[j]) for i in range(6) for j in range(6)) / 36
    got = QUALITY_METRICS["kernel_inception_distance"](x, y, subsets=1, subset_size=6)
    assert got["kid"] == pytest.approx(xx + yy - 2 * xy)


def test_precision_recall_density_coverage_known_cases():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(100, 4))
    same = QUALITY_METRICS["precision_recall_density_coverage"](real, real.copy(), k=3)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    assert same["density"] >= 1.0  # every fake sits in its own ball and some neighbours'
    far = QUALITY_METRICS["precision_recall_density_coverage"](real, real + 100.0, k=3)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    # Mode collapse: all fakes on one real point -> high precision, low recall and coverage.
    collapsed = QUALITY_METRICS["precision_recall_density_coverage"](real, np.repeat(real[:1], 50, 0) + 1e-6, k=3)
    assert collapsed["precision"] == 1.0 and collapsed["recall"] < 0.1 and collapsed["coverage"] < 0.1


def test_intra_class_fd_and_head_tail_gap():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 4))
    labels = np.repeat([0, 1, 2], 100)
    fake = real.copy()
    fake[labels == 2] += 2.0  # only class 2 is off, by 2 in each of 4 dims: FD = 16
    out = QUALITY_METRICS["intra_class_fd"](real, labels, fake, labels, 3)
    assert out["fcd_class_0"] == pytest.approx(0.0, abs=1e-6) and out["fcd_class_2"] == pytest.approx(16.0, rel=1e-6)
    gap = QUALITY_METRICS["head_tail_gap"](out, "fcd", head=[0], tail=[2])
    assert gap["tail_fcd"] - gap["head_fcd"] == pytest.approx(16.0, rel=1e-6) == gap["tail_head_fcd_gap"]


def test_class_reweighted_frechet_removes_the_class_mixture_term():
    rng = np.random.default_rng(1)
    centres = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 0.0], [0.0, 6.0, 0.0]])
    long_tail = np.repeat([0, 1, 2], [600, 120, 30])  # the reference: a long-tailed mixture
    uniform = np.repeat([0, 1, 2], 400)                 # a perfect class-uniform generator's samples
    real = centres[long_tail] + rng.normal(size=(len(long_tail), 3))
    fake = centres[uniform] + rng.normal(size=(len(uniform), 3))
    fd = QUALITY_METRICS["frechet_distance"]
    reweighted = QUALITY_METRICS["class_reweighted_frechet_distance"]
    plain = fd(fake, real)["fd"]
    matched = reweighted(fake, uniform, np.bincount(long_tail) / len(long_tail), real)["fd"]
    assert plain > 5.0 and matched < 0.3  # same classes, other mixture: only the plain FD sees a gap
    # Target = the sample's own class shares: unit weights, the plain Fréchet distance.
    half = rng.permutation(len(long_tail))[:375]
    own = np.bincount(long_tail[half], minlength=3) / len(half)
    assert reweighted(real[half], long_tail[half], own, real)["fd"] == pytest.approx(fd(real[half], real)["fd"],
                                                                                      rel=1e-6)
    # A generator that gets one class wrong still shows it after re-weighting.
    shifted = fake.copy()
    shifted[uniform == 2] += 3.0
    assert reweighted(shifted, uniform, own, real)["fd"] > matched + 0.2


def test_class_reweighted_frechet_of_a_long_tail_to_uniform_matches_a_weighted_gaussian():
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1], [300, 100])
    a = rng.normal(size=(400, 3)) + labels[:, None] * 2.0
    b = rng.normal(size=(500, 3))
    w = np.where(labels == 0, 0.5 / 300, 0.5 / 100)
    mu = w @ a
    cov = (w[:, None] * (a - mu)).T @ (a - mu) / (1 - (w ** 2).sum())
    from scipy import linalg

    s_b = np.cov(b, rowvar=False)
    expected = ((mu - b.mean(0)) ** 2).sum() + np.trace(cov + s_b - 2 * linalg.sqrtm(cov @ s_b).real)
    got = QUALITY_METRICS["class_reweighted_frechet_distance"](a, labels, np.array([0.5, 0.5]), b)["fd"]
    assert got == pytest.approx(expected, rel=1e-6)


def test_nearest_neighbour_memorisation_tells_copies_from_new_draws():
    memorisation = QUALITY_METRICS["nearest_neighbour_memorisation"]
    rng = np.random.default_rng(3)
    train, heldout = rng.normal(size=(400, 8)), rng.normal(size=(300, 8))
    # Copies of training points (with tiny jitter): every sample is nearer than any held-out image.
    copies = train[rng.integers(0, 400, 500)] + 1e-3 * rng.normal(size=(500, 8))
    copied = memorisation(copies, train, heldout)
    assert copied["nn_distance_ratio"] < 0.01 and copied["copy_share"] == 1.0
    # Fresh draws from the same distribution: held-out-like distances, about 5% below the 5% quantile.
    fresh = memorisation(rng.normal(size=(2000, 8)), train, heldout)
    assert 0.9 < fresh["nn_distance_ratio"] < 1.1 and 0.02 < fresh["copy_share"] < 0.09
    # Half copies, half fresh: the copy share sees the copied half.
    mixed = memorisation(np.concatenate([copies, rng.normal(size=(500, 8))]), train, heldout)
    assert 0.48 < mixed["copy_share"] < 0.56


# Section: the rarest classes. The split's minimum leaves a tail class one training image (and one each for
# val and test); each per-class metric must give a defined value or an explicit NaN at n = 1 and n = 2.
def _tail_case(n_rare: int, seed: int = 0):
    """Features (F = 16) of a head class (40 images) and a rare class (n_rare), real and generated."""
    rng = np.random.default_rng(seed)
    real = np.concatenate([rng.normal(0, 1, (40, 16)), rng.normal(3, 1, (n_rare, 16))])
    labels = np.array([0] * 40 + [1] * n_rare)
    return real, labels


@pytest.mark.parametrize("n", [1, 2])
def test_intra_class_fd_of_a_rare_class(n):
    real, labels = _tail_case(n)
    fake = np.random.default_rng(1).normal(0, 1, (20, 16))
    out = QUALITY_METRICS["intra_class_fd"](real, labels, fake, np.array([0] * 10 + [1] * 10), 2)
    assert np.isfinite(out["fcd_class_0"])
    if n == 1:  # one image has no covariance: undefined, said as NaN
        assert math.isnan(out["fcd_class_1"])
    else:
        assert np.isfinite(out["fcd_class_1"]) and out["fcd_class_1"] > 0


@pytest.mark.parametrize("n", [1, 2])
def test_frechet_distance_between_tiny_sets(n):
    a = np.random.default_rng(0).normal(0, 1, (n, 16))
    fd = QUALITY_METRICS["frechet_distance"](a, a + 1.0)["fd"]
    if n == 2:  # same covariance, means 1 apart in each of 16 dims
        assert fd == pytest.approx(16.0, rel=1e-6)
    else:  # one image has no covariance
        assert math.isnan(fd)


@pytest.mark.parametrize("n", [1, 2])
def test_head_tail_gap_leaves_out_and_counts_undefined_classes(n):
    per_class = {"fcd_class_0": 10.0, "fcd_class_1": 30.0 if n == 2 else math.nan, "fcd_class_2": 50.0}
    out = QUALITY_METRICS["head_tail_gap"](per_class, "fcd", [0], [1, 2])
    assert out["tail_fcd"] == (40.0 if n == 2 else 50.0)
    assert out["tail_fcd_undefined"] == (0.0 if n == 2 else 1.0) and out["head_fcd_undefined"] == 0.0
    assert out["tail_head_fcd_ratio"] == out["tail_fcd"] / 10.0


def test_head_tail_gap_of_a_group_with_no_defined_class_is_nan():
    out = QUALITY_METRICS["head_tail_gap"]({"fcd_class_0": 10.0, "fcd_class_1": math.nan}, "fcd", [0], [1])
    assert math.isnan(out["tail_fcd"]) and math.isnan(out["tail_head_fcd_ratio"])
    assert out["tail_fcd_undefined"] == 1.0


@pytest.mark.parametrize("n", [1, 2])
def test_class_recall_and_histogram_of_a_rarely_requested_class(n):
    requested = np.array([0] * 10 + [1] * n)
    predicted = np.array([0] * 10 + [1] * (n - 1) + [0])  # the rare class's last sample is misread
    recall = QUALITY_METRICS["class_recall"](predicted, requested, 2)
    assert recall["recall_class_1"] == (n - 1) / n and recall["recall_class_0"] == 1.0
    hist = QUALITY_METRICS["class_histogram"](predicted, 2)
    assert hist["share_class_1"] == pytest.approx((n - 1) / (10 + n))
    # generated share 0 or 1/12, under a quarter of the uniform target's 1/2: the rare class is not covered
    assert np.isfinite(hist["class_kl"]) and hist["classes_covered"] == 1.0


@pytest.mark.parametrize("n", [1, 2])
def test_class_reweighted_frechet_with_a_rare_class(n):
    real, labels = _tail_case(n)
    out = QUALITY_METRICS["class_reweighted_frechet_distance"](real, labels, np.array([0.5, 0.5]), real)
    assert np.isfinite(out["fd"]) and out["fd"] > 0  # the rare class gets half the mass from n images


@pytest.mark.parametrize("n", [1, 2])
def test_nearest_neighbour_memorisation_with_tiny_held_out_sets(n):
    rng = np.random.default_rng(0)
    train = rng.normal(0, 1, (30, 8))
    out = QUALITY_METRICS["nearest_neighbour_memorisation"](train[:5].copy(), train, rng.normal(0, 1, (n, 8)))
    assert out["nn_distance_ratio"] == 0.0 and out["copy_share"] == 1.0  # copies, even against 1 or 2 references


@pytest.mark.parametrize("n", [1, 2])
def test_manifold_and_kernel_metrics_on_sets_too_small_are_nan(n):
    small = np.random.default_rng(0).normal(0, 1, (n, 8))
    big = np.random.default_rng(1).normal(0, 1, (50, 8))
    prdc = QUALITY_METRICS["precision_recall_density_coverage"](small, big, 5)
    assert all(math.isnan(v) for v in prdc.values())
    kid = QUALITY_METRICS["kernel_inception_distance"](small, big, subsets=2, subset_size=10)
    assert math.isnan(kid["kid"]) if n == 1 else np.isfinite(kid["kid"])
