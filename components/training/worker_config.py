"""The one typed object a training worker gets: Ray Train workers, Tune trials and in-process tests alike.

It pickles (pydantic), so it crosses the Ray boundary as itself; a trial's overrides are one
`with_overrides(...)` call, validated like a loaded config.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from components.config_base import Section
from components.loss_config import LossConfig
from components.metrics.scoring_config import ScoringSpec
from components.models.config import ModelConfig
from components.privacy.config import PrivacyConfig, dp_conflict
from components.training.config import TrainConfig, compile_conflict

TRAINING_SECTIONS = ("model", "loss", "train", "privacy")


class MlflowTarget(Section):
    """The MLflow run that rank 0 logs into."""

    tracking_uri: str = Field(description="Tracking URI of the run.")
    run_id: str = Field(description="The run's id.")
    patience_s: float = Field(300.0, ge=0, description="How long the end of training waits for an unreachable "
                                                        "tracking server; metrics are buffered meanwhile.")


class WorkerConfig(Section):
    """Everything one training worker needs."""

    model: ModelConfig = Field(description="Networks.")
    loss: LossConfig = Field(description="Objective and regularisers.")
    train: TrainConfig = Field(description="Schedule, optimisers and distribution.")
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig, description="DP-SGD on D.")
    data_uri: str = Field(description="Prepared data (local path or storage URI; workers localize it).")
    rebalance: Literal["none", "resample", "reweight", "sqrt"] = Field(description="data.rebalance.")
    weight_scheme: Literal["inverse", "sqrt", "effective"] = Field(description="data.weight_scheme.")
    reader: Literal["local", "ray_data"] = Field("local", description="data.reader.")
    pipeline_config: dict[str, Any] = Field(
        default_factory=dict, description="The resolved pipeline config, recorded in checkpoints (a record, "
                                          "not settings: the sections above are what the worker uses).")
    mlflow: MlflowTarget | None = Field(None, description="Where rank 0 logs; None logs nothing.")
    scoring: ScoringSpec | None = Field(None, description="Tuning trials: how rank 0 scores each report.")
    init_checkpoint: str | None = Field(None, description="Warm start: a checkpoint URI to begin from.")
    timeline_file: str | None = Field(None, description="Benchmarks: rank 0 writes its loop's entry/exit times.")
    stamp_file: str | None = Field(None, description="Benchmarks: rank 0 appends each step's time stamps.")

    @model_validator(mode="after")
    def _compilable(self) -> "WorkerConfig":
        if problem := compile_conflict(self.train, self.loss):
            raise ValueError(problem)
        if problem := dp_conflict(self.privacy, self.model, self.loss, self.train, self.rebalance):
            raise ValueError(problem)
        return self

    @property
    def resolved_config(self) -> dict[str, Any]:
        """The pipeline config with this worker's own sections: what a checkpoint records."""
        return {**self.pipeline_config, **{s: getattr(self, s).model_dump(mode="json") for s in TRAINING_SECTIONS}}

    def with_overrides(self, sections: dict[str, dict[str, Any]] | None = None, **fields: Any) -> WorkerConfig:
        """A validated copy: `sections` updates fields of model/loss/train ({"train": {"lr_g": 1e-3}});
        `fields` replaces top-level fields (mlflow=None, scoring=...)."""
        data = self.model_dump()
        for section, values in (sections or {}).items():
            if section not in TRAINING_SECTIONS:
                raise ValueError(f"{section}: not a training section; choose from {', '.join(TRAINING_SECTIONS)}")
            data[section] = {**data[section], **values}
        data.update({k: v.model_dump() if isinstance(v, Section) else v for k, v in fields.items()})
        return WorkerConfig.model_validate(data)
