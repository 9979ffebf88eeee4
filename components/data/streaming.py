"""prepare in bounded memory on Ray Data, for image folders and Parquet sources too large to hold at once.

Only the labels are read up front (a few bytes a row). The long-tail subset and the stratified split are
drawn from them by the same functions as the in-memory path, so the same rows end up in the same splits.
Then each shard's rows are read, decoded, resized and written as Parquet by one Ray Data task; tasks run
on every core of every node, a few in flight at a time, and hand back only counts and a digest.

Why tasks over explicit row lists rather than `read_parquet` / `read_images`: the selection is by row, and
Ray's readers neither expose a row's position in its source nor name their output files deterministically.
Here every row keeps its identity (`<source>:<index>`), every shard its name, and so the manifest's
digest is the same on every run and every cluster.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.data.balance import check_labels, longtail_indices, stratified_split
from components.data.array_sources import _fixed_shape_rows, check_parquet_table, image_kind, parquet_files
from components.data.config import DataConfig
from components.data.shards import (MANIFEST, SCHEMA_VERSION, content_digest, shard_schema, staged,
                                   write_split_shard)
from components.data.sources import RawImages, _collect, finish, list_image_folder
from components.errors import UserError

STREAMABLE = ("image_folder", "parquet")


@dataclass(frozen=True)
class SourceIndex:
    """What prepare needs to know before decoding: every row's label, and where each row lives.

    locations[i] is (file, row group, row within the group) for Parquet, (file, -1, -1) for an image folder."""

    labels: np.ndarray
    locations: list[tuple[str, int, int]]
    class_names: list[str]
    description: str
    ignored: list[str]
    encoded: bool


def source_rows(cfg: DataConfig) -> int:
    """Rows in the source, counted without decoding (Parquet footers, or a folder listing)."""
    if cfg.source == "parquet":
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(cfg))
    if cfg.source == "image_folder":
        return len(list_image_folder(cfg)[0])
    raise ValueError(f"source {cfg.source!r} is not streamable; choose from {STREAMABLE}")


def streams(cfg: DataConfig) -> bool:
    """Whether prepare runs on Ray Data: data.streaming, with `auto` deciding by the source's row count."""
    if cfg.streaming == "never" or cfg.source not in STREAMABLE:
        return False
    if cfg.streaming == "always":
        return True
    try:
        return source_rows(cfg) > cfg.stream_above_rows
    except UserError:
        raise
    except Exception:  # noqa: BLE001 - an unreadable file: the in-memory loader names it in one line
        return False


def index_source(cfg: DataConfig) -> SourceIndex:
    """Labels and row locations, validated like the in-memory loaders validate them."""
    if cfg.source == "image_folder":
        items, names, ignored = list_image_folder(cfg)
        return SourceIndex(np.array([label for _, label, _ in items], np.int64),
                           [(str(f), -1, -1) for f, _, _ in items], names, f"image folder {cfg.path}", ignored,
                           encoded=True)
    import pyarrow.parquet as pq

    labels, locations, kinds = [], [], {}
    for file in parquet_files(cfg):
        try:
            meta = pq.ParquetFile(file)
            table = meta.read(columns=[cfg.label_column]) if cfg.label_column in meta.schema_arrow.names else None
        except Exception as err:  # noqa: BLE001 - any Arrow or OS error means the same to the user
            raise UserError(f"{file}: not a readable Parquet file ({str(err).splitlines()[0][:120]}); "
                            "re-export it, or move it out of data.path") from None
        schema = meta.schema_arrow
        file_labels = check_parquet_table(file, schema, meta.metadata.num_rows,
                                          table.column(cfg.label_column) if table is not None else None, cfg)
        kind = image_kind(file, schema, cfg, kinds)
        labels.append(file_labels)
        for group in range(meta.num_row_groups):
            locations += [(str(file), group, r) for r in range(meta.metadata.row_group(group).num_rows)]
    labels_all = np.concatenate(labels)
    names = [str(c) for c in range(int(labels_all.max()) + 1)]
    return SourceIndex(labels_all, locations, names, f"parquet {cfg.path}", [], encoded=kind == "encoded images")


def plan_tasks(index: SourceIndex, keep: np.ndarray, splits: np.ndarray, cfg: DataConfig,
               out_dir: Path) -> list[dict]:
    """One task per rows_per_shard selected rows, in source order: what it reads and where it writes."""
    tasks = []
    for t, start in enumerate(range(0, len(keep), cfg.rows_per_shard)):
        rows = keep[start:start + cfg.rows_per_shard]
        tasks.append({"spec": json.dumps({
            "task": t, "out_dir": str(out_dir), "cfg": cfg.model_dump(mode="json"), "encoded": index.encoded,
            "rows": rows.tolist(), "labels": index.labels[rows].tolist(),
            "splits": splits[start:start + cfg.rows_per_shard].tolist(),
            "locations": [index.locations[r] for r in rows]})})
    return tasks


def _read_rows(spec: dict, cfg: DataConfig) -> tuple[RawImages, np.ndarray]:
    """Decode a task's rows; returns the images and the positions (within the task) that were kept."""
    locations = spec["locations"]
    if cfg.source == "image_folder":
        items = [(Path(f), i, f) for i, (f, _, _) in enumerate(locations)]
        raw = _collect(items, cfg, f"image folder {cfg.path}", [])
        return raw, raw.labels
    import pyarrow as pa
    import pyarrow.parquet as pq

    groups: dict[tuple[str, int], list[int]] = {}
    for i, (f, g, _) in enumerate(locations):
        groups.setdefault((f, g), []).append(i)
    images, kept, skipped, resized = [], [], [], 0
    for (f, g), positions in groups.items():
        table = pq.ParquetFile(f).read_row_group(g, columns=[cfg.image_column])
        rows_in_group = np.array([locations[i][2] for i in positions])
        if spec["encoded"]:
            col = table.take(pa.array(rows_in_group)).column(cfg.image_column).to_pylist()
            part = _collect([(b, p, f"{f} row group {g} row {locations[p][2]}") for b, p in zip(col, positions)],
                            cfg, f, [])
            images.append(part.images_nhwc)
            kept.append(part.labels)
            skipped += part.skipped
            resized += part.resized
        else:
            # The whole group is checked, so an error names the row's real place in it.
            arrays = _fixed_shape_rows(Path(f), table, cfg, row_label=f"row group {g} row")[rows_in_group]
            images.append(finish(RawImages(arrays, np.zeros(len(arrays), np.int64), [], ""), cfg).images_nhwc)
            kept.append(np.array(positions, np.int64))
    return RawImages(np.concatenate(images), np.concatenate(kept), [], "", skipped, resized), np.concatenate(kept)


def run_task(item: dict) -> dict:
    """One Ray Data task: decode, resize and write one shard's rows; returns counts and a digest, or the
    one-line error that bad input earned (Ray would wrap an exception in its own traceback)."""
    spec = json.loads(item["spec"])
    cfg = DataConfig.model_validate(spec["cfg"])
    try:
        return {"result": json.dumps(_write_shard(spec, cfg))}
    except UserError as err:
        return {"result": json.dumps({"task": spec["task"], "error": str(err)})}


def _write_shard(spec: dict, cfg: DataConfig) -> dict:
    raw, kept = _read_rows(spec, cfg)
    labels = np.array(spec["labels"], np.int64)[kept]
    splits = np.array(spec["splits"])[kept]
    ids = np.array([f"{cfg.source}:{r}" for r in np.array(spec["rows"])[kept]])
    h, w, c = raw.images_nhwc.shape[1:]
    files = {}
    for split in ("train", "val", "test"):
        m = splits == split
        if m.any():
            name = f"{split}-{spec['task']:05d}.parquet"
            write_split_shard(Path(spec["out_dir"]) / name, split, raw.images_nhwc[m], labels[m], ids[m],
                              shard_schema(h, w, c))
            files[split] = name
    counts = {s: np.bincount(labels[splits == s], minlength=cfg.num_classes or 0).tolist() for s in files}
    return {"task": spec["task"], "files": files, "counts": counts,
            "digest": content_digest(raw.images_nhwc, labels, splits, ids),
            "skipped": raw.skipped, "resized": raw.resized, "shape": [h, w, c]}


def run_on_ray_data(tasks: list[dict], progress) -> list[dict]:
    """Run every task on Ray Data (a running Ray, or a local one Ray Data starts); results in task order."""
    import ray

    started = not ray.is_initialized()
    if started:  # called outside the pipeline (a benchmark, a notebook): a local Ray on loopback, ended here
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(address="local", include_dashboard=False, logging_level="warning")
    try:
        return _run_tasks(tasks, progress)
    finally:
        if started:
            ray.shutdown()


def _run_tasks(tasks: list[dict], progress) -> list[dict]:
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # progress is ours: one line per tenth of the shards
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = True
    started, results = time.perf_counter(), []
    dataset = ray.data.from_items(tasks, override_num_blocks=len(tasks)).map(run_task, num_cpus=1)
    for row in dataset.iter_rows():
        result = json.loads(row["result"])
        if "error" in result:  # the first bad row ends the run; the caller removes what was written
            raise UserError(result["error"])
        results.append(result)
        progress(len(results), len(tasks), time.perf_counter() - started)
    return sorted(results, key=lambda r: r["task"])


def prepare_streaming(cfg: DataConfig, out_dir: Path, manifest_for, progress=None) -> dict:
    """Build the dataset in `out_dir` on Ray Data; `manifest_for(index, counts, skipped, resized)` gives
    the manifest's descriptive part (the caller's, shared with the in-memory path)."""
    progress = progress or _print_progress
    index = index_source(cfg)
    n_classes = cfg.num_classes or len(index.class_names)
    check_labels(index.labels, n_classes, cfg.source)
    names = index.class_names if len(index.class_names) == n_classes else [str(c) for c in range(n_classes)]
    keep = longtail_indices(index.labels, n_classes, cfg.imbalance_ratio, cfg.seed)
    splits = stratified_split(index.labels[keep], n_classes, cfg.val_fraction, cfg.test_fraction, cfg.seed, names)
    with staged(Path(out_dir)) as tmp:
        cfg_n = cfg.model_copy(update={"num_classes": n_classes})
        results = run_on_ray_data(plan_tasks(index, keep, splits, cfg_n, tmp), progress)
        counts = {s: np.sum([r["counts"][s] for r in results if s in r["counts"]], axis=0).tolist()
                  for s in ("train", "val", "test") if any(s in r["counts"] for r in results)}
        _check_splits_survived(counts, names)
        skipped = [w for r in results for w in r["skipped"]]
        digest = hashlib.sha256(json.dumps(results[0]["shape"]).encode())
        for r in results:
            digest.update(r["digest"].encode())
        manifest = {**manifest_for(index, names, counts, skipped, sum(r["resized"] for r in results)),
                    "prepared_with": {"engine": "ray_data", "tasks": len(results)},
                    "schema_version": SCHEMA_VERSION, "digest": digest.hexdigest(),
                    "files": {s: [r["files"][s] for r in results if s in r["files"]] for s in counts},
                    "image_shape_hwc": results[0]["shape"]}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def _check_splits_survived(counts: dict[str, list[int]], names: list[str]) -> None:
    """After skipping unreadable images every class must still be in every split."""
    for split, per_class in counts.items():
        for c, n in enumerate(per_class):
            if n == 0:
                raise UserError(f"class '{names[c]}' has no readable images left in the {split} split after "
                                "skipping unreadable ones; fix or replace them")


def _print_progress(done: int, total: int, seconds: float) -> None:
    if done == total or done % max(1, total // 10) == 0:
        print(f"  prepare: {done}/{total} shards written on Ray Data ({seconds:.0f} s)", flush=True)
