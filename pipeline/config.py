"""The one typed config tree: YAML in configs/, validated at load, `--set a.b=v` overrides."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from components.privacy.config import PrivacyConfig, dp_conflict
from components.config_base import Section, build
from components.data.config import DataConfig
from components.errors import UserError
from components.evaluation_config import EvaluateConfig
from components.loss_config import LossConfig
from components.metrics.scoring_config import StabilityWeights
from components.models import ModelConfig
from components.promotion_config import GatesConfig
from components.storage import redact
from components.training.config import TrainConfig, compile_conflict


class TrackingConfig(Section):
    """Where MLflow tracking and artifacts live (MLFLOW_TRACKING_URI overrides `uri`)."""

    uri: str = Field("sqlite:///mlflow.db", description="MLflow tracking URI.")
    experiment: str = Field("ganpipe", description="MLflow experiment name.")
    artifact_root: str = Field("mlartifacts", description="Artifact folder or URI for a new experiment.")
    patience_s: float = Field(
        300.0, ge=0, le=1080, description="How long MLflow calls wait for a tracking server that does not answer "
                                          "before the stage fails (at most MLflow's 10 retries, 2 minutes apart). "
                                          "Training buffers its metrics meanwhile and waits this long at its end.")


class RayConfig(Section):
    """Which Ray cluster to use (RAY_ADDRESS overrides `address`)."""

    address: str | None = Field(None, description="Cluster address; null starts a local Ray on 127.0.0.1.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray; null means all cores.")
    stage_tasks: Literal["auto", "always", "never"] = Field(
        "auto", description="Run each stage as a Ray task: auto does so when joining a cluster (address set).")
    stage_task_retries: int = Field(
        1, ge=0, description="How often Ray reruns a stage task whose worker process or node is lost; the rerun "
                             "resumes from the stage's checkpoints.")
    stage_task_resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources a stage task needs, to keep stage drivers on "
                                          "nodes that declare them (e.g. {stage_host: 1}).")
    local_cluster_tuning: bool = Field(
        True, description="On a local Ray this process starts: its processes under Linux SCHED_BATCH, fewer "
                          "background polls, and Ray Train runs without helper actors they do not use "
                          "(pipeline/ray_edge.py). false keeps Ray's defaults.")


class StorageConfig(Section):
    """Where stage outputs (the artifacts the DAG wires) and Ray Train/Tune checkpoints live."""

    uri: str | None = Field(None, description="A pyarrow filesystem URI shared by every node (s3://bucket/prefix, "
                                              "with ?endpoint_override=host:port&scheme=http for MinIO); null "
                                              "keeps them in work_dir on a local (or shared) disk.")

    @field_validator("uri")
    @classmethod
    def _uri_or_path(cls, uri: str | None) -> str | None:
        if uri is not None and not uri.strip():
            raise ValueError("empty; use null for work_dir or a URI such as s3://bucket/prefix")
        return uri


class SearchDim(Section):
    """One searched hyperparameter."""

    type: Literal["choice", "grid", "loguniform", "uniform"] = Field(description="Sampling of this dimension.")
    values: list[Any] | None = Field(None, description="Candidates for choice and grid.")
    low: float | None = Field(None, description="Lower bound for (log)uniform.")
    high: float | None = Field(None, description="Upper bound for (log)uniform.")


class TuneConfig(Section):
    """A Ray Tune campaign scored by stability."""

    num_samples: int = Field(4, ge=1, description="Trials (times the grid size, if a grid is searched).")
    steps: int = Field(200, ge=1, description="Training steps per trial.")
    report_every: int = Field(25, ge=1, description="Steps between trial reports.")
    max_concurrent_trials: int = Field(2, ge=1, description="Trials running at once.")
    max_failures: int = Field(1, ge=0, description="Times a trial that raises is retried (from its last "
                                                   "checkpoint) before it counts as failed; failed trials never win.")
    window: int = Field(50, ge=2, description="Steps in the trailing window of stability metrics.")
    scheduler: Literal["asha", "pbt", "none"] = Field(
        "asha", description="asha stops unstable trials early; pbt mutates (log)uniform and choice dimensions.")
    # The ASHA defaults come from replaying ASHA on the tune study's grid (docs/tuning.md): a first rung after a
    # twelfth of a trial and a quarter going on at each rung kept the full grid's pick at about a quarter of its
    # trial-steps.
    asha_grace: int | None = Field(
        None, ge=1, description="ASHA: reports every trial makes before it can be stopped (its first rung); "
                                "default a twelfth of a trial's reports, at least one.")
    asha_reduction_factor: float = Field(
        4.0, gt=1.0, description="ASHA: 1/reduction_factor of the trials reaching a rung go on to the next.")
    control: bool = Field(
        True, description="Train the untuned control beside the trials: the base config for as many steps as "
                          "the candidate, so the report can say whether tuning paid (handoff best_trial; a "
                          "retrain's control is the train stage's own model).")
    pbt_interval: int = Field(2, ge=1, description="PBT: reports between exploit/explore steps.")
    pbt_synch: bool = Field(False, description="PBT: every trial waits at each exploit/explore step, so which "
                            "trials are exploited does not depend on which one reports first (reproducible, slower).")
    search_alg: Literal["basic", "optuna"] = Field(
        "basic", description="basic: Tune's grid/random variants; optuna: TPE (pip install -e .[optuna]).")
    trial_workers: int = Field(
        1, ge=1, description="DDP workers per trial; >1 launches a TorchTrainer from the trial function.")
    trial_resources: dict[str, float] | None = Field(
        None, description="Resources of each trial process; default {cpu: 1}, or {cpu: 0, memory: 64 MiB} with trial_workers > 1.")
    gpus_per_trial: float = Field(
        0.0, ge=0.0, description="GPUs each trial holds. A fraction packs trials onto one GPU (0.25: four at a "
                                 "time); a multi-worker trial splits it evenly across its workers.")
    coverage_per_class: int = Field(
        10, ge=0, description="Generated samples per class scored by the evaluator each report; 0 skips coverage.")
    campaign: str | None = Field(
        None, description="A configs/tune/*.yaml file whose keys fill this section (keys set here win).")
    search_space: dict[str, SearchDim] = Field(default_factory=dict, description="Dotted key -> dimension.")
    weights: StabilityWeights = Field(default_factory=StabilityWeights)
    warm_start: bool = Field(
        True, description="Trials continue from the train stage's checkpoint for `steps` more steps.")
    handoff: Literal["best_trial", "retrain"] = Field(
        "best_trial", description="Candidate model: the best trial's checkpoint, or a full retrain.")
    seed: int = Field(0, description="Seed of the search algorithm.")

    @field_validator("search_space")
    @classmethod
    def _keys_are_tunable(cls, space: dict[str, SearchDim]) -> dict[str, SearchDim]:
        sections = {"train": TrainConfig, "loss": LossConfig, "model": ModelConfig}
        for key in space:
            section, _, field = key.partition(".")
            if section not in sections or field not in sections[section].model_fields:
                raise ValueError(f"unknown tunable key {key!r}; use train.*, loss.* or model.* fields")
        return space

    @model_validator(mode="after")
    def _gpus_are_shareable(self) -> "TuneConfig":
        share = self.gpus_per_trial / self.trial_workers
        if share > 1 and share != int(share):
            raise ValueError(f"gpus_per_trial: {self.gpus_per_trial} gives each of {self.trial_workers} trial "
                             f"worker(s) {share:g} GPUs; Ray shares only a fraction of one GPU, so give each a "
                             "whole number of GPUs or at most one")
        return self

    @model_validator(mode="after")
    def _scheduler_fits_the_space(self) -> "TuneConfig":
        if self.scheduler == "pbt":
            if self.trial_workers > 1:
                raise ValueError("scheduler: pbt runs one-worker trials; set tune.trial_workers=1 or tune.scheduler=asha")
            if not self.search_space:
                raise ValueError("scheduler: pbt needs tune.search_space dimensions to mutate")
        return self

    @model_validator(mode="after")
    def _warm_start_keeps_architecture(self) -> "TuneConfig":
        if self.warm_start and any(k.startswith("model.") for k in self.search_space):
            raise ValueError("warm_start: trials that resume the trained networks cannot search model.* keys; "
                             "set tune.warm_start=false")
        return self


class PromoteConfig(Section):
    """Model Registry target and gates."""

    model_name: str = Field("ganpipe-generator", min_length=1, description="Registered model name.")
    gates: GatesConfig = Field(default_factory=GatesConfig)


class PipelineConfig(Section):
    """The whole pipeline."""

    name: str = Field("default", description="Pipeline name; names the MLflow parent run.")
    work_dir: str = Field("outputs", description="Where stage outputs are written.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    promote: PromoteConfig = Field(default_factory=PromoteConfig)

    @model_validator(mode="after")
    def _compilable(self) -> "PipelineConfig":
        if problem := compile_conflict(self.train, self.loss):
            raise ValueError(problem)
        if problem := dp_conflict(self.privacy, self.model, self.loss, self.train, self.data.rebalance):
            raise ValueError(problem)
        return self


def apply_override(tree: dict, assignment: str) -> None:
    """Apply `a.b.c=value` (value parsed as YAML) to a nested dict in place."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise UserError(f"bad override {assignment!r}: use --set section.field=value")
    *parents, leaf = key.split(".")
    node = tree
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise UserError(f"bad override {assignment!r}: {p} is not a section")
    node[leaf] = yaml.safe_load(raw)


def load_config(path: str | Path, overrides: list[str] = ()) -> PipelineConfig:
    """Read YAML, apply overrides, validate; every failure is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path} (see configs/ for examples)")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"config file {path} is not valid YAML{where}") from None
    if not isinstance(tree, dict):
        raise UserError(f"config file {path} must be a mapping of sections")
    for assignment in overrides:
        apply_override(tree, assignment)
    if merge_campaign(tree, path.parent):
        for assignment in overrides:  # --set still wins over the campaign file
            apply_override(tree, assignment)
    anchor_data_path(tree)
    try:
        return build(PipelineConfig, tree)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None


def anchor_data_path(tree: dict) -> None:
    """A relative local data.path means relative to where the command was run: make it absolute now, since
    stages run in the work dir (or on another node)."""
    data = tree.get("data")
    if isinstance(data, dict) and isinstance(data.get("path"), str) and "://" not in data["path"]:
        data["path"] = str(Path(data["path"]).expanduser().resolve())


def merge_campaign(tree: dict, config_dir: Path) -> bool:
    """Lay the file named by tune.campaign (relative to the working directory or the config's directory)
    over the tune section: the campaign's keys win over the config file's; returns whether one was merged."""
    tune = tree.get("tune")
    if not isinstance(tune, dict) or not tune.get("campaign"):
        return False
    name = Path(tune["campaign"])
    found = next((p for p in (name, config_dir / name, config_dir.parent / name) if p.is_file()), None)
    if found is None:
        raise UserError(f"tune.campaign: file not found: {name} (see configs/tune/ for campaigns)")
    try:
        campaign = yaml.safe_load(found.read_text()) or {}
    except yaml.YAMLError:
        raise UserError(f"tune.campaign: {found} is not valid YAML") from None
    if not isinstance(campaign, dict):
        raise UserError(f"tune.campaign: {found} must be a mapping of tune.* keys")
    tree["tune"] = {**tune, **campaign, "campaign": str(found)}
    return True


def dump_config(cfg: PipelineConfig) -> str:
    """The resolved config as YAML (written next to every run, printed by --dry-run), credentials in URIs
    masked: give secrets through the environment (AWS_*, MLFLOW_TRACKING_PASSWORD), not in a URI."""
    return redact(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def flat_params(tree: dict, prefix: str = "") -> dict[str, str]:
    """Nested dict -> {'train.lr_g': '0.0002', ...} for MLflow params."""
    out: dict[str, str] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flat_params(v, key + "."))
        else:
            out[key] = redact(str(v))[:500]
    return out
