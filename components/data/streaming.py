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
from dataclasses import dataclass, replace
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

    Parquet rows are numbered across files in order; row group g holds rows group_start[g] onwards of file
    files[group_file[g]]. An image folder's row i is the file files[i]."""

    labels: np.ndarray
    files: list[str]
    group_file: np.ndarray
    group_start: np.ndarray
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
        empty = np.zeros(0, np.int64)
        return SourceIndex(np.array([label for _, label, _ in items], np.int64), [str(f) for f, _, _ in items],
                           empty, empty, names, f"image folder {cfg.path}", ignored, encoded=True)
    import pyarrow.parquet as pq

    labels, files, group_file, group_start, kinds, total = [], [], [], [], {}, 0
    for file in parquet_files(cfg):
        try:
            meta = pq.ParquetFile(file)
            table = meta.read(columns=[cfg.label_column]) if cfg.label_column in meta.schema_arrow.names else None
        except Exception as err:  # noqa: BLE001 - any Arrow or OS error means the same to the user
            raise UserError(f"{file}: not a readable Parquet file ({str(err).splitlines()[0][:120]}); "
                            "re-export it, or move it out of data.path") from None
        schema = meta.schema_arrow
        labels.append(check_parquet_table(file, schema, meta.metadata.num_rows,
                                          table.column(cfg.label_column) if table is not None else None, cfg))
        kind = image_kind(file, schema, cfg, kinds)
        for group in range(meta.num_row_groups):
            group_file.append(len(files))
            group_start.append(total)
            total += meta.metadata.row_group(group).num_rows
        files.append(str(file))
    labels_all = np.concatenate(labels)
    names = [str(c) for c in range(int(labels_all.max()) + 1)]
    return SourceIndex(labels_all, files, np.array(group_file, np.int64), np.array(group_start, np.int64), names,
                       f"parquet {cfg.path}", [], encoded=kind == "encoded images")


SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Plan:
    """Everything the tasks share, put once into Ray's object store: shard k holds rows[k*R:(k+1)*R] (R is
    data.rows_per_shard), and the shards are dealt out evenly, in order, to `tasks` tasks."""

    cfg_json: str
    out_dir: str
    index: SourceIndex
    rows: np.ndarray      # selected source rows, ascending
    splits: np.ndarray    # uint8 codes into SPLIT_NAMES, one per selected row
    tasks: int = 1

    def shard_count(self) -> int:
        return -(-len(self.rows) // json.loads(self.cfg_json)["rows_per_shard"])

    def shards_of(self, task: int) -> range:
        n = self.shard_count()
        return range(task * n // self.tasks, (task + 1) * n // self.tasks)


# Ray Data spends a scheduling round in the driver on every task: tasks of several shards amortise it, and
# TASKS_PER_CPU equal tasks for each CPU of the cluster still balance the load across its cores.
TASKS_PER_CPU = 4


def task_count(shards: int, cpus: float) -> int:
    return max(1, min(shards, int(cpus) * TASKS_PER_CPU))


def _read_rows(plan: Plan, rows: np.ndarray, cfg: DataConfig) -> tuple[RawImages, np.ndarray]:
    """Decode the given source rows; returns the images and the positions (within `rows`) that were kept."""
    index = plan.index
    if cfg.source == "image_folder":
        items = [(Path(index.files[r]), i, index.files[r]) for i, r in enumerate(rows)]
        raw = _collect(items, cfg, f"image folder {cfg.path}", [])
        return raw, raw.labels
    import pyarrow as pa
    import pyarrow.parquet as pq

    groups = np.searchsorted(index.group_start, rows, side="right") - 1
    images, kept, skipped, resized = [], [], [], 0
    for g in np.unique(groups):  # rows ascend, so each group's rows are contiguous and in order
        positions = np.flatnonzero(groups == g)
        f = index.files[index.group_file[g]]
        local = rows[positions] - index.group_start[g]
        g_in_file = int(g - np.searchsorted(index.group_file, index.group_file[g]))
        table = pq.ParquetFile(f).read_row_group(g_in_file, columns=[cfg.image_column])
        if index.encoded:
            col = table.take(pa.array(local)).column(cfg.image_column).to_pylist()
            part = _collect([(b, int(p), f"{f} row group {g_in_file} row {r}") for b, p, r in zip(col, positions, local)],
                            cfg, f, [])
            images.append(part.images_nhwc)
            kept.append(part.labels)
            skipped += part.skipped
            resized += part.resized
        else:
            # The whole group is checked, so an error names the row's real place in it.
            arrays = _fixed_shape_rows(Path(f), table, cfg, row_label=f"row group {g_in_file} row")[local]
            images.append(finish(RawImages(arrays, np.zeros(len(arrays), np.int64), [], ""), cfg).images_nhwc)
            kept.append(positions)
    kept_all = np.concatenate(kept)
    return RawImages(np.concatenate(images), kept_all, [], "", skipped, resized), kept_all


_PLANS: dict[str, Plan] = {}  # per worker process: a plan is fetched from the object store once


def run_task(item: dict, plan_ref) -> dict:
    """One Ray Data task: decode, resize and write its shards' rows, one shard in memory at a time; returns
    each shard's counts and digest, or the one-line error that bad input earned (Ray would wrap an
    exception in its own traceback)."""
    import ray

    key = plan_ref.hex()
    if key not in _PLANS:
        _PLANS.clear()
        _PLANS[key] = ray.get(plan_ref)
    plan, task = _PLANS[key], int(item["id"])
    cfg = DataConfig.model_validate_json(plan.cfg_json)
    try:
        return {"result": json.dumps([_write_shard(plan, k, cfg) for k in plan.shards_of(task)])}
    except UserError as err:
        return {"result": json.dumps([{"task": task, "error": str(err)}])}


def _write_shard(plan: Plan, task: int, cfg: DataConfig) -> dict:
    mine = slice(task * cfg.rows_per_shard, (task + 1) * cfg.rows_per_shard)
    rows = plan.rows[mine]
    raw, kept = _read_rows(plan, rows, cfg)
    labels = plan.index.labels[rows][kept]
    splits = np.array(SPLIT_NAMES)[plan.splits[mine][kept]]
    ids = np.array([f"{cfg.source}:{r}" for r in rows[kept]])
    h, w, c = raw.images_nhwc.shape[1:]
    files = {}
    for split in SPLIT_NAMES:
        m = splits == split
        if m.any():
            name = f"{split}-{task:05d}.parquet"
            write_split_shard(Path(plan.out_dir) / name, split, raw.images_nhwc[m], labels[m], ids[m],
                              shard_schema(h, w, c))
            files[split] = name
    counts = {s: np.bincount(labels[splits == s], minlength=cfg.num_classes or 0).tolist() for s in files}
    return {"task": task, "files": files, "counts": counts,
            "digest": content_digest(raw.images_nhwc, labels, splits, ids),
            "skipped": raw.skipped, "resized": raw.resized, "shape": [h, w, c]}


def run_on_ray_data(plan: Plan, progress) -> list[dict]:
    """Run every task on Ray Data (a running Ray, or a local one started and ended here); results in task
    order."""
    import ray

    started = not ray.is_initialized()
    if started:  # called outside the pipeline (a benchmark, a notebook): a local Ray on loopback
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(address="local", include_dashboard=False, logging_level="warning")
    try:
        return _run_tasks(plan, progress)
    finally:
        if started:
            ray.shutdown()


def _run_tasks(plan: Plan, progress) -> list[dict]:
    import ray
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # progress is ours: one line per tenth of the shards
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = True
    plan = replace(plan, tasks=task_count(plan.shard_count(), ray.cluster_resources().get("CPU", 1)))
    n = plan.tasks
    plan_ref = ray.put(plan)
    started, results = time.perf_counter(), []
    dataset = ray.data.range(n, override_num_blocks=n).map(run_task, fn_kwargs={"plan_ref": plan_ref}, num_cpus=1)
    for row in dataset.iter_rows():
        for result in json.loads(row["result"]):
            if "error" in result:  # the first bad row ends the run; the caller removes what was written
                raise UserError(result["error"])
            results.append(result)
        progress(len(results), plan.shard_count(), time.perf_counter() - started)
    return sorted(results, key=lambda r: r["task"])


def prepare_streaming(cfg: DataConfig, out_dir: Path, manifest_for, progress=None) -> dict:
    """Build the dataset in `out_dir` on Ray Data; `manifest_for(index, counts, skipped, resized)` gives
    the manifest's descriptive part (the caller's, shared with the in-memory path)."""
    progress = progress or _progress_lines()
    index = index_source(cfg)
    n_classes = cfg.num_classes or len(index.class_names)
    check_labels(index.labels, n_classes, cfg.source)
    names = index.class_names if len(index.class_names) == n_classes else [str(c) for c in range(n_classes)]
    keep = longtail_indices(index.labels, n_classes, cfg.imbalance_ratio, cfg.seed)
    splits = stratified_split(index.labels[keep], n_classes, cfg.val_fraction, cfg.test_fraction, cfg.seed, names)
    with staged(Path(out_dir)) as tmp:
        cfg_n = cfg.model_copy(update={"num_classes": n_classes})
        split_codes = np.zeros(len(splits), np.uint8)
        for code, name in enumerate(SPLIT_NAMES):
            split_codes[splits == name] = code
        results = run_on_ray_data(Plan(cfg_n.model_dump_json(), str(tmp), index, keep, split_codes), progress)
        counts = {s: np.sum([r["counts"][s] for r in results if s in r["counts"]], axis=0).tolist()
                  for s in ("train", "val", "test") if any(s in r["counts"] for r in results)}
        _check_splits_survived(counts, names)
        skipped = [w for r in results for w in r["skipped"]]
        digest = hashlib.sha256(json.dumps(results[0]["shape"]).encode())
        for r in results:
            digest.update(r["digest"].encode())
        manifest = {**manifest_for(index, names, counts, skipped, sum(r["resized"] for r in results)),
                    "prepared_with": {"engine": "ray_data"},
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


def _progress_lines():
    """A progress callback printing one line each time another tenth of the shards is written."""
    shown = [0]

    def show(done: int, total: int, seconds: float) -> None:
        tenth = 10 * done // total
        if tenth > shown[0]:
            shown[0] = tenth
            print(f"  prepare: {done}/{total} shards written on Ray Data ({seconds:.0f} s)", flush=True)
    return show
