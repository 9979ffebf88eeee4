"""Campaign configuration without running a campaign: files, validation, search and scheduler wiring."""
import math

import numpy as np
import pytest
import torch
import yaml

from components.errors import UserError
from components.metrics.trial_scoring import TrialScorer
from pipeline.config import load_config
from pipeline.stages import tune as tune_stage
from tests.conftest import REPO

SMOKE = REPO / "configs" / "smoke.yaml"
CAMPAIGNS = sorted((REPO / "configs" / "tune").glob("*.yaml"))


@pytest.mark.parametrize("campaign", CAMPAIGNS, ids=lambda p: p.stem)
def test_every_campaign_file_loads_and_wins_over_the_config_file(campaign):
    cfg = load_config(SMOKE, [f"tune.campaign={campaign}", "tune.steps=7"])
    assert cfg.tune.steps == 7  # --set still wins over the campaign
    assert set(cfg.tune.search_space) == set(yaml.safe_load(campaign.read_text())["search_space"])
    assert tune_stage.expected_trials(cfg.tune) >= 1


def test_missing_campaign_file_is_one_line(tmp_path):
    with pytest.raises(UserError, match="tune.campaign: file not found: nope.yaml"):
        load_config(SMOKE, ["tune.campaign=nope.yaml"])


@pytest.mark.parametrize("sets, message", [
    (["tune.scheduler=pbt", "tune.trial_workers=2"], "scheduler: pbt runs one-worker trials"),
    (["tune.scheduler=pbt", "tune.search_space={}"], "pbt needs tune.search_space"),
    (["tune.search_alg=tpe"], "tune.search_alg"),
])
def test_bad_campaign_settings_name_the_field(sets, message):
    with pytest.raises(UserError, match=message):
        load_config(SMOKE, sets)


def test_expected_trials_and_resources():
    cfg = load_config(SMOKE, ["tune.campaign=configs/tune/known-bad.yaml"])
    assert tune_stage.expected_trials(cfg.tune) == 8
    assert tune_stage.trial_resources(cfg.tune) == {"cpu": 1}
    multi = load_config(SMOKE, ["tune.campaign=configs/tune/multi-worker.yaml"]).tune
    assert tune_stage.trial_resources(multi)["cpu"] == 0
    custom = load_config(SMOKE, ["tune.trial_resources={CPU: 2}"]).tune
    assert tune_stage.trial_resources(custom) == {"cpu": 2}


def test_gpus_per_trial_packs_one_worker_trials_and_splits_across_a_trials_workers(tmp_path):
    from components.metrics.scoring_config import ScoringSpec
    from components.training.trial import Campaign, trial_config
    from pipeline.workers import build_worker_config

    packed = load_config(SMOKE, ["tune.gpus_per_trial=0.25"]).tune
    assert tune_stage.trial_resources(packed) == {"cpu": 1, "gpu": 0.25}  # four trials at a time on one GPU
    cfg = load_config(SMOKE, ["tune.trial_workers=2", "tune.gpus_per_trial=1"])
    assert tune_stage.trial_resources(cfg.tune) == {"cpu": 0, "memory": 64 * 2**20}  # its workers hold them
    campaign = Campaign(steps=10, report_every=5, trial_workers=2, gpus_per_trial=1,
                        scoring=ScoringSpec(window=5, divergence_bound=1e4))
    train = trial_config(build_worker_config(cfg, tmp_path), {"train": {"lr_g": 1e-3}}, campaign).train
    assert train.use_gpu and train.num_workers == 2 and train.resources_per_worker == {"CPU": 1, "GPU": 0.5}
    cpu_only = Campaign(steps=10, report_every=5, trial_workers=2, scoring=ScoringSpec(window=5,
                                                                                      divergence_bound=1e4))
    assert not trial_config(build_worker_config(cfg, tmp_path), {}, cpu_only).train.use_gpu
    with pytest.raises(UserError, match="gpus_per_trial: 1.5"):
        load_config(SMOKE, ["tune.gpus_per_trial=1.5"])
    assert load_config(SMOKE, ["tune.trial_workers=2", "tune.gpus_per_trial=4"]).tune.gpus_per_trial == 4


def test_pbt_mutations_and_optuna_space():
    from ray import tune

    tc = load_config(SMOKE, ["tune.campaign=configs/tune/pbt.yaml"]).tune
    mutations = tune_stage.to_param_space(tc.search_space, pbt=True)
    assert set(mutations) == {"train", "loss"} and set(mutations["train"]) == {"lr_g", "lr_d"}
    assert isinstance(mutations["loss"]["r1_gamma"], tune.search.sample.Float)
    tc = load_config(SMOKE, ["tune.search_alg=optuna"]).tune  # smoke's grid dimensions become choices
    space = tune_stage.param_space(tc)
    assert isinstance(space["train"]["lr_g"], tune.search.sample.Categorical)
    alg = tune_stage.build_search_alg(tc)
    assert type(alg).__name__ == "ConcurrencyLimiter"


def test_optuna_missing_is_a_user_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_optuna(name, *args, **kwargs):
        if name == "optuna":
            raise ImportError("no optuna")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_optuna)
    tc = load_config(SMOKE, ["tune.search_alg=optuna"]).tune
    with pytest.raises(UserError, match=r"pip install -e '.\[optuna\]'"):
        tune_stage.build_search_alg(tc)


class _State:
    def __init__(self, G, trace, diverged=False):
        from types import SimpleNamespace

        from components.data.reader import SplitTensors

        self.G_ema, self.trace, self.diverged = G, trace, diverged
        images = torch.randint(0, 256, (40, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        self.sampler = SimpleNamespace(data=SplitTensors(images, torch.arange(40) % 10))


def test_trial_scorer_adds_mode_coverage_and_is_inf_on_divergence(tmp_path):
    from components.metrics.classifier import EvaluatorCNN
    from components.metrics.scoring_config import ScoringSpec
    from components.models import Generator

    torch.manual_seed(0)
    clf = EvaluatorCNN(1, 32, 10)
    torch.save(clf.state_dict(), tmp_path / "clf.pt")
    np.save(tmp_path / "real.npy", np.random.default_rng(0).normal(size=(50, 128)))
    spec = ScoringSpec.model_validate({"window": 5, "divergence_bound": 1e4, "per_class": 4, "evaluator": str(tmp_path / "clf.pt"),
            "real_features": str(tmp_path / "real.npy"),
            "weights": {"oscillation": 1, "balance": 1, "grad_spikes": 1, "r_target": 0.6, "class_kl": 1,
                        "coverage": 1, "fcd": 1, "collapse": 1}})
    trace = {k: [0.5] * 10 for k in ("d_loss", "g_loss", "grad_norm_d", "grad_norm_g", "d_sign_real")}
    scores = TrialScorer(spec, 1, 32, 10)(_State(Generator(1, 32, 10, base=4, z_dim=8).eval(), trace))
    assert {"class_kl", "classes_covered", "uncovered_share", "fcd", "collapse", "diversity_pixel_mean"} <= set(scores)
    assert 0.0 <= scores["collapse"] <= 1.0 and scores["diversity_pixel_mean"] > 0
    expected = (0.0 + abs(0.5 - 0.6) + 0.0 + scores["class_kl"] + scores["uncovered_share"] + scores["fcd"] / 100
                + scores["collapse"])
    assert scores["stability_score"] == pytest.approx(expected)
    trace["d_loss"][-1] = math.nan
    assert TrialScorer(spec, 1, 32, 10)(_State(None, trace, diverged=True))["stability_score"] == math.inf


def _row(trial: int, score: float, error=None, checkpoint="ckpt", completed=True) -> dict:
    return {"trial": trial, "score": score, "error": error, "checkpoint": checkpoint, "config": {},
            "completed": completed}


def test_a_trial_stopped_early_keeps_its_checkpoint_but_never_wins():
    from pipeline.stages.tune import pick_best

    # ASHA judged trial 0 at an early rung: its score there is not comparable with finished trials' scores.
    rows = [_row(0, 0.1, completed=False), _row(1, 0.9), _row(2, 0.5)]
    assert pick_best(rows)["trial"] == 2


def test_asha_takes_its_grace_and_reduction_factor_from_the_config():
    cfg = load_config(SMOKE, ["tune.steps=120", "tune.report_every=10", "tune.asha_grace=2",
                              "tune.asha_reduction_factor=3"]).tune
    asha = tune_stage.build_scheduler(cfg)
    assert (asha._max_t, asha._reduction_factor) == (12, 3)
    # The first rung at the grace (2 reports), then 2 * 3^k below 12: a third of the trials at each go on.
    assert [milestone for milestone, _ in asha._brackets[0]._rungs] == [6, 2]


def test_a_trial_that_errored_never_wins_even_with_the_best_score_and_a_checkpoint():
    from pipeline.stages.tune import pick_best

    rows = [_row(0, 0.1, error=RuntimeError("crashed after its report")), _row(1, 0.9), _row(2, 0.5, checkpoint=None)]
    assert pick_best(rows)["trial"] == 1
    assert pick_best([rows[0], rows[2]])["trial"] == 2  # no finished healthy trial: the best healthy one


def test_a_campaign_whose_every_trial_errored_has_no_winner():
    from components.errors import RunFailed
    from pipeline.stages.tune import pick_best

    rows = [_row(i, 0.1 * i, error=RuntimeError(f"boom {i}\nValueError: bad {i}")) for i in range(3)]
    with pytest.raises(RunFailed, match=r"all 3 trials failed.*ValueError: bad 0"):
        pick_best(rows)
