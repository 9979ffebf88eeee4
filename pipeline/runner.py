"""Run the DAG: fingerprint each stage, skip cached ones, run the rest (here or as Ray tasks) as MLflow child runs."""
from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow

from components.errors import UserError
from components.storage import Location, is_remote, join, local_cache_root, localize
from pipeline.config import PipelineConfig, dump_config, flat_params
from pipeline.dag import STAGE_BY_NAME, STAGES, Stage
from pipeline.executor import MARKER, StageJob, sections_of, submit_stage
from pipeline.fingerprint import code_digest, git_commit, source_digest, stage_fingerprint
from pipeline.ray_edge import ensure_ray
from pipeline.report import build_html
from pipeline.tracking import setup_tracking

def store_root(cfg: PipelineConfig) -> str:
    """Root of stage outputs: the storage URI, or work_dir on this machine's (or a shared) disk."""
    return cfg.storage.uri or str(Path(cfg.work_dir).resolve())


def stage_uri(root: str, stage: Stage, fingerprint: str) -> str:
    """Final output location of a stage run."""
    return join(root, "stages", stage.name, fingerprint[:16])


def read_marker(uri: str) -> dict | None:
    """The record of a finished stage run at `uri`, or None if there is none (never ran, or did not finish)."""
    marker = Location(join(uri, MARKER))
    return json.loads(marker.read_text()) if marker.exists() else None


def downstream_of(name: str) -> set[str]:
    """`name` and every stage that reads it, directly or not."""
    out = {name}
    for stage in STAGES:  # STAGES is in dependency order
        if any(u in out for u in stage.inputs):
            out.add(stage.name)
    return out


def stage_names_upstream(name: str) -> set[str]:
    """Every stage `name` reads, directly or not."""
    out, todo = set(), list(STAGE_BY_NAME[name].inputs)
    while todo:
        up = todo.pop()
        if up not in out:
            out.add(up)
            todo.extend(STAGE_BY_NAME[up].inputs)
    return out


def stage_code_digests() -> dict[str, str]:
    """Each stage's code digest: only the modules its function's module imports (see code_digest)."""
    return {stage.name: code_digest(stage.fn.__module__) for stage in STAGES}


def plan(cfg: PipelineConfig, force: set[str] = frozenset()) -> list[tuple[str, str]]:
    """(stage, 'cached' | 'run') for each stage, without running anything."""
    root, codes = store_root(cfg), stage_code_digests()
    digests: dict[str, str] = {}
    rows = []
    for stage in STAGES:
        if any(u not in digests for u in stage.inputs):
            rows.append((stage.name, "run"))
            continue
        fp = stage_fingerprint(stage.name, sections_of(cfg, stage), codes[stage.name],
                               {u: digests[u] for u in stage.inputs})
        record = read_marker(stage_uri(root, stage, fp))
        if record and stage.name not in force:
            digests[stage.name] = record["digest"]
            rows.append((stage.name, "cached"))
        else:
            rows.append((stage.name, "run"))
    return rows


def dataset_digest(root: str, prepare_record: dict) -> str:
    """Content digest of the prepared data set (from its manifest)."""
    uri = stage_uri(root, STAGE_BY_NAME["prepare"], prepare_record["fingerprint"])
    return json.loads(Location(join(uri, "data", "manifest.json")).read_text())["digest"]


def runs_stages_as_tasks(cfg: PipelineConfig) -> bool:
    return cfg.ray.stage_tasks == "always" or (cfg.ray.stage_tasks == "auto" and bool(cfg.ray.address))


def _run_stage(job_fields: dict, stage: Stage, as_task: bool) -> dict:
    """Open the stage's MLflow child run here, run the stage (here or as a Ray task), close the run."""
    client = mlflow.MlflowClient()
    parent = job_fields["parent_run_id"]
    run = client.create_run(client.get_run(parent).info.experiment_id, run_name=stage.name,
                            tags={"mlflow.parentRunId": parent})
    job = StageJob(stage=stage.name, run_id=run.info.run_id, **job_fields)
    try:
        return submit_stage(job, as_task)
    finally:  # the executor ends the run; this only catches failures before it started it
        if client.get_run(run.info.run_id).info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "FAILED")


def run_pipeline(cfg: PipelineConfig, force: set[str] = frozenset(), only: str | None = None,
                 until: str | None = None, resume: bool = True) -> dict:
    """Run every stage in order (cached ones are skipped) under one MLflow parent run; returns a summary.

    `force` reruns the named stages even if cached; `only` runs one stage, whose inputs must be cached;
    `until` stops after the named stage; `resume=False` refuses to continue interrupted work silently.
    Stages run in this process, or as Ray tasks on the cluster (`ray.stage_tasks`); either way they read
    and write only the storage URIs the DAG hands them.
    """
    work = Path(cfg.work_dir).resolve()
    root, code, codes = store_root(cfg), source_digest(), stage_code_digests()
    as_tasks = runs_stages_as_tasks(cfg)
    # A stage task on another node has no view of this disk: it keeps caches and scratch on its own.
    stage_work = str(local_cache_root() / "work" / cfg.name) if as_tasks and is_remote(root) else str(work)
    tracking_uri, _ = setup_tracking(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.artifact_root)
    started_ray = False  # Ray starts with the first stage that needs it, so bad data fails fast
    records: dict[str, dict] = {}
    work.mkdir(parents=True, exist_ok=True)
    try:
        with mlflow.start_run(run_name=f"{cfg.name}-pipeline") as parent:
            mlflow.set_tags({"code_version": code, "git_commit": git_commit() or "none", "pipeline": cfg.name,
                             "storage": root, "stage_executor": "ray-task" if as_tasks else "driver",
                             "driver_pid": str(os.getpid())})
            mlflow.log_params(flat_params(cfg.model_dump(mode="json")))
            mlflow.log_text(dump_config(cfg), "config.yaml")
            for i, stage in enumerate(STAGES, 1):
                if only is not None and stage.name != only and stage.name not in stage_names_upstream(only):
                    continue
                upstream = {u: records[u]["digest"] for u in stage.inputs}
                fp = stage_fingerprint(stage.name, sections_of(cfg, stage), codes[stage.name], upstream)
                final = stage_uri(root, stage, fp)
                record = read_marker(final)
                if only is not None and stage.name != only and record is None:
                    raise UserError(f"--only {only}: upstream stage '{stage.name}' has no cached outputs for this "
                                    "config; run the pipeline without --only first")
                if record is not None and stage.name not in force:
                    records[stage.name] = {**record, "cached": True}
                    print(f"[{i}/{len(STAGES)}] {stage.name}: cached (fingerprint {fp[:12]}, "
                          f"run {record['run_id'][:12]})", flush=True)
                    if stage.name == until:
                        break
                    continue
                where = " as a Ray task" if as_tasks else ""
                print(f"[{i}/{len(STAGES)}] {stage.name}: running{where} (fingerprint {fp[:12]})", flush=True)
                if stage.needs_ray or as_tasks:
                    started = ensure_ray(cfg.ray.address, cfg.ray.num_cpus, cfg.ray.local_cluster_tuning)
                    started_ray = started or started_ray
                lineage = {"fingerprint": fp, "code_version": codes[stage.name],
                           **{f"upstream.{u}": records[u]["run_id"] for u in stage.inputs}}
                if "prepare" in records:
                    lineage["dataset_digest"] = dataset_digest(root, records["prepare"])
                job = {"cfg": cfg, "fingerprint": fp, "final_uri": final, "store_uri": root, "work_dir": stage_work,
                       "input_uris": {u: stage_uri(root, STAGE_BY_NAME[u], records[u]["fingerprint"]) for u in stage.inputs},
                       "tracking_uri": tracking_uri, "parent_run_id": parent.info.run_id, "lineage": lineage,
                       "forced": stage.name in force, "resume": resume}
                records[stage.name] = _run_stage(job, stage, as_tasks)
                print(f"[{i}/{len(STAGES)}] {stage.name}: done in {records[stage.name]['seconds']:.1f}s", flush=True)
                if stage.name == until:
                    break
            mlflow.set_tag("dataset_digest", dataset_digest(root, records["prepare"]))
            mlflow.set_tags({f"stage_run.{k}": v["run_id"] for k, v in records.items()})
            uris = {k: stage_uri(root, STAGE_BY_NAME[k], v["fingerprint"]) for k, v in records.items()}
            if only is not None or until is not None:
                return {"tracking_uri": tracking_uri, "parent_run_id": parent.info.run_id, "only": only,
                        "until": until, "stage_run_ids": {k: v["run_id"] for k, v in records.items()},
                        "stage_uris": uris, "stage_dirs": {k: str(localize(u)) for k, u in uris.items()}}
            summary = _summary(uris, records, tracking_uri, parent.info.run_id)
            summary["report"] = str(_write_report(cfg, work, uris, parent.info.run_id))
            return summary
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def _write_report(cfg, work: Path, uris: dict[str, str], parent_id: str) -> Path:
    """Render the HTML report from the stage outputs and log it on the parent run."""
    path = work / "reports" / f"{parent_id}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(build_html({k: localize(u) for k, u in uris.items()}, f"{cfg.name} pipeline run {parent_id[:12]}"))
    mlflow.log_artifact(str(path))
    return path


def _summary(uris: dict[str, str], records: dict, tracking_uri: str, parent_id: str) -> dict:
    evaluation = json.loads(Location(join(uris["evaluate"], "evaluation.json")).read_text())
    promotion = json.loads(Location(join(uris["promote"], "promotion.json")).read_text())
    return {
        "tracking_uri": tracking_uri,
        "parent_run_id": parent_id,
        "stage_run_ids": {k: v["run_id"] for k, v in records.items()},
        "stage_uris": uris,
        "cached": [k for k, v in records.items() if v.get("cached")],
        "model_name": promotion["model_name"],
        "model_version": promotion["version"],
        "aliases": promotion["aliases"],
        "promoted": promotion["promoted"],
        "metrics": {k: evaluation[k] for k in ("fcd", "fcd_real_vs_real", "fcd_ratio", "class_kl", "recall_mean",
                                                "classes_covered", "d_clean_accuracy", "d_fgsm_accuracy")},
    }
