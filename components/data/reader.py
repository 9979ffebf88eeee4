"""Read prepared shards back as torch tensors, and draw rebalanced training batches."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from components.data.shards import read_manifest
from components.data.transforms import to_unit_range


@dataclass
class SplitTensors:
    """One split in memory: images uint8 (N, C, H, W), labels int64 (N,)."""

    images_u8: torch.Tensor
    labels: torch.Tensor

    def images_float(self) -> torch.Tensor:
        """Images in [-1, 1], float32 (N, C, H, W)."""
        return to_unit_range(self.images_u8.float())


def load_split(data_dir: str | Path, split: str) -> SplitTensors:
    """Load every shard of `split` listed in the manifest."""
    manifest = read_manifest(data_dir)
    h, w, c = manifest["image_shape_hwc"]
    tables = [pq.read_table(Path(data_dir) / f, columns=["image", "label"]) for f in manifest["files"][split]]
    images, labels = [], []
    for t in tables:
        flat = t.column("image").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        images.append(flat.reshape(t.num_rows, h, w, c))
        labels.append(t.column("label").to_numpy())
    images_nhwc = np.concatenate(images)
    return SplitTensors(
        images_u8=torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))),
        labels=torch.from_numpy(np.concatenate(labels).astype(np.int64)),
    )


def class_samples(data_dir: str | Path, split: str, n_classes: int, k: int) -> list[torch.Tensor]:
    """Up to k images per class in [-1, 1], reading shards in order only until every class has k: a sample
    grid of a data set of any size without loading it."""
    manifest = read_manifest(data_dir)
    h, w, c = manifest["image_shape_hwc"]
    found: list[list[np.ndarray]] = [[] for _ in range(n_classes)]
    for f in manifest["files"][split]:
        if all(len(x) >= k for x in found):
            break
        t = pq.read_table(Path(data_dir) / f, columns=["image", "label"])
        images = t.column("image").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, h, w, c)
        for image, label in zip(images, t.column("label").to_numpy()):
            if len(found[label]) < k:
                found[label].append(image)
    return [to_unit_range(torch.from_numpy(np.stack(x).transpose(0, 3, 1, 2).copy()).float()) if x
            else torch.empty(0, c, h, w) for x in found]


def sampling_probs(labels: torch.Tensor, n_classes: int, strategy: str) -> torch.Tensor:
    """Per-sample draw probabilities giving class shares: data (none/reweight), uniform (resample), sqrt."""
    counts = torch.bincount(labels, minlength=n_classes).double().clamp_min(1)
    if strategy in ("none", "reweight"):
        per_class = counts
    elif strategy == "resample":
        per_class = torch.ones_like(counts)
    elif strategy == "sqrt":
        per_class = counts.sqrt()
    else:
        raise ValueError(f"unknown rebalance strategy {strategy!r}")
    share = per_class / per_class.sum()
    probs = share[labels] / counts[labels]
    return (probs / probs.sum()).float()


class BatchSampler:
    """Infinite stream of (image, label, weight) batches drawn with replacement from one split.

    With `shared=True` (every rank holds the whole split) all ranks draw the same global batch of
    batch_size * world indices from one generator seeded `seed`, and rank r keeps slice r, like
    DistributedSampler: world ranks with batch b then see exactly what one rank with batch world * b sees.
    With `shared=False` (each rank holds its own shard) each rank draws from its shard with a generator
    seeded `seed * world + rank`. `state_dict` lets a checkpoint resume the stream exactly.
    """

    def __init__(self, data: SplitTensors, n_classes: int, strategy: str, class_weights: list[float] | None,
                 batch_size: int, seed: int, rank: int = 0, world: int = 1, shared: bool = True):
        self.data = data
        self.batch_size = batch_size
        self.rank, self.world, self.shared = rank, world, shared
        self.probs = sampling_probs(data.labels, n_classes, strategy)
        weights = torch.tensor(class_weights, dtype=torch.float32) if strategy == "reweight" else None
        self.sample_weights = weights[data.labels] if weights is not None else torch.ones(len(data.labels))
        self.generator = torch.Generator().manual_seed(seed if shared else seed * world + rank)
        self.device = torch.device("cpu")

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) in [-1, 1], y (B,), w (B,)."""
        if self.shared:
            everyone = torch.multinomial(self.probs, self.batch_size * self.world, replacement=True,
                                         generator=self.generator)
            idx = everyone[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        else:
            idx = torch.multinomial(self.probs, self.batch_size, replacement=True, generator=self.generator)
        if self.device.type == "cuda":
            idx = idx.pin_memory().to(self.device, non_blocking=True)
        return to_unit_range(self.data.images_u8[idx].float()), self.data.labels[idx], self.sample_weights[idx]

    def to(self, device: torch.device) -> "BatchSampler":
        """Keep the split on `device` and index it there: each batch then costs one small index copy
        instead of a host gather and a full image copy. Indices still come from the host generator, so the
        stream of draws is the same on every device."""
        self.data = SplitTensors(self.data.images_u8.to(device), self.data.labels.to(device))
        self.sample_weights = self.sample_weights.to(device)
        self.device = device
        return self

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class PoissonSampler(BatchSampler):
    """DP-SGD's batches: each training image joins a batch on its own with probability batch_size / N, so a
    batch's size varies around batch_size. The accountant's subsampled-Gaussian analysis assumes exactly this;
    sampling with replacement, as BatchSampler does, would need another analysis. One rank only."""

    @property
    def rate(self) -> float:
        return self.batch_size / len(self.data.labels)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = (torch.rand(len(self.data.labels), generator=self.generator) < self.rate).nonzero().squeeze(1)
        if self.device.type == "cuda":
            idx = idx.pin_memory().to(self.device, non_blocking=True)
        return to_unit_range(self.data.images_u8[idx].float()), self.data.labels[idx], self.sample_weights[idx]
