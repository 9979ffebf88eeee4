"""The registered generator as a serving team gets it: no pickle inside, installable requirements, and an
HTTP endpoint from `mlflow models serve` that returns images for the labels asked."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, free_port, wait_for_http

pytestmark = pytest.mark.slow


def _model_files(smoke_run, tmp_path) -> Path:
    s = smoke_run["summary"]
    mlflow.set_tracking_uri(s["tracking_uri"])
    return Path(mlflow.artifacts.download_artifacts(f"models:/{s['model_name']}@champion", dst_path=str(tmp_path)))


def test_the_registered_model_holds_code_and_tensors_but_no_pickle(smoke_run, tmp_path):
    local = _model_files(smoke_run, tmp_path)
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))], files
    assert "generator_model.py" in files and any(f.endswith("generator.pt") for f in files)
    mlmodel = (local / "MLmodel").read_text()
    assert "loader_module: mlflow.pyfunc.loaders.code_model" in mlmodel and "python_model.pkl" not in mlmodel
    requirements = (local / "requirements.txt").read_text().split()
    assert any(r.startswith("torch==") for r in requirements)
    assert not [r for r in requirements if "+" in r], requirements  # no local labels such as +cpu


def test_evaluation_metrics_are_linked_to_the_logged_model_that_was_registered(smoke_run):
    s = smoke_run["summary"]
    client = MlflowClient(s["tracking_uri"])
    version = client.get_model_version(s["model_name"], s["model_version"])
    assert version.source.startswith("models:/m-")  # registered from the LoggedModel, not from run files
    model = client.get_logged_model(version.model_id or version.source.removeprefix("models:/"))
    assert model.source_run_id == s["stage_run_ids"]["evaluate"]
    linked = {m.key for m in model.metrics or []}
    assert {"fcd", "class_kl", "d_fgsm_accuracy"} <= linked
    train_models = client.search_logged_models([model.experiment_id],
                                               filter_string=f"source_run_id = '{s['stage_run_ids']['train']}'")
    assert [m.name for m in train_models] == ["generator"]  # the train stage's own LoggedModel


def test_mlflow_models_serve_answers_with_images_for_two_labels(smoke_run, tmp_path):
    s = smoke_run["summary"]
    port = free_port()
    # The scoring server is started by name (uvicorn): the venv's bin must be on PATH, as it is when activated.
    env = {**os.environ, "MLFLOW_TRACKING_URI": s["tracking_uri"],
           "PATH": f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(REPO / ".venv" / "bin" / "mlflow"), "models", "serve", "-m",
                                 f"models:/{s['model_name']}@champion", "--env-manager", "local", "-h", "127.0.0.1",
                                 "-p", str(port), "-w", "1"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                cwd=tmp_path, start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", 120, lambda: "server did not start: " + log.read_text()[-2000:])
        body = json.dumps({"dataframe_split": {"columns": ["label", "seed"], "data": [[0, 7], [3, 8]]}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            images = np.asarray(json.loads(response.read())["predictions"], dtype=np.float32)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert images.shape == (2, 1, 32, 32)
    assert images.min() >= -1.0 and images.max() <= 1.0 and images.std() > 0.01
    assert np.abs(images[0] - images[1]).max() > 1e-3  # two labels, two seeds: two different images
