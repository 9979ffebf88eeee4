"""Prepare on Ray Data: the same rows in the same splits as the in-memory path, bad rows named in one line,
and `auto` choosing by the source's size."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from components.data.config import DataConfig
from components.data.prepare import prepare_dataset
from components.data.reader import class_samples, load_split
from components.data.streaming import source_rows, streams
from components.errors import UserError
from tests.helpers import write_longtail_folder


def write_array_parquet(folder, files=3, rows=500, row_group=200, seed=0):
    """files x rows random 32x32x3 images with labels 0..9, several row groups per file."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        images = rng.integers(0, 256, (rows, 32 * 32 * 3), dtype=np.uint8)
        table = pa.table({"image": pa.FixedSizeListArray.from_arrays(pa.array(images.ravel()), 32 * 32 * 3),
                          "label": pa.array(rng.integers(0, 10, rows))})
        pq.write_table(table.replace_schema_metadata({"image_shape_hwc": "[32, 32, 3]"}),
                       folder / f"part-{f}.parquet", row_group_size=row_group)
    return folder


def assert_same_dataset(a_dir, b_dir):
    a, b = (json.loads((d / "manifest.json").read_text()) for d in (a_dir, b_dir))
    assert a["class_counts"] == b["class_counts"] and a["train_statistics"] == b["train_statistics"]
    for split in a["class_counts"]:
        x, y = load_split(a_dir, split), load_split(b_dir, split)
        assert torch.equal(x.images_u8, y.images_u8) and torch.equal(x.labels, y.labels), split
        assert sample_ids(a_dir, a, split) == sample_ids(b_dir, b, split), split


def sample_ids(data_dir, manifest, split):
    return [i for f in manifest["files"][split]
            for i in pq.read_table(data_dir / f, columns=["sample_id"]).column(0).to_pylist()]


@pytest.mark.slow
def test_streamed_parquet_has_the_rows_and_splits_of_the_in_memory_path(ray_cluster, tmp_path):
    source = write_array_parquet(tmp_path / "src")
    base = dict(source="parquet", path=str(source), channels=3, imbalance_ratio=5, rows_per_shard=300)
    prepare_dataset(DataConfig(**base, streaming="never"), tmp_path / "memory")
    manifest = prepare_dataset(DataConfig(**base, streaming="always"), tmp_path / "streamed")
    assert manifest["prepared_with"] == {"engine": "ray_data"}
    assert manifest["files"]["train"] == ["train-00000.parquet", "train-00001.parquet", "train-00002.parquet"]
    assert_same_dataset(tmp_path / "memory", tmp_path / "streamed")
    again = prepare_dataset(DataConfig(**base, streaming="always"), tmp_path / "again")
    assert again["digest"] == manifest["digest"]  # shard names and contents are deterministic


@pytest.mark.slow
def test_streamed_image_folder_matches_and_skips_what_the_in_memory_path_skips(ray_cluster, tmp_path):
    folder = write_longtail_folder(tmp_path / "folder", [30, 20, 12, 8, 6])
    base = dict(source="image_folder", path=str(folder), channels=3, skip_corrupt=True, rows_per_shard=16)
    prepare_dataset(DataConfig(**base, streaming="never"), tmp_path / "memory")
    streamed = prepare_dataset(DataConfig(**base, streaming="always"), tmp_path / "streamed")
    assert streamed["class_names"] == [f"class_{c:02d}" for c in range(5)]
    assert_same_dataset(tmp_path / "memory", tmp_path / "streamed")

    # An unreadable file: streaming learns it only when decoding, after the split is drawn, so it is dropped
    # from its split there; the in-memory path drops it before drawing. The same file is skipped either way.
    (folder / "class_01" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    memory = prepare_dataset(DataConfig(**base, streaming="never"), tmp_path / "memory2")
    streamed = prepare_dataset(DataConfig(**base, streaming="always"), tmp_path / "streamed2")
    assert streamed["skipped_files"] == memory["skipped_files"] == [str(folder / "class_01" / "broken.png")]
    assert streamed["num_images"] == memory["num_images"] == 76
    with pytest.raises(UserError, match=r"broken\.png: not a readable image.*--skip-corrupt") as err:
        prepare_dataset(DataConfig(**{**base, "skip_corrupt": False}, streaming="always"), tmp_path / "refused")
    assert "\n" not in str(err.value) and not (tmp_path / "refused").exists()
    assert not list(tmp_path.glob(".refused-*"))  # no half-written scratch either


@pytest.mark.slow
def test_a_short_array_row_is_named_by_file_row_group_and_row(ray_cluster, tmp_path):
    source = write_array_parquet(tmp_path / "src", files=1, rows=300, row_group=100)
    table = pq.read_table(source / "part-0.parquet")
    images = table.column("image").to_pylist()
    images[150] = images[150][:100]
    bad = pa.table({"image": pa.array(images, pa.list_(pa.uint8())), "label": table.column("label")})
    pq.write_table(bad.replace_schema_metadata({"image_shape_hwc": "[32, 32, 3]"}), source / "part-0.parquet",
                   row_group_size=100)
    cfg = DataConfig(source="parquet", path=str(source), channels=3, streaming="always")
    with pytest.raises(UserError, match=r"part-0\.parquet row group 1 row 50: image has 100 values"):
        prepare_dataset(cfg, tmp_path / "out")


def test_auto_streams_only_sources_above_the_threshold(tmp_path):
    source = write_array_parquet(tmp_path / "src", files=2, rows=50, row_group=50)
    cfg = DataConfig(source="parquet", path=str(source), channels=3)
    assert source_rows(cfg) == 100
    assert not streams(cfg) and streams(cfg.model_copy(update={"stream_above_rows": 99}))
    assert not streams(cfg.model_copy(update={"stream_above_rows": 0, "streaming": "never"}))
    assert not streams(DataConfig(source="digits", streaming="always"))  # generated sources load in memory
    (source / "part-9.parquet").write_bytes(b"not parquet")  # the in-memory loader names it in one line
    assert not streams(cfg.model_copy(update={"stream_above_rows": 0}))


def test_prepare_asks_for_ray_only_when_it_will_stream(tmp_path):
    from pipeline.config import load_config
    from pipeline.dag import STAGE_BY_NAME

    source = write_array_parquet(tmp_path / "src", files=1, rows=20, row_group=20)
    needs = STAGE_BY_NAME["prepare"].needs_ray
    sets = ["data.source=parquet", f"data.path={source}", "data.channels=3"]
    assert not needs(load_config("configs/smoke.yaml", sets))
    assert needs(load_config("configs/smoke.yaml", [*sets, "data.stream_above_rows=10"]))
    assert needs(load_config("configs/smoke.yaml", ["data.source=image_folder", "data.path=s3://b/imgs"]))
    assert not needs(load_config("configs/smoke.yaml"))


def test_the_sample_grid_reads_only_the_shards_it_needs(tmp_path):
    prepare_dataset(DataConfig(imbalance_ratio=10, rows_per_shard=64), tmp_path / "data")
    per_class = class_samples(tmp_path / "data", "train", 10, 4)
    whole = load_split(tmp_path / "data", "train")
    for c, images in enumerate(per_class):
        assert torch.equal(images, whole.images_float()[whole.labels == c][:4])


def test_shards_are_dealt_out_evenly_and_in_order():
    from components.data.streaming import Plan, task_count

    plan = Plan('{"rows_per_shard": 10}', "", None, np.arange(1005), np.zeros(1005, np.uint8), tasks=16)
    assert plan.shard_count() == 101
    ranges = [plan.shards_of(t) for t in range(plan.tasks)]
    assert [k for r in ranges for k in r] == list(range(101))
    assert {len(r) for r in ranges} == {6, 7}
    assert task_count(101, 2) == 8 and task_count(3, 2) == 3 and task_count(0, 2) == 1
