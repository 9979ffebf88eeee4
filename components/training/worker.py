"""The one worker routine that Ray Train workers and Ray Tune trials share, behind a small session interface.

The routine owns what every worker does: build its state, resume (or warm-start), re-apply the possibly
mutated hyperparameters, run the pure loop, score, report and checkpoint. A session says where reports and
checkpoints go and how often (components.training.ray_train.RayTrainSession,
components.training.trial.TuneTrialSession).
"""
from __future__ import annotations

import tempfile
from typing import Protocol

import torch

from components.data.reader import SplitTensors, load_split
from components.data.shards import read_manifest
from components.losses import GANLoss
from components.metrics.trial_scoring import TrialScorer
from components.storage import localize
from components.training.checkpoint import load_checkpoint, restore_state, save_checkpoint
from components.training.loop import train_steps
from components.training.state import apply_hyperparameters, make_state
from components.training.worker_config import WorkerConfig


class WorkerSession(Protocol):
    """Where one worker's reports and checkpoints go."""

    rank: int
    world: int

    def restore(self, state, loss) -> bool:
        """Restore this run's (or trial's) latest checkpoint into state and loss; False if there is none."""

    def checkpoint_due(self, step: int, last_checkpoint: int, final: bool) -> bool:
        """Whether this report carries a checkpoint."""

    def annotate(self, state, metrics: dict[str, float], final: bool) -> dict:
        """The report's metrics with what the session adds (progress lines and logging happen here too)."""

    def rank_rngs(self, state) -> list | None:
        """Every rank's RNG streams for the checkpoint (all ranks call this when one is due), or None."""

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        """Hand one report, and the checkpoint saved in checkpoint_dir if any, to Ray."""


def build_worker_state(config: WorkerConfig, rank: int, world: int, wrap=lambda m: m,
                       device=torch.device("cpu"), data: SplitTensors | None = None):
    """(GanState, TrainConfig, GANLoss) for one rank (data: this rank's shard; default the whole train split)."""
    data_dir = localize(config.data_uri)  # a node-local copy when the data sit in remote storage
    manifest = read_manifest(data_dir)
    data = data if data is not None else load_split(data_dir, "train")
    weights = manifest["train_statistics"]["weights"][config.weight_scheme]
    state = make_state(config.model, config.train, data, manifest["num_classes"], config.rebalance, weights, rank,
                       world, wrap=wrap, device=device, shared_data=config.reader != "ray_data",
                       privacy=config.privacy)
    tail_weights = manifest["train_statistics"]["weights"]["effective"]  # gSR's class weights, as the paper's
    return state, config.train, GANLoss(config.loss, tail_weights, private=config.privacy.enabled)


def run_worker(config: WorkerConfig, session: WorkerSession, state, cfg, loss) -> None:
    """Resume or warm-start, re-apply hyperparameters, then train to cfg.steps, reporting every interval."""
    if not session.restore(state, loss) and config.init_checkpoint:
        restore_state(state, load_checkpoint(localize(config.init_checkpoint)), loss)
    apply_hyperparameters(state, cfg)  # the run's (possibly mutated) values win over the saved ones
    scorer = None
    if config.scoring is not None and session.rank == 0:  # rank 0's metrics are the ones Tune sees
        _, c, h, _ = state.sampler.data.images_u8.shape
        scorer = TrialScorer(config.scoring, c, h, state.num_classes)
    last_checkpoint = [state.step]

    def on_report(st, metrics: dict[str, float]) -> None:
        final = st.step >= cfg.steps or st.diverged
        due = session.checkpoint_due(st.step, last_checkpoint[0], final)
        if scorer is not None:
            metrics = {**metrics, **scorer(st)}
        metrics = session.annotate(st, metrics, final)
        rank_rngs = session.rank_rngs(st) if due else None
        with tempfile.TemporaryDirectory() as tmp:
            saved = None
            if due and session.rank == 0:
                save_checkpoint(st, tmp, config.resolved_config, loss, rank_rngs)
                saved = tmp
            if due:
                last_checkpoint[0] = st.step
            session.report(metrics, saved)

    train_steps(state, loss, cfg, cfg.steps, on_report)
