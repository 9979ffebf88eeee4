"""Beyond one machine, on loopback: a 2-node Ray cluster (token auth on), a local MLflow server, and the
smoke pipeline submitted as a Ray job."""
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "infra" / "local"))
import cluster  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture
def two_node_cluster():
    info = cluster.start(workers=1, cpus_per_node=1)
    try:
        yield info
    finally:
        cluster.stop(info["temp_dir"])
    assert not cluster.own_pids(info["temp_dir"])


def test_cluster_script_starts_and_stops_only_its_own_processes(two_node_cluster):
    out = subprocess.run([sys.executable, "-c", (
        "import ray; ray.init(address='%s', logging_level='error');"
        "print(sorted(n['NodeManagerAddress'] for n in ray.nodes() if n['Alive']))") % two_node_cluster["address"]],
        capture_output=True, text=True, env={**os.environ, "RAY_AUTH_MODE": "token",
                                             "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}, timeout=120)
    assert "['127.0.0.2', '127.0.0.3']" in out.stdout, out.stderr[-800:]
    assert cluster.own_pids(two_node_cluster["temp_dir"])


def test_submit_smoke_pipeline_as_ray_job(two_node_cluster, mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "pipeline", "submit", "--address", two_node_cluster["dashboard"],
           "--config", "configs/smoke.yaml", "--follow", "--set", f"work_dir={tmp_path / 'shared'}",
           "--set", "ray.num_cpus=null"]
    job = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    (tmp_path.parent / "job.log").write_text(job.stdout + job.stderr)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-2000:]
    assert "SUCCEEDED" in job.stdout

    client = MlflowClient(mlflow_server)
    version = client.get_model_version_by_alias("ganpipe-smoke", "challenger")
    assert version.version
    train_runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                    filter_string="tags.stage = 'train'")
    nodes = set(train_runs[0].data.tags["worker_nodes"].split(","))
    assert len(nodes) == 2  # one DDP rank on each node


def test_submit_without_token_fails_clearly(tmp_path, monkeypatch):
    from components.errors import UserError
    from pipeline.submit import require_token

    with pytest.raises(UserError, match="no Ray auth token"):
        require_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")})
