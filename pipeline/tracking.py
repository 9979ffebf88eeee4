"""The MLflow edge of the pipeline: resolve the tracking URI, find the experiment, open runs."""
from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path

import mlflow

from components.errors import UserError
from components.tracking_outage import http_retry_env, is_unreachable, patience


def absolute_tracking_uri(uri: str) -> str:
    """Make `sqlite:///relative.db` absolute, so Ray workers with another cwd write to the same file."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    if "://" not in uri:
        raise UserError(f"tracking.uri {uri!r} is a plain path; MLflow 3 needs a database or server URI, "
                        "e.g. sqlite:///mlflow.db or http://127.0.0.1:5000")
    return uri


def artifact_location(root: str, tracking_uri: str) -> str | None:
    """Where a new experiment keeps artifacts. A tracking server decides itself (proxied artifacts), unless
    a URI is given; locally, a folder becomes an absolute file URI."""
    if "://" in root or root.startswith("mlflow-artifacts:"):
        return root
    return None if tracking_uri.startswith(("http://", "https://")) else Path(root).resolve().as_uri()


def setup_tracking(uri: str, experiment: str, artifact_root: str, patience_s: float = 300.0) -> tuple[str, str]:
    """Point MLflow at `uri`, create the experiment if needed; returns (absolute uri, experiment id). MLflow
    calls from here on, and from Ray workers started later, wait up to `patience_s` for a server that does
    not answer."""
    uri = absolute_tracking_uri(uri)
    os.environ.update(http_retry_env(patience_s))
    for noisy in ("mlflow.store.db.utils", "alembic", "mlflow.tracking.fluent"):  # schema-migration chatter
        logging.getLogger(noisy).setLevel(logging.WARNING)
    mlflow.set_tracking_uri(uri)
    os.environ["MLFLOW_TRACKING_URI"] = uri  # inherited by Ray workers started from this process
    with _store_setup_lock(uri):
        exp = mlflow.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else mlflow.create_experiment(experiment,
                                                                        artifact_location(artifact_root, uri))
    mlflow.set_experiment(experiment_id=exp_id)
    return uri, exp_id


def sqlite_file(uri: str) -> Path | None:
    """The database file of a sqlite:/// tracking URI, else None."""
    prefix = "sqlite:///"
    return Path(uri[len(prefix):].split("?", 1)[0]) if uri.startswith(prefix) else None


@contextlib.contextmanager
def _flock(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def registry_lock(uri: str, model_name: str):
    """A factory of context managers that serialise alias moves of one registered model: a file lock beside a
    SQLite store (every process that can write it shares its disk). A server store gets none; promotion's
    compare-and-swap check covers it."""
    import hashlib

    db = sqlite_file(absolute_tracking_uri(uri))
    if db is None:
        return contextlib.nullcontext
    key = hashlib.sha256(model_name.encode()).hexdigest()[:16]
    return lambda: _flock(db.parent / f".{db.name}.registry-{key}.lock")


@contextlib.contextmanager
def _store_setup_lock(uri: str):
    """Two processes opening a new SQLite store at once would both create its schema (and the experiment):
    one of them fails on a duplicate column. They take turns here; a server store needs no lock."""
    db = sqlite_file(uri)
    if db is None:
        yield
        return
    with _flock(db.parent / f".{db.name}.setup.lock"):
        yield


@contextlib.contextmanager
def active_run(**start_run_args):
    """`mlflow.start_run(...)` as a context that ends the run FINISHED on success, KILLED on Ctrl+C or SIGTERM
    (MLflow itself would say FAILED, which is for errors) and FAILED on an error. Ending a failed run never
    replaces the error that failed it: if the tracking server is unreachable by then, the run stays RUNNING
    until the next run against the store marks it KILLED (reap_orphaned_runs)."""
    run = mlflow.start_run(**start_run_args)
    try:
        yield run
    except KeyboardInterrupt:
        _end_quietly("KILLED")
        raise
    except BaseException:
        _end_quietly("FAILED")
        raise
    mlflow.end_run()


def _end_quietly(status: str) -> None:
    with patience(0), contextlib.suppress(Exception):
        mlflow.end_run(status)  # MLflow takes the run off its stack before it calls the server


def end_if_running(client, run_id: str, interrupted: bool, failing: bool = False) -> None:
    """End a run this process opened and nobody closed: KILLED if the process was interrupted, else FAILED.
    While an error is on its way out (`failing`), an unreachable server is left to the next run's reaper."""
    with patience(0) if failing else contextlib.nullcontext():
        try:
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_terminated(run_id, "KILLED" if interrupted else "FAILED")
        except Exception as err:
            if not (failing and is_unreachable(err)):
                raise


def owner_tags() -> dict[str, str]:
    """Which process owns a run, so a later run can tell whether it is still alive (see reap_orphaned_runs)."""
    return {"driver_host": socket.gethostname(), "driver_pid": str(os.getpid())}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_orphaned_runs(client, experiment_id: str) -> int:
    """Mark KILLED every RUNNING run of this experiment whose driver on this host has died (SIGKILL, the
    machine's OOM killer, `ray job stop`'s follow-up kill), with the RUNNING runs below it. Returns how many."""
    from mlflow.entities import ViewType

    host = socket.gethostname().replace("'", "")
    orphans = [r for r in client.search_runs([experiment_id], f"attributes.status = 'RUNNING' and "
                                             f"tags.driver_host = '{host}'", ViewType.ACTIVE_ONLY, max_results=500)
               if r.data.tags.get("driver_pid", "").isdigit() and not _alive(int(r.data.tags["driver_pid"]))]
    todo, reaped = [r.info.run_id for r in orphans], set()
    while todo:
        run_id = todo.pop()
        if run_id in reaped:
            continue
        client.set_terminated(run_id, "KILLED")
        reaped.add(run_id)
        todo += [c.info.run_id for c in client.search_runs(
            [experiment_id], f"attributes.status = 'RUNNING' and tags.mlflow.parentRunId = '{run_id}'",
            ViewType.ACTIVE_ONLY, max_results=500)]
    return len(reaped)
