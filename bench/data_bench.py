"""Data benchmarks: prepare throughput, reader throughput into torch batches, and the reader/trainer ratio.

Writes bench/results/data.json. Run with `make bench` (or `.venv/bin/python -m bench.data_bench`).
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from components.data.config import DataConfig
from components.data.prepare import prepare_dataset
from components.data.reader import BatchSampler, load_split
from components.losses import GANLoss
from components.training.loop import train_steps
from components.training.state import make_state
from pipeline.config import load_config

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent


def timed(fn, repeats: int = 3) -> float:
    """Best wall time of `repeats` calls, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def synthetic_parquet(path: Path, n: int = 20000) -> Path:
    """n random 32x32 grey images with 10 long-tailed labels, as fixed-shape arrays."""
    rng = np.random.default_rng(0)
    flat = rng.integers(0, 256, (n, 32 * 32), dtype=np.uint8)
    labels = np.minimum(rng.geometric(0.3, n) - 1, 9)
    arr = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel(), pa.uint8()), 32 * 32)
    pq.write_table(pa.table({"image": arr, "label": labels}), path)
    return path


def bench_prepare(tmp: Path) -> dict:
    digits = DataConfig(source="digits")
    t_digits = timed(lambda: prepare_dataset(digits, tmp / f"d{time.perf_counter_ns()}"))
    src = synthetic_parquet(tmp / "synthetic.parquet")
    pq_cfg = DataConfig(source="parquet", path=str(src), image_shape=[32, 32, 1])
    t_pq = timed(lambda: prepare_dataset(pq_cfg, tmp / f"p{time.perf_counter_ns()}"), repeats=2)
    return {"prepare_digits_images_per_s": 1797 / t_digits, "prepare_parquet_images_per_s": 20000 / t_pq}


def bench_reader(data_dir: Path, batch: int, batches: int = 200) -> float:
    """Images/s of BatchSampler.next_batch on one thread (resample strategy)."""
    torch.set_num_threads(1)
    sampler = BatchSampler(load_split(data_dir, "train"), 10, "resample", None, batch, seed=0)
    sampler.next_batch()
    return batch * batches / timed(lambda: [sampler.next_batch() for _ in range(batches)], repeats=2)


def bench_trainer_consumption(data_dir: Path, steps: int = 20) -> tuple[float, int]:
    """Images/s one training worker consumes at the default config (its per-worker batch, one thread)."""
    cfg = load_config(REPO / "configs" / "default.yaml")
    per_worker = cfg.train.batch_size // cfg.train.num_workers
    train = cfg.train.model_copy(update={"num_workers": 1, "batch_size": per_worker})
    torch.set_num_threads(1)
    state = make_state(cfg.model, train, load_split(data_dir, "train"), 10, "resample", None)
    loss = GANLoss(cfg.loss)
    train_steps(state, loss, train, 3)
    seconds = timed(lambda: train_steps(state, loss, train, state.step + steps), repeats=1)
    return per_worker * steps / seconds, per_worker


def main() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        results = bench_prepare(tmp)
        data_dir = tmp / "default"
        prepare_dataset(load_config(REPO / "configs" / "default.yaml").data, data_dir)
        consumed, per_worker = bench_trainer_consumption(data_dir)
        read = bench_reader(data_dir, per_worker)
    results.update(reader_images_per_s=read, trainer_images_per_s_per_worker=consumed,
                   reader_to_trainer_ratio=read / consumed, target_ratio=20.0, per_worker_batch=per_worker,
                   machine={"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "data.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
