"""The evaluator: a small CNN trained on the real training split. Its penultimate layer is the feature
space of the Frechet distance, and its predictions give class coverage and recall."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from components.data.reader import SplitTensors, sampling_probs
from components.metrics.model_cache import cached_module


class EvaluatorCNN(nn.Module):
    """conv32-conv64-conv128 (stride 2) -> 128-d features -> class logits."""

    def __init__(self, channels: int, resolution: int, num_classes: int, feature_dim: int = 128):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(64, 128, 3, 2, 1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(128 * 4, feature_dim), nn.ReLU(),
        )
        self.classifier = nn.Linear(feature_dim, num_classes)
        self.arch = {"channels": channels, "resolution": resolution, "num_classes": num_classes,
                     "feature_dim": feature_dim}

    def features(self, x_bchw: torch.Tensor) -> torch.Tensor:
        """(B, feature_dim) penultimate activations."""
        return self.body(x_bchw)

    def forward(self, x_bchw: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x_bchw))


def train_classifier(data: SplitTensors, num_classes: int, steps: int, seed: int, batch: int = 64) -> EvaluatorCNN:
    """Class-balanced training with light shift augmentation, so tail classes are learnt too."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    _, c, h, _ = data.images_u8.shape
    model = EvaluatorCNN(c, h, num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    probs = sampling_probs(data.labels, num_classes, "resample")
    x_all = data.images_float()
    for _ in range(steps):
        idx = torch.multinomial(probs, batch, replacement=True, generator=gen)
        dx, dy = torch.randint(-2, 3, (2,), generator=gen).tolist()
        x = torch.roll(x_all[idx], shifts=(dx, dy), dims=(2, 3))
        loss = F.cross_entropy(model(x), data.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def predict(model: EvaluatorCNN, x_bchw: torch.Tensor, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, F), predicted labels (N,)) in batches."""
    feats, preds = [], []
    for i in range(0, len(x_bchw), batch):
        f = model.features(x_bchw[i:i + batch])
        feats.append(f)
        preds.append(model.classifier(f).argmax(1))
    return torch.cat(feats), torch.cat(preds)


def classifier_cache_path(cache_dir: Path, digest: str, steps: int, seed: int) -> Path:
    """Where the evaluator trained on data `digest` with (steps, seed) is cached."""
    key = hashlib.sha256(f"{digest}:{steps}:{seed}:v1".encode()).hexdigest()[:16]
    return Path(cache_dir) / f"evaluator-{key}.pt"


def load_classifier(path: Path, channels: int, resolution: int, num_classes: int) -> EvaluatorCNN:
    model = EvaluatorCNN(channels, resolution, num_classes)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


def cached_classifier(cache_dir: Path, digest: str, data: SplitTensors, num_classes: int, steps: int,
                      seed: int) -> EvaluatorCNN:
    """Train the evaluator once per (data digest, steps, seed); later runs (and tune trials) load it."""
    _, c, h, _ = data.images_u8.shape
    return cached_module(classifier_cache_path(cache_dir, digest, steps, seed), EvaluatorCNN(c, h, num_classes),
                         lambda: train_classifier(data, num_classes, steps, seed),
                         f"the classifier on real data ({steps} steps)")
