"""prepare_dataset: source -> resized, long-tailed, split, validated Parquet shards + manifest."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from components.data.balance import class_statistics, longtail_indices, stratified_split
from components.data.config import DataConfig
from components.data.shards import write_dataset
from components.data.array_sources import load_cifar, load_mnist_idx, load_parquet
from components.data.sources import finish, load_color_digits_source, load_digits_source, load_image_folder
from components.errors import UserError

SOURCES = {"digits": load_digits_source, "color_digits": load_color_digits_source, "image_folder": load_image_folder,
           "parquet": load_parquet, "cifar": load_cifar, "mnist_idx": load_mnist_idx}


def prepare_dataset(cfg: DataConfig, out_dir: Path, source_uri: str | None = None) -> dict:
    """Build the dataset described by `cfg` in `out_dir` and return its manifest. `source_uri`: where the
    files in cfg.path were fetched from, for the manifest (default cfg.path)."""
    raw = finish(SOURCES[cfg.source](cfg), cfg)
    n_classes = cfg.num_classes or len(raw.class_names)
    check_labels(raw.labels, n_classes, cfg.source)
    names = raw.class_names if len(raw.class_names) == n_classes else [str(c) for c in range(n_classes)]
    report_skips(raw)
    keep = longtail_indices(raw.labels, n_classes, cfg.imbalance_ratio, cfg.seed)
    images, labels = raw.images_nhwc[keep], raw.labels[keep]
    ids = np.array([f"{cfg.source}:{i}" for i in keep])
    splits = stratified_split(labels, n_classes, cfg.val_fraction, cfg.test_fraction, cfg.seed, names)

    counts = {s: np.bincount(labels[splits == s], minlength=n_classes).tolist()
              for s in ("train", "val", "test") if (splits == s).any()}
    train_counts = np.array(counts["train"])
    manifest = {
        "source": {"name": cfg.source, "description": raw.description, "path": source_uri or cfg.path},
        "class_names": names,
        "skipped_files": raw.skipped,
        "ignored_files": raw.ignored,
        "resized_images": raw.resized,
        "num_classes": n_classes,
        "num_images": int(len(labels)),
        "imbalance_ratio_requested": cfg.imbalance_ratio,
        "class_counts": counts,
        "train_statistics": class_statistics(train_counts, cfg.effective_beta),
        "config": cfg.model_dump() | {"path": source_uri or cfg.path},
    }
    return write_dataset(Path(out_dir), images, labels, splits, ids, manifest, cfg.rows_per_shard)


def check_labels(labels: np.ndarray, n_classes: int, source: str) -> None:
    """Every label in [0, n_classes); every class present."""
    bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
    if len(bad):
        raise UserError(f"source '{source}': label {int(labels[bad[0]])} at row {int(bad[0])} is out of range "
                        f"[0, {n_classes - 1}]; fix the labels or set data.num_classes")
    missing = sorted(set(range(n_classes)) - set(labels.tolist()))
    if missing:
        raise UserError(f"source '{source}': class {missing[0]} has no images; every class needs images")


def report_skips(raw) -> None:
    """One line each for skipped unreadable files and resized images."""
    if raw.skipped:
        shown = ", ".join(raw.skipped[:5]) + (" ..." if len(raw.skipped) > 5 else "")
        print(f"  prepare: skipped {len(raw.skipped)} unreadable image(s): {shown}", flush=True)
    if raw.resized:
        print(f"  prepare: resized {raw.resized} image(s) of another size", flush=True)
