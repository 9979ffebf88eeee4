"""Stability metrics over a training trace (dict of per-step lists), and the composite score.

stability_score = w_osc * (std(d_loss) + std(g_loss)) over the trailing window
                + w_bal * |r_t - r_target|,  r_t = E[sign D(real)] over the window (1 = D overfits)
                + w_spk * grad-spike rate
                + w_kl  * KL(generated class histogram || target)      } from the evaluator classifier on a
                + w_cov * (1 - classes covered / classes)               } fixed batch of samples, when given
                + w_fcd * FCD(generated, real) / 100                    } (optional quality term, off by default)
                + w_col * mean over classes of max(0, 1 - diversity ratio) } within-class collapse, in pixels
                = inf if the run diverged.
Lower is better. Every component is reported on its own next to the score.
"""
from __future__ import annotations

import math

import numpy as np


def _tail(trace: dict[str, list[float]], key: str, window: int) -> np.ndarray:
    return np.asarray(trace.get(key, [])[-window:], dtype=np.float64)


def oscillation(trace: dict[str, list[float]], window: int) -> dict[str, float]:
    """Over the trailing window, for the D and G losses: the least-squares slope (trend per step) and the std
    around that line. Detrended, so a loss that falls steadily does not count as oscillating."""
    out = {}
    for key in ("d_loss", "g_loss"):
        tail = _tail(trace, key, window)
        if len(tail) > 2 and np.all(np.isfinite(tail)):
            t = np.arange(len(tail))
            slope, intercept = np.polyfit(t, tail, 1)
            out[f"{key}_std"] = float((tail - (slope * t + intercept)).std())
            out[f"{key}_trend"] = float(slope)
        else:
            out[f"{key}_std"] = float(tail.std()) if len(tail) > 1 else 0.0
            out[f"{key}_trend"] = 0.0
    return out


def balance(trace: dict[str, list[float]], window: int, r_target: float = 0.6) -> dict[str, float]:
    """D accuracy on real and fake, r_t = E[sign D(real)] and its distance from the target."""
    r_t = float(_tail(trace, "d_sign_real", window).mean()) if trace.get("d_sign_real") else 0.0
    return {
        "d_acc_real": float(_tail(trace, "d_acc_real", window).mean()) if trace.get("d_acc_real") else 0.0,
        "d_acc_fake": float(_tail(trace, "d_acc_fake", window).mean()) if trace.get("d_acc_fake") else 0.0,
        "r_t": r_t,
        "r_t_gap": abs(r_t - r_target),
    }


def grad_spikes(trace: dict[str, list[float]], window: int, k: float = 5.0) -> dict[str, float]:
    """Share of steps whose G or D gradient norm exceeds k x the running median of the steps before."""
    rates = []
    for key in ("grad_norm_d", "grad_norm_g"):
        norms = np.asarray(trace.get(key, []), dtype=np.float64)
        spikes = [norms[i] > k * np.median(norms[max(0, i - window):i]) for i in range(1, len(norms))]
        rates.append(float(np.mean(spikes)) if spikes else 0.0)
    return {"grad_spike_rate": max(rates)}


def divergence(trace: dict[str, list[float]], bound: float = 1e4) -> dict[str, float]:
    """1 if any loss or gradient norm is non-finite or a loss exceeds `bound`, else 0."""
    for key in ("d_loss", "g_loss", "grad_norm_d", "grad_norm_g"):
        vals = np.asarray(trace.get(key, []), dtype=np.float64)
        if not np.all(np.isfinite(vals)):
            return {"diverged": 1.0}
        if key.endswith("loss") and len(vals) and np.abs(vals).max() > bound:
            return {"diverged": 1.0}
    return {"diverged": 0.0}


STABILITY_METRICS = {
    "oscillation": oscillation,
    "balance": balance,
    "grad_spikes": grad_spikes,
    "divergence": divergence,
}


def mode_terms(class_hist: dict[str, float], num_classes: int, fcd: float | None = None) -> dict[str, float]:
    """The mode-coverage inputs of the score from `class_histogram` output (and an optional FCD)."""
    out = {"class_kl": class_hist["class_kl"], "classes_covered": class_hist["classes_covered"],
           "uncovered_share": 1.0 - class_hist["classes_covered"] / num_classes}
    if fcd is not None:
        out["fcd"] = fcd
    return out


def stability_score(trace: dict[str, list[float]], window: int, w_osc: float = 1.0, w_bal: float = 1.0,
                    w_spk: float = 1.0, r_target: float = 0.6, bound: float = 1e4,
                    modes: dict[str, float] | None = None, w_kl: float = 1.0, w_cov: float = 1.0,
                    w_fcd: float = 0.0, w_collapse: float = 0.0) -> dict[str, float]:
    """All stability components plus `stability_score` (inf, never NaN, if diverged).

    modes: `mode_terms` output for the current generator; without it the coverage terms are left out."""
    parts = {**oscillation(trace, window), **balance(trace, window, r_target), **grad_spikes(trace, window),
             **divergence(trace, bound), **(modes or {})}
    score = combine(parts, w_osc, w_bal, w_spk, w_kl, w_cov, w_fcd, w_collapse)
    return {**parts, "stability_score": score}


def combine(parts: dict[str, float], w_osc: float = 1.0, w_bal: float = 1.0, w_spk: float = 1.0,
            w_kl: float = 1.0, w_cov: float = 1.0, w_fcd: float = 0.0, w_collapse: float = 0.0) -> float:
    """The weighted sum of already computed components (inf if diverged); the mode terms count only when
    the parts have them. bench/tune_analysis.py re-weights recorded reports with this same function."""
    if parts["diverged"]:
        return math.inf
    score = (w_osc * (parts["d_loss_std"] + parts["g_loss_std"]) + w_bal * parts["r_t_gap"]
             + w_spk * parts["grad_spike_rate"])
    if "class_kl" in parts:
        score += (w_kl * parts["class_kl"] + w_cov * parts["uncovered_share"] + w_fcd * parts.get("fcd", 0.0) / 100
                  + w_collapse * parts.get("collapse", 0.0))
    return float(score) if math.isfinite(score) else math.inf
