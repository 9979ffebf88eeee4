"""prepare_dataset: source -> resized, long-tailed, split, validated Parquet shards + manifest."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from components.data.balance import class_statistics, longtail_indices, stratified_split
from components.data.config import DataConfig
from components.data.shards import write_dataset
from components.data.sources import SOURCES
from components.data.transforms import convert_channels, resize_square
from components.errors import UserError


def prepare_dataset(cfg: DataConfig, out_dir: Path) -> dict:
    """Build the dataset described by `cfg` in `out_dir` and return its manifest."""
    raw = SOURCES[cfg.source](cfg)
    n_classes = len(raw.class_names)
    if raw.labels.min() < 0 or raw.labels.max() >= n_classes:
        raise UserError(f"labels must lie in [0, {n_classes - 1}] for source '{cfg.source}'")
    keep = longtail_indices(raw.labels, n_classes, cfg.imbalance_ratio, cfg.seed)
    images = resize_square(convert_channels(raw.images_nhwc[keep], cfg.channels), cfg.resolution)
    labels = raw.labels[keep]
    ids = np.array([f"{cfg.source}:{i}" for i in keep])
    splits = stratified_split(labels, n_classes, cfg.val_fraction, cfg.test_fraction, cfg.seed, raw.class_names)

    counts = {s: np.bincount(labels[splits == s], minlength=n_classes).tolist()
              for s in ("train", "val", "test") if (splits == s).any()}
    train_counts = np.array(counts["train"])
    manifest = {
        "source": {"name": cfg.source, "description": raw.description, "path": cfg.path},
        "class_names": raw.class_names,
        "num_classes": n_classes,
        "num_images": int(len(labels)),
        "imbalance_ratio_requested": cfg.imbalance_ratio,
        "class_counts": counts,
        "train_statistics": class_statistics(train_counts, cfg.effective_beta),
        "config": cfg.model_dump(),
    }
    return write_dataset(Path(out_dir), images, labels, splits, ids, manifest, cfg.rows_per_shard)
