"""Networks trained on the real data once per data digest and reused: the evaluator and the autoencoder."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn


def cached_module(path: Path, empty: nn.Module, train: Callable[[], nn.Module], what: str) -> nn.Module:
    """`empty` with the weights cached at `path`, or, if there are none yet, `train()`'s result, saved there
    atomically (a temp file, then os.replace) so a concurrent reader never sees half a file."""
    if path.exists():
        empty.load_state_dict(torch.load(path, weights_only=True))
        return empty.eval()
    print(f"  evaluator: training {what}", flush=True)
    model = train()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return model
