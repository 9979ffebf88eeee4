"""Run the DAG: fingerprint each stage, skip cached ones, run the rest (here or as Ray tasks) as MLflow child runs."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import mlflow

from components.errors import UserError
from components.storage import Location, is_remote, join, listing_fingerprint, local_cache_root, localize, redact
from components.tracking_outage import is_unreachable
from pipeline.config import PipelineConfig, dump_config, flat_params
from pipeline.dag import STAGE_BY_NAME, STAGES, Stage
from pipeline.executor import StageJob, sections_of, submit_stage
from pipeline.fingerprint import code_digest, git_commit, source_digest, stage_fingerprint
from pipeline.ray_edge import ensure_ray
from pipeline.report import build_html
from pipeline.outputs import output_problem, read_marker, recover_aside, remove_stale_scratch, stage_lock
from pipeline.tracking import active_run, end_if_running, owner_tags, reap_orphaned_runs, setup_tracking

def store_root(cfg: PipelineConfig) -> str:
    """Root of stage outputs: the storage URI, or work_dir on this machine's (or a shared) disk."""
    return cfg.storage.uri or str(Path(cfg.work_dir).resolve())


def stage_uri(root: str, stage: Stage, fingerprint: str) -> str:
    """Final output location of a stage run."""
    return join(root, "stages", stage.name, fingerprint[:16])


FILE_SOURCES = ("image_folder", "parquet", "cifar", "mnist_idx")


def source_inputs(cfg: PipelineConfig) -> dict[str, str]:
    """What prepare reads besides its config: a listing fingerprint (paths, sizes, mtimes) of a file source,
    so that adding or fixing a file under data.path reruns it."""
    if cfg.data.source in FILE_SOURCES and cfg.data.path:
        return {"source_files": listing_fingerprint(cfg.data.path)}
    return {}


def stage_key(cfg: PipelineConfig, stage: Stage, code: str, digests: dict[str, str]) -> str:
    """The stage's fingerprint from its config sections, code and upstream output digests."""
    upstream = {u: digests[u] for u in stage.inputs}
    if stage.name == "prepare":
        upstream.update(source_inputs(cfg))
    return stage_fingerprint(stage.name, sections_of(cfg, stage), code, upstream)


def cache_problem(uri: str, record: dict, client, full: bool = False) -> str | None:
    """Why a marker at `uri` cannot be trusted as a cache hit, or None: its outputs changed, or the MLflow
    run or model version it names is not in the current tracking store (a new or reset store)."""
    import mlflow

    problem = output_problem(uri, record, full)
    if problem or client is None:
        return problem
    try:
        run = client.get_run(record["run_id"])
    except mlflow.exceptions.MlflowException as err:
        if is_unreachable(err):
            raise
        return f"its MLflow run {record['run_id'][:12]} is not in this tracking store"
    if run.info.lifecycle_stage != "active":
        return f"its MLflow run {record['run_id'][:12]} is deleted"
    if run.info.status != "FINISHED":  # published, but the tracking server was lost before the run could end
        return f"its MLflow run {record['run_id'][:12]} ended {run.info.status}, not FINISHED"
    model_id = record.get("outputs", {}).get("model_id")
    if model_id:
        try:
            client.get_logged_model(model_id)
        except mlflow.exceptions.MlflowException:
            return f"its logged model {model_id} is not in this tracking store"
    name, version = record.get("outputs", {}).get("model_name"), record.get("outputs", {}).get("model_version")
    if name and version:
        try:
            client.get_model_version(name, version)
        except mlflow.exceptions.MlflowException:
            return f"model {name} version {version} is not in this tracking store's registry"
    return None


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
        fp = stage_key(cfg, stage, codes[stage.name], digests)
        record = read_marker(stage_uri(root, stage, fp))
        if record and stage.name not in force and not output_problem(stage_uri(root, stage, fp), record):
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
                            tags={"mlflow.parentRunId": parent, **owner_tags()})
    job = StageJob(stage=stage.name, run_id=run.info.run_id, **job_fields)
    failure: BaseException | None = None
    try:
        return submit_stage(job, as_task)
    except BaseException as err:
        failure = err
        raise
    finally:  # the executor ends the run; this catches what ended before it started it (or in a lost task)
        end_if_running(client, run.info.run_id, isinstance(failure, KeyboardInterrupt), failure is not None)


def _cached_record(final: str, stage: Stage, client, verify: bool, i: int) -> tuple[dict | None, bool]:
    """(the stage's marker if it is a trustworthy cache hit else None, whether a marker was rejected)."""
    if not is_remote(final):
        remove_stale_scratch(Path(final))
        recover_aside(Path(final))
    record = read_marker(final)
    if record is None:
        return None, False
    problem = cache_problem(final, record, client, verify)
    if problem:
        print(f"[{i}/{len(STAGES)}] {stage.name}: cached output not reused: {problem}; rerunning it afresh",
              flush=True)
        return None, True
    return record, False


def run_pipeline(cfg: PipelineConfig, force: set[str] = frozenset(), only: str | None = None,
                 until: str | None = None, resume: bool = True, verify: bool = False) -> dict:
    """Run every stage in order (cached ones are skipped) under one MLflow parent run; returns a summary.

    `force` reruns the named stages even if cached; `only` runs one stage, whose inputs must be cached;
    `until` stops after the named stage; `resume=False` refuses to continue interrupted work silently;
    `verify` re-reads every cached output's bytes against its digest (sizes are always checked).
    Stages run in this process, or as Ray tasks on the cluster (`ray.stage_tasks`); either way they read
    and write only the storage URIs the DAG hands them. Each stage output is computed under a lock, so a
    second run of the same config waits and then reuses it.
    """
    work = Path(cfg.work_dir).resolve()
    root, code, codes = store_root(cfg), source_digest(), stage_code_digests()
    as_tasks = runs_stages_as_tasks(cfg)
    # A stage task on another node has no view of this disk: it keeps caches and scratch on its own.
    stage_work = str(local_cache_root() / "work" / cfg.name) if as_tasks and is_remote(root) else str(work)
    tracking_uri, experiment_id = setup_tracking(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.artifact_root,
                                                 cfg.tracking.patience_s)
    client = mlflow.MlflowClient()
    reaped = reap_orphaned_runs(client, experiment_id)
    if reaped:
        print(f"marked {reaped} run(s) KILLED whose driver process on this host is gone", flush=True)
    started_ray = False  # Ray starts with the first stage that needs it, so bad data fails fast
    records: dict[str, dict] = {}
    work.mkdir(parents=True, exist_ok=True)
    try:
        with active_run(run_name=f"{cfg.name}-pipeline") as parent:
            owner = f"pid {os.getpid()} on {socket.gethostname()} (pipeline run {parent.info.run_id[:12]})"
            mlflow.set_tags({"code_version": code, "git_commit": git_commit() or "none", "pipeline": cfg.name,
                             "storage": redact(root), "stage_executor": "ray-task" if as_tasks else "driver",
                             **owner_tags()})
            mlflow.log_params(flat_params(cfg.model_dump(mode="json")))
            mlflow.log_text(dump_config(cfg), "config.yaml")
            for i, stage in enumerate(STAGES, 1):
                if only is not None and stage.name != only and stage.name not in stage_names_upstream(only):
                    continue
                fp = stage_key(cfg, stage, codes[stage.name], {u: records[u]["digest"] for u in stage.inputs})
                final = stage_uri(root, stage, fp)
                with stage_lock(work / "locks", stage.name, fp, owner):
                    # A rejected cache reruns from scratch: Ray's saved state for it belongs to the rejected run.
                    record, rejected = _cached_record(final, stage, client, verify, i) if stage.name not in force \
                        else (None, False)
                    if only is not None and stage.name != only and record is None and not rejected:
                        raise UserError(f"--only {only}: upstream stage '{stage.name}' has no cached outputs for "
                                        "this config; run the pipeline without --only first")
                    if record is not None:
                        records[stage.name] = {**record, "cached": True}
                        print(f"[{i}/{len(STAGES)}] {stage.name}: cached (fingerprint {fp[:12]}, "
                              f"run {record['run_id'][:12]})", flush=True)
                    else:
                        where = " as a Ray task" if as_tasks else ""
                        print(f"[{i}/{len(STAGES)}] {stage.name}: running{where} (fingerprint {fp[:12]})", flush=True)
                        if stage.needs_ray(cfg) or as_tasks:
                            started = ensure_ray(cfg.ray.address, cfg.ray.num_cpus, cfg.ray.local_cluster_tuning)
                            started_ray = started or started_ray
                        lineage = {"fingerprint": fp, "code_version": codes[stage.name],
                                   **{f"upstream.{u}": records[u]["run_id"] for u in stage.inputs}}
                        if "prepare" in records:
                            lineage["dataset_digest"] = dataset_digest(root, records["prepare"])
                        job = {"cfg": cfg, "fingerprint": fp, "final_uri": final, "store_uri": root,
                               "work_dir": stage_work, "tracking_uri": tracking_uri, "lineage": lineage,
                               "input_uris": {u: stage_uri(root, STAGE_BY_NAME[u], records[u]["fingerprint"])
                                              for u in stage.inputs},
                               "parent_run_id": parent.info.run_id, "forced": stage.name in force or rejected,
                               "resume": resume}
                        records[stage.name] = _run_stage(job, stage, as_tasks)
                        print(f"[{i}/{len(STAGES)}] {stage.name}: done in {records[stage.name]['seconds']:.1f}s",
                              flush=True)
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
                                                "classes_covered", "d_clean_accuracy", "d_fgsm_accuracy",
                                                "diversity_mean", "tail_diversity", "diversity_pixel_mean")
                    if k in evaluation},
    }
