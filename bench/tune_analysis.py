"""The tune study's analysis (bench/tune_study.py records the trials): rank correlations of the score and its
components with quality, the score redesign (chosen on the design trials, judged on the held-out ones), the
untuned control, the seed noise floor, and ASHA replayed on the recorded reports."""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from components.metrics.scoring_config import StabilityWeights
from components.metrics.stability import combine

# Quality measures and the sign that makes "better" positive: a good score (low) should come with a low FCD
# and a high diversity or recall, so a predictive score has sign * rho > 0.
QUALITY = {"fcd_class_matched": 1, "diversity_mean": -1, "tail_fcd": 1, "tail_recall": -1}
PRIMARY = ("fcd_class_matched", "diversity_mean", "tail_fcd")
COMPONENTS = {"oscillation": lambda p: p["d_loss_std"] + p["g_loss_std"], "r_t_gap": lambda p: p["r_t_gap"],
              "grad_spike_rate": lambda p: p["grad_spike_rate"], "class_kl": lambda p: p["class_kl"],
              "uncovered_share": lambda p: p["uncovered_share"], "collapse": lambda p: p["collapse"],
              "fcd": lambda p: p["fcd"]}
# The weights campaigns shipped with before this study; the redesign is chosen around them.
PREVIOUS = StabilityWeights(oscillation=4.0, balance=1.0, grad_spikes=1.0, r_target=0.6, class_kl=1.0, coverage=1.0,
                            fcd=0.0, collapse=1.0)
STRONG = 0.6  # |rho| below this counts as weak (the bar)
GAP_MAX, STEP_SHARE_MAX = 0.05, 0.35  # ASHA: pick within 5 % of the best quality, at most 35 % of the steps


def load(files: list[Path]) -> list[dict]:
    return [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]


def score_of(report: dict, w: StabilityWeights) -> float:
    """The score of one recorded report under weights w (the TrialScorer's formula: stability.combine)."""
    if report.get("diverged") or not math.isfinite(report.get("stability_score", math.inf)):
        return math.inf
    return combine(report, w.oscillation, w.balance, w.grad_spikes, w.class_kl, w.coverage, w.fcd, w.collapse)


def quality_of(record: dict, key: str) -> float:
    """A diverged trial (no evaluation) is the worst on every measure."""
    v = record["quality"].get(key)
    return QUALITY[key] * math.inf if v is None else float(v)


def rho(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation; infinities rank last, as they should. None without variation."""
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    r = spearmanr(np.nan_to_num(x, posinf=1e300, neginf=-1e300), np.nan_to_num(y, posinf=1e300, neginf=-1e300)).statistic
    return None if not np.isfinite(r) else round(float(r), 3)


def correlations(trials: list[dict], values: list[float]) -> dict:
    """rho of `values` (one per trial) with each quality measure, over all trials and over those that
    did not diverge (divergence alone makes a score look predictive: both sides rank it last)."""
    ok = [i for i, t in enumerate(trials) if not t["quality"].get("diverged")]
    out = {}
    for key, sign in QUALITY.items():
        q = [quality_of(t, key) for t in trials]
        r_all, r_ok = rho(values, q), rho([values[i] for i in ok], [q[i] for i in ok])
        # A campaign chooses among its better trials: rho over the better half (by this measure) says whether
        # the score still ranks them, where a wide grid's good-versus-broken contrast no longer helps.
        better = sorted(range(len(q)), key=lambda i: sign * q[i])[:max(3, len(q) // 2)]
        out[key] = {"rho": r_all, "rho_without_diverged": r_ok,
                    "rho_better_half": rho([values[i] for i in better], [q[i] for i in better]),
                    "predicts": None if r_ok is None else bool(sign * r_ok >= STRONG)}
    return out


def pick_regret(trials: list[dict], w: StabilityWeights) -> dict:
    """What choosing by the score costs: the class-matched FCD of the trial it ranks first against the best
    in the set (0 = it picked the best)."""
    scores, fcd = final_scores(trials, w), [quality_of(t, "fcd_class_matched") for t in trials]
    pick = min(range(len(trials)), key=lambda i: (scores[i], i))
    return {"pick": trials[pick]["trial"], "pick_fcd_class_matched": fcd[pick], "best": trials[fcd.index(min(fcd))]["trial"],
            "best_fcd_class_matched": min(fcd), "regret": round(fcd[pick] / min(fcd) - 1, 4)}


def final_scores(trials: list[dict], w: StabilityWeights) -> list[float]:
    return [score_of(t["reports"][-1], w) for t in trials]


def agreement(trials: list[dict], w: StabilityWeights) -> float:
    """How well weights w rank trials, as the mean sign-adjusted rho over the primary measures (the
    non-diverged trials only, so divergence does not flatter it)."""
    ok = [t for t in trials if not t["quality"].get("diverged")]
    scores = final_scores(ok, w)
    rs = [rho(scores, [quality_of(t, k) for t in ok]) for k in PRIMARY]
    return float(np.mean([QUALITY[k] * (r or 0.0) for k, r in zip(PRIMARY, rs)]))


def candidate_weights() -> list[StabilityWeights]:
    """A small, fixed family around the previous weights: the stability terms stay (they catch divergence),
    the report-time FCD term is added at increasing weight, and the mode terms are scaled."""
    base = PREVIOUS
    out = []
    for osc, fcd, modes in itertools.product((base.oscillation, 1.0), (0.0, 0.5, 1.0, 2.0, 4.0, 8.0), (1.0, 3.0)):
        out.append(base.model_copy(update={"oscillation": osc, "fcd": fcd, "class_kl": modes * base.class_kl,
                                           "coverage": modes * base.coverage, "collapse": modes * base.collapse}))
    return out


def redesign(design: list[dict]) -> tuple[StabilityWeights, list[dict]]:
    table = [{"weights": w.model_dump(), "agreement": round(agreement(design, w), 3)} for w in candidate_weights()]
    best = max(range(len(table)), key=lambda i: table[i]["agreement"])
    return candidate_weights()[best], table


def asha_replay(trials: list[dict], w: StabilityWeights, grace: int, rf: float, order: list[int],
                slots: int = 2) -> dict:
    """Ray's own ASHA bracket fed the recorded reports in the order a `slots`-wide campaign would produce them
    (each report at its trial's measured time), with trials started in `order`. Returns the pick (lowest final
    score among trials that reached the last report, as pick_best does) and the share of trial-steps used."""
    from ray.tune.schedulers.async_hyperband import _Bracket

    max_t = max(len(t["reports"]) for t in trials)
    bracket = _Bracket(min_t=grace, max_t=max_t, reduction_factor=rf, s=0)

    class _Trial:
        def __init__(self, i):
            self.trial_id = str(i)

    clock, queue = [0.0] * slots, list(order)
    used_reports, finished = {}, {}
    events = []  # (time, slot, trial, report index)

    def start(slot: int) -> None:
        if not queue:
            return
        i = queue.pop(0)
        per_report = trials[i]["train_seconds"] / max(1, len(trials[i]["reports"]))
        events.append((clock[slot] + per_report, slot, i, 0, per_report))

    for s in range(slots):
        start(s)
    while events:
        events.sort()
        t, slot, i, k, per_report = events.pop(0)
        clock[slot] = t
        score = score_of(trials[i]["reports"][k], w)
        used_reports[i] = k + 1
        it = k + 1
        last = k + 1 == len(trials[i]["reports"])
        decision = bracket.on_result(_Trial(i), it, -score)  # every report is recorded at its rung
        stop = last or not math.isfinite(score) or decision == "STOP"
        if last and it == max_t and math.isfinite(score):
            finished[i] = score
        if stop:
            start(slot)
        else:
            events.append((t + per_report, slot, i, k + 1, per_report))
    total = sum(len(t["reports"]) * int(t["reports"][0]["step"]) for t in trials)
    steps = sum(n * int(trials[i]["reports"][0]["step"]) for i, n in used_reports.items())
    pick = min(finished, key=lambda i: (finished[i], i)) if finished else None
    return {"pick": pick, "step_share": steps / total}


def asha_study(trials: list[dict], w: StabilityWeights, settings: list[tuple[int, float]], shuffles: int = 50) -> list[dict]:
    """Each (grace, rf) replayed in trial order and in `shuffles` random orders; the quality gap of the pick
    to the grid's best quality (class-matched FCD) and to the pick of the full grid by the same score."""
    fcd = [quality_of(t, "fcd_class_matched") for t in trials]
    best = min(fcd)
    full = final_scores(trials, w)
    full_pick = min(range(len(trials)), key=lambda i: (full[i], i))
    rng = np.random.default_rng(0)
    orders = [list(range(len(trials)))] + [list(rng.permutation(len(trials))) for _ in range(shuffles)]
    out = []
    for grace, rf in settings:
        runs = [asha_replay(trials, w, grace, rf, order) for order in orders]
        gaps = [fcd[r["pick"]] / best - 1 for r in runs]
        gaps_full = [fcd[r["pick"]] / fcd[full_pick] - 1 for r in runs]
        shares = [r["step_share"] for r in runs]
        out.append({"grace_reports": grace, "reduction_factor": rf,
                    "in_trial_order": {"pick": trials[runs[0]["pick"]]["trial"], "gap_to_best": round(gaps[0], 4),
                                       "gap_to_full_grid_pick": round(gaps_full[0], 4), "step_share": round(shares[0], 3)},
                    "over_orders": {"orders": len(orders), "gap_to_best_median": round(float(np.median(gaps)), 4),
                                    "gap_to_best_p90": round(float(np.percentile(gaps, 90)), 4),
                                    "gap_to_full_grid_pick_median": round(float(np.median(gaps_full)), 4),
                                    "step_share_median": round(float(np.median(shares)), 3),
                                    "step_share_max": round(float(np.max(shares)), 3),
                                    "share_of_orders_meeting_both": round(float(np.mean(
                                        [g <= GAP_MAX and s <= STEP_SHARE_MAX for g, s in zip(gaps, shares)])), 3)}})
    return out


def seeds_summary(records: list[dict], trial: str) -> dict | None:
    rows = [r for r in records if r["trial"] == trial]
    if not rows:
        return None
    out = {"trial": trial, "seeds": sorted(r["seed"] for r in rows), "overrides": rows[0]["overrides"]}
    for key in ("fcd_class_matched", "fcd_class_matched_ratio", "diversity_mean", "tail_fcd"):
        v = np.array([quality_of(r, key) for r in rows], dtype=float)
        out[key] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                    "values": [float(x) for x in v]}
    return out


def _components(trials: list[dict]) -> dict:
    out = {}
    for name, part in COMPONENTS.items():
        values = [part(t["reports"][-1]) if not t["quality"].get("diverged") and "class_kl" in t["reports"][-1]
                  else math.inf for t in trials]
        out[name] = correlations(trials, values)
    return out


def _trial_row(t: dict, previous: StabilityWeights, new: StabilityWeights) -> dict:
    q = t["quality"]
    return {"trial": t["trial"], "role": t["role"], "seed": t["seed"], "overrides": t["overrides"], "steps": t["steps"],
            "score_previous": score_of(t["reports"][-1], previous), "score_redesigned": score_of(t["reports"][-1], new),
            "train_seconds": t["train_seconds"], "eval_seconds": t["eval_seconds"],
            **{k: q.get(k) for k in ("diverged", "fcd_class_matched", "fcd_class_matched_ratio", "class_kl",
                                     "diversity_mean", "tail_diversity", "tail_fcd", "head_fcd", "tail_recall",
                                     "copy_share_pixel")}}


def _pick(trials: list[dict], w: StabilityWeights) -> dict:
    scores = final_scores(trials, w)
    return trials[min(range(len(trials)), key=lambda i: (scores[i], i))]


def _median_trial(trials: list[dict], w: StabilityWeights) -> dict:
    scores = final_scores(trials, w)
    order = sorted(range(len(trials)), key=lambda i: (scores[i], i))
    return trials[order[len(order) // 2]]


def control_comparison(records: list[dict], grid: list[dict], w: StabilityWeights, label: str) -> dict:
    """The campaign's handoff against the untuned control (the default config, same steps), both ways a
    campaign hands on: the picked trial's own networks (seed 0, what `handoff: best_trial` passes on) and its
    config retrained (the mean over the pick's seeds, `handoff: retrain`), each against the control's seed mean."""
    pick = _pick(grid, w)
    cand, ctrl = seeds_summary(records, pick["trial"]), seeds_summary(records, "control")
    if ctrl is None:
        return {"score": label, "pick": pick["trial"], "control": None}
    networks = quality_of(pick, "fcd_class_matched")
    config, control = cand["fcd_class_matched"]["mean"], ctrl["fcd_class_matched"]["mean"]
    return {"score": label, "pick": pick["trial"], "pick_overrides": pick["overrides"],
            "control_fcd_class_matched": ctrl["fcd_class_matched"], "control_diversity": ctrl["diversity_mean"],
            "control_tail_fcd": ctrl["tail_fcd"],
            "networks": {"fcd_class_matched": networks, "diversity": quality_of(pick, "diversity_mean"),
                         "tail_fcd": quality_of(pick, "tail_fcd"), "fcd_ratio_to_control": round(networks / control, 3),
                         "tuning_paid": bool(networks < control)},
            "config": {"fcd_class_matched": cand["fcd_class_matched"], "diversity": cand["diversity_mean"],
                       "tail_fcd": cand["tail_fcd"], "fcd_ratio_to_control": round(config / control, 3),
                       "tuning_paid": bool(config < control)}}


def plot(grid: list[dict], control: dict | None, previous: StabilityWeights, new: StabilityWeights, path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, w, title in ((axes[0], previous, "previous score"), (axes[1], new, "redesigned score")):
        for role, marker in (("design", "o"), ("held_out", "^")):
            ts = [t for t in grid if t["role"] == role and not t["quality"].get("diverged")]
            ax.scatter(final_scores(ts, w), [t["quality"]["fcd_class_matched_ratio"] for t in ts], marker=marker,
                       label=role.replace("_", "-"))
        if control is not None:
            ax.scatter(final_scores([control], w), [control["quality"]["fcd_class_matched_ratio"]], marker="*", s=160,
                       color="black", label="control (default config)")
        ax.set(xlabel=f"{title} at the last report (lower is better)", ylabel="class-matched FCD ÷ real-vs-real",
               xscale="log", yscale="log", title=title)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def analyse(files: list[Path], out: Path) -> dict:
    from bench.tune_study import DESIGN, HELD_OUT, REPORT_EVERY, SPACE_SEED, STEPS, WINDOW

    records = load(files)
    seed0 = {r["trial"]: r for r in records if r["seed"] == 0}
    design = [seed0[str(i)] for i in DESIGN if str(i) in seed0]
    held = [seed0[str(i)] for i in HELD_OUT if str(i) in seed0]
    grid = design + held
    previous = PREVIOUS
    new, table = redesign(design)
    settings = [(g, rf) for g in (1, 2, 3) for rf in (2, 3, 4)]
    result = {
        "setup": {"steps": STEPS, "report_every": REPORT_EVERY, "window": WINDOW, "space_seed": SPACE_SEED,
                  "design_trials": len(design), "held_out_trials": len(held), "strong_rho": STRONG,
                  "quality_signs": QUALITY, "asha_targets": {"gap_max": GAP_MAX, "step_share_max": STEP_SHARE_MAX}},
        "trials": [_trial_row(t, previous, new) for t in [*grid, *[r for r in records if r not in grid]]],
        "previous_score": {"weights": previous.model_dump(), "design": correlations(design, final_scores(design, previous)),
                          "held_out": correlations(held, final_scores(held, previous)),
                          "all": correlations(grid, final_scores(grid, previous)),
                          "pick_regret": {"design": pick_regret(design, previous), "held_out": pick_regret(held, previous),
                                          "all": pick_regret(grid, previous)}},
        "components": _components(grid),
        "redesign": {"chosen_on": "design trials: the highest mean sign-adjusted rho over " + ", ".join(PRIMARY),
                     "weights": new.model_dump(), "candidates": table,
                     "is_the_shipped_default": new == StabilityWeights(),
                     "design": correlations(design, final_scores(design, new)),
                     "held_out": correlations(held, final_scores(held, new)),
                     "pick_regret": {"design": pick_regret(design, new), "held_out": pick_regret(held, new),
                                     "all": pick_regret(grid, new)}},
        "best_and_median": {"best": _pick(grid, new)["trial"], "median": _median_trial(grid, new)["trial"]},
        "noise_floor": {name: seeds_summary(records, t) for name, t in
                        (("best", _pick(grid, new)["trial"]), ("median", _median_trial(grid, new)["trial"]),
                         ("control", "control"))},
        "control": [control_comparison(records, grid, w, label) for w, label in ((previous, "previous"), (new, "redesigned"))],
        "asha": {"previous_setting": {"grace_reports": max(1, STEPS // REPORT_EVERY // 4), "reduction_factor": 2},
                 "previous_score": asha_study(grid, previous, settings), "redesigned_score": asha_study(grid, new, settings)},
    }
    result["verdicts"] = verdicts(result, grid, new)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float))
    plot(grid, seed0.get("control"), previous, new, out.with_suffix(".png"))
    for line in summary_lines(result):
        print(line)
    return result


def verdicts(result: dict, grid: list[dict], new: StabilityWeights) -> dict:
    """The issue's questions answered from the result: does the shipped score predict quality on held-out
    trials, does its pick beat the control, and does the shipped ASHA setting keep the pick within 5 % at
    most 35 % of the trial-steps (against the grid's best, and against what the full grid picks by the score)."""
    from pipeline.config import TuneConfig

    max_t = max(len(t["reports"]) for t in grid)
    grace, rf = math.ceil(max_t / 12), TuneConfig().asha_reduction_factor
    (asha,) = asha_study(grid, new, [(grace, rf)])
    held = result["redesign"]["held_out"]
    control = next(c for c in result["control"] if c["score"] == "redesigned")
    order, orders = asha["in_trial_order"], asha["over_orders"]
    return {
        "score_predicts_on_held_out": {k: v["predicts"] for k, v in held.items()},
        "tuning_paid_networks": control["networks"]["tuning_paid"],
        "fcd_ratio_networks_to_control": control["networks"]["fcd_ratio_to_control"],
        "tuning_paid_config": control["config"]["tuning_paid"],
        "fcd_ratio_config_to_control": control["config"]["fcd_ratio_to_control"],
        "asha_shipped_setting": {"grace_reports": grace, "reduction_factor": rf, **asha},
        "asha_in_trial_order_ok_against_best": order["gap_to_best"] <= GAP_MAX and order["step_share"] <= STEP_SHARE_MAX,
        "asha_in_trial_order_ok_against_full_grid_pick": order["gap_to_full_grid_pick"] <= GAP_MAX
        and order["step_share"] <= STEP_SHARE_MAX,
        "asha_median_over_orders_ok_against_full_grid_pick": orders["gap_to_full_grid_pick_median"] <= GAP_MAX
        and orders["step_share_median"] <= STEP_SHARE_MAX,
    }


def _fmt(c: dict) -> str:
    return ", ".join(f"{k} {v['rho_without_diverged']} (better half {v['rho_better_half']})" for k, v in c.items())


def summary_lines(r: dict) -> list[str]:
    lines = [f"trials: {r['setup']['design_trials']} design + {r['setup']['held_out_trials']} held-out",
             f"previous score, design:   {_fmt(r['previous_score']['design'])}",
             f"previous score, held-out: {_fmt(r['previous_score']['held_out'])}",
             f"redesigned {r['redesign']['weights']}",
             f"redesigned, design:       {_fmt(r['redesign']['design'])}",
             f"redesigned, held-out:     {_fmt(r['redesign']['held_out'])}",
             f"best {r['best_and_median']['best']}, median {r['best_and_median']['median']}"]
    lines += [f"pick regret {label} {part}: {r[key]['pick_regret'][part]}" for label, key in
              (("previous", "previous_score"), ("redesigned", "redesign")) for part in ("design", "held_out", "all")]
    lines += [f"component {k}: {_fmt(v)}" for k, v in r["components"].items()]
    lines += [f"control vs pick ({c['score']}): pick {c['pick']} networks {c['networks']} config {c['config']}, control "
              f"{c['control_fcd_class_matched']}" for c in r["control"]]
    lines.append(f"verdicts: {r['verdicts']}")
    for label in ("previous_score", "redesigned_score"):
        for s in r["asha"][label]:
            lines.append(f"asha {label} grace {s['grace_reports']} rf {s['reduction_factor']}: {s['in_trial_order']} "
                         f"{s['over_orders']}")
    return lines
