"""The MLflow server's production path: a PostgreSQL backend store (PostgreSQL from Debian's packages, started
here on 127.0.0.1 with password authentication) behind infra/mlflow/start.sh with basic auth on. Runs,
metrics and the registry's aliases must land in PostgreSQL, and the database password in no command line."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import MlflowServer, free_port

pytestmark = pytest.mark.slow
PG_PASSWORD, ADMIN_PASSWORD = "pg-Planted-7731", "admin-Planted-5519"


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))), None)
    if not found:
        pytest.skip(f"PostgreSQL's {name} is not installed (Debian: apt install postgresql)")
    return str(found)


@pytest.fixture
def postgres():
    """A PostgreSQL server in a temp dir on 127.0.0.1, as the `postgres` user when this runs as root (initdb
    refuses root); yields its port. Superuser `ganpipe`, database `mlflow`, scram-sha-256 passwords."""
    pytest.importorskip("psycopg2")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    root = Path(tempfile.mkdtemp(prefix="ganpipe-pg-"))
    as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_owner:
        shutil.chown(root, "postgres")
    (root / "pw").write_text(PG_PASSWORD)
    if as_owner:
        shutil.chown(root / "pw", "postgres")
    port = free_port()
    run = lambda *cmd: subprocess.run([*as_owner, *cmd], check=True, capture_output=True, text=True, timeout=120)
    try:
        run(initdb, "-D", str(root / "data"), "-U", "ganpipe", "--auth=scram-sha-256", f"--pwfile={root / 'pw'}")
        run(pg_ctl, "-D", str(root / "data"), "-l", str(root / "log"), "-w", "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start")
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="ganpipe", password=PG_PASSWORD,
                                dbname="postgres")
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        conn.cursor().execute("CREATE DATABASE mlflow")
        conn.close()
        yield port
    finally:
        subprocess.run([*as_owner, pg_ctl, "-D", str(root / "data"), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_the_mlflow_server_keeps_runs_and_aliases_in_postgresql(postgres, tmp_path, monkeypatch):
    import psycopg2
    from mlflow.tracking import MlflowClient

    from tests.conftest import descendants

    admin = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD}
    server = MlflowServer(tmp_path, extra=(), env={**admin, "PGPASSWORD": PG_PASSWORD},
                          backend=f"postgresql+psycopg2://ganpipe@127.0.0.1:{postgres}/mlflow")
    server.start()
    try:
        for pid in [server.pid, *descendants(server.pid)]:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            assert PG_PASSWORD.encode() not in cmdline and ADMIN_PASSWORD.encode() not in cmdline
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "nobody")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
        with pytest.raises(Exception, match="401|[Uu]nauthori"):
            MlflowClient(server.uri).search_experiments()
        for key, value in admin.items():
            monkeypatch.setenv(key, value)
        client = MlflowClient(server.uri)
        run = client.create_run(client.create_experiment("postgres-path"), run_name="train")
        client.log_metric(run.info.run_id, "d_loss", 0.5, step=10)
        client.set_terminated(run.info.run_id)
        client.create_registered_model("ganpipe-pg")
        version = client.create_model_version("ganpipe-pg", f"runs:/{run.info.run_id}/generator", run.info.run_id)
        client.set_registered_model_alias("ganpipe-pg", "champion", version.version)
        assert client.get_model_version_by_alias("ganpipe-pg", "champion").run_id == run.info.run_id
    finally:
        server.stop()

    with psycopg2.connect(host="127.0.0.1", port=postgres, user="ganpipe", password=PG_PASSWORD,
                          dbname="mlflow") as conn:
        cur = conn.cursor()
        cur.execute("SELECT status FROM runs WHERE run_uuid = %s", (run.info.run_id,))
        assert cur.fetchall() == [("FINISHED",)]
        cur.execute("SELECT key, value, step FROM metrics WHERE run_uuid = %s", (run.info.run_id,))
        assert cur.fetchall() == [("d_loss", 0.5, 10)]
        cur.execute("SELECT name, alias, version FROM registered_model_aliases")
        assert cur.fetchall() == [("ganpipe-pg", "champion", int(version.version))]
