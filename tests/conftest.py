"""Shared fixtures: one loopback Ray cluster per session, and one smoke DAG run for integration tests."""
from __future__ import annotations

import os

# Before anything imports Ray: keep it on 127.0.0.1 and offline.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.pop("RAY_ADDRESS", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)
# S3 tests talk to a moto server on 127.0.0.1 only: dummy credentials, and no EC2 metadata lookups.
os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                  AWS_EC2_METADATA_DISABLED="true")
for _var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
    os.environ.pop(_var, None)

import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray on 127.0.0.1 shared by every test that needs one; shut down by its own handle."""
    import ray

    from pipeline.ray_edge import ensure_ray

    started = ensure_ray(None, 2)
    yield ray
    if started:
        ray.shutdown()


def smoke_overrides(tmp: Path) -> list[str]:
    """Point a smoke run's outputs and tracking into `tmp`."""
    return [f"work_dir={tmp / 'outputs'}", f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
            f"tracking.artifact_root={tmp / 'mlartifacts'}"]


@pytest.fixture(scope="session")
def smoke_run(ray_cluster, tmp_path_factory):
    """The whole DAG on configs/smoke.yaml, real Ray and real MLflow (SQLite in a temp dir)."""
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline

    tmp = tmp_path_factory.mktemp("smoke")
    cfg = load_config(REPO / "configs" / "smoke.yaml", smoke_overrides(tmp))
    summary = run_pipeline(cfg)
    return {"cfg": cfg, "summary": summary, "tmp": tmp}


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, seconds: float, why_not) -> None:
    """Poll `url` until it answers; fail the test with why_not() if it does not within `seconds`."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.3)
    pytest.fail(why_not())


@pytest.fixture
def mlflow_server(tmp_path):
    """An MLflow tracking server on 127.0.0.1 started by infra/mlflow/start.sh (SQLite backend in tmp)."""
    port = free_port()
    env = {**os.environ, "MLFLOW": str(REPO / ".venv" / "bin" / "mlflow"), "MLFLOW_LOG": str(tmp_path / "mlflow.log")}
    pid = int(subprocess.run([str(REPO / "infra" / "mlflow" / "start.sh"), "--port", str(port), "--backend",
                              f"sqlite:///{tmp_path / 'server.db'}", "--artifacts", str(tmp_path / "server-art"),
                              "--no-auth"],
                             env=env, capture_output=True, text=True, check=True, cwd=tmp_path).stdout.strip())
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{uri}/health", 120, lambda: "MLflow server did not start: "
                      + (tmp_path / "mlflow.log").read_text()[-500:])
        yield uri
    finally:
        subprocess.run(["pkill", "-TERM", "-P", str(pid)], check=False)
        os.kill(pid, 15)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """An S3 API (moto) on 127.0.0.1; yields host:port. Skips when moto is not installed."""
    server = REPO / ".venv" / "bin" / "moto_server"
    if not server.exists():
        pytest.skip("moto[server] is not installed (pip install -e '.[dev]')")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/moto-api/", 60, lambda: "moto server did not start: "
                      + log.read_text()[-500:])
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def s3_uri(endpoint: str, bucket_path: str) -> str:
    """An s3:// URI on the test endpoint (plain HTTP; the bucket is created on first write)."""
    return f"s3://{bucket_path}?endpoint_override={endpoint}&scheme=http&allow_bucket_creation=true"
