"""Artifact storage on a local disk and on S3 (a moto server on 127.0.0.1). The whole DAG on S3, with its
stages as Ray tasks on a 2-node cluster, is tests/test_cluster.py::test_submit_smoke_pipeline_as_ray_job."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from components import storage
from components.errors import UserError
from tests.conftest import REPO, s3_uri


def test_join_keeps_the_query_at_the_end():
    root = "s3://bkt/pre?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.join(root, "stages", "train") == "s3://bkt/pre/stages/train?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.join("/tmp/x", "a", "b") == "/tmp/x/a/b" and storage.join("file:///tmp/x", "a") == "/tmp/x/a"
    assert storage.is_remote(root) and not storage.is_remote("/tmp/x") and not storage.is_remote("file:///tmp/x")


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "store")
    return s3_uri(request.getfixturevalue("s3_endpoint"), f"bucket-{os.getpid()}/{tmp_path.name}")


def test_upload_download_localize_and_delete(root, tmp_path, monkeypatch):
    monkeypatch.setenv("GANPIPE_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "b.bin").write_bytes(bytes(range(256)))
    loc = storage.Location(storage.join(root, "stages", "x"))
    assert not loc.exists()
    loc.upload(src)
    loc.child("_stage.json").write_text("{}")
    assert loc.exists() and loc.child("sub", "b.bin").exists() and loc.child("_stage.json").read_text() == "{}"

    local = storage.localize(loc.uri)
    assert (local / "a.txt").read_text() == "alpha" and (local / "sub" / "b.bin").read_bytes() == bytes(range(256))
    assert storage.localize(loc.child("a.txt").uri).read_text() == "alpha"  # a single file works too
    if storage.is_remote(root):
        assert str(local).startswith(str(tmp_path / "cache"))
        assert storage.localize(loc.uri) == local  # cached: a second call does not download again
    else:
        assert local == Path(loc.uri)  # local storage is used in place

    (src / "a.txt").unlink()
    loc.upload(src)  # replaces: files gone from the source are gone here too
    assert not loc.child("a.txt").exists() and loc.child("sub", "b.bin").exists()
    assert not (storage.localize(loc.uri) / "a.txt").exists()  # a republished location is fetched afresh
    loc.delete()
    assert not loc.exists()
    with pytest.raises(FileNotFoundError):
        storage.localize(storage.join(root, "missing"))


def test_unsupported_uri_is_a_one_line_user_error():
    with pytest.raises(UserError, match=r"storage\.uri: cannot open nosuch://bucket/x"):
        storage.Location("nosuch://bucket/x").exists()


@pytest.fixture
def job_for(tmp_path, monkeypatch):
    """A StageJob for a stand-in `prepare` stage (fn given by the test), tracked in a temp SQLite MLflow."""
    import mlflow

    from pipeline import dag
    from pipeline.config import load_config
    from pipeline.executor import StageJob
    from pipeline.tracking import setup_tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset")  # setup_tracking exports it; restored after the test

    def make(fn, final_uri: str) -> StageJob:
        monkeypatch.setitem(dag.STAGE_BY_NAME, "prepare", dag.Stage("prepare", fn, (), ("data",)))
        cfg = load_config(REPO / "configs" / "smoke.yaml", [f"work_dir={tmp_path / 'work'}"])
        uri, exp = setup_tracking(f"sqlite:///{tmp_path / 'mlflow.db'}", "storage-test", str(tmp_path / "art"))
        run = mlflow.MlflowClient().create_run(exp, run_name="prepare")
        return StageJob(cfg=cfg, stage="prepare", fingerprint="f" * 64, final_uri=final_uri, input_uris={},
                        store_uri=final_uri, work_dir=str(tmp_path / "work"), tracking_uri=uri,
                        run_id=run.info.run_id, parent_run_id=run.info.run_id, lineage={"fingerprint": "f" * 64})
    return make


def test_a_failing_stage_publishes_nothing_and_a_finished_one_publishes_its_marker(root, job_for):
    import mlflow

    from pipeline.executor import execute_stage
    from pipeline.outputs import MARKER

    def half_then_fail(ctx):
        (ctx.out_dir / "half.txt").write_text("half")
        raise RuntimeError("stage broke")

    final = storage.join(root, "stages", "prepare", "f" * 16)
    job = job_for(half_then_fail, final)
    with pytest.raises(RuntimeError, match="stage broke"):
        execute_stage(job)
    assert not storage.Location(final).exists()
    assert mlflow.MlflowClient().get_run(job.run_id).info.status == "FAILED"

    job = job_for(lambda ctx: (ctx.out_dir / "whole.txt").write_text("whole"), final)
    record = execute_stage(job)
    assert storage.Location(storage.join(final, "whole.txt")).read_text() == "whole"
    assert json.loads(storage.Location(storage.join(final, MARKER)).read_text()) == record


def test_a_failed_publish_ends_the_stage_run_failed_not_finished(root, job_for, monkeypatch):
    import mlflow

    import pipeline.executor
    from pipeline.executor import execute_stage

    def broken_publish(out, final_uri, record):
        raise OSError("disk full")

    monkeypatch.setattr(pipeline.executor, "publish", broken_publish)
    final = storage.join(root, "stages", "prepare", "e" * 16)
    job = job_for(lambda ctx: (ctx.out_dir / "whole.txt").write_text("whole"), final)
    with pytest.raises(OSError, match="disk full"):
        execute_stage(job)
    assert mlflow.MlflowClient().get_run(job.run_id).info.status == "FAILED"
    assert not storage.Location(final).exists()


def test_prepare_reads_an_image_folder_from_a_storage_uri_and_reruns_when_it_changes(s3_endpoint, tmp_path,
                                                                                        monkeypatch):
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline
    from tests.conftest import smoke_overrides
    from tests.helpers import write_longtail_folder

    monkeypatch.setenv("GANPIPE_CACHE", str(tmp_path / "cache"))
    folder = write_longtail_folder(tmp_path / "images", [10, 6, 5])
    uri = s3_uri(s3_endpoint, f"data-{os.getpid()}/{tmp_path.name}/images")
    storage.Location(uri).upload(folder)

    def prepare() -> dict:
        cfg = load_config(REPO / "configs" / "smoke.yaml", smoke_overrides(tmp_path) + [
            "data.source=image_folder", f"data.path={uri}", "data.channels=3", "data.imbalance_ratio=1"])
        summary = run_pipeline(cfg, until="prepare")
        return {"run": summary["stage_run_ids"]["prepare"],
                "manifest": json.loads((Path(summary["stage_dirs"]["prepare"]) / "data" / "manifest.json").read_text())}

    first = prepare()
    assert first["manifest"]["num_images"] == 21 and first["manifest"]["source"]["path"] == uri
    assert prepare()["run"] == first["run"]  # unchanged bucket: cached
    storage.Location(storage.join(uri, "class_01", "extra.png")).upload_file(folder / "class_00" / "0000.png")
    after = prepare()
    assert after["run"] != first["run"] and after["manifest"]["num_images"] == 22


def test_the_s3_server_stopped_mid_upload_fails_in_one_line_and_a_rerun_publishes_whole(tmp_path, monkeypatch,
                                                                                        capsys):
    """An in-process S3 server (moto) is stopped after a publish has uploaded its first file, and started
    again on the same port with its state: the partial upload stays, without a marker, and is not reused."""
    import mlflow
    import pyarrow.fs as pafs

    from pipeline.cli import main
    from pipeline.outputs import MARKER, output_problem, read_marker
    from tests.conftest import free_port, smoke_overrides

    ThreadedMotoServer = pytest.importorskip("moto.server").ThreadedMotoServer
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    root = s3_uri(f"127.0.0.1:{port}", "outage-test/store")
    argv = ["run", "--config", str(REPO / "configs" / "smoke.yaml"), "--only", "prepare",
            *[x for s in [*smoke_overrides(tmp_path), f"storage.uri={root}"] for x in ("--set", s)]]
    copy_files = pafs.copy_files

    def stop_after_the_first_file(source, destination, **kwargs):
        first = sorted(p for p in Path(source).rglob("*") if p.is_file())[0]
        copy_files(str(first), f"{destination}/{first.relative_to(source).as_posix()}", **kwargs)
        server.stop()
        copy_files(source, destination, **kwargs)

    try:
        monkeypatch.setattr(pafs, "copy_files", stop_after_the_first_file)
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("failed: the storage server did not answer"), err
        monkeypatch.setattr(pafs, "copy_files", copy_files)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        fs, stages = storage.Location(storage.join(root, "stages", "prepare")).fs_and_path()
        (prepare,) = fs.get_file_info(pafs.FileSelector(stages))
        uploaded = storage.Location(storage.join(root, "stages", "prepare", prepare.base_name))
        assert uploaded.exists() and not uploaded.child(MARKER).exists()  # half an output, and no marker

        assert main(argv) == 0
        assert output_problem(uploaded.uri, read_marker(uploaded.uri), full=True) is None
        client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()], order_by=["start_time"])
        assert [r.info.status for r in runs if r.info.run_name == "prepare"] == ["FAILED", "FINISHED"]
    finally:
        server.stop()
