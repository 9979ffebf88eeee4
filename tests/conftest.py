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

import contextlib  # noqa: E402
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


def wait_for_http(url: str, seconds: float, why_not, pid: int | None = None) -> None:
    """Poll `url` until it answers; fail the test with why_not() if it does not within `seconds`, or as soon
    as process `pid` (the server) has exited."""
    deadline = time.time() + seconds
    while time.time() < deadline and (pid is None or Path(f"/proc/{pid}").exists()):
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.3)
    pytest.fail(why_not())


class MlflowServer:
    """An MLflow tracking server on 127.0.0.1 started by infra/mlflow/start.sh (SQLite backend in `root`); it
    can be stopped and started again on the same port and store, as an outage would."""

    def __init__(self, root: Path, extra: tuple[str, ...] = ("--no-auth",), env: dict | None = None,
                 backend: str | None = None):
        self.root, self.extra, self.env = root, extra, env or {}
        self.backend = backend or f"sqlite:///{root / 'server.db'}"
        self.port, self.pid = free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> "MlflowServer":
        env = {**os.environ, "MLFLOW": str(REPO / ".venv" / "bin" / "mlflow"),
               "MLFLOW_LOG": str(self.root / "mlflow.log"), **self.env}
        self.pid = int(subprocess.run(
            [str(REPO / "infra" / "mlflow" / "start.sh"), "--port", str(self.port), "--backend", self.backend,
             "--artifacts", str(self.root / "server-art"), *self.extra],
            env=env, capture_output=True, text=True, check=True, cwd=self.root).stdout.strip())
        wait_for_http(f"{self.uri}/health", 120, lambda: "MLflow server did not start: "
                      + (self.root / "mlflow.log").read_text()[-500:], self.pid)
        return self

    def stop(self) -> None:
        """SIGKILL the server and every process under it (uvicorn's workers hold the port), as a crash
        would, and wait until the port refuses connections."""
        if self.pid is None:
            return
        for pid in [self.pid, *descendants(self.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        self.pid = None
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                time.sleep(0.2)
            except OSError:
                return
        pytest.fail(f"the MLflow server on port {self.port} still answers after it was killed")


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, children first."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout.split()
    children: dict[int, list[int]] = {}
    for child, parent in zip(map(int, out[::2]), map(int, out[1::2])):
        children.setdefault(parent, []).append(child)
    found, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop(0)
        found.append(p)
        todo += children.get(p, [])
    return found


@pytest.fixture
def mlflow_server(tmp_path):
    """A tracking server's URI (see MlflowServer), stopped after the test."""
    server = MlflowServer(tmp_path)
    try:
        yield server.start().uri
    finally:
        server.stop()


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
