"""In-process training helpers for tests: the same loop as Ray workers run, without Ray or MLflow."""
from __future__ import annotations

from pathlib import Path

import torch

from components.data.prepare import prepare_dataset
from components.training.worker import build_worker_state
from components.training.worker_config import WorkerConfig
from pipeline.config import load_config
from pipeline.workers import build_worker_config

REPO = Path(__file__).resolve().parent.parent


def smoke_loop_config(data_dir: Path, loss: dict | None = None, model: dict | None = None,
                      **train_overrides) -> WorkerConfig:
    """configs/smoke.yaml as a worker's config, one worker, prepared data in data_dir; `loss` and `model`
    override those sections' fields."""
    sets = [f"{section}.{k}={v}" for section, fields in (("loss", loss), ("model", model))
            for k, v in (fields or {}).items()]
    cfg = load_config(REPO / "configs" / "smoke.yaml", sets)
    if not (data_dir / "manifest.json").exists():
        prepare_dataset(cfg.data, data_dir)
    return build_worker_config(cfg, data_dir, train_overrides={"num_workers": 1, **train_overrides})


def fresh_state(loop_config: WorkerConfig):
    """(state, train_cfg, loss) for rank 0 of 1, with one intra-op thread for reproducibility."""
    torch.set_num_threads(1)
    return build_worker_state(loop_config, rank=0, world=1)


def write_longtail_folder(root: Path, counts: list[int], seed: int = 0) -> Path:
    """An image folder root/<class>/<n>.png of RGB 32x32 digits (the bundled glyphs in random colours), class c
    holding counts[c] images: a user's long-tailed folder, made on any machine."""
    from PIL import Image

    from components.data.config import DataConfig
    from components.data.sources import load_color_digits_source

    raw = load_color_digits_source(DataConfig(source="color_digits", channels=3, seed=seed))
    for c, n in enumerate(counts):
        folder = root / f"class_{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        picked = raw.images_nhwc[raw.labels == c % len(raw.class_names)]
        if len(picked) < n:
            raise ValueError(f"class {c}: asked for {n} images, the bundled digits have {len(picked)}")
        for i, image in enumerate(picked[:n]):
            Image.fromarray(image).resize((32, 32), Image.NEAREST).save(folder / f"{i:04d}.png")
    return root
