"""prepare_dataset: source -> resized, long-tailed, split, validated Parquet shards + manifest."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from components.data.balance import check_labels, class_statistics, longtail_indices, stratified_split
from components.data.config import DataConfig
from components.data.shards import write_dataset
from components.data.array_sources import load_cifar, load_mnist_idx, load_parquet
from components.data.sources import finish, load_color_digits_source, load_digits_source, load_image_folder
from components.data.streaming import prepare_streaming, streams
from components.errors import UserError

SOURCES = {"digits": load_digits_source, "color_digits": load_color_digits_source, "image_folder": load_image_folder,
           "parquet": load_parquet, "cifar": load_cifar, "mnist_idx": load_mnist_idx}


def prepare_dataset(cfg: DataConfig, out_dir: Path, source_uri: str | None = None) -> dict:
    """Build the dataset described by `cfg` in `out_dir` and return its manifest. `source_uri`: where the
    files in cfg.path were fetched from, for the manifest (default cfg.path). Large image folders and
    Parquet sources are prepared on Ray Data in bounded memory (components.data.streaming)."""
    if streams(cfg):
        def manifest_for(index, names, counts, skipped, resized):
            return describe(cfg, index.description, names, counts, skipped, index.ignored, resized, source_uri)
        manifest = prepare_streaming(cfg, out_dir, manifest_for)
        report_skips(manifest["skipped_files"], manifest["resized_images"])
        return manifest
    raw = finish(SOURCES[cfg.source](cfg), cfg)
    n_classes = cfg.num_classes or len(raw.class_names)
    check_labels(raw.labels, n_classes, cfg.source)
    names = raw.class_names if len(raw.class_names) == n_classes else [str(c) for c in range(n_classes)]
    report_skips(raw.skipped, raw.resized)
    keep = longtail_indices(raw.labels, n_classes, cfg.imbalance_ratio, cfg.seed)
    images, labels = raw.images_nhwc[keep], raw.labels[keep]
    ids = np.array([f"{cfg.source}:{i}" for i in keep])
    splits = stratified_split(labels, n_classes, cfg.val_fraction, cfg.test_fraction, cfg.seed, names)

    counts = {s: np.bincount(labels[splits == s], minlength=n_classes).tolist()
              for s in ("train", "val", "test") if (splits == s).any()}
    manifest = describe(cfg, raw.description, names, counts, raw.skipped, raw.ignored, raw.resized, source_uri)
    return write_dataset(Path(out_dir), images, labels, splits, ids, manifest, cfg.rows_per_shard)


def describe(cfg: DataConfig, description: str, names: list[str], counts: dict[str, list[int]],
             skipped: list[str], ignored: list[str], resized: int, source_uri: str | None) -> dict:
    """The manifest's account of the data: source, classes, counts per split, class statistics."""
    return {
        "source": {"name": cfg.source, "description": description, "path": source_uri or cfg.path},
        "class_names": names,
        "skipped_files": skipped,
        "ignored_files": ignored,
        "resized_images": resized,
        "num_classes": len(names),
        "num_images": int(sum(sum(c) for c in counts.values())),
        "imbalance_ratio_requested": cfg.imbalance_ratio,
        "class_counts": counts,
        "train_statistics": class_statistics(np.array(counts["train"]), cfg.effective_beta),
        "config": cfg.model_dump() | {"path": source_uri or cfg.path},
    }


def report_skips(skipped: list[str], resized: int) -> None:
    """One line each for skipped unreadable files and resized images."""
    if skipped:
        shown = ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        print(f"  prepare: skipped {len(skipped)} unreadable image(s): {shown}", flush=True)
    if resized:
        print(f"  prepare: resized {resized} image(s) of another size", flush=True)
