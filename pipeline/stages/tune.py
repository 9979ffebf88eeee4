"""tune: a Ray Tune campaign over learning rates, batch size and regularisation, scored by stability.

Reads:  prepare's data/, and the train stage's config as the base of every trial.
Writes: results.csv, best_config.json, candidate/checkpoint.pt (best trial or retrained), plots.
"""
from __future__ import annotations

import math
import os
import random
import shutil
from pathlib import Path

import mlflow
import numpy as np

from components.data.reader import load_split
from components.data.shards import read_manifest
from components.errors import RunFailed, UserError
from components.evaluation import headline_quality
from components.metrics.classifier import cached_classifier, classifier_cache_path, predict
from components.metrics.scoring_config import ScoringSpec
from components.plots import line_chart, scatter_chart
from components.storage import Location, join, ray_storage_args
from components.training.checkpoint import CHECKPOINT_FILE, load_checkpoint, models_from_checkpoint
from components.training.trial import Campaign, control_trial, tune_trial
from components.training.worker_config import WorkerConfig
from pipeline.config import SearchDim
from pipeline.ray_edge import lean_runs
from pipeline.stages.context import StageContext, read_json
from pipeline.stages.train import failure_line, fit_and_collect, worker_config
from pipeline.trial_tracking import TrialEvents, TrialTracker, describe, tracking


def to_param_space(space: dict[str, SearchDim], pbt: bool = False) -> dict:
    """Dotted keys -> nested Tune param space, e.g. {'train': {'lr_g': tune.loguniform(...)}}.

    pbt=True gives PBT's hyperparam_mutations instead: choices and grids become plain lists to resample."""
    from ray import tune

    makers = {
        "choice": (lambda d: list(d.values)) if pbt else (lambda d: tune.choice(d.values)),
        "grid": (lambda d: list(d.values)) if pbt else (lambda d: tune.grid_search(d.values)),
        "loguniform": lambda d: tune.loguniform(d.low, d.high),
        "uniform": lambda d: tune.uniform(d.low, d.high),
    }
    nested: dict = {}
    for key, dim in space.items():
        section, field = key.split(".", 1)
        nested.setdefault(section, {})[field] = makers[dim.type](dim)
    return nested


def param_space(tc) -> dict:
    """The Tune param space; Optuna has no grid, so grid dimensions become choices there."""
    space = tc.search_space
    if tc.search_alg == "optuna":
        space = {k: d.model_copy(update={"type": "choice"}) if d.type == "grid" else d for k, d in space.items()}
    return to_param_space(space)


def reports_per_trial(tc) -> int:
    return max(1, math.ceil(tc.steps / tc.report_every))


def build_scheduler(tc):
    from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining

    max_t = reports_per_trial(tc)
    if tc.scheduler == "asha":
        grace = min(max_t, tc.asha_grace or math.ceil(max_t / 12))
        return ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=grace,
                             reduction_factor=tc.asha_reduction_factor)
    if tc.scheduler == "pbt":
        random.seed(tc.seed)  # PBT draws its exploit/explore choices from the `random` module
        return PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=tc.pbt_interval,
                                       hyperparam_mutations=to_param_space(tc.search_space, pbt=True), synch=tc.pbt_synch)
    return None


def build_search_alg(tc):
    """Tune's basic variant generator (grid and random, seeded), or Optuna's TPE when installed."""
    if tc.search_alg == "optuna":
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise UserError("tune.search_alg is optuna but optuna is not installed: pip install -e '.[optuna]' "
                            "or set tune.search_alg=basic") from None
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(metric="stability_score", mode="min", seed=tc.seed),
                                  tc.max_concurrent_trials)
    from ray.tune.search import BasicVariantGenerator

    # Given an explicit generator, Tune ignores TuneConfig.max_concurrent_trials: pass it here instead.
    return BasicVariantGenerator(random_state=tc.seed, max_concurrent=tc.max_concurrent_trials)


def trial_resources(tc) -> dict:
    """What Tune reserves for each trial process: tune.trial_resources if given; else one CPU and the
    trial's GPUs for a one-worker trial, which trains in that process."""
    if tc.trial_resources is not None:
        return {k.lower(): v for k, v in tc.trial_resources.items()}
    if tc.trial_workers == 1:
        return {"cpu": 1, **({"gpu": tc.gpus_per_trial} if tc.gpus_per_trial else {})}
    # A multi-worker trial process only waits on its workers (which hold the GPUs): no CPU (that would
    # starve them), but Tune needs a non-empty bundle, so it reserves the 64 MiB it does use.
    return {"cpu": 0, "memory": 64 * 2**20}


def scoring_spec(ctx: StageContext, data_dir: Path) -> ScoringSpec:
    """What every trial needs to score itself: window, weights, and the evaluator classifier (trained once,
    cached by data digest, shared with the evaluate stage) plus real features when FCD is weighted."""
    tc, ec = ctx.cfg.tune, ctx.cfg.evaluate
    spec = ScoringSpec(window=tc.window, weights=tc.weights, divergence_bound=ctx.cfg.train.divergence_bound,
                       per_class=tc.coverage_per_class)
    if tc.coverage_per_class > 0 or tc.weights.fcd > 0:
        manifest = read_manifest(data_dir)
        train = load_split(data_dir, "train")
        clf = cached_classifier(ctx.work_dir / "cache", manifest["digest"], train, manifest["num_classes"],
                                ec.classifier_steps, ec.seed)
        spec.evaluator = ctx.share(classifier_cache_path(ctx.work_dir / "cache", manifest["digest"],
                                                         ec.classifier_steps, ec.seed))
        if tc.weights.fcd > 0:
            feats, _ = predict(clf, load_split(data_dir, "val").images_float())
            np.save(ctx.out_dir / "real_features.npy", feats.numpy())
            spec.real_features = ctx.share(ctx.out_dir / "real_features.npy")
    return spec


def run_campaign(ctx: StageContext, base: WorkerConfig):
    """Tuner.fit over the configured space; returns the ResultGrid."""
    from ray import tune

    tc = ctx.cfg.tune
    # Trials checkpoint only at their end; Tune's "snapshotting too often" hint does not apply.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # A failed trial gets one line from the TrialTracker, with its traceback's file; Tune would print the
    # whole traceback too (set TUNE_PRINT_ALL_TRIAL_ERRORS=1 to have it).
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    name = f"{ctx.cfg.name}-tune-{ctx.fingerprint[:12]}"
    warm = ctx.input_uri("train", CHECKPOINT_FILE) if tc.warm_start else None
    warm_step = int(read_json(ctx.input("train") / "metrics.json")["steps"]) if warm else 0
    campaign = Campaign(steps=tc.steps, report_every=tc.report_every, trial_workers=tc.trial_workers,
                        gpus_per_trial=tc.gpus_per_trial,
                        scoring=scoring_spec(ctx, ctx.input("prepare") / "data"),
                        # PBT clones reports' checkpoints; under ASHA a stopped trial keeps its last one, so
                        # its quality can still be checked.
                        checkpoint_every_report=tc.scheduler in ("pbt", "asha"),
                        warm_start_checkpoint=warm, warm_start_step=warm_step,
                        trial_storage=join(ctx.ray_storage(), f"{name}-trials"),  # multi-worker trials' runs
                        # A trial keeps its placement-group cleaner: a scheduler may stop it mid-campaign.
                        autoscaling_requests=not lean_runs())
    trainable = tune.with_resources(tune.with_parameters(tune_trial, base=base, campaign=campaign),
                                    trial_resources(tc))
    experiment = Location(join(ctx.ray_storage(), name))
    if ctx.forced:
        experiment.delete()
        Location(campaign.trial_storage).delete()
    storage, fs = ray_storage_args(ctx.ray_storage())
    tracker = TrialTracker(ctx.tracking_uri, mlflow.get_run(ctx.run_id).info.experiment_id, ctx.run_id, name,
                           reports_per_trial(tc))
    if tune.Tuner.can_restore(f"{storage}/{name}", storage_filesystem=fs):
        if not ctx.resume:
            raise UserError(f"an interrupted campaign exists in {experiment.uri}: pass --resume to continue it "
                            "or --force to start over")
        # An interrupted campaign with the same fingerprint: finished trials are kept, the rest continue.
        print(f"  tune: resuming the interrupted campaign in {experiment.uri}", flush=True)
        tracker.adopt_existing_runs()
        tuner = tune.Tuner.restore(f"{storage}/{name}", trainable=trainable, resume_unfinished=True,
                                   resume_errored=True, storage_filesystem=fs)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(tc),
            tune_config=tune.TuneConfig(metric="stability_score", mode="min", num_samples=tc.num_samples,
                                        scheduler=build_scheduler(tc), search_alg=build_search_alg(tc),
                                        reuse_actors=True),  # PBT restores skip a new process (~6 s here)
            # Stop each trial at its last report before the scheduler sees it: PBT would otherwise clone a
            # donor into a trial that has finished, which restarts at the end, trains nothing, reports nothing.
            # PBT clones other trials' earlier checkpoints, so it must keep them all.
            run_config=tune.RunConfig(name=name, storage_path=storage, storage_filesystem=fs, verbose=0,
                                      stop={"training_iteration": reports_per_trial(tc)},
                                      callbacks=[TrialEvents()],  # one console line and MLflow run per trial
                                      failure_config=tune.FailureConfig(max_failures=tc.max_failures),
                                      checkpoint_config=tune.CheckpointConfig(
                                          num_to_keep=None if tc.scheduler == "pbt" else 1)),
        )
    control = launch_control(tc, base, campaign)
    try:
        with tracking(tracker):
            results = tuner.fit()
        # On Ctrl+C Tune saves its state and returns normally, with trials unfinished or never started.
        if results.num_terminated + results.num_errors < max(len(results), expected_trials(tc)):
            print(f"  tune: campaign interrupted; continue it with `python -m pipeline tune --resume` "
                  f"(state in {experiment.uri})", flush=True)
            raise KeyboardInterrupt
    except BaseException:
        cancel(control)
        raise
    return results, control


def cancel(control) -> None:
    """Stop the control task (a campaign that ends without a winner has nothing to compare it with)."""
    if control is not None:
        import ray

        ray.cancel(control, force=True)


def launch_control(tc, base: WorkerConfig, campaign: Campaign):
    """The untuned control as a Ray task beside the trials, on a trial's share of the machine (None when
    tune.control is off, or when the handoff retrains: then the train stage's model is the control)."""
    if not tc.control or tc.handoff != "best_trial":
        return None
    import ray

    return ray.remote(num_cpus=1, num_gpus=min(1.0, tc.gpus_per_trial), max_retries=tc.max_failures)(
        control_trial).remote(base, campaign)


def expected_trials(tc) -> int:
    """num_samples times the size of every grid dimension (Optuna turns grids into choices)."""
    grids = [len(d.values) for d in tc.search_space.values() if d.type == "grid" and tc.search_alg == "basic"]
    return tc.num_samples * math.prod(grids)


def _trial_rows(results, storage_fs, reports: int) -> list[dict]:
    from ray.tune import Checkpoint

    rows = []
    for i, r in enumerate(results):
        m = r.metrics or {}
        score = m.get("stability_score", math.inf)
        checkpoint = r.checkpoint
        if checkpoint is None and m.get("checkpoint_path"):  # multi-worker trials: Ray Train's checkpoint
            checkpoint = Checkpoint(m["checkpoint_path"], filesystem=storage_fs)
        rows.append({"trial": i, "config": r.config, "score": score if score == score else math.inf,
                     "steps": m.get("step", 0), "diverged": m.get("diverged", 0.0), "metrics": m,
                     "completed": m.get("training_iteration", 0) >= reports,
                     "history": r.metrics_dataframe, "checkpoint": checkpoint, "error": r.error})
    return rows


def pick_best(rows: list[dict]) -> dict:
    """Lowest score among trials that ran to the end (ASHA judged the stopped ones worse at their rung);
    a trial that raised never wins, and a campaign whose every trial raised has no winner."""
    healthy = [r for r in rows if r["error"] is None]
    if not healthy:
        first = str(rows[0]["error"]).strip().splitlines()[-1][:300] if rows else "no trial ran"
        raise RunFailed(f"tune: all {len(rows)} trials failed, so there is no model to hand on (first error: "
                        f"{first}); fix the cause, then rerun with --force tune")
    finished = [r for r in healthy if r.get("completed", True) and r["checkpoint"] is not None
                and math.isfinite(r["score"])]
    return min(finished or healthy, key=lambda r: (r["score"], r["trial"]))


def _plots(ctx: StageContext, rows: list[dict]) -> None:
    lr = [r["config"].get("train", {}).get("lr_g", ctx.cfg.train.lr_g) for r in rows]
    bs = [r["config"].get("train", {}).get("batch_size", ctx.cfg.train.batch_size) for r in rows]
    scores = [r["score"] for r in rows]
    scatter_chart(lr, scores, "Stability score vs lr_g", "lr_g", "score (lower is better)", logx=True) \
        .savefig(ctx.out_dir / "score_vs_lr.png", dpi=100)
    scatter_chart(bs, scores, "Stability score vs batch size", "batch size", "score") \
        .savefig(ctx.out_dir / "score_vs_batch.png", dpi=100)
    with_history = [r for r in rows if r["history"] is not None and "stability_score" in r["history"]]
    label = lambda r: f"trial {r['trial']}: " + ", ".join(  # noqa: E731
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for vals in r["config"].values() for k, v in vals.items())
    traces = {label(r): [min(v, 1e3) for v in r["history"]["stability_score"].tolist()] for r in with_history}
    steps = {label(r): r["history"]["step"].tolist() for r in with_history}
    line_chart(traces, "Stability score per report (lower is better; ASHA stops the worst early)", "step",
               xs=steps, logy=True, markers=True).savefig(ctx.out_dir / "score_traces.png", dpi=100)


def hand_off(ctx: StageContext, best: dict, data_uri: str, candidate: Path) -> None:
    """The candidate model: the best trial's checkpoint, or its config retrained on the full budget."""
    candidate.mkdir()
    if ctx.cfg.tune.handoff == "best_trial" and best["checkpoint"] is not None:
        with best["checkpoint"].as_directory() as d:
            shutil.copy2(Path(d) / CHECKPOINT_FILE, candidate / CHECKPOINT_FILE)
    else:  # retrain the best config on the full training budget with the distributed trainer
        config = worker_config(ctx, data_uri).with_overrides(best["config"])
        fit_and_collect(ctx, config, f"{ctx.cfg.name}-retrain-{ctx.fingerprint[:12]}", candidate)


def control_result(ctx: StageContext, control) -> tuple[Path | None, dict]:
    """The untuned control's checkpoint directory and last report: the control task's (written to control/),
    or, when the handoff retrains on the full budget, the train stage's own model (the default config at the
    same steps; it was not scored)."""
    if ctx.cfg.tune.handoff == "retrain":
        return (ctx.input("train") if ctx.cfg.tune.control else None), {}
    if control is None:
        return None, {}
    import ray

    try:
        checkpoint, metrics = ray.get(control)
    except Exception as err:  # the trials' result stands without it; say why there is no comparison
        print(f"  tune: the untuned control failed ({failure_line(err)}), so whether tuning paid is not known",
              flush=True)
        return None, {}
    (ctx.out_dir / "control").mkdir()
    (ctx.out_dir / "control" / CHECKPOINT_FILE).write_bytes(checkpoint)
    return ctx.out_dir / "control", metrics


def compare_with_control(ctx: StageContext, candidate: Path, control: Path) -> dict:
    """Both models on the evaluate stage's headline (class-matched FCD on the same fixed samples): whether
    tuning paid. When the control is better, it is what goes on to evaluate, and the report says so."""
    ckpts = {name: load_checkpoint(where) for name, where in (("candidate", candidate), ("control", control))}
    quality = headline_quality({name: models_from_checkpoint(c)[0] for name, c in ckpts.items()},
                               ctx.input("prepare") / "data", ctx.cfg.evaluate, ctx.work_dir / "cache")
    rows = {name: {"steps": int(c["step"]), **quality[name]} for name, c in ckpts.items()}
    cand, ctrl = rows["candidate"]["fcd_class_matched"], rows["control"]["fcd_class_matched"]
    paid, lost = cand < ctrl, cand > ctrl  # neither: a tie, as when the best trial trained the base config itself
    verdict = {**rows, "tuning_paid": paid, "fcd_ratio_candidate_to_control": cand / max(ctrl, 1e-9),
               "handed_on": "control" if lost else "candidate"}
    outcome = "paid" if paid else "did not pay" if lost else "neither paid nor cost (a tie)"
    print(f"  tune: tuning {outcome}: class-matched FCD {cand:.1f} for the candidate against {ctrl:.1f} for the "
          f"untuned control ({rows['candidate']['steps']:,} and {rows['control']['steps']:,} steps)"
          + ("; the control goes on to evaluate" if lost else ""), flush=True)
    if lost:
        shutil.copy2(control / CHECKPOINT_FILE, candidate / CHECKPOINT_FILE)
    return verdict


def write_results(ctx: StageContext, rows: list[dict], control_metrics: dict, verdict: dict | None) -> None:
    """results.csv: one line per trial (stopped ones with their last checkpoint), then the control's."""
    import pandas as pd

    lines = [{"trial": r["trial"], "score": r["score"], "steps": r["steps"], "diverged": r["diverged"],
              "stopped_early": not r.get("completed", True),
              "error": str(r["error"]).strip().splitlines()[-1][:200] if r["error"] is not None else "",
              "checkpoint": r["checkpoint"].path if r["checkpoint"] is not None else "",
              **{f"{s}.{k}": v for s, vals in r["config"].items() for k, v in vals.items()}} for r in rows]
    if verdict is not None:
        lines.append({"trial": "control", "score": control_metrics.get("stability_score", math.nan),
                      "steps": verdict["control"]["steps"], "diverged": control_metrics.get("diverged", 0.0),
                      "stopped_early": False, "error": "", "checkpoint": "control"})
    pd.DataFrame(lines).to_csv(ctx.out_dir / "results.csv", index=False)


def run(ctx: StageContext) -> dict:
    data_uri = ctx.input_uri("prepare", "data")
    results, control = run_campaign(ctx, worker_config(ctx, data_uri))
    rows = _trial_rows(results, ray_storage_args(ctx.ray_storage())[1], reports_per_trial(ctx.cfg.tune))
    try:
        best = pick_best(rows)
    except RunFailed:
        cancel(control)
        raise
    failed = sum(r["error"] is not None for r in rows)
    print(f"  tune: {len(rows)} trials ({failed} failed); best trial {best['trial']}: {describe(best['config'])}, "
          f"score {best['score']:.4g}", flush=True)
    candidate = ctx.out_dir / "candidate"
    hand_off(ctx, best, data_uri, candidate)
    control_dir, control_metrics = control_result(ctx, control)
    verdict = None if control_dir is None else compare_with_control(ctx, candidate, control_dir)
    write_results(ctx, rows, control_metrics, verdict)
    ctx.write_json("best_config.json", {"config": best["config"], "score": best["score"], "trial": best["trial"],
                                        "handed_on": verdict["handed_on"] if verdict else "candidate"})
    _plots(ctx, rows)
    metrics = {"best_stability_score": min(best["score"], 1e308), "trials": len(rows), "failed_trials": failed}
    names = ["results.csv", "best_config.json", "score_vs_lr.png", "score_vs_batch.png", "score_traces.png"]
    if verdict is not None:
        ctx.write_json("control.json", verdict)
        names.append("control.json")
        metrics |= {"candidate_fcd_class_matched": verdict["candidate"]["fcd_class_matched"],
                    "control_fcd_class_matched": verdict["control"]["fcd_class_matched"],
                    "tuning_paid": float(verdict["tuning_paid"])}
        mlflow.set_tag("tuning_paid", str(verdict["tuning_paid"]).lower())
    mlflow.log_metrics(metrics)
    for name in names:
        mlflow.log_artifact(str(ctx.out_dir / name))
    return {"candidate": candidate / CHECKPOINT_FILE}
