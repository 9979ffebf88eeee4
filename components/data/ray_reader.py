"""The distributed read path: Ray Data reads the Parquet shards, and each Ray Train worker gets its own shard."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from components.data.reader import SplitTensors
from components.data.shards import read_manifest
from components.errors import UserError
from components.storage import Location, is_remote, join, localize


def ray_dataset(data_dir: str | Path, split: str):
    """ray.data.Dataset over one split's Parquet files (image, label columns only)."""
    import ray.data

    if is_remote(data_dir):  # read tasks on any node fetch their files from the shared storage
        fs, base = Location(str(data_dir)).fs_and_path()
        manifest = read_manifest(localize(join(str(data_dir), "manifest.json")).parent)
        files = [f"{base}/{f}" for f in manifest["files"][split]]
        return ray.data.read_parquet(files, filesystem=fs).select_columns(["image", "label"])
    manifest = read_manifest(data_dir)
    files = [str(Path(data_dir) / f) for f in manifest["files"][split]]
    return ray.data.read_parquet(files).select_columns(["image", "label"])


def shard_tensors(rows_iterator, image_shape_hwc: list[int]) -> SplitTensors:
    """Materialise this worker's shard (a Ray DataIterator) as uint8 NCHW images and labels."""
    h, w, c = image_shape_hwc
    images, labels = [], []
    for batch in rows_iterator.iter_batches(batch_size=4096, batch_format="numpy"):
        flat = np.stack(list(batch["image"])) if batch["image"].dtype == object else batch["image"]
        images.append(flat.reshape(-1, h, w, c).astype(np.uint8))
        labels.append(batch["label"].astype(np.int64))
    if not images:
        raise UserError("this Ray Train worker's data shard is empty: use data.reader=local for small data sets, "
                        "or more, smaller shards (data.rows_per_shard)")
    images_nhwc = np.concatenate(images)
    return SplitTensors(torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))),
                        torch.from_numpy(np.concatenate(labels)))
