"""DP-SGD on the discriminator: per-sample clipping, the accountant against Opacus's own analysis, resumed
accounting, the settings that would void the guarantee, and (slow) a private smoke DAG gated on epsilon."""
import json
import math
import tempfile
from pathlib import Path

import pytest
import torch

from components.errors import UserError
from components.losses import Batch
from components.privacy.accountant import PrivacyAccountant, noise_for_target, privacy_summary
from components.privacy.dp_sgd import clip_and_sum
from components.promotion import check_gates
from components.promotion_config import GatesConfig
from pipeline.config import load_config
from tests.conftest import REPO

# What a private run must set on top of configs/default.yaml (configs/private.yaml carries the same).
PRIVATE = ["privacy.enabled=true", "train.num_workers=1", "data.rebalance=none", "model.d_norm=none",
           "loss.r1_gamma=0", "loss.lecam_lambda=0", "loss.ada_target=null", "loss.lambda_rec=0", "loss.lambda_kl=0"]
TINY = ["model.g_base_channels=8", "model.d_base_channels=8", "model.z_dim=16", "train.report_every=5"]


def test_clipping_bounds_each_examples_gradient_norm():
    # Three rows of a two-tensor "parameter set": norms 5, 0.5 and 13 against a bound of 1.
    a = torch.tensor([[3.0, 4.0], [0.3, 0.4], [5.0, 0.0]])
    b = torch.tensor([[0.0], [0.0], [12.0]])
    (sum_a, sum_b), norms = clip_and_sum([a, b], bound=1.0)
    assert torch.allclose(norms, torch.tensor([5.0, 0.5, 13.0]))
    # Each row contributes at most the bound: rows over it are scaled to norm 1, the row under it is kept.
    expected_a = a[0] / 5 + a[1] + a[2] / 13
    expected_b = b[0] / 5 + b[1] + b[2] / 13
    assert torch.allclose(sum_a, expected_a, atol=1e-6) and torch.allclose(sum_b, expected_b, atol=1e-6)
    for row in range(3):
        (ra, rb), _ = clip_and_sum([a[row:row + 1], b[row:row + 1]], bound=1.0)
        assert torch.sqrt(ra.pow(2).sum() + rb.pow(2).sum()) <= 1.0 + 1e-5


@pytest.fixture(scope="module")
def private_worker(tmp_path_factory):
    """A worker config for a tiny private run on the bundled long-tailed digits."""
    from components.data.prepare import prepare_dataset
    from pipeline.workers import build_worker_config

    cfg = load_config(REPO / "configs" / "default.yaml", [*PRIVATE, *TINY, "privacy.noise_multiplier=1.1",
                                                          "train.steps=20"])
    data = tmp_path_factory.mktemp("dp") / "data"
    prepare_dataset(cfg.data, data)
    return build_worker_config(cfg, data)


def test_without_clipping_or_noise_the_private_gradient_is_the_ordinary_one(private_worker):
    from components.training.loop import next_batch
    from components.training.worker import build_worker_state

    # Noise std is sigma * C: 1e-12 * 1e4, far below the gradients; no row comes near the bound.
    config = private_worker.with_overrides({"privacy": {"noise_multiplier": 1e-12, "max_grad_norm": 1e4}})
    torch.manual_seed(0)
    state, _, loss = build_worker_state(config, rank=0, world=1)
    batch = next_batch(state)
    b = state.dp.expected_batch
    batch = Batch(batch.x[:b], batch.y[:b], batch.w[:b], batch.z[:b], batch.y_fake[:b], batch.eps[:b])
    assert len(batch.x) == b  # as many real rows as fake ones and as the expected batch: the two must agree
    d_loss, _ = loss.d_loss(state.G, state.D, batch)
    d_loss.backward()
    plain = [p.grad.clone() for p in state.D.parameters()]  # autograd's gradient of the loss itself
    scale = loss.d_row_denominators(batch)
    assert torch.equal(scale, torch.full((2 * b,), float(b)))  # unit weights: b real rows, b fake ones
    state.dp.privatise(state.D, scale)
    for p, g in zip(state.D.parameters(), plain):
        assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-6)


def test_the_accountant_matches_opacus_on_a_known_case(private_worker):
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    from components.training.loop import train_steps
    from components.training.worker import build_worker_state

    # The textbook case (Abadi et al. 2016: MNIST, lot 256 of 60,000, sigma 1.1, 60 epochs) from Opacus's analysis.
    q, sigma, steps, delta = 256 / 60000, 1.1, 60 * 60000 // 256, 1e-5
    alphas = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    reference, _ = get_privacy_spent(orders=alphas, rdp=compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=alphas),
                                     delta=delta)
    ours = PrivacyAccountant()
    for _ in range(steps):
        ours.step(sigma, q)
    assert ours.epsilon(delta) == pytest.approx(reference, rel=1e-6) and 1.0 < reference < 3.0
    # A run's epsilon is that of the steps it took at the rate its Poisson sampler draws with (batch / N).
    state, cfg, loss = build_worker_state(private_worker, rank=0, world=1)
    train_steps(state, loss, cfg, cfg.steps)
    n = len(state.sampler.data.labels)
    assert state.dp.sample_rate == pytest.approx(cfg.batch_size / n)
    run_rdp = compute_rdp(q=cfg.batch_size / n, noise_multiplier=1.1, steps=cfg.steps, orders=alphas)
    assert state.dp.epsilon() == pytest.approx(get_privacy_spent(orders=alphas, rdp=run_rdp, delta=1 / n)[0], rel=1e-6)
    # A target epsilon gives the noise that reaches it, and no less.
    sigma_8 = noise_for_target(8.0, 1e-5, 0.05, 500)
    at = PrivacyAccountant([(sigma_8, 0.05, 500)])
    assert 7.5 < at.epsilon(1e-5) <= 8.0
    sizes = [len(state.sampler.next_batch()[0]) for _ in range(400)]
    assert abs(sum(sizes) / len(sizes) - cfg.batch_size) < 0.1 * cfg.batch_size  # Poisson: about the batch


def test_a_resumed_private_run_reports_the_epsilon_of_an_uninterrupted_one(private_worker):
    from components.training.checkpoint import load_checkpoint, restore_state, save_checkpoint
    from components.training.loop import train_steps
    from components.training.worker import build_worker_state

    config = private_worker.with_overrides({"privacy": {"noise_multiplier": None, "target_epsilon": 8.0}})
    whole, cfg, loss = build_worker_state(config, rank=0, world=1)
    train_steps(whole, loss, cfg, cfg.steps)
    first, _, loss1 = build_worker_state(config, rank=0, world=1)
    train_steps(first, loss1, cfg, cfg.steps // 2)
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(first, d, config.resolved_config, loss1)
        ckpt = load_checkpoint(d)
    resumed, _, loss2 = build_worker_state(config, rank=0, world=1)
    restore_state(resumed, ckpt, loss2)
    train_steps(resumed, loss2, cfg, cfg.steps)
    assert resumed.dp.epsilon() == whole.dp.epsilon() and 7.0 < whole.dp.epsilon() <= 8.0
    assert privacy_summary(ckpt)["epsilon"] < whole.dp.epsilon()  # the half-way checkpoint counted half the steps
    for a, b in zip(whole.D.state_dict().values(), resumed.D.state_dict().values()):
        assert torch.equal(a, b)  # noise and Poisson streams resumed too


def test_a_checkpoint_trained_without_privacy_cannot_start_a_private_run(private_worker):
    from components.training.checkpoint import load_checkpoint, restore_state, save_checkpoint
    from components.training.loop import train_steps
    from components.training.worker import build_worker_state

    plain = private_worker.with_overrides({"privacy": {"enabled": False}})
    state, cfg, loss = build_worker_state(plain, rank=0, world=1)
    train_steps(state, loss, cfg, 5)
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(state, d, plain.resolved_config, loss)
        ckpt = load_checkpoint(d)
    private, _, loss2 = build_worker_state(private_worker, rank=0, world=1)
    with pytest.raises(UserError, match="trained without DP-SGD"):
        restore_state(private, ckpt, loss2)


@pytest.mark.parametrize("setting, culprit", [
    ("train.num_workers=2", "train.num_workers=2"),
    ("data.rebalance=resample", "data.rebalance=resample"),
    ("model.d_norm=spectral", "model.d_norm=spectral"),
    ("model.d_norm=batch", "model.d_norm=batch"),
    ("loss.r1_gamma=1", "loss.r1_gamma"),
    ("loss.lecam_lambda=0.1", "loss.lecam_lambda"),
    ("loss.ada_target=0.6", "loss.ada_target"),
    ("loss.lambda_rec=1", "loss.lambda_rec"),
    ("loss.objective=wgan_gp", "gp_lambda"),
    ("train.precision=bf16", "train.precision=bf16"),
    ("privacy.target_epsilon=4", "exactly one of"),
])
def test_settings_that_would_void_the_guarantee_fail_in_one_line(setting, culprit):
    with pytest.raises(UserError) as err:
        load_config(REPO / "configs" / "default.yaml", [*PRIVATE, "privacy.noise_multiplier=1.0", setting])
    message = str(err.value)
    assert culprit in message and "\n" not in message


def test_the_shipped_private_config_loads_and_the_cli_refuses_a_bad_one_with_exit_2(tmp_path):
    import subprocess
    import sys

    cfg = load_config(REPO / "configs" / "private.yaml")
    assert cfg.privacy.enabled and cfg.promote.gates.max_epsilon is not None
    bad = subprocess.run([sys.executable, "-m", "pipeline", "run", "--config", "configs/private.yaml", "--set",
                          "model.d_norm=spectral", "--set", f"work_dir={tmp_path}"], cwd=REPO, capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "model.d_norm=spectral" in bad.stderr and "Traceback" not in bad.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_the_epsilon_gate_passes_a_private_version_and_fails_one_without_an_epsilon():
    private = {"epsilon": 3.2, "diverged": 0.0}
    gates = GatesConfig(max_fcd_ratio=None, max_class_kl=None, min_tail_recall=None, max_copy_share=None,
                        max_epsilon=4.0)
    assert all(r["passed"] for r in check_gates(private, gates, None))
    row = next(r for r in check_gates({"diverged": 0.0}, gates, None) if r["gate"] == "max_epsilon")
    assert not row["passed"] and math.isnan(row["value"])
    assert not next(r for r in check_gates({**private, "epsilon": 9.0}, gates, None) if r["gate"] == "max_epsilon")["passed"]


@pytest.mark.slow
def test_a_private_smoke_dag_logs_epsilon_and_gates_on_it(ray_cluster, tmp_path):
    from mlflow.tracking import MlflowClient

    from pipeline.runner import run_pipeline
    from tests.conftest import smoke_overrides

    sets = [*smoke_overrides(tmp_path), *PRIVATE, "privacy.target_epsilon=10", "promote.gates.max_epsilon=10",
            "tune.control=false"]
    cfg = load_config(REPO / "configs" / "smoke.yaml", sets)
    summary = run_pipeline(cfg)
    evaluation = json.loads((Path(summary["stage_uris"]["evaluate"]) / "evaluation.json").read_text())
    # Train (10 % of the budget per report) and the tune trials' extra steps both count.
    assert 0 < evaluation["epsilon"] <= 10.0 * 1.5 and evaluation["delta"] > 0
    client = MlflowClient(summary["tracking_uri"])
    train = client.get_run(summary["stage_run_ids"]["train"])
    history = [m.value for m in client.get_metric_history(train.info.run_id, "epsilon")]
    assert history == sorted(history) and history[-1] == pytest.approx(10.0, rel=0.05)  # grows to the target
    version = client.get_model_version(summary["model_name"], summary["model_version"])
    assert float(version.tags["eval.epsilon"]) == pytest.approx(evaluation["epsilon"])
    promotion = json.loads((Path(summary["stage_uris"]["promote"]) / "promotion.json").read_text())
    gate = next(g for g in promotion["gates"] if g["gate"] == "max_epsilon")
    assert gate["value"] == pytest.approx(evaluation["epsilon"]) and gate["passed"] == (evaluation["epsilon"] <= 10)
    assert "epsilon" in open(summary["report"]).read()


def test_a_private_runs_progress_line_shows_the_epsilon_spent():
    from components.training.ray_train import progress_line

    m = {"d_loss": 1.0, "g_loss": 1.0, "rec_loss": 0.0, "d_real": 0.5, "d_fake": 0.5, "images_per_s": 100.0}
    assert "epsilon" not in progress_line("train", 10, 100, 64, m)
    assert "epsilon 3.20" in progress_line("train", 10, 100, 64, {**m, "epsilon": 3.2})
