"""The tune study's analysis on known answers: Ray's ASHA replayed on recorded reports, rank correlations,
the cost of picking by the score, and the study's search space."""
import math

import pytest

from bench.tune_analysis import PREVIOUS, asha_replay, correlations, pick_regret, score_of
from bench.tune_study import DESIGN, HELD_OUT, sampled_space

ZERO = {"d_loss_std": 0.0, "g_loss_std": 0.0, "grad_spike_rate": 0.0, "class_kl": 0.0, "uncovered_share": 0.0,
        "collapse": 0.0, "fcd": 0.0, "diverged": 0.0}


def _trial(name: str, scores: list[float], fcd: float = 10.0, diversity: float = 0.8) -> dict:
    """A recorded trial whose score under the previous weights is `scores[k]` at report k (only r_t_gap set)."""
    reports = [{**ZERO, "r_t_gap": s, "stability_score": s, "step": 10 * (k + 1)} for k, s in enumerate(scores)]
    return {"trial": name, "role": "design", "train_seconds": 4.0, "reports": reports,
            "quality": {"fcd_class_matched": fcd, "diversity_mean": diversity, "tail_fcd": fcd * 2,
                        "tail_recall": 1.0, "diverged": 0.0}}


def test_a_recorded_report_is_rescored_with_the_trial_scorers_formula():
    w = PREVIOUS
    report = {**ZERO, "d_loss_std": 0.1, "g_loss_std": 0.2, "r_t_gap": 0.3, "class_kl": 0.4, "fcd": 50.0,
              "collapse": 0.5, "stability_score": 0.0}
    assert score_of(report, w) == pytest.approx(4 * 0.3 + 0.3 + 0.4 + 0.5)  # fcd weight 0 in the previous score
    assert score_of(report, w.model_copy(update={"fcd": 2.0})) == pytest.approx(2.4 + 2.0 * 50 / 100)
    assert score_of({**report, "diverged": 1.0}, w) == math.inf


def test_asha_replay_stops_what_rays_bracket_stops_and_counts_the_steps():
    # Constant scores 1, 2, 0.5, 3 over 4 reports, one slot, rungs at 1, 2 and 4 reports (grace 1, rf 2):
    # trial 1 and trial 3 fall below the median recorded at the first rung and stop there.
    trials = [_trial(str(i), [s] * 4) for i, s in enumerate([1.0, 2.0, 0.5, 3.0])]
    out = asha_replay(trials, PREVIOUS, grace=1, rf=2, order=[0, 1, 2, 3], slots=1)
    assert out["pick"] == 2
    assert out["step_share"] == pytest.approx((4 + 1 + 4 + 1) / 16)
    # In the reverse order the worst trial starts first and is never stopped: nothing is recorded before it.
    out = asha_replay(trials, PREVIOUS, grace=1, rf=2, order=[3, 2, 1, 0], slots=1)
    assert out["pick"] == 2 and out["step_share"] > 10 / 16


def test_correlations_have_the_sign_of_a_predictive_score_and_leave_divergence_out():
    good = [_trial(str(i), [float(i)], fcd=10.0 + i, diversity=0.9 - 0.1 * i) for i in range(5)]
    c = correlations(good, [float(i) for i in range(5)])
    assert c["fcd_class_matched"]["rho"] == 1.0 and c["diversity_mean"]["rho"] == -1.0
    assert c["fcd_class_matched"]["predicts"] and c["diversity_mean"]["predicts"]
    assert correlations(good, [float(-i) for i in range(5)])["fcd_class_matched"]["predicts"] is False
    diverged = _trial("d", [math.inf])
    diverged["quality"] = {"diverged": 1.0}
    c = correlations([*good, diverged], [*range(5), math.inf])
    assert c["fcd_class_matched"]["rho"] == 1.0 and c["fcd_class_matched"]["rho_without_diverged"] == 1.0


def test_pick_regret_is_the_quality_given_up_by_trusting_the_score():
    trials = [_trial("a", [0.5], fcd=30.0), _trial("b", [0.9], fcd=20.0), _trial("c", [2.0], fcd=40.0)]
    regret = pick_regret(trials, PREVIOUS)
    assert (regret["pick"], regret["best"]) == ("a", "b") and regret["regret"] == pytest.approx(0.5)


def test_the_study_space_is_fixed_and_spans_rates_batches_and_regularisers():
    space = sampled_space()
    assert space == sampled_space() and len(space) == HELD_OUT.stop and DESIGN.stop == HELD_OUT.start
    values = lambda key: [o.split("=", 1)[1] for s in space for o in s if o.startswith(key + "=")]  # noqa: E731
    assert all(5e-5 <= float(v) <= 2e-3 for v in values("train.lr_g") + values("train.lr_d"))
    assert set(values("train.batch_size")) == {"16", "32", "64"}
    assert set(values("loss.r1_gamma")) == {"0.0", "1.0", "10.0"} and set(values("model.d_norm")) == {"spectral", "none"}
    assert 0 < sum("loss.diffaugment=[]" in s for s in space) < len(space)
