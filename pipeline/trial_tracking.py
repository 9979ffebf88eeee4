"""A campaign you can watch: each Tune trial is an MLflow run from the moment it starts, its reports stream
into it, and the console gets one line per trial event with the best score so far.

Runs in the Tune driver (the tune stage's process); trials themselves never touch MLflow. Tune pickles its
callbacks with the campaign's state and restores those, not new ones, when a campaign resumes; so the
callback it keeps (`TrialEvents`) holds nothing and hands every event to the tracker of the stage run that
is driving the campaign now (`tracking`).
Statuses: FINISHED (ran to the end, or was stopped early by the scheduler: tag `stopped_early`), FAILED
(raised), KILLED (the campaign was interrupted while it ran).
"""
from __future__ import annotations

import contextlib
import math
import time

from ray.tune import Callback

TRIAL_METRICS = ("stability_score", "d_loss", "g_loss", "r_t", "grad_spike_rate", "d_loss_std", "g_loss_std",
                 "class_kl", "classes_covered", "fcd", "lr_g", "lr_d")


def flat_trial_config(config: dict) -> dict[str, object]:
    """Tune's nested trial config {'train': {'lr_g': ...}} as dotted keys."""
    return {f"{s}.{k}": v for s, vals in config.items() if isinstance(vals, dict) for k, v in vals.items()}


def describe(config: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in flat_trial_config(config).items())


_active: "TrialTracker | None" = None


class TrialEvents(Callback):
    """The stateless Tune callback: forwards trial events to the active TrialTracker, if any."""

    def _forward(self, hook: str, **kwargs) -> None:
        if _active is not None:
            getattr(_active, hook)(**kwargs)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._forward("on_trial_start", trials=trials, trial=trial)

    def on_trial_restore(self, iteration, trials, trial, **info):
        self._forward("on_trial_restore", trials=trials, trial=trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._forward("on_trial_result", trials=trials, trial=trial, result=result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._forward("on_trial_complete", trials=trials, trial=trial)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._forward("on_trial_recover", trials=trials, trial=trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._forward("on_trial_error", trials=trials, trial=trial)


@contextlib.contextmanager
def tracking(tracker: "TrialTracker"):
    """Route trial events to `tracker` while the campaign runs; runs of trials still going when it stops
    (an interrupt, a crash of the driver loop) end KILLED."""
    global _active
    _active = tracker
    try:
        yield tracker
    finally:
        _active = None
        tracker.close_unfinished()


class TrialTracker:
    """One MLflow child run per trial under `parent_run_id`, live."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, campaign: str,
                 reports_per_trial: int, announce=print):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.experiment_id, self.parent, self.campaign = experiment_id, parent_run_id, campaign
        self.full_length, self.announce = reports_per_trial, announce
        self.runs: dict[str, str] = {}  # trial id -> MLflow run id
        self.best: tuple[float, int] | None = None  # (score, trial number) among trials that finished cleanly

    def adopt_existing_runs(self) -> None:
        """A resumed campaign keeps the runs its trials already have (found by the campaign tag)."""
        for run in self.client.search_runs([self.experiment_id], f"tags.campaign = '{self.campaign}'",
                                           max_results=10_000):
            self.runs[run.data.tags["trial_id"]] = run.info.run_id
            self.client.set_tag(run.info.run_id, "mlflow.parentRunId", self.parent)

    def _number(self, trials, trial) -> int:
        return next((i for i, t in enumerate(trials) if t.trial_id == trial.trial_id), len(trials))

    def on_trial_start(self, trials, trial):
        number = self._number(trials, trial)
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=f"trial-{number}", tags={
                "mlflow.parentRunId": self.parent, "campaign": self.campaign, "trial_id": trial.trial_id,
                "trial_number": str(number), "status": "running"})
            run_id = self.runs[trial.trial_id] = run.info.run_id
            self.client.log_batch(run_id, params=_params(trial.config))
            self.announce(f"  tune trial {number}: started ({describe(trial.config)})")
        else:  # restarted after an error, or restored into a resumed campaign
            self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, "status", "running")
            self.announce(f"  tune trial {number}: continued")

    def on_trial_restore(self, trials, trial):
        if trial.trial_id in self.runs:  # PBT cloned another trial into this one: record the new values
            self.client.set_tag(self.runs[trial.trial_id], "pbt.config", describe(trial.config))

    def on_trial_result(self, trials, trial, result):
        from mlflow.entities import Metric

        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        now, step = int(time.time() * 1000), int(result.get("step", result.get("training_iteration", 0)))
        metrics = [Metric(k, float(result[k]), now, step) for k in TRIAL_METRICS
                   if isinstance(result.get(k), (int, float)) and math.isfinite(float(result[k]))]
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)

    def on_trial_complete(self, trials, trial):
        run_id, number = self.runs.get(trial.trial_id), self._number(trials, trial)
        result = trial.last_result or {}
        score = float(result.get("stability_score", math.inf))
        score = score if math.isfinite(score) else math.inf
        diverged = bool(result.get("diverged", 0.0))
        early = int(result.get("training_iteration", 0)) < self.full_length
        status = "diverged" if diverged else "stopped_early" if early else "finished"
        if run_id is not None:
            self.client.set_tag(run_id, "status", status)
            self.client.set_tag(run_id, "stopped_early", str(status == "stopped_early").lower())
            self.client.set_terminated(run_id, "FINISHED")
        if not (diverged or early) and math.isfinite(score) and (self.best is None or score < self.best[0]):
            self.best = (score, number)
        best = f"best so far: trial {self.best[1]} ({self.best[0]:.4g})" if self.best else "no finished trial yet"
        what = {"diverged": "diverged", "stopped_early": "stopped early by the scheduler",
                "finished": "finished"}[status]
        self.announce(f"  tune trial {number}: {what}, score {score:.4g}; {best}")

    def on_trial_recover(self, trials, trial):
        self.announce(f"  tune trial {self._number(trials, trial)}: failed ({_error_line(trial)[:200]}); "
                      "retrying it (tune.max_failures)")

    def on_trial_error(self, trials, trial):
        run_id, number = self.runs.get(trial.trial_id), self._number(trials, trial)
        reason = _error_line(trial)
        if run_id is not None:
            self.client.set_tag(run_id, "status", "error")
            self.client.set_tag(run_id, "error", reason[:5000])
            self.client.set_terminated(run_id, "FAILED")
        where = f"; traceback in {trial.error_file}" if getattr(trial, "error_file", None) else ""
        self.announce(f"  tune trial {number}: FAILED ({reason[:200]}){where}")

    def close_unfinished(self) -> int:
        """Mark KILLED the runs of trials still running (an interrupted campaign); returns how many."""
        killed = 0
        for run_id in self.runs.values():
            if self.client.get_run(run_id).info.status == "RUNNING":
                self.client.set_tag(run_id, "status", "interrupted")
                self.client.set_terminated(run_id, "KILLED")
                killed += 1
        return killed


def _params(config: dict) -> list:
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in flat_trial_config(config).items()]


def _error_line(trial) -> str:
    """The last line of the trial's error (its exception type and message)."""
    text = ""
    path = getattr(trial, "error_file", None) or ""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        text = str(getattr(trial, "error_msg", "") or "")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"
