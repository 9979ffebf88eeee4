"""Run one stage wherever it is scheduled: in the driver, or as a Ray task on any node of a cluster.

The executor gets URIs, never shared paths: it materialises its inputs on its own disk (`localize`: a
no-op for local storage), runs the stage into a scratch directory under the stage's MLflow child run, and
publishes the outputs to the stage's URI with the `_stage.json` marker last (pipeline/outputs.py), so a stage
is cached only when all of its outputs are in place, and its run is FINISHED only once they are. A failed
stage leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow

from components.errors import RunFailed, UserError, environment_failure
from components.storage import is_remote, localize
from pipeline.config import PipelineConfig, dump_config, flat_params
from pipeline.fingerprint import directory_digest
from pipeline.outputs import file_listing, publish, recover_aside, remove_stale_scratch
from pipeline.tracking import active_run
from pipeline.stages.context import StageContext

@dataclass(frozen=True)
class StageJob:
    """Everything a stage run needs, picklable, so it can travel to a Ray task."""

    cfg: PipelineConfig
    stage: str
    fingerprint: str
    final_uri: str
    input_uris: dict[str, str]
    store_uri: str
    work_dir: str  # local scratch and caches (node-local when storage is remote)
    tracking_uri: str
    run_id: str
    parent_run_id: str
    lineage: dict
    forced: bool = False
    resume: bool = True


def execute_stage(job: StageJob) -> dict:
    """Run `job` and publish its outputs; returns the marker record (stage, fingerprint, digest, run id, ...)."""
    from pipeline.dag import STAGE_BY_NAME

    stage = STAGE_BY_NAME[job.stage]
    remote = is_remote(job.final_uri)
    work = Path(job.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    if remote:
        scratch = Path(tempfile.mkdtemp(prefix=f"ganpipe-{job.stage}-"))
        out = scratch / "out"
    else:  # local storage: build next to the final dir, then rename (atomic on one filesystem)
        final = Path(job.final_uri)
        remove_stale_scratch(final)  # a rerun of a lost task finds what the lost attempt left (under the lock)
        recover_aside(final)
        scratch = out = final.parent / f".tmp-{job.fingerprint[:16]}-{os.getpid()}"
    out.mkdir(parents=True)
    previous_cwd = current_dir()
    os.chdir(work)  # Tune resolves relative paths against the cwd, which must exist throughout
    try:
        mlflow.set_tracking_uri(job.tracking_uri)
        inputs = {u: localize(uri) for u, uri in job.input_uris.items()}
        with active_run(run_id=job.run_id, nested=True):
            mlflow.set_tags({"stage": job.stage, "executor_host": socket.gethostname(),
                             "executor_pid": str(os.getpid()), **job.lineage})
            mlflow.log_params(flat_params(sections_of(job.cfg, stage)))
            mlflow.log_text(dump_config(job.cfg), "config.yaml")
            upstream_runs = {k.split(".", 1)[1]: v for k, v in job.lineage.items() if k.startswith("upstream.")}
            ctx = StageContext(job.cfg, job.stage, job.fingerprint, out, inputs, work, job.tracking_uri, job.run_id,
                               job.parent_run_id, upstream_runs, job.forced, job.resume, job.final_uri,
                               job.input_uris, job.store_uri)
            t0 = time.perf_counter()
            outputs = recorded_outputs(stage.fn(ctx), out)
            seconds = time.perf_counter() - t0
            digest = directory_digest(out)
            mlflow.set_tag("output_digest", digest)
            mlflow.log_metric("stage_seconds", seconds)
            record = {"stage": job.stage, "fingerprint": job.fingerprint, "digest": digest, "run_id": job.run_id,
                      "seconds": seconds, "outputs": outputs, "listing": file_listing(out)}
            publish(out, job.final_uri, record)  # inside the run: a failed publish ends it FAILED, not FINISHED
        return record
    finally:
        with contextlib.suppress(OSError, TypeError):
            os.chdir(previous_cwd)
        shutil.rmtree(scratch, ignore_errors=True)


def current_dir() -> str | None:
    """The working directory, or the path it had if the directory was replaced: a Ray job's driver starts in
    the job's unpacked working_dir, which Ray unpacks afresh (the same path, a new directory) when the driver
    joins the cluster."""
    try:
        return os.getcwd()
    except FileNotFoundError:
        return os.environ.get("PWD")


def recorded_outputs(returned: dict, out: Path) -> dict[str, str]:
    """A stage's returned outputs for its marker: paths relative to its output dir, other values as text
    (a stage that returns no dict records none)."""
    recorded = {}
    for name, value in (returned if isinstance(returned, dict) else {}).items():
        if isinstance(value, Path):
            value = value.relative_to(out).as_posix() if value.is_relative_to(out) else str(value)
        recorded[name] = str(value)
    return recorded


def sections_of(cfg: PipelineConfig, stage) -> dict:
    """The resolved config sections a stage depends on."""
    dumped = cfg.model_dump(mode="json")
    return {s: dumped[s] for s in stage.sections}


def submit_stage(job: StageJob, as_ray_task: bool) -> dict:
    """execute_stage here, or as a Ray task (no CPU reserved: the stage only drives its own Ray workers). Ray
    reruns a task whose worker or node is lost up to `ray.stage_task_retries` times; past that the stage
    fails in one line."""
    if not as_ray_task:
        return execute_stage(job)
    import ray
    from ray.exceptions import NodeDiedError, ObjectLostError, RayTaskError, WorkerCrashedError

    retries = job.cfg.ray.stage_task_retries
    ref = ray.remote(num_cpus=0, max_retries=retries, retry_exceptions=False,
                     resources=job.cfg.ray.stage_task_resources or None)(execute_stage).remote(job)
    try:
        return ray.get(ref)
    except KeyboardInterrupt:
        ray.cancel(ref)  # the task gets the interrupt too: Tune saves its state, Train stops its workers
        raise
    except RayTaskError as err:
        if isinstance(err.cause, (UserError, RunFailed)):  # one line for the user, not the remote traceback
            raise err.cause from None
        failure = environment_failure(err.cause)
        if failure is not None:
            raise failure from None
        raise
    except (WorkerCrashedError, NodeDiedError, ObjectLostError) as err:
        raise RunFailed(f"{job.stage}: its Ray task was lost ({type(err).__name__}: the node or worker process "
                        f"died) and so were its {retries} rerun(s) (ray.stage_task_retries); rerun the same "
                        "command: finished stages are cached and training resumes from its last checkpoint") \
            from None
