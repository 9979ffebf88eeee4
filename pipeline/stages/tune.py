"""tune: a Ray Tune campaign over learning rates, batch size and regularisation, scored by stability.

Reads:  prepare's data/, and the train stage's config as the base of every trial.
Writes: results.csv, best_config.json, candidate/checkpoint.pt (best trial or retrained), plots.
"""
from __future__ import annotations

import copy
import logging
import os
import json
import math
import shutil
import tempfile
from pathlib import Path

import mlflow
import torch

from components.metrics.stability import stability_score
from components.plots import line_chart, scatter_chart
from components.training.checkpoint import CHECKPOINT_FILE, load_checkpoint, restore_state, save_checkpoint
from components.training.loop import train_steps
from components.training.ray_train import build_worker_state
from components.training.state import apply_hyperparameters
from pipeline.config import SearchDim
from pipeline.stages.context import StageContext
from pipeline.stages.train import fit_and_collect, loop_config


def to_param_space(space: dict[str, SearchDim]) -> dict:
    """Dotted keys -> nested Tune param space, e.g. {'train': {'lr_g': tune.loguniform(...)}}."""
    from ray import tune

    makers = {
        "choice": lambda d: tune.choice(d.values),
        "grid": lambda d: tune.grid_search(d.values),
        "loguniform": lambda d: tune.loguniform(d.low, d.high),
        "uniform": lambda d: tune.uniform(d.low, d.high),
    }
    nested: dict = {}
    for key, dim in space.items():
        section, field = key.split(".", 1)
        nested.setdefault(section, {})[field] = makers[dim.type](dim)
    return nested


def merge_trial(base: dict, trial: dict) -> dict:
    """The base loop config with the trial's sampled sections laid over it (one worker, no MLflow)."""
    merged = copy.deepcopy(base)
    for section, values in trial.items():
        merged[section].update(values)
    merged["train"]["num_workers"] = 1
    merged["mlflow"] = None
    return merged


def tune_trial(trial: dict, base: dict, campaign: dict) -> None:
    """One trial in the trial process: the same train_steps loop, reporting stability every interval."""
    from ray import tune

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # no per-checkpoint chatter; we print progress
    torch.set_num_threads(1)
    config = merge_trial(base, trial)
    config["train"]["report_every"] = campaign["report_every"]
    state, cfg, loss = build_worker_state(config, rank=0, world=1)
    warm = load_checkpoint(campaign["warm_start_checkpoint"]) if campaign["warm_start_checkpoint"] else None
    resumed = tune.get_checkpoint()
    if resumed is not None:  # Tune restarted this trial: continue it
        with resumed.as_directory() as d:
            restore_state(state, load_checkpoint(d), loss)
    elif warm is not None:  # continue the train stage's networks under this trial's settings
        restore_state(state, warm, loss)
    apply_hyperparameters(state, cfg)  # the trial's (possibly mutated) values win over the saved ones
    cfg = cfg.model_copy(update={"steps": (int(warm["step"]) if warm else 0) + campaign["steps"]})
    w = campaign["weights"]

    def on_report(st, metrics):
        scores = stability_score(st.trace, campaign["window"], w["oscillation"], w["balance"], w["grad_spikes"],
                                 w["r_target"], cfg.divergence_bound)
        if st.step < cfg.steps and not st.diverged:
            tune.report({**metrics, **scores})
            return
        with tempfile.TemporaryDirectory() as tmp:  # the final state is the trial's candidate model
            resolved = {**config["resolved_config"], **{k: config[k] for k in ("train", "loss", "model")}}
            save_checkpoint(st, tmp, resolved, loss)
            tune.report({**metrics, **scores}, checkpoint=tune.Checkpoint.from_directory(tmp))

    train_steps(state, loss, cfg, cfg.steps, on_report)


def run_campaign(ctx: StageContext, base: dict):
    """Tuner.fit over the configured space; returns the ResultGrid."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    tc = ctx.cfg.tune
    # Trials checkpoint only at their end; Tune's "snapshotting too often" hint does not apply.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    warm = ctx.input("train") / CHECKPOINT_FILE if tc.warm_start else None
    campaign = {"steps": tc.steps, "report_every": tc.report_every, "window": tc.window,
                "weights": tc.weights.model_dump(), "warm_start_checkpoint": str(warm) if warm else None}
    max_t = max(1, math.ceil(tc.steps / tc.report_every))
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=max(1, max_t // 4),
                              reduction_factor=2) if tc.scheduler == "asha" else None
    trainable = tune.with_resources(tune.with_parameters(tune_trial, base=base, campaign=campaign), {"cpu": 1})
    storage = (ctx.work_dir / "ray_results").resolve()
    name = f"{ctx.cfg.name}-tune-{ctx.fingerprint[:12]}"
    if (storage / name).exists() and ctx.forced:
        shutil.rmtree(storage / name)
    if tune.Tuner.can_restore(str(storage / name)):
        # An interrupted campaign with the same fingerprint: finished trials are kept, the rest continue.
        print(f"  tune: resuming the interrupted campaign in {storage / name}", flush=True)
        tuner = tune.Tuner.restore(str(storage / name), trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=to_param_space(tc.search_space),
            tune_config=tune.TuneConfig(metric="stability_score", mode="min", num_samples=tc.num_samples,
                                        scheduler=scheduler, max_concurrent_trials=tc.max_concurrent_trials),
            run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0,
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
        )
    return tuner.fit()


def _trial_rows(results) -> list[dict]:
    rows = []
    for i, r in enumerate(results):
        m = r.metrics or {}
        score = m.get("stability_score", math.inf)
        rows.append({"trial": i, "config": r.config, "score": score if score == score else math.inf,
                     "steps": m.get("step", 0), "diverged": m.get("diverged", 0.0), "metrics": m,
                     "history": r.metrics_dataframe, "checkpoint": r.checkpoint, "error": r.error})
    return rows


def pick_best(rows: list[dict]) -> dict:
    """Lowest score among trials that ran to the end (ASHA judged the stopped ones worse at their rung)."""
    finished = [r for r in rows if r["checkpoint"] is not None and math.isfinite(r["score"])]
    return min(finished or rows, key=lambda r: (r["score"], r["trial"]))


def _log_trials(rows: list[dict]) -> None:
    """Each trial becomes one child run of the tune stage's run, with its metrics by step."""
    for row in rows:
        with mlflow.start_run(run_name=f"trial-{row['trial']}", nested=True):
            mlflow.log_params({f"{s}.{k}": v for s, vals in row["config"].items() for k, v in vals.items()})
            hist = row["history"]
            if hist is not None:
                for _, rec in hist.iterrows():
                    mlflow.log_metrics({k: float(rec[k]) for k in ("stability_score", "d_loss", "g_loss", "r_t")
                                        if k in rec and rec[k] == rec[k]}, step=int(rec["step"]))
            mlflow.set_tag("status", "error" if row["error"] else ("diverged" if row["diverged"] else "finished"))


def _plots(ctx: StageContext, rows: list[dict]) -> None:
    lr = [r["config"].get("train", {}).get("lr_g", ctx.cfg.train.lr_g) for r in rows]
    bs = [r["config"].get("train", {}).get("batch_size", ctx.cfg.train.batch_size) for r in rows]
    scores = [r["score"] for r in rows]
    scatter_chart(lr, scores, "Stability score vs lr_g", "lr_g", "score (lower is better)", logx=True) \
        .savefig(ctx.out_dir / "score_vs_lr.png", dpi=100)
    scatter_chart(bs, scores, "Stability score vs batch size", "batch size", "score") \
        .savefig(ctx.out_dir / "score_vs_batch.png", dpi=100)
    traces = {f"trial {r['trial']}": [min(v, 1e3) for v in r["history"]["stability_score"].tolist()]
              for r in rows if r["history"] is not None and "stability_score" in r["history"]}
    line_chart(traces, "Stability score per report", "report").savefig(ctx.out_dir / "score_traces.png", dpi=100)


def run(ctx: StageContext) -> dict:
    data_dir = ctx.input("prepare") / "data"
    base = loop_config(ctx, data_dir)
    rows = _trial_rows(run_campaign(ctx, base))
    best = pick_best(rows)
    for r in rows:
        print(f"  tune trial {r['trial']}: {json.dumps(r['config'])} score {r['score']:.4g}"
              f"{'  <- best' if r is best else ''}", flush=True)
    import pandas as pd

    pd.DataFrame([{"trial": r["trial"], "score": r["score"], "steps": r["steps"], "diverged": r["diverged"],
                   **{f"{s}.{k}": v for s, vals in r["config"].items() for k, v in vals.items()}} for r in rows]) \
        .to_csv(ctx.out_dir / "results.csv", index=False)
    ctx.write_json("best_config.json", {"config": best["config"], "score": best["score"]})
    _plots(ctx, rows)
    _log_trials(rows)
    mlflow.log_metrics({"best_stability_score": min(best["score"], 1e308), "trials": len(rows)})
    for name in ("results.csv", "best_config.json", "score_vs_lr.png", "score_vs_batch.png", "score_traces.png"):
        mlflow.log_artifact(str(ctx.out_dir / name))

    candidate = ctx.out_dir / "candidate"
    candidate.mkdir()
    if ctx.cfg.tune.handoff == "best_trial" and best["checkpoint"] is not None:
        with best["checkpoint"].as_directory() as d:
            shutil.copy2(Path(d) / CHECKPOINT_FILE, candidate / CHECKPOINT_FILE)
    else:  # retrain the best config on the full training budget with the distributed trainer
        overrides = best["config"].get("train", {})
        config = loop_config(ctx, data_dir, overrides)
        for section in ("loss", "model"):
            config[section].update(best["config"].get(section, {}))
        fit_and_collect(ctx, config, f"{ctx.cfg.name}-retrain-{ctx.fingerprint[:12]}", candidate)
    return {"candidate": candidate / CHECKPOINT_FILE}
