"""The distributed read path: ray.data.read_parquet, one shard per worker, shards cover the split, and
rebalancing still evens out the classes."""
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from components.data.config import DataConfig
from components.data.prepare import prepare_dataset
from components.data.ray_reader import ray_dataset, shard_tensors
from components.data.reader import BatchSampler, load_split

pytestmark = pytest.mark.slow


def test_two_shards_partition_the_training_split(ray_cluster, tmp_path):
    data_dir = tmp_path / "data"
    manifest = prepare_dataset(DataConfig(imbalance_ratio=10), data_dir)
    shards = ray_dataset(data_dir, "train").streaming_split(2, equal=True)
    # Split iterators advance together (as Train workers do), so read both shards at once.
    with ThreadPoolExecutor(2) as pool:
        parts = list(pool.map(lambda s: shard_tensors(s, manifest["image_shape_hwc"]), shards))
    whole = load_split(data_dir, "train")
    # equal=True (what Ray Train uses) gives equal shards, dropping at most world - 1 rows.
    assert len(parts[0].labels) == len(parts[1].labels) >= (len(whole.labels) - 1) // 2
    assert not Counter(torch.cat([p.labels for p in parts]).tolist()) - Counter(whole.labels.tolist())
    assert parts[0].images_u8.shape[1:] == whole.images_u8.shape[1:] and parts[0].images_u8.dtype == torch.uint8
    x, y, w = BatchSampler(parts[0], 10, "resample", None, 8, seed=0, rank=0, world=2, shared=False).next_batch()
    assert x.shape == (8, 1, 32, 32) and x.min() >= -1 and x.max() <= 1 and torch.equal(w, torch.ones(8))

    # Rebalancing holds on disjoint shards: each rank draws its own shard's classes evenly, so 10,000 draws
    # (5,000 a rank) give every class 10 % of the batch, +-2 %, from data whose head is 10x its tail.
    assert all(len(set(p.labels.tolist())) == 10 for p in parts)  # each shard holds every class
    draws = torch.cat([BatchSampler(p, 10, "resample", None, 5000, seed=0, rank=r, world=2,
                                    shared=False).next_batch()[1] for r, p in enumerate(parts)])
    shares = torch.bincount(draws, minlength=10).double() / len(draws)
    assert ((shares - 0.1).abs() <= 0.02).all(), shares.tolist()


def test_two_ray_train_workers_train_on_their_ray_data_shards(ray_cluster, tmp_path):
    """data.reader=ray_data end to end: Ray Train hands each worker its shard of the Parquet split, each
    rank draws rebalanced batches from its own rows, and DDP keeps the two ranks' weights equal."""
    import math

    from components.training.checkpoint import load_checkpoint
    from components.training.ray_train import run_torch_trainer
    from tests.helpers import smoke_loop_config

    # Half a CPU per worker leaves the two-CPU session cluster one CPU for Ray Data's read tasks.
    config = smoke_loop_config(tmp_path / "data", num_workers=2, batch_size=16, steps=4, report_every=2,
                               checkpoint_every=4, resources_per_worker={"CPU": 0.5}).with_overrides(reader="ray_data")
    result = run_torch_trainer(config, tmp_path / "ray_results", "ray-data-2", placement_group_cleaner=False,
                               autoscaling_requests=False)
    assert result.error is None
    assert result.metrics["ranks_in_sync"] == 1.0 and len(set(result.metrics["param_digests"])) == 1
    with result.checkpoint.as_directory() as d:
        trace = load_checkpoint(d)["trace"]
    assert len(trace["d_loss"]) == 4 and all(math.isfinite(v) for v in trace["d_loss"].tolist())
