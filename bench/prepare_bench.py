"""prepare on data larger than memory should hold: a generated Parquet source of 32x32x3 images, prepared on
Ray Data with 1 and 2 CPUs at 100k and 1M rows, and in memory for comparison.

The source: N rows of uint8 arrays (3,072 values each, about 3 GB raw at 1M rows), written once to
SOURCE_ROOT/<N> as 50,000-row files with 4,096-row groups. Each image is a bundled digit glyph in random
colours, upscaled to 32x32, plus pixel noise, so it compresses like an image rather than like zeros or
pure noise. Labels are the glyphs' digits; prepare makes the set long-tailed (rho 10).

Each run is a fresh process (`--one`) confined to that many cores (taskset), with a Ray of that many CPUs,
then `prepare_dataset`. This process
samples the run's process tree every 0.5 s and reports the peak of the summed RSS (the driver, the Ray
daemons and workers; the object store's shared pages are counted once per process that maps them, so
the figure is an upper bound) and the driver's own peak.

    python -m bench.prepare_bench                       # 100k and 1M rows; about 6 minutes on 2 cores
    python -m bench.prepare_bench --rows 20000 --out /tmp/p.json       # a quick check

Writes bench/results/prepare_stream.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SOURCE_ROOT = Path(tempfile.gettempdir()) / "ganpipe-prepare-bench"
FILE_ROWS, GROUP_ROWS = 50_000, 4096


def make_source(rows: int) -> Path:
    """SOURCE_ROOT/<rows>/part-*.parquet, made once and reused."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from components.data.config import DataConfig
    from components.data.sources import load_color_digits_source
    from components.data.transforms import resize_square

    folder = SOURCE_ROOT / str(rows)
    if (folder / "_complete").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    glyphs = load_color_digits_source(DataConfig(source="color_digits", channels=3))
    base = resize_square(glyphs.images_nhwc, 32).reshape(len(glyphs.labels), -1)
    rng = np.random.default_rng(0)
    for f, start in enumerate(range(0, rows, FILE_ROWS)):
        n = min(FILE_ROWS, rows - start)
        pick = rng.integers(0, len(base), n)
        noise = rng.integers(-12, 13, (n, base.shape[1]), dtype=np.int16)
        images = np.clip(base[pick].astype(np.int16) + noise, 0, 255).astype(np.uint8)
        table = pa.table({"image": pa.FixedSizeListArray.from_arrays(pa.array(images.ravel()), base.shape[1]),
                          "label": pa.array(glyphs.labels[pick])})
        pq.write_table(table.replace_schema_metadata({"image_shape_hwc": "[32, 32, 3]"}),
                       folder / f"part-{f:04d}.parquet", row_group_size=GROUP_ROWS, compression="zstd")
    (folder / "_complete").touch()
    return folder


def run_one(source: Path, cpus: int, engine: str, out_dir: Path) -> dict:
    """In this process: a Ray of `cpus` CPUs (streaming), then prepare; returns timings."""
    from components.data.config import DataConfig
    from components.data.prepare import prepare_dataset

    cfg = DataConfig(source="parquet", path=str(source), channels=3, imbalance_ratio=10,
                     streaming="always" if engine == "ray_data" else "never")
    t0 = time.perf_counter()
    if engine == "ray_data":
        import ray

        ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level="warning")
    ray_start_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    manifest = prepare_dataset(cfg, out_dir)
    prepare_s = time.perf_counter() - t1
    if engine == "ray_data":
        ray.shutdown()
    return {"ray_start_s": round(ray_start_s, 2), "prepare_s": round(prepare_s, 2),
            "images_written": manifest["num_images"]}


def tree_rss(pid: int) -> tuple[int, int]:
    """(RSS of pid and all its descendants, RSS of pid alone), bytes, from /proc: only the tree is read, so
    sampling costs little of the cores being measured."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = own = 0
    todo, seen = [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            rss = int(Path(f"/proc/{p}/statm").read_text().split()[1]) * page
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:  # gone meanwhile
            continue
        total += rss
        own = rss if p == pid else own
    return total, own


def measure(rows: int, cpus: int, engine: str) -> dict:
    source = make_source(rows)
    with tempfile.TemporaryDirectory() as tmp:
        result_file = Path(tmp) / "result.json"
        env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
        # A run on n cores is confined to the first n with taskset, Ray's daemons and the driver included:
        # otherwise a 1-CPU Ray would still have a second core for everything beside its one worker.
        cores = ["taskset", "-c", ",".join(str(c) for c in range(cpus))] if cpus < os.cpu_count() else []
        proc = subprocess.Popen([*cores, sys.executable, "-m", "bench.prepare_bench", "--one", str(source), str(cpus),
                                 engine, str(Path(tmp) / "out"), str(result_file)], cwd=REPO, env=env)
        peak_tree = peak_driver = 0
        while proc.poll() is None:
            total, own = tree_rss(proc.pid)
            peak_tree, peak_driver = max(peak_tree, total), max(peak_driver, own)
            time.sleep(0.5)
        if proc.returncode != 0:
            raise RuntimeError(f"prepare run ({rows} rows, {cpus} CPUs, {engine}) exited {proc.returncode}")
        timings = json.loads(result_file.read_text())
    row = {"rows": rows, "cpus": cpus, "engine": engine, **timings,
           "source_images_per_s": round(rows / timings["prepare_s"], 1),
           "peak_rss_tree_mb": round(peak_tree / 2**20), "peak_rss_driver_mb": round(peak_driver / 2**20)}
    print(f"  {engine:<9} {rows:>9,} rows {cpus} CPU(s): {timings['prepare_s']:>7.1f} s "
          f"{row['source_images_per_s']:>9.0f} images/s, peak RSS {row['peak_rss_tree_mb']:>6} MB "
          f"(driver {row['peak_rss_driver_mb']} MB)", flush=True)
    return row


def main(sizes: list[int], out: Path, in_memory: bool = True, repeats: int = 1) -> dict:
    """Each size on 1 and 2 CPUs; the largest `repeats` times in ABBA order (1, 2, 2, 1, ...), since this
    machine's speed drifts: its 2-over-1 ratio is the median of the pairs'."""
    runs = []
    big, small = max(sizes), min(sizes)
    for rows in sizes:
        order = [1, 2] if rows != big else [c for r in range(repeats) for c in ((1, 2) if r % 2 == 0 else (2, 1))]
        for i, cpus in enumerate(order):
            runs.append({**measure(rows, cpus, "ray_data"), "pair": i // 2})
        if in_memory:
            runs.append(measure(rows, 2, "in_memory"))

    def pick(rows, cpus, engine, pair=0):
        return next(r for r in runs if (r["rows"], r["cpus"], r["engine"]) == (rows, cpus, engine)
                    and r.get("pair", 0) == pair)
    pairs = [round(pick(big, 2, "ray_data", i)["source_images_per_s"] / pick(big, 1, "ray_data", i)["source_images_per_s"], 3)
             for i in range(repeats)]
    summary = {"two_cpus_over_one_at_largest_per_pair": pairs,
               "two_cpus_over_one_at_largest": statistics.median(pairs),
               "peak_rss_tree_largest_over_smallest_ray_data": round(
                   max(r["peak_rss_tree_mb"] for r in runs if r["rows"] == big and r["engine"] == "ray_data")
                   / max(r["peak_rss_tree_mb"] for r in runs if r["rows"] == small and r["engine"] == "ray_data"), 3)}
    if in_memory:
        summary["peak_rss_tree_largest_over_smallest_in_memory"] = round(
            pick(big, 2, "in_memory")["peak_rss_tree_mb"] / pick(small, 2, "in_memory")["peak_rss_tree_mb"], 3)
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "command": "python -m bench.prepare_bench --rows " + ",".join(map(str, sizes))
                         + f" --repeats {repeats}" + ("" if in_memory else " --no-in-memory"),
              "source": "generated Parquet, 32x32x3 uint8 arrays, 50,000-row files, 4,096-row groups, zstd",
              "targets": {"two_cpus_over_one": 1.7, "peak_rss_flat_in_rows": True},
              "runs": runs, "summary": summary}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(summary, indent=2))
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        _, _, source, cpus, engine, out_dir, result_file = sys.argv
        Path(result_file).write_text(json.dumps(run_one(Path(source), int(cpus), engine, Path(out_dir))))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="100000,1000000", help="comma-separated source sizes")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "prepare_stream.json")
    parser.add_argument("--no-in-memory", action="store_true", help="skip the in-memory comparison runs")
    parser.add_argument("--repeats", type=int, default=2, help="1-vs-2-CPU pairs at the largest size")
    a = parser.parse_args()
    main([int(r) for r in a.rows.split(",")], a.out, not a.no_in_memory, a.repeats)
