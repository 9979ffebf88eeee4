"""From the pipeline's config to the one typed object a training worker gets (stages, tests, benchmarks)."""
from __future__ import annotations

from pathlib import Path

from components.storage import is_remote
from components.training.worker_config import MlflowTarget, WorkerConfig
from pipeline.config import PipelineConfig


def build_worker_config(cfg: PipelineConfig, data_uri: Path | str, mlflow_target: MlflowTarget | None = None,
                        train_overrides: dict | None = None) -> WorkerConfig:
    """The typed config that travels to Ray workers (and to in-process training in tests and benchmarks).
    data_uri: a local path or a storage URI (workers `localize` it)."""
    return WorkerConfig(
        model=cfg.model, loss=cfg.loss, train=cfg.train.model_copy(update=train_overrides or {}), privacy=cfg.privacy,
        data_uri=str(data_uri) if is_remote(data_uri) else str(Path(data_uri).resolve()),
        rebalance=cfg.data.rebalance, weight_scheme=cfg.data.weight_scheme, reader=cfg.data.reader,
        pipeline_config=cfg.model_dump(mode="json"), mlflow=mlflow_target,
    ).with_overrides()  # validated again: overrides are checked like a loaded config
