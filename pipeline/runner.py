"""Run the DAG: fingerprint each stage, skip cached ones, run the rest as MLflow child runs."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import mlflow

from components.errors import UserError
from pipeline.config import PipelineConfig, dump_config, flat_params
from pipeline.dag import STAGES, Stage
from pipeline.fingerprint import directory_digest, git_commit, source_digest, stage_fingerprint
from pipeline.ray_edge import ensure_ray
from pipeline.report import build_html
from pipeline.stages.context import StageContext
from pipeline.tracking import setup_tracking

MARKER = "_stage.json"
by_name = {s.name: s for s in STAGES}


def stage_dir(work: Path, stage: Stage, fingerprint: str) -> Path:
    """Final output directory of a stage run."""
    return work / "stages" / stage.name / fingerprint[:16]


def sections_of(cfg: PipelineConfig, stage: Stage) -> dict:
    """The resolved config sections a stage depends on."""
    dumped = cfg.model_dump(mode="json")
    return {s: dumped[s] for s in stage.sections}


def downstream_of(name: str) -> set[str]:
    """`name` and every stage that reads it, directly or not."""
    out = {name}
    for stage in STAGES:  # STAGES is in dependency order
        if any(u in out for u in stage.inputs):
            out.add(stage.name)
    return out


def stage_names_upstream(name: str) -> set[str]:
    """Every stage `name` reads, directly or not."""
    out, todo = set(), list(by_name[name].inputs)
    while todo:
        up = todo.pop()
        if up not in out:
            out.add(up)
            todo.extend(by_name[up].inputs)
    return out


def plan(cfg: PipelineConfig, force: set[str] = frozenset()) -> list[tuple[str, str]]:
    """(stage, 'cached' | 'run') for each stage, without running anything."""
    work, code = Path(cfg.work_dir).resolve(), source_digest()
    digests: dict[str, str] = {}
    rows = []
    for stage in STAGES:
        if any(u not in digests for u in stage.inputs):
            rows.append((stage.name, "run"))
            continue
        fp = stage_fingerprint(stage.name, sections_of(cfg, stage), code, {u: digests[u] for u in stage.inputs})
        marker = stage_dir(work, stage, fp) / MARKER
        if marker.exists() and stage.name not in force:
            digests[stage.name] = json.loads(marker.read_text())["digest"]
            rows.append((stage.name, "cached"))
        else:
            rows.append((stage.name, "run"))
    return rows


def dataset_digest(work: Path, prepare_record: dict) -> str:
    """Content digest of the prepared data set (from its manifest)."""
    manifest = stage_dir(work, by_name["prepare"], prepare_record["fingerprint"]) / "data" / "manifest.json"
    return json.loads(manifest.read_text())["digest"]


def _run_stage(cfg, stage, final: Path, inputs, tracking_uri, parent_id, lineage: dict, forced: bool,
               resume: bool = True) -> dict:
    """Run one stage into a temp dir as an MLflow child run; rename the outputs into place on success."""
    fp = lineage["fingerprint"]
    tmp = final.parent / f".tmp-{fp[:16]}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with mlflow.start_run(run_name=stage.name, nested=True) as run:
            mlflow.set_tags({"stage": stage.name, **lineage})
            mlflow.log_params(flat_params(sections_of(cfg, stage)))
            mlflow.log_text(dump_config(cfg), "config.yaml")
            upstream_runs = {k.split(".", 1)[1]: v for k, v in lineage.items() if k.startswith("upstream.")}
            ctx = StageContext(cfg, stage.name, fp, tmp, inputs, Path(cfg.work_dir).resolve(), tracking_uri,
                               run.info.run_id, parent_id, upstream_runs, forced, resume)
            t0 = time.perf_counter()
            stage.fn(ctx)
            seconds = time.perf_counter() - t0
            digest = directory_digest(tmp)
            mlflow.set_tag("output_digest", digest)
            mlflow.log_metric("stage_seconds", seconds)
            record = {"stage": stage.name, "fingerprint": fp, "digest": digest, "run_id": run.info.run_id,
                      "seconds": seconds}
            (tmp / MARKER).write_text(json.dumps(record, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        return record
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_pipeline(cfg: PipelineConfig, force: set[str] = frozenset(), only: str | None = None,
                 until: str | None = None, resume: bool = True) -> dict:
    """Run every stage in order (cached ones are skipped) under one MLflow parent run; returns a summary.

    `force` reruns the named stages even if cached; `only` runs one stage, whose inputs must be cached;
    `until` stops after the named stage; `resume=False` refuses to continue interrupted work silently.
    """
    work = Path(cfg.work_dir).resolve()
    code = source_digest()
    tracking_uri, _ = setup_tracking(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.artifact_root)
    started_ray = False  # Ray starts with the first stage that needs it, so bad data fails fast
    records: dict[str, dict] = {}
    # Work from the work dir: as a Ray job, the uploaded working dir can be garbage-collected under a
    # long-running driver, and Tune resolves paths against the cwd.
    work.mkdir(parents=True, exist_ok=True)
    previous_cwd = os.getcwd()
    os.chdir(work)
    try:
        with mlflow.start_run(run_name=f"{cfg.name}-pipeline") as parent:
            mlflow.set_tags({"code_version": code, "git_commit": git_commit() or "none", "pipeline": cfg.name})
            mlflow.log_params(flat_params(cfg.model_dump(mode="json")))
            mlflow.log_text(dump_config(cfg), "config.yaml")
            for i, stage in enumerate(STAGES, 1):
                if only is not None and stage.name != only and stage.name not in stage_names_upstream(only):
                    continue
                upstream = {u: records[u]["digest"] for u in stage.inputs}
                fp = stage_fingerprint(stage.name, sections_of(cfg, stage), code, upstream)
                final = stage_dir(work, stage, fp)
                cached = (final / MARKER).exists()
                if only is not None and stage.name != only and not cached:
                    raise UserError(f"--only {only}: upstream stage '{stage.name}' has no cached outputs for this "
                                    "config; run the pipeline without --only first")
                if cached and stage.name not in force:
                    records[stage.name] = {**json.loads((final / MARKER).read_text()), "cached": True}
                    print(f"[{i}/{len(STAGES)}] {stage.name}: cached (fingerprint {fp[:12]}, "
                          f"run {records[stage.name]['run_id'][:12]})", flush=True)
                    if stage.name == until:
                        break
                    continue
                print(f"[{i}/{len(STAGES)}] {stage.name}: running (fingerprint {fp[:12]})", flush=True)
                if stage.needs_ray:
                    started_ray = ensure_ray(cfg.ray.address, cfg.ray.num_cpus) or started_ray
                inputs = {u: stage_dir(work, by_name[u], records[u]["fingerprint"]) for u in stage.inputs}
                lineage = {"fingerprint": fp, "code_version": code,
                           **{f"upstream.{u}": records[u]["run_id"] for u in stage.inputs}}
                if "prepare" in records:
                    lineage["dataset_digest"] = dataset_digest(work, records["prepare"])
                records[stage.name] = _run_stage(cfg, stage, final, inputs, tracking_uri, parent.info.run_id,
                                                 lineage, stage.name in force, resume)
                print(f"[{i}/{len(STAGES)}] {stage.name}: done in {records[stage.name]['seconds']:.1f}s", flush=True)
                if stage.name == until:
                    break
            mlflow.set_tag("dataset_digest", dataset_digest(work, records["prepare"]))
            mlflow.set_tags({f"stage_run.{k}": v["run_id"] for k, v in records.items()})
            if only is not None or until is not None:
                return {"tracking_uri": tracking_uri, "parent_run_id": parent.info.run_id, "only": only,
                        "until": until, "stage_run_ids": {k: v["run_id"] for k, v in records.items()},
                        "stage_dirs": {k: str(stage_dir(work, by_name[k], v["fingerprint"]))
                                       for k, v in records.items()}}
            summary = _summary(cfg, work, records, tracking_uri, parent.info.run_id)
            summary["report"] = str(_write_report(cfg, work, records, parent.info.run_id))
            return summary
    finally:
        os.chdir(previous_cwd)
        if started_ray:
            import ray

            ray.shutdown()


def _write_report(cfg, work: Path, records: dict, parent_id: str) -> Path:
    """Render the HTML report from the stage dirs and log it on the parent run."""
    sources = {k: stage_dir(work, by_name[k], v["fingerprint"]) for k, v in records.items()}
    path = work / "reports" / f"{parent_id}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(build_html(sources, f"{cfg.name} pipeline run {parent_id[:12]}"))
    mlflow.log_artifact(str(path))
    return path


def _summary(cfg, work: Path, records: dict, tracking_uri: str, parent_id: str) -> dict:
    evaluation = json.loads((stage_dir(work, by_name["evaluate"], records["evaluate"]["fingerprint"])
                             / "evaluation.json").read_text())
    promotion = json.loads((stage_dir(work, by_name["promote"], records["promote"]["fingerprint"])
                            / "promotion.json").read_text())
    return {
        "tracking_uri": tracking_uri,
        "parent_run_id": parent_id,
        "stage_run_ids": {k: v["run_id"] for k, v in records.items()},
        "cached": [k for k, v in records.items() if v.get("cached")],
        "model_name": promotion["model_name"],
        "model_version": promotion["version"],
        "aliases": promotion["aliases"],
        "promoted": promotion["promoted"],
        "metrics": {k: evaluation[k] for k in ("fcd", "fcd_real_vs_real", "fcd_ratio", "class_kl", "recall_mean",
                                                "classes_covered", "d_clean_accuracy", "d_fgsm_accuracy")},
    }
