"""In-process training helpers for tests: the same loop as Ray workers run, without Ray or MLflow."""
from __future__ import annotations

from pathlib import Path

import torch

from components.data.prepare import prepare_dataset
from components.training.ray_train import build_worker_state
from pipeline.config import load_config
from pipeline.stages.train import build_loop_config

REPO = Path(__file__).resolve().parent.parent


def smoke_loop_config(data_dir: Path, loss: dict | None = None, model: dict | None = None,
                      **train_overrides) -> dict:
    """configs/smoke.yaml as the plain-dict loop config, one worker, prepared data in data_dir; `loss` and
    `model` override those sections' fields."""
    sets = [f"{section}.{k}={v}" for section, fields in (("loss", loss), ("model", model))
            for k, v in (fields or {}).items()]
    cfg = load_config(REPO / "configs" / "smoke.yaml", sets)
    if not (data_dir / "manifest.json").exists():
        prepare_dataset(cfg.data, data_dir)
    return build_loop_config(cfg, data_dir, train_overrides={"num_workers": 1, **train_overrides})


def fresh_state(loop_config: dict):
    """(state, train_cfg, loss) for rank 0 of 1, with one intra-op thread for reproducibility."""
    torch.set_num_threads(1)
    return build_worker_state(loop_config, rank=0, world=1)
