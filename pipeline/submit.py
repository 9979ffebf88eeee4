"""`python -m pipeline submit`: run a ganpipe command as a Ray job on a cluster (a JobSubmissionClient wrapper).

The Ray auth token is read from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token; it is never
printed or logged.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shlex
import time
from pathlib import Path

from components.errors import UserError
from components.storage import redact

REPO = Path(__file__).resolve().parent.parent
# Local state, databases and anything that may hold secrets never leave this machine with the job.
UPLOAD_EXCLUDES = [".venv", "mlruns", "mlartifacts", "mlflow.db", "*.db", "*.db-journal", "outputs", "ray_results",
                   ".git", "*.png", "__pycache__", ".pytest_cache", ".env", "*.env", ".envrc", "*.pem", "*.key",
                   "*.token", ".netrc", "secrets", "*.log", "mlflow-server-artifacts", "mlflow-server.log", ".gpukit",
                   "bench/results/*.log"]
# Settings the job needs that are not secret: they travel in the job's runtime env, which the job record shows.
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION",
                 "AWS_EC2_METADATA_DISABLED")
# Secrets never do: they reach the job through a file on the cluster (--secrets-file) or the cluster's own
# secret store (a Kubernetes Secret in the pods' environment, docs/cluster.md).
SECRET_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "AWS_ACCESS_KEY_ID",
              "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def require_token(environ=os.environ) -> None:
    """Fail in one line when no token is available; clusters started by `ray start` demand one."""
    path = Path(environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if not environ.get("RAY_AUTH_TOKEN") and not path.is_file():
        raise UserError("no Ray auth token: set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH, or copy the cluster's "
                        "token to ~/.ray/auth_token (`ray get-auth-token` on the head node)")
    environ.setdefault("RAY_AUTH_MODE", "token")


def runtime_env(image: str | None, pip: list[str] | None, secrets_file: str | None = None) -> dict:
    """Working dir upload (minus local state and secrets), non-secret settings, the path of the secrets file
    on the cluster, and pip deps or a container image."""
    env = {"RAY_USAGE_STATS_ENABLED": "0", **{k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}}
    if redact(env.get("MLFLOW_TRACKING_URI", "")) != env.get("MLFLOW_TRACKING_URI", ""):
        raise UserError("MLFLOW_TRACKING_URI holds a password; put the credentials in the cluster's secrets "
                        "(--secrets-file with MLFLOW_TRACKING_USERNAME/PASSWORD) and the plain URI here")
    if secrets_file:
        env["GANPIPE_SECRETS_FILE"] = secrets_file
    spec: dict = {"working_dir": str(REPO), "excludes": UPLOAD_EXCLUDES, "env_vars": env}
    if image:
        spec["image_uri"] = image
    elif pip:
        spec["pip"] = pip
    return spec


def submit(address: str, command: list[str], follow: bool, entrypoint_cpus: float,
           image: str | None = None, pip: list[str] | None = None, secrets_file: str | None = None) -> int:
    """Submit `python -m pipeline COMMAND...`, optionally stream logs, and return 0 if the job succeeded (1 if
    it failed or stopped)."""
    require_token()  # before importing Ray, which reads RAY_AUTH_MODE at import time
    logging.getLogger("ray").setLevel(logging.WARNING)  # no per-file packaging chatter
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobStatus, JobSubmissionClient

    # Quoted: overrides carry URIs with ? and & (storage.uri=s3://...?endpoint_override=...&scheme=http).
    entrypoint = "python -m pipeline " + shlex.join(command)
    config = command[command.index("--config") + 1] if "--config" in command[:-1] else None
    label = f"{command[0]}-{Path(config).stem}" if config else command[0]
    submission_id = f"ganpipe-{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        client = JobSubmissionClient(address)
        _submit_with_retry(client, entrypoint=entrypoint, submission_id=submission_id,
                           runtime_env=runtime_env(image, pip, secrets_file), entrypoint_num_cpus=entrypoint_cpus)
    except AuthenticationError:
        raise UserError(f"the cluster at {address} rejected the Ray auth token; use the token of that cluster "
                        "(RAY_AUTH_TOKEN or ~/.ray/auth_token)") from None
    except (ConnectionError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0][:200]
        raise UserError(f"cannot submit to {address}: {first}") from None
    print(f"submitted {submission_id} to {address}", flush=True)
    held = [k for k in SECRET_ENV if k in os.environ]
    if held and not secrets_file:
        print(f"note: {', '.join(held)} not sent with the job (secrets never travel in a job's runtime env); "
              "give them with --secrets-file or a cluster Secret (docs/cluster.md)", flush=True)
    if follow:
        asyncio.run(_stream(client, submission_id))
    status = _wait(client, submission_id) if follow else client.get_job_status(submission_id)
    print(f"job {submission_id}: {status}", flush=True)
    if not follow:
        return 0
    return 0 if status == JobStatus.SUCCEEDED else 1


def _submit_with_retry(client, attempts: int = 30, **job) -> None:
    """A freshly started head has no job agent for a few seconds; Ray says 'try again later', so we do."""
    for attempt in range(attempts):
        try:
            client.submit_job(**job)
            return
        except RuntimeError as err:
            if "No available agent" not in str(err) or attempt == attempts - 1:
                raise
            time.sleep(2)


async def _stream(client, submission_id: str) -> None:
    async for lines in client.tail_job_logs(submission_id):
        print(lines, end="", flush=True)


def _wait(client, submission_id: str, timeout_s: float = 3600):
    from ray.job_submission import JobStatus

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        status = client.get_job_status(submission_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return status
        time.sleep(1)
    return client.get_job_status(submission_id)
