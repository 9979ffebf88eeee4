"""A cache hit is verified, a publish is atomic, a stage output is computed once, and a stopped run says KILLED."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.outputs import MARKER, file_listing, output_problem, publish_local, read_marker, recover_aside
from tests.conftest import REPO, smoke_overrides
from tests.helpers import write_longtail_folder


def _record(out: Path, tag: str) -> dict:
    from pipeline.fingerprint import directory_digest

    return {"stage": "x", "fingerprint": "f" * 64, "digest": directory_digest(out), "run_id": tag,
            "listing": file_listing(out)}


def _output(root: Path, name: str, text: str) -> Path:
    out = root / name
    out.mkdir(parents=True)
    (out / "result.txt").write_text(text)
    return out


def test_a_changed_output_is_not_a_cache_hit(tmp_path):
    final = tmp_path / "final"
    out = _output(tmp_path, "new", "alpha")
    publish_local(out, final, _record(out, "r1"))
    record = read_marker(str(final))
    assert output_problem(str(final), record) is None and output_problem(str(final), record, full=True) is None
    (final / "result.txt").write_text("beta!")  # same listing, other bytes: only the full check sees it
    assert output_problem(str(final), record) is None
    assert "digest" in output_problem(str(final), record, full=True)
    (final / "result.txt").write_text("longer text")
    assert "size of result.txt changed" in output_problem(str(final), record)
    (final / "result.txt").unlink()
    assert "missing result.txt" in output_problem(str(final), record)


def test_a_killed_publish_keeps_the_old_output(tmp_path):
    final = tmp_path / "final"
    old = _output(tmp_path, "old", "old output")
    publish_local(old, final, _record(old, "old-run"))
    new = _output(tmp_path, "new", "new output")
    (tmp_path / "record.json").write_text(json.dumps(_record(new, "new-run")))
    script = ("import json, sys; from pathlib import Path; from pipeline.outputs import publish_local; "
              "publish_local(Path(sys.argv[1]), Path(sys.argv[2]), json.loads(Path(sys.argv[3]).read_text()))")
    proc = subprocess.Popen([sys.executable, "-c", script, str(new), str(final), str(tmp_path / "record.json")],
                            cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "GANPIPE_TEST_PUBLISH_PAUSE_S": "60"})
    assert "between renames" in proc.stdout.readline()
    proc.kill()  # between the two renames: the old output is aside, the new one not yet in
    proc.wait()
    assert not final.exists()
    assert recover_aside(final)
    assert read_marker(str(final))["run_id"] == "old-run"
    assert (final / "result.txt").read_text() == "old output"
    assert not list(tmp_path.glob(".old-*"))


def test_a_completed_publish_replaces_the_output_and_leaves_nothing_aside(tmp_path):
    final = tmp_path / "final"
    for text in ("first", "second"):
        out = _output(tmp_path, text, text)
        publish_local(out, final, _record(out, text))
    assert (final / "result.txt").read_text() == "second" and read_marker(str(final))["run_id"] == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_a_waiting_lock_names_its_holder_and_is_freed_when_the_holder_dies(tmp_path):
    from pipeline.outputs import stage_lock

    script = ("import sys, time; from pathlib import Path; from pipeline.outputs import stage_lock\n"
              "with stage_lock(Path(sys.argv[1]), 'train', 'ab' * 32, 'pid 1 (holder)'):\n"
              "    print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    said = []
    proc_killer = subprocess.Popen(["bash", "-c", f"sleep 1; kill -9 {proc.pid}"])
    with stage_lock(tmp_path, "train", "ab" * 32, "me", announce=said.append):
        pass  # acquired once the holder was killed: the kernel drops a dead process's flock
    proc_killer.wait()
    proc.wait()
    assert said == ["  train: waiting for pid 1 (holder), which is computing this output"]


def _prepare_only(tmp: Path, folder: Path, store: str = "mlflow.db") -> dict:
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline

    cfg = load_config(REPO / "configs" / "smoke.yaml", smoke_overrides(tmp) + [
        "data.source=image_folder", f"data.path={folder}", "data.channels=3", "data.imbalance_ratio=1",
        "data.num_classes=null", f"tracking.uri=sqlite:///{tmp / store}"])
    return run_pipeline(cfg, until="prepare")


def test_a_file_added_to_the_image_folder_reruns_prepare(tmp_path):
    folder = write_longtail_folder(tmp_path / "images", [12, 8, 6])
    first = _prepare_only(tmp_path, folder)
    again = _prepare_only(tmp_path, folder)
    assert again["stage_run_ids"]["prepare"] == first["stage_run_ids"]["prepare"]  # unchanged folder: cached
    write_longtail_folder(tmp_path / "more", [7])
    os.replace(tmp_path / "more" / "class_00" / "0006.png", folder / "class_02" / "0006.png")
    after = _prepare_only(tmp_path, folder)
    assert after["stage_run_ids"]["prepare"] != first["stage_run_ids"]["prepare"]
    manifest = json.loads((Path(after["stage_dirs"]["prepare"]) / "data" / "manifest.json").read_text())
    assert sum(manifest["class_counts"]["train"]) + sum(manifest["class_counts"].get("val", [0])) + \
        sum(manifest["class_counts"].get("test", [0])) == 27


def test_a_new_tracking_store_reruns_prepare_instead_of_trusting_the_marker(tmp_path):
    folder = write_longtail_folder(tmp_path / "images", [12, 8, 6])
    first = _prepare_only(tmp_path, folder)
    again = _prepare_only(tmp_path, folder, store="other.db")  # the same outputs dir, an empty store
    assert again["stage_run_ids"]["prepare"] != first["stage_run_ids"]["prepare"]
    MlflowClient(again["tracking_uri"]).get_run(again["stage_run_ids"]["prepare"])  # exists in the new store


def _cli(tmp: Path, *extra: str) -> list[str]:
    sets = [x for o in smoke_overrides(tmp) for x in ("--set", o)]
    return [sys.executable, "-m", "pipeline", "run", "--config", "configs/smoke.yaml", *sets, *extra]


def _runs(tracking_uri: str) -> list:
    client = MlflowClient(tracking_uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.slow
def test_a_rerun_against_an_empty_tracking_store_reregisters(smoke_run, tmp_path, capsys, monkeypatch):
    import shutil

    from pipeline.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # restored afterwards: the run sets it

    work = tmp_path / "outputs"  # a copy: the shared smoke outputs stay tied to the smoke store
    shutil.copytree(smoke_run["cfg"].work_dir, work, symlinks=True)
    sets = [f"work_dir={work}", f"tracking.uri=sqlite:///{tmp_path / 'fresh.db'}",
            f"tracking.artifact_root={tmp_path / 'art'}"]
    capsys.readouterr()
    # In this process, on the session's Ray: the command's own output is what is checked.
    assert main(["run", "--config", str(REPO / "configs" / "smoke.yaml"),
                 *[x for s in sets for x in ("--set", s)]]) == 0
    printed = capsys.readouterr().out
    assert "cached stages       : none" in printed  # every marker names runs the new store does not have
    assert "is not in this tracking store; rerunning it afresh" in printed
    version = re.search(r"registered model    : (\S+) version (\d+)", printed)
    client = MlflowClient(f"sqlite:///{tmp_path / 'fresh.db'}")
    registered = client.get_model_version(version[1], version[2])  # exists in the new store
    runs = {r.info.run_id: r.data.tags.get("stage") for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()])}
    assert runs[registered.run_id] == "evaluate" and runs[registered.tags["source_run_id"]] == "promote"


@pytest.mark.slow
def test_two_concurrent_runs_of_one_config_compute_each_stage_once(tmp_path):
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    small = ("--set", "train.steps=10", "--set", "train.report_every=5", "--set", "train.checkpoint_every=5",
             "--until", "train")
    procs = [subprocess.Popen(_cli(tmp_path, *small), cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
    assert not any("resuming from the checkpoint" in o for o in outs)
    runs = _runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for stage in ("prepare", "train"):
        computed = [r for r in runs if r.data.tags.get("stage") == stage]
        assert len(computed) == 1, (stage, len(computed))  # the second run waited, then found it cached
    assert all(r.info.status == "FINISHED" for r in runs)
    assert sum("[2/5] train: cached" in o for o in outs) == 1 and sum("[2/5] train: running" in o for o in outs) == 1


LONG_TRAINING = ("--set", "train.steps=3000")  # long enough to stop it mid-training on a fast machine


def _stop_at(tmp: Path, line: str | None, sig: int, env: dict | None = None) -> tuple[int, str]:
    """Start a pipeline run, send `sig` once `line` appears in its output (None: let it finish);
    (exit status, output)."""
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
    proc = subprocess.Popen(_cli(tmp, *LONG_TRAINING), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    seen = []
    for text in proc.stdout:
        seen.append(text)
        if line is not None and line in text:
            time.sleep(0.5)
            proc.send_signal(sig)
            break
    seen.append(proc.communicate(timeout=300)[0])
    return proc.returncode, "".join(seen)


@pytest.mark.slow
def test_sigterm_before_ray_marks_the_runs_killed(tmp_path):
    status, out = _stop_at(tmp_path, "between renames", signal.SIGTERM,
                           {"GANPIPE_TEST_PUBLISH_PAUSE_S": "30"})
    assert status == 143, out[-3000:]
    runs = _runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert {r.info.run_name: r.info.status for r in runs} == {"smoke-pipeline": "KILLED", "prepare": "KILLED"}
    assert not list((tmp_path / "outputs" / "stages").glob("prepare/*/" + MARKER))  # nothing published


@pytest.mark.slow
@pytest.mark.slow
def test_ctrl_c_during_training_marks_the_runs_killed(tmp_path):
    code, out = _stop_at(tmp_path, "train step 10/", signal.SIGINT)  # Ray Train's own handler would exit 0
    assert code == 130, out[-3000:]
    runs = {r.info.run_name: r.info.status for r in _runs(f"sqlite:///{tmp_path / 'mlflow.db'}")}
    assert runs == {"smoke-pipeline": "KILLED", "prepare": "FINISHED", "train": "KILLED"}, runs


@pytest.mark.slow
def test_sigterm_after_ray_starts_marks_the_runs_killed(tmp_path):
    # ray.init installs its own SIGTERM handler; the driver's must still win. (A SIGKILLed driver's runs are
    # marked KILLED by the next run: tests/test_faults.py.)
    code, out = _stop_at(tmp_path, "train step 10/", signal.SIGTERM)
    assert code == 143, out[-3000:]
    runs = {r.info.run_name: r.info.status for r in _runs(f"sqlite:///{tmp_path / 'mlflow.db'}")}
    assert runs == {"smoke-pipeline": "KILLED", "prepare": "FINISHED", "train": "KILLED"}, runs


@pytest.mark.slow
def test_a_promote_rerun_judges_the_version_it_registered_instead_of_registering_again(smoke_run):
    from pipeline.runner import run_pipeline

    def promote_again() -> str:  # as after a crash between registering and publishing
        summary = run_pipeline(smoke_run["cfg"], force={"promote"}, only="promote")
        return json.loads((Path(summary["stage_dirs"]["promote"]) / "promotion.json").read_text())["version"]

    first, second = promote_again(), promote_again()
    client = MlflowClient(smoke_run["summary"]["tracking_uri"])
    name = smoke_run["summary"]["model_name"]
    fingerprint = client.get_model_version(name, first).tags["fingerprint"]
    same = [v for v in client.search_model_versions(f"name = '{name}'") if v.tags.get("fingerprint") == fingerprint]
    assert second == first and len(same) == 1
    assert "promotion.decision" in client.get_model_version(name, first).tags
