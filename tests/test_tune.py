"""Campaigns on the smoke budget, for real (Ray Tune, MLflow): known-bad settings lose, an interrupted
campaign resumes without rerunning finished trials, PBT re-applies mutated values, and multi-worker trials
run through a TorchTrainer."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO, smoke_overrides

pytestmark = pytest.mark.slow


def _tune_cli(tmp: Path, *args: str) -> list[str]:
    sets = [x for o in smoke_overrides(tmp) for x in ("--set", o)]
    return [sys.executable, "-m", "pipeline", "tune", "--config", "configs/smoke.yaml", *args, *sets]


def _trial_runs(tracking_uri: str) -> dict[str, list[str]]:
    """Trial child runs by parent (tune stage) run id: their run names."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="attributes.run_name LIKE 'trial-%'")
    by_parent: dict[str, list[str]] = {}
    for r in runs:
        by_parent.setdefault(r.data.tags["mlflow.parentRunId"], []).append(r.info.run_name)
    return by_parent


def _trial_statuses(tracking_uri: str) -> dict[str, str]:
    """Trial run name -> status, across every trial run in the store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    return {r.info.run_name: r.info.status for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()], filter_string="attributes.run_name LIKE 'trial-%'")}


def _result_lines(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _wait_for(condition, proc: subprocess.Popen, log: Path, what: str, seconds: float = 900) -> None:
    """Poll until condition() holds; fail if the process ends first. The limit only stops a hung test: nothing
    here waits for a race to come out one way."""
    deadline = time.monotonic() + seconds
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the campaign ended (exit {proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} after {seconds:.0f} s")
        time.sleep(0.2)


def test_diverging_settings_are_never_handed_on_and_an_interrupted_campaign_resumes(tmp_path):
    # No spectral norm and no R1 anywhere, so "tiny batch" really means "tiny batch without regularisation".
    args = ["--campaign", "configs/tune/known-bad.yaml", "--set", "model.d_norm=none", "--set", "train.steps=100"]
    # Two trials run; the third and fourth wait at a gate this test never opens, so the campaign is mid-way
    # when the SIGINT arrives, however fast the machine (two trials at a time: both held means both ended).
    gate = tmp_path / "gate"
    cli = _tune_cli(tmp_path, *args)
    log = tmp_path / "interrupted.log"  # a file, not a pipe: nobody reads while it runs, and a pipe would fill
    with open(log, "w") as out_file:
        proc = subprocess.Popen([sys.executable, "-m", "tests.tune_gate", str(gate), "2", "--", *cli[3:]],
                                cwd=REPO, stdout=out_file, stderr=subprocess.STDOUT, text=True)
    _wait_for(lambda: len(list(gate.glob("held-*"))) == 2, proc, log, "two trials held at the gate")
    # Live: while the campaign runs, the two ended trials are FINISHED runs and the two held ones RUNNING.
    live = _trial_statuses(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert sorted(live.values()) == ["FINISHED", "FINISHED", "RUNNING", "RUNNING"], live
    proc.send_signal(signal.SIGINT)  # Ctrl+C: Tune saves the experiment state and stops
    proc.wait(timeout=300)
    out = log.read_text()
    assert proc.returncode == 130 and "--resume" in out, out[-3000:]
    assert sorted(_trial_statuses(f"sqlite:///{tmp_path / 'mlflow.db'}").values()) == \
        ["FINISHED", "FINISHED", "KILLED", "KILLED"]
    assert out.count(": started (") == 4 and "best so far: trial" in out
    experiment = next((tmp_path / "outputs" / "ray_results").glob("smoke-tune-*"))
    ended_ids = [(gate / f"slot-{i}").read_text() for i in (0, 1)]
    ended = [next(d for d in experiment.iterdir() if d.is_dir() and trial_id in d.name) for trial_id in ended_ids]
    lines_before = {d: len(_result_lines(d)) for d in ended}
    assert all(lines_before.values()), lines_before

    refused = subprocess.run(_tune_cli(tmp_path, *args), cwd=REPO, capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume" in refused.stderr and "Traceback" not in refused.stderr

    resumed = subprocess.run(_tune_cli(tmp_path, *args, "--resume"), cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming the interrupted campaign" in resumed.stdout
    for trial_dir, count in lines_before.items():  # finished trials were not run again
        assert len(_result_lines(trial_dir)) == count

    table = pd.read_csv(next((tmp_path / "outputs" / "stages" / "tune").glob("*/results.csv")))
    results = table[table["trial"] != "control"]  # the last row is the untuned control's
    assert len(results) == 8 and (table["trial"] == "control").sum() == 1
    # lr_d 5e-2 makes D's loss explode: those trials score inf and stop themselves. Which of the others ASHA
    # stops depends on which reports first (two run at once), so the test asks only what holds either way:
    # the pick ran to the end, with a finite score, and is not a diverging setting.
    full_steps = results["steps"].max()
    exploding = results["train.lr_d"] == 5e-2
    assert (results.loc[exploding, "score"] == math.inf).all(), results
    best = json.loads(next((tmp_path / "outputs" / "stages" / "tune").glob("*/best_config.json")).read_text())
    picked = results[results["trial"] == str(best["trial"])].iloc[0]
    assert not exploding[picked.name] and math.isfinite(picked["score"]) and picked["steps"] == full_steps, results
    # One MLflow child run per trial, all under the resumed tune run: the interrupted attempt's trial runs
    # are adopted, none doubled by the restore.
    runs = _trial_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(runs) == 1 and sorted(next(iter(runs.values()))) == sorted(f"trial-{t}" for t in results["trial"])
    assert set(_trial_statuses(f"sqlite:///{tmp_path / 'mlflow.db'}").values()) == {"FINISHED"}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tags = [r.data.tags for r in client.search_runs([e.experiment_id for e in client.search_experiments()],
                                                    filter_string="attributes.run_name LIKE 'trial-%'")]
    stopped = ((results["steps"] < full_steps) & (results["diverged"] == 0)).sum()
    assert sum(t["stopped_early"] == "true" for t in tags) == stopped


@pytest.fixture(scope="module")
def tune_tmp(smoke_run):
    """The smoke DAG's work dir and tracking: prepare and train are cached there, so campaigns start at tune."""
    return smoke_run["tmp"]


def _run_until_tune(tmp: Path, campaign: str, *sets: str) -> tuple[Path, dict]:
    """The tune stage's output dir and the run summary."""
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline

    cfg = load_config(REPO / "configs" / "smoke.yaml",
                      smoke_overrides(tmp) + [f"tune.campaign=configs/tune/{campaign}.yaml", *sets])
    summary = run_pipeline(cfg, until="tune")
    return Path(summary["stage_dirs"]["tune"]), summary


def _experiment(tmp: Path, stage_dir: Path) -> Path:
    """The Tune experiment of one tune-stage run (named after its fingerprint), among others in tmp."""
    return tmp / "outputs" / "ray_results" / f"smoke-tune-{stage_dir.name[:12]}"


def test_pbt_trials_train_with_their_mutated_values(ray_cluster, tune_tmp):
    # Synchronous PBT: at each interval every live trial has reported, so the worst one must exploit the best.
    out, summary = _run_until_tune(tune_tmp, "pbt", "tune.steps=16", "tune.report_every=4", "tune.pbt_interval=1",
                                   "tune.pbt_synch=true")
    experiment = _experiment(tune_tmp, out)
    trial_dirs = [d for d in experiment.iterdir() if d.is_dir()]
    reports = [line for d in trial_dirs for line in _result_lines(d)]
    assert len(trial_dirs) == 4 and reports
    for r in reports:  # what the optimisers used is what the (possibly mutated) config says
        assert r["lr_g"] == r["config"]["train"]["lr_g"] and r["lr_d"] == r["config"]["train"]["lr_d"], r
    # Each exploit (a pbt_policy line: [..., old step, new step, donor config, mutated config]) must show up
    # as reports of the receiving trial under the mutated config; otherwise the check above proved nothing.
    policies = list(experiment.glob("pbt_policy_*.txt"))
    assert policies, "PBT never perturbed a trial"
    for policy in policies:
        trial_id = policy.stem.removeprefix("pbt_policy_")
        receiver = next(d for d in trial_dirs if trial_id in d.name)
        seen = [r["config"] for r in _result_lines(receiver)]
        assert json.loads(policy.read_text().splitlines()[-1])[-1] in seen  # the latest exploit
    # Exploited trials restart from a donor checkpoint, yet each trial is still exactly one MLflow child run.
    names = _trial_runs(summary["tracking_uri"])[summary["stage_run_ids"]["tune"]]
    assert len(names) == len(set(names)) == len(trial_dirs)


def test_multi_worker_trials_run_a_torch_trainer(ray_cluster, tune_tmp):
    from ray.util.state import list_actors

    def coordinators_ever() -> int:
        return len(list_actors(filters=[("class_name", "=", "_AutoscalingCoordinatorActor")], limit=10_000))

    coordinators_before = coordinators_ever()
    out, _ = _run_until_tune(tune_tmp, "multi-worker", "tune.steps=20", "tune.report_every=10",
                          'tune.search_space={"train.lr_g": {type: grid, values: [0.0002]}}')
    # On the local cluster the driver owns, the trial's Ray Train run made no autoscaling requests.
    assert coordinators_ever() == coordinators_before
    trial_dir = next(d for d in _experiment(tune_tmp, out).iterdir() if d.is_dir())
    last = _result_lines(trial_dir)[-1]
    assert len(last["worker_nodes"]) == 2 and last["ranks_in_sync"] == 1.0
    assert math.isfinite(last["stability_score"]) and "class_kl" in last
    assert (out / "candidate" / "checkpoint.pt").is_file()  # handed off from Ray Train's checkpoint
    assert os.path.getsize(out / "results.csv") > 0


@pytest.fixture(scope="module")
def two_trial_tmp(tmp_path_factory) -> Path:
    """One work dir and store for the failure campaigns: they share the cached prepare and train stages."""
    return tmp_path_factory.mktemp("failing-campaigns")


def _gated_tune(tmp: Path, *options: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """A 2-trial smoke campaign (lr_g grid), no retries and no scheduler (ASHA could stop a trial at the very
    report after which it is set to raise), through tests.tune_gate with `options`."""
    cli = _tune_cli(tmp, "--set", "tune.max_failures=0", "--set", "tune.scheduler=none", "--set",
                    'tune.search_space={"train.lr_g": {type: grid, values: [0.0002, 0.001]}}', *extra)
    gate = tmp / f"gate-{len(list(tmp.glob('gate-*')))}"
    done = subprocess.run([sys.executable, "-m", "tests.tune_gate", str(gate), "99", *options, "--", *cli[3:]],
                          cwd=REPO, capture_output=True, text=True)
    done.gate = gate
    return done


def test_a_trial_that_raises_after_reporting_never_wins(two_trial_tmp):
    tmp = two_trial_tmp
    done = _gated_tune(tmp, "--fail-late", "0")  # the first trial to start raises after its first report
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    failing, survivor = [(done.gate / f"slot-{i}").read_text() for i in (0, 1)]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    trials = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                filter_string="attributes.run_name LIKE 'trial-%'")
    by_id = {t.data.tags["trial_id"]: t for t in trials}
    assert by_id[survivor].info.status == "FINISHED"
    assert by_id[failing].info.status == "FAILED" and "injected failure" in by_id[failing].data.tags["error"]
    stage = next(d for d in (tmp / "outputs" / "stages" / "tune").iterdir() if (d / "_stage.json").exists())
    best = json.loads((stage / "best_config.json").read_text())
    table = pd.read_csv(stage / "results.csv")
    results = table[table["trial"] != "control"]  # the untuned control's row comes last
    winner = results.loc[results["score"] == best["score"]]
    assert len(results) == 2 and (results["error"].fillna("") != "").sum() == 1
    assert (winner["error"].fillna("") == "").all()  # the failed trial had a score, and lost
    assert "FAILED (RuntimeError: injected failure" in done.stdout


def test_a_campaign_whose_every_trial_fails_fails_the_stage_in_one_line(two_trial_tmp):
    tmp_path = two_trial_tmp
    done = _gated_tune(tmp_path, "--fail", "all", extra=("--set", "tune.seed=1"))  # another tune fingerprint
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1].startswith("failed: tune: all 2 trials failed")
    assert "Traceback" not in done.stderr
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    tune_run = next(r for r in runs if r.info.run_name == "tune" and r.data.params.get("tune.seed") == "1")
    assert tune_run.info.status == "FAILED"
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == tune_run.info.run_id]
    assert [t.info.status for t in trials] == ["FAILED"] * 2
    fingerprint = tune_run.data.tags["fingerprint"]
    assert not (tmp_path / "outputs" / "stages" / "tune" / fingerprint[:16] / "_stage.json").exists()
