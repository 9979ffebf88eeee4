"""Many trials logging at once must lose nothing: 8 concurrent writer processes against a tracking
server and against SQLite, each through the same logger the training workers use."""
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO

pytestmark = pytest.mark.slow
WRITERS, BATCHES, PER_BATCH = 8, 5, 10

WRITER = """
import sys
from mlflow.tracking import MlflowClient
from components.training.mlflow_logger import MlflowRunLogger
uri, exp, i = sys.argv[1], sys.argv[2], int(sys.argv[3])
run = MlflowClient(uri).create_run(exp, run_name=f"writer-{i}")
log = MlflowRunLogger(uri, run.info.run_id)
for b in range(%d):
    log.log_metrics({f"m{k}": float(b * k) for k in range(%d)}, step=b)
log.finish()
print(run.info.run_id)
""" % (BATCHES, PER_BATCH)


def run_writers(uri: str) -> list[str]:
    client = MlflowClient(uri)
    exp = client.create_experiment(f"concurrency-{len(client.search_experiments())}")
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, uri, exp, str(i)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(WRITERS)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    return [o[0].strip().splitlines()[-1] for o in outs]


def count_points(uri: str, run_ids: list[str]) -> int:
    client = MlflowClient(uri)
    return sum(len(client.get_metric_history(r, f"m{k}")) for r in run_ids for k in range(PER_BATCH))


@pytest.mark.parametrize("backend", ["server", "sqlite"])
def test_eight_concurrent_writers_lose_nothing(backend, request, tmp_path):
    uri = request.getfixturevalue("mlflow_server") if backend == "server" else f"sqlite:///{tmp_path / 'c.db'}"
    if backend == "sqlite":
        MlflowClient(uri).search_experiments()  # create the schema once, before the writers race
    run_ids = run_writers(uri)
    assert count_points(uri, run_ids) == WRITERS * BATCHES * PER_BATCH
