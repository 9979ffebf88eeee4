"""Parquet shards with an explicit schema, written atomically, plus the manifest and content digest."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


def shard_schema(height: int, width: int, channels: int) -> pa.Schema:
    """image: fixed-size uint8 list in HWC order; the shape travels in the schema metadata."""
    return pa.schema(
        [
            pa.field("image", pa.list_(pa.uint8(), height * width * channels)),
            pa.field("label", pa.int64()),
            pa.field("sample_id", pa.string()),
            pa.field("split", pa.string()),
        ],
        metadata={"image_shape_hwc": json.dumps([height, width, channels])},
    )


def content_digest(images_nhwc: np.ndarray, labels: np.ndarray, splits: np.ndarray, ids: np.ndarray) -> str:
    """sha256 over pixels, labels, splits and ids: equal data gives an equal digest."""
    h = hashlib.sha256()
    h.update(json.dumps(list(images_nhwc.shape)).encode())
    h.update(np.ascontiguousarray(images_nhwc).tobytes())
    h.update(labels.astype(np.int64).tobytes())
    h.update("\n".join(splits.tolist()).encode())
    h.update("\n".join(ids.tolist()).encode())
    return h.hexdigest()


def write_split_shard(path: Path, split: str, images: np.ndarray, labels: np.ndarray, ids: np.ndarray,
                      schema: pa.Schema) -> None:
    """One Parquet shard of one split's rows."""
    flat = images.reshape(len(images), -1)
    table = pa.table(
        {
            "image": pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel(), pa.uint8()), flat.shape[1]),
            "label": pa.array(labels, pa.int64()),
            "sample_id": pa.array(ids, pa.string()),
            "split": pa.array([split] * len(images), pa.string()),
        },
        schema=schema,
    )
    pq.write_table(table, path, row_group_size=1024, compression="zstd")


def _write_split(tmp: Path, split: str, images: np.ndarray, labels: np.ndarray, ids: np.ndarray,
                 schema: pa.Schema, rows_per_shard: int) -> list[str]:
    files = []
    for shard, start in enumerate(range(0, len(images), rows_per_shard)):
        end = start + rows_per_shard
        name = f"{split}-{shard:05d}.parquet"
        write_split_shard(tmp / name, split, images[start:end], labels[start:end], ids[start:end], schema)
        files.append(name)
    return files


def write_dataset(out_dir: Path, images_nhwc: np.ndarray, labels: np.ndarray, splits: np.ndarray,
                  ids: np.ndarray, manifest: dict, rows_per_shard: int) -> dict:
    """Write shards and manifest to a temp dir beside out_dir, then rename into place.

    If out_dir already holds a manifest with the same digest, nothing is written (re-runs are no-ops).
    """
    out_dir = Path(out_dir)
    digest = content_digest(images_nhwc, labels, splits, ids)
    existing = read_manifest(out_dir) if (out_dir / MANIFEST).exists() else None
    if existing and existing.get("digest") == digest:
        return existing
    with staged(out_dir) as tmp:
        h, w, c = images_nhwc.shape[1:]
        schema = shard_schema(h, w, c)
        files = {}
        for split in ("train", "val", "test"):
            m = splits == split
            if m.any():
                files[split] = _write_split(tmp, split, images_nhwc[m], labels[m], ids[m], schema, rows_per_shard)
        manifest = {**manifest, "schema_version": SCHEMA_VERSION, "digest": digest, "files": files,
                    "image_shape_hwc": [h, w, c]}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


@contextlib.contextmanager
def staged(out_dir: Path):
    """A scratch folder beside out_dir that replaces out_dir when the block succeeds, and is removed when it
    fails: a reader never sees half a data set."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        yield tmp
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_manifest(data_dir: Path) -> dict:
    """The manifest.json of a prepared dataset directory."""
    return json.loads((Path(data_dir) / MANIFEST).read_text())
