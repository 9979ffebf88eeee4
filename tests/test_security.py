"""Nothing leaked, nothing executed: credentials masked wherever a URI is logged or printed, the report
escaped, outputs that are not ours never deleted, secrets kept out of job records, a private cache, and
KubeRay pods that run restricted."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components import storage
from components.errors import UserError
from pipeline.cli import load_secrets_file, main
from tests.conftest import REPO

SECRET = "PLANTEDSECRET123"


@pytest.mark.parametrize("uri, masked", [
    (f"s3://AKIA:{SECRET}@bucket/prefix?endpoint_override=h:9000", "s3://AKIA:***@bucket/prefix?endpoint_override=h:9000"),
    (f"postgresql://mlflow:{SECRET}@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
    (f"https://host/x?sig={SECRET}&se=2030", "https://host/x?sig=***&se=2030"),
    (f"gs://b/p?access_token={SECRET}", "gs://b/p?access_token=***"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ("s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http", None),
])
def test_redact_masks_passwords_and_secret_query_values(uri, masked):
    assert storage.redact(uri) == (masked or uri)
    assert SECRET not in storage.redact(f"text around {uri} and more")


def test_a_planted_secret_reaches_no_param_tag_config_or_printed_line(s3_endpoint, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from pipeline.config import load_config
    from pipeline.runner import run_pipeline
    from tests.conftest import smoke_overrides

    bucket = f"s3://testing:{SECRET}@sec-{os.getpid()}/run?endpoint_override={s3_endpoint}&scheme=http" \
             "&allow_bucket_creation=true"
    overrides = smoke_overrides(tmp_path) + [f"storage.uri={bucket}"]
    run_pipeline(load_config(REPO / "configs" / "smoke.yaml", overrides), until="prepare")
    assert main(["run", "--config", str(REPO / "configs" / "smoke.yaml"), "--dry-run",
                 *[x for o in overrides for x in ("--set", o)]]) == 0
    printed = capsys.readouterr()
    assert SECRET not in printed.out + printed.err and "testing:***@" in printed.out
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert {r.info.run_name for r in runs} == {"smoke-pipeline", "prepare"}
    for run in runs:
        assert SECRET not in json.dumps({**run.data.params, **run.data.tags}), run.info.run_name
        config = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))).read_text()
        assert SECRET not in config and "testing:***@" in config


def test_the_report_escapes_every_field(tmp_path):
    from pipeline.report import build_html

    script = "<script>alert(1)</script>"
    for stage, name, payload in (("prepare", "data/manifest.json", {
            "num_images": script, "digest": script, "source": {"description": script},
            "train_statistics": {"imbalance_ratio": script, "normalized_entropy": 0.5}}),
            ("evaluate", "evaluation.json", {"notes": [script], "fcd": 1.0}),
            ("promote", "promotion.json", {"model_name": script, "version": script, "aliases": [script],
                                           "promoted": False, "failed_gates": [script],
                                           "gates": [{"gate": script, "value": 1.0, "threshold": 2.0, "passed": False}]})):
        path = tmp_path / stage / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload))
    page = build_html({s: tmp_path / s for s in ("prepare", "evaluate", "promote")}, script)
    assert "<script>" not in page and page.count("&lt;script&gt;") >= 8


def test_evaluate_out_refuses_a_directory_it_did_not_write(tmp_path, capsys, monkeypatch):
    from pipeline.registry_commands import EVALUATION_MARK, refuse_foreign_dir

    monkeypatch.chdir(tmp_path)
    (tmp_path / "precious.txt").write_text("keep me")
    code = main(["evaluate", "--model", str(tmp_path / "precious.txt"), "--out", ".",
                 "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    assert code == 2 and "--out" in capsys.readouterr().err and (tmp_path / "precious.txt").exists()
    ours = tmp_path / "ev"
    ours.mkdir()
    (ours / EVALUATION_MARK).write_text("")
    (ours / "evaluation.json").write_text("{}")
    refuse_foreign_dir(ours, EVALUATION_MARK)  # an earlier evaluation is replaced
    refuse_foreign_dir(tmp_path / "new", EVALUATION_MARK)  # as is nothing


def test_submitted_jobs_carry_no_secrets_and_upload_none(monkeypatch, tmp_path):
    from pipeline.submit import UPLOAD_EXCLUDES, runtime_env

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    spec = runtime_env(None, None, "/etc/ganpipe/secrets.env")
    assert SECRET not in json.dumps(spec) and spec["env_vars"]["GANPIPE_SECRETS_FILE"] == "/etc/ganpipe/secrets.env"
    for pattern in (".env", "*.db", "*.pem", "*.key", ".netrc", "*.log"):
        assert pattern in UPLOAD_EXCLUDES
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://admin:{SECRET}@127.0.0.1:5000")
    with pytest.raises(UserError, match="holds a password"):
        runtime_env(None, None)


def test_a_job_reads_its_secrets_from_a_private_file(tmp_path):
    path = tmp_path / "secrets.env"
    path.write_text(f"# MLflow\nMLFLOW_TRACKING_PASSWORD={SECRET}\nAWS_ACCESS_KEY_ID=AKIA\n")
    path.chmod(0o644)
    env = {"GANPIPE_SECRETS_FILE": str(path)}
    with pytest.raises(UserError, match="readable by other users; chmod 600"):
        load_secrets_file(env)
    path.chmod(0o600)
    load_secrets_file(env)
    assert env["MLFLOW_TRACKING_PASSWORD"] == SECRET and env["AWS_ACCESS_KEY_ID"] == "AKIA"
    path.write_text("no equals sign here\n")
    with pytest.raises(UserError, match="line 1: expected KEY=VALUE"):
        load_secrets_file({"GANPIPE_SECRETS_FILE": str(path)})


def test_the_cache_directory_is_private_and_ours(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("GANPIPE_CACHE", str(cache))
    assert storage.local_cache_root() == cache and cache.stat().st_mode & 0o777 == 0o700
    cache.chmod(0o777)
    storage.local_cache_root()
    assert cache.stat().st_mode & 0o777 == 0o700  # tightened again
    if os.getuid() == 0:  # only root can hand a directory to another user
        os.chown(cache, 12345, -1)
        with pytest.raises(UserError, match="belongs to uid 12345"):
            storage.local_cache_root()


def _containers(doc: dict) -> list[dict]:
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


@pytest.mark.parametrize("path", sorted((REPO / "infra" / "kuberay").glob("*.yaml")), ids=lambda p: p.name)
def test_kuberay_pods_run_restricted(path):
    doc = yaml.safe_load(path.read_text())
    for container in _containers(doc):
        ctx = container["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"]["drop"] == ["ALL"] and ctx["seccompProfile"]["type"] == "RuntimeDefault"


@pytest.mark.slow
def test_the_mlflow_server_starts_with_auth_on_and_writes_no_password(tmp_path):
    import base64
    import urllib.error
    import urllib.request

    from tests.conftest import MlflowServer, free_port

    creds = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": SECRET}
    (tmp_path / "tmp").mkdir()
    server = MlflowServer(tmp_path, extra=(), env={**creds, "TMPDIR": str(tmp_path / "tmp")})
    url = f"{server.uri}/api/2.0/mlflow/experiments/search?max_results=1"

    def status(credentials: str | None) -> int:
        request = urllib.request.Request(url)
        if credentials:
            request.add_header("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code

    try:
        server.start()
        assert status(None) == 401 and status(f"admin:{SECRET}") == 200 and status("admin:wrong") == 401
    finally:
        server.stop()
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".ini", "") and p.stat().st_size < 1e5]
    assert not [p for p in written if SECRET in p.read_text(errors="ignore")], written
    assert not list((tmp_path / "tmp").iterdir())  # no leftover temp file
    refused = subprocess.run([str(REPO / "infra" / "mlflow" / "start.sh"), "--port", str(free_port())],
                             env={**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")},
                                  "MLFLOW": str(REPO / ".venv" / "bin" / "mlflow")},
                             capture_output=True, text=True, cwd=tmp_path)
    assert refused.returncode == 2 and "--no-auth" in refused.stderr
