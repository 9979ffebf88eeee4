"""A Ray Tune trial: the shared worker routine in the trial's own process (one worker), or a TorchTrainer
launched from it (several), whose rank 0 reports through Tune's TuneReportCallback."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from components.config_base import Section
from components.metrics.scoring_config import ScoringSpec
from components.training.checkpoint import CHECKPOINT_FILE
from components.training.ray_train import run_torch_trainer
from components.training.worker import build_worker_state, run_worker
from components.training.worker_config import WorkerConfig


class Campaign(Section):
    """What every trial of one campaign shares."""

    steps: int = Field(ge=1, description="Training steps of each trial (after the warm start).")
    report_every: int = Field(ge=1, description="Steps between a trial's reports.")
    trial_workers: int = Field(1, ge=1, description="Ray Train workers per trial; 1 trains in the trial process.")
    gpus_per_trial: float = Field(0.0, ge=0.0, description="GPUs of each trial, split evenly across its workers.")
    scoring: ScoringSpec = Field(description="How each report is scored.")
    checkpoint_every_report: bool = Field(False, description="PBT: every report carries a checkpoint to clone.")
    warm_start_checkpoint: str | None = Field(None, description="Checkpoint URI every trial starts from.")
    warm_start_step: int = Field(0, ge=0, description="The step that checkpoint ends at.")
    trial_storage: str = Field("", description="Where multi-worker trials keep their Ray Train runs.")
    autoscaling_requests: bool = Field(True, description="Whether multi-worker trials tell an autoscaler.")


class TuneTrialSession:
    """WorkerSession of a one-worker trial: reports to Tune; a checkpoint at the end (the trial's candidate
    model), and at every report when the scheduler clones trials (PBT)."""

    rank, world = 0, 1

    def __init__(self, checkpoint_every_report: bool):
        self.checkpoint_every_report = checkpoint_every_report

    def restore(self, state, loss) -> bool:
        from ray import tune

        from components.training.checkpoint import load_checkpoint, restore_state

        resumed = tune.get_checkpoint()  # Tune restarted this trial, or PBT cloned a better one into it
        if resumed is None:
            return False
        with resumed.as_directory() as d:
            restore_state(state, load_checkpoint(d), loss)
        return True

    def checkpoint_due(self, step: int, last_checkpoint: int, final: bool) -> bool:
        return final or self.checkpoint_every_report

    def annotate(self, state, metrics: dict[str, float], final: bool) -> dict:
        return metrics

    def rank_rngs(self, state) -> None:
        return None  # one rank: its RNG streams are the process's, which the checkpoint holds anyway

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        from ray import tune

        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(metrics, checkpoint=checkpoint)


def trial_config(base: WorkerConfig, trial: dict[str, dict[str, Any]], campaign: Campaign) -> WorkerConfig:
    """The base config with the trial's sampled sections (Tune's nested param dict) and the campaign's
    schedule laid over it; trials log nothing to MLflow themselves."""
    schedule = {"num_workers": campaign.trial_workers, "report_every": campaign.report_every,
                "steps": campaign.warm_start_step + campaign.steps}
    if campaign.gpus_per_trial and campaign.trial_workers > 1:  # each worker holds its share of the GPUs
        threads = trial.get("train", {}).get("threads_per_worker", base.train.threads_per_worker)
        schedule |= {"use_gpu": True, "resources_per_worker": {
            "CPU": threads, "GPU": campaign.gpus_per_trial / campaign.trial_workers}}
    sections = {**trial, "train": {**trial.get("train", {}), **schedule}}
    return base.with_overrides(sections, mlflow=None, scoring=campaign.scoring,
                               init_checkpoint=campaign.warm_start_checkpoint)


def tune_trial(trial: dict, base: WorkerConfig, campaign: Campaign) -> None:
    """One trial of a campaign (the function Tune runs)."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # no per-checkpoint chatter; we print progress
    config = trial_config(base, trial, campaign)
    if campaign.trial_workers > 1:
        _distributed_trial(config, campaign)
        return
    torch.set_num_threads(1)
    state, cfg, loss = build_worker_state(config, rank=0, world=1, device=trial_device())
    run_worker(config, TuneTrialSession(campaign.checkpoint_every_report), state, cfg, loss)


class ControlSession(TuneTrialSession):
    """WorkerSession of the untuned control: keeps its last report and its final checkpoint's bytes, which
    travel back to the tune stage as the task's result (so it needs no shared storage)."""

    def __init__(self):
        super().__init__(checkpoint_every_report=False)
        self.metrics: dict[str, float] = {}
        self.checkpoint: bytes | None = None

    def restore(self, state, loss) -> bool:
        return False  # a restarted control starts again from the campaign's warm start

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        self.metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        if checkpoint_dir:
            self.checkpoint = (Path(checkpoint_dir) / CHECKPOINT_FILE).read_bytes()


def control_trial(base: WorkerConfig, campaign: Campaign) -> tuple[bytes | None, dict[str, float]]:
    """The campaign's untuned control: the base config, none of the searched values, trained and scored on
    the campaign's own schedule (same warm start, same steps) in one process. Returns (checkpoint bytes,
    last report)."""
    config = trial_config(base, {}, campaign.model_copy(update={"trial_workers": 1}))
    torch.set_num_threads(1)
    state, cfg, loss = build_worker_state(config, rank=0, world=1, device=trial_device())
    session = ControlSession()
    run_worker(config, session, state, cfg, loss)
    return session.checkpoint, session.metrics


def trial_device() -> torch.device:
    """The GPU Tune gave this trial (a share of one, with a fractional tune.gpus_per_trial), else the CPU."""
    import ray

    return torch.device("cuda") if ray.get_gpu_ids() and torch.cuda.is_available() else torch.device("cpu")


def _distributed_trial(config: WorkerConfig, campaign: Campaign) -> None:
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    # Ray Train checkpoints go to the campaign's storage (shared when remote), one run per trial.
    result = run_torch_trainer(config, campaign.trial_storage, f"train-{tune.get_context().get_trial_id()}",
                               callbacks=[TuneReportCallback()], autoscaling_requests=campaign.autoscaling_requests)
    if result.error is not None:
        raise RuntimeError(f"trial training failed: {result.error}")
