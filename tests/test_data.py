"""Data preparation: long tail, splits, statistics, Parquet round trip, idempotence, rebalanced sampling."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from components.data.balance import class_statistics, class_weights, longtail_counts, stratified_split
from components.data.config import DataConfig
from components.data.prepare import prepare_dataset
from components.data.reader import BatchSampler, load_split, sampling_probs
from components.errors import UserError


def test_cifar10_lt_protocol_gives_12406_images():
    counts = longtail_counts(np.full(10, 5000), rho=100)
    assert counts.sum() == 12406 and counts[0] == 5000 and counts[-1] == 50


def test_rho_one_keeps_everything():
    assert longtail_counts(np.array([5, 7, 9]), 1.0).tolist() == [5, 7, 9]


def test_split_keeps_every_class_in_every_split():
    labels = np.repeat(np.arange(4), [40, 20, 10, 5])
    split = stratified_split(labels, 4, 0.2, 0.2, seed=0, class_names=list("abcd"))
    for s in ("train", "val", "test"):
        assert set(labels[split == s]) == {0, 1, 2, 3}


def test_split_names_the_class_that_is_too_small():
    labels = np.array([0] * 30 + [1] * 2)
    with pytest.raises(UserError, match="class 'tiny' has 2 image"):
        stratified_split(labels, 2, 0.2, 0.2, seed=0, class_names=["big", "tiny"])


def test_class_weights_have_unit_mean_over_samples():
    counts = np.array([100, 10, 1])
    for scheme in ("inverse", "sqrt", "effective"):
        w = class_weights(counts, scheme, beta=0.99)
        assert np.isclose((w * counts).sum() / counts.sum(), 1.0)
        assert w[0] < w[1] < w[2]
    inv = class_weights(counts, "inverse", 0.99)
    assert np.allclose(inv * counts, inv[0] * counts[0])  # every class gets the same total weight


def test_statistics_known_values():
    stats = class_statistics(np.array([10, 10]), beta=0.9)
    assert stats["imbalance_ratio"] == 1.0 and np.isclose(stats["normalized_entropy"], 1.0)
    assert np.isclose(stats["effective_number"][0], (1 - 0.9 ** 10) / 0.1)


@pytest.fixture(scope="module")
def digits_lt(tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "data"
    return out, prepare_dataset(DataConfig(imbalance_ratio=10), out)


def test_digits_long_tail_manifest(digits_lt):
    out, manifest = digits_lt
    train = manifest["class_counts"]["train"]
    assert manifest["num_classes"] == 10 and train[0] > train[-1] * 5
    assert 9 <= manifest["train_statistics"]["imbalance_ratio"] <= 12
    assert json.loads((out / "manifest.json").read_text())["digest"] == manifest["digest"]


def test_parquet_schema_and_round_trip(digits_lt):
    out, manifest = digits_lt
    table = pq.read_table(out / manifest["files"]["train"][0])
    assert table.schema.names == ["image", "label", "sample_id", "split"]
    image_type = table.schema.field("image").type
    assert image_type.list_size == 32 * 32 and str(image_type.value_type) == "uint8"
    split = load_split(out, "train")
    assert split.images_u8.shape == (sum(manifest["class_counts"]["train"]), 1, 32, 32)
    assert split.images_u8.dtype == torch.uint8
    x = split.images_float()
    assert x.min() >= -1 and x.max() <= 1


def test_rerun_is_a_noop_with_same_digest(digits_lt):
    out, manifest = digits_lt
    before = (out / "manifest.json").stat().st_mtime_ns
    again = prepare_dataset(DataConfig(imbalance_ratio=10), out)
    assert again["digest"] == manifest["digest"]
    assert (out / "manifest.json").stat().st_mtime_ns == before


def test_resample_hits_uniform_class_proportions(digits_lt):
    out, manifest = digits_lt
    data = load_split(out, "train")
    sampler = BatchSampler(data, 10, "resample", None, batch_size=1000, seed=0)
    labels = torch.cat([sampler.next_batch()[1] for _ in range(10)])  # 10,000 draws
    shares = torch.bincount(labels, minlength=10).float() / len(labels)
    assert torch.allclose(shares, torch.full((10,), 0.1), atol=0.02)


def test_sqrt_and_none_strategies_follow_their_targets():
    labels = torch.tensor([0] * 90 + [1] * 10)
    for strategy, expected in (("none", [0.9, 0.1]), ("sqrt", [0.75, 0.25])):
        probs = sampling_probs(labels, 2, strategy)
        share = torch.stack([probs[labels == c].sum() for c in range(2)])
        torch.testing.assert_close(share, torch.tensor(expected), atol=1e-6, rtol=0)


def test_reweight_gives_manifest_weights(digits_lt):
    out, manifest = digits_lt
    weights = manifest["train_statistics"]["weights"]["effective"]
    sampler = BatchSampler(load_split(out, "train"), 10, "reweight", weights, batch_size=256, seed=0)
    _, y, w = sampler.next_batch()
    torch.testing.assert_close(w, torch.tensor(weights, dtype=torch.float32)[y])
