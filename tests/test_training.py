"""The pure training loop: golden trajectory, bit-identical resume, safe checkpoints, divergence."""
import json
import math
import pickle

import pytest
import torch

from components.errors import UserError
from components.training.checkpoint import load_checkpoint, restore_state, save_checkpoint
from components.training.loop import train_steps
from tests.golden.regenerate import GOLDEN, KEYS, trajectory
from tests.helpers import fresh_state, smoke_loop_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("golden") / "data"


# Different CPU models and math-library kernels round differently: another machine of this kind was seen
# 5.1e-6 away from the golden file. Bit-exactness is checked only between runs on one machine (the resume
# tests below); the golden file is matched to a tolerance 20x that drift, which a real change still breaks.
GOLDEN_RTOL, GOLDEN_ATOL = 1e-4, 1e-5


def assert_matches_golden(got: dict[str, list[float]], golden: dict[str, list[float]]) -> None:
    for key in KEYS:
        torch.testing.assert_close(torch.tensor(got[key]), torch.tensor(golden[key]), rtol=GOLDEN_RTOL,
                                   atol=GOLDEN_ATOL, msg=lambda m, key=key: f"{key}: {m}")


def test_smoke_config_reproduces_golden_trajectory(data_dir):
    golden = json.loads(GOLDEN.read_text())
    assert_matches_golden(trajectory(data_dir, steps=len(golden["d_loss"])), golden)


def test_a_one_line_loss_change_breaks_the_golden_trajectory(data_dir, monkeypatch):
    """The tolerance is no blanket: G's non-saturating target moved from 1.0 to 0.99 must fail the match."""
    import torch.nn.functional as F

    from components import losses

    def g_adversarial_changed(objective, fake_logits):
        return F.binary_cross_entropy_with_logits(fake_logits, torch.full_like(fake_logits, 0.99), reduction="none")

    monkeypatch.setattr(losses, "g_adversarial", g_adversarial_changed)
    golden = json.loads(GOLDEN.read_text())
    with pytest.raises(AssertionError, match="Tensor-likes are not close"):
        assert_matches_golden(trajectory(data_dir, steps=len(golden["d_loss"])), golden)


def test_resume_is_bit_identical(data_dir, tmp_path):
    config = smoke_loop_config(data_dir)
    straight, cfg, loss = fresh_state(config)
    train_steps(straight, loss, cfg, 12)

    first, cfg, loss = fresh_state(config)
    train_steps(first, loss, cfg, 6)
    save_checkpoint(first, tmp_path, config.resolved_config)
    resumed, cfg, loss = fresh_state(config)  # a fresh process would rebuild everything like this
    torch.manual_seed(999)  # scramble global RNG: the checkpoint must restore it
    restore_state(resumed, load_checkpoint(tmp_path))
    train_steps(resumed, loss, cfg, 12)

    assert resumed.step == straight.step == 12
    for a, b in zip(straight.G.parameters(), resumed.G.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(straight.D.parameters(), resumed.D.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(straight.G_ema.state_dict().values(), resumed.G_ema.state_dict().values()):
        assert torch.equal(a, b)
    assert straight.trace["d_loss"] == resumed.trace["d_loss"]


class _Exploit:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_malicious_checkpoint_is_refused(tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    with open(path, "wb") as f:
        pickle.dump({"G": _Exploit()}, f)
    with pytest.raises(UserError, match="refusing checkpoint"):
        load_checkpoint(path)
    assert "this must never run" not in capsys.readouterr().out


def test_truncated_checkpoint_is_refused(data_dir, tmp_path):
    config = smoke_loop_config(data_dir)
    state, _, _ = fresh_state(config)
    path = save_checkpoint(state, tmp_path, config.resolved_config)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match="refusing checkpoint"):
        load_checkpoint(path)


def test_divergence_stops_the_run(data_dir):
    state, cfg, loss = fresh_state(smoke_loop_config(data_dir, lr_d=1e6, lr_g=1e6, divergence_bound=50.0))
    reports = []
    train_steps(state, loss, cfg, 200, on_report=lambda s, m: reports.append(m))
    assert state.diverged and state.step < 200
    assert reports[-1]["diverged"] == 1.0


def test_reports_carry_the_documented_metrics(data_dir):
    state, cfg, loss = fresh_state(smoke_loop_config(data_dir))
    reports = []
    train_steps(state, loss, cfg, 10, on_report=lambda s, m: reports.append(m))
    needed = {"d_loss", "g_loss", "rec_loss", "d_real", "d_fake", "d_acc_real", "d_acc_fake", "grad_norm_d",
              "grad_norm_g", "lr_g", "lr_d", "images_per_s"}
    assert needed <= set(reports[-1]) and all(math.isfinite(reports[-1][k]) for k in needed)


def test_restored_optimisers_take_the_new_hyperparameters(data_dir, tmp_path):
    # Ray's PBT-DCGAN example restores the optimiser state and silently keeps the old lr; we re-apply.
    from components.training.state import apply_hyperparameters

    config = smoke_loop_config(data_dir, lr_g=2e-4, lr_d=2e-4)
    state, _, _ = fresh_state(config)
    save_checkpoint(state, tmp_path, config.resolved_config)
    mutated = smoke_loop_config(data_dir, lr_g=5e-3, lr_d=1e-5, weight_decay=0.01)
    resumed, cfg, _ = fresh_state(mutated)
    restore_state(resumed, load_checkpoint(tmp_path))
    assert resumed.opt_g.param_groups[0]["lr"] == 2e-4  # what the saved state says
    apply_hyperparameters(resumed, cfg)
    assert resumed.opt_g.param_groups[0]["lr"] == 5e-3 and resumed.opt_d.param_groups[0]["lr"] == 1e-5
    assert resumed.opt_g.param_groups[0]["weight_decay"] == 0.01


REGULARISED = {"r1_gamma": 1.0, "r1_every": 2, "lecam_lambda": 0.1, "instance_noise": 0.1,
               "diffaugment": "[translation,cutout,color]"}


@pytest.mark.parametrize("loss, model, train", [
    (REGULARISED, {"d_conditioning": "auxiliary"}, {}),
    ({"objective": "wgan_gp"}, {"d_norm": "none"}, {"d_steps_per_g": 2}),
    ({}, {}, {"precision": "fp16", "channels_last": True}),
    ({"diffaugment": "[translation,color]", "ada_target": -0.5, "ada_kimg": 0.1, "ada_interval": 2}, {}, {}),
], ids=["regularised-acgan", "wgan-gp", "fp16-channels-last", "adaptive-augmentation"])
def test_regularised_runs_resume_bit_identically(data_dir, tmp_path, loss, model, train):
    """Lecam anchors, the GradScaler and the global RNG (augmentation, noise, GP alphas) all come back."""
    config = smoke_loop_config(data_dir, loss=loss, model=model, **train)
    straight, cfg, straight_loss = fresh_state(config)
    train_steps(straight, straight_loss, cfg, 6)

    first, cfg, first_loss = fresh_state(config)
    train_steps(first, first_loss, cfg, 3)
    save_checkpoint(first, tmp_path, config.resolved_config, first_loss)
    resumed, cfg, resumed_loss = fresh_state(config)
    torch.manual_seed(999)
    restore_state(resumed, load_checkpoint(tmp_path), resumed_loss)
    train_steps(resumed, resumed_loss, cfg, 6)

    assert all(math.isfinite(v) for v in straight.trace["d_loss"] + straight.trace["g_loss"])
    for a, b in zip(straight.D.parameters(), resumed.D.parameters()):
        assert torch.equal(a, b)
    assert straight.trace["g_loss"] == resumed.trace["g_loss"]
    assert resumed_loss.anchors == straight_loss.anchors
    assert resumed.trace.get("ada_p") == straight.trace.get("ada_p")
    if straight.ada_p is not None:  # ADA's p and its running sum came back too, and p moved
        assert torch.equal(resumed.ada_p, straight.ada_p) and torch.equal(resumed.ada_sign_sum, straight.ada_sign_sum)
        assert 0 < float(straight.ada_p) <= 1
    if cfg.precision == "fp16":
        assert straight.scaler.get_scale() == resumed.scaler.get_scale()


def test_bf16_autocast_trains_on_cpu(data_dir):
    state, cfg, loss = fresh_state(smoke_loop_config(data_dir, precision="bf16", channels_last=True))
    train_steps(state, loss, cfg, 3)
    assert all(math.isfinite(v) for v in state.trace["d_loss"])
    assert next(state.G.parameters()).dtype == torch.float32  # autocast: master weights stay fp32


def test_reading_statistics_back_once_per_report_changes_only_when_the_host_waits(data_dir):
    """sync=report (the GPU default) keeps a report's statistics on the device and reads them in one transfer:
    the trace and the weights are those of per-step reads, bit for bit."""
    per_step, cfg, loss = fresh_state(smoke_loop_config(data_dir, sync="step"))
    train_steps(per_step, loss, cfg, 6)
    per_report, cfg, loss = fresh_state(smoke_loop_config(data_dir, sync="report", report_every=4))
    reports = []
    train_steps(per_report, loss, cfg, 6, on_report=lambda s, m: reports.append(m["step"]))
    assert reports == [4, 6]
    assert {k: v for k, v in per_step.trace.items() if k != "step_time_s"} == \
        {k: v for k, v in per_report.trace.items() if k != "step_time_s"}
    assert len(per_report.trace["step_time_s"]) == 6
    for a, b in zip(per_step.G.parameters(), per_report.G.parameters()):
        assert torch.equal(a, b)


def test_with_per_report_reads_a_diverging_run_stops_at_the_end_of_its_window(data_dir):
    state, cfg, loss = fresh_state(smoke_loop_config(data_dir, lr_d=1e6, lr_g=1e6, divergence_bound=50.0,
                                                     sync="report", report_every=5))
    reports = []
    train_steps(state, loss, cfg, 200, on_report=lambda s, m: reports.append(m))
    assert state.diverged and state.step < 200 and state.step % 5 == 0
    assert reports[-1]["diverged"] == 1.0


def test_a_compiled_step_trains_like_the_eager_one_and_saves_the_same_checkpoint(data_dir, tmp_path, monkeypatch):
    """train.compile end to end: Dynamo traces G, D and G.generate and AOT autograd builds their backward.
    The backend is swapped for aot_eager, which runs those graphs without generating C++ (inductor would
    take about 35 s on 2 cores): what is tested is the plumbing, not PyTorch's code generator."""
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model=None, **kw: real_compile(model, **{**kw, "backend": "aot_eager"}))
    eager, cfg, loss = fresh_state(smoke_loop_config(data_dir))
    train_steps(eager, loss, cfg, 3)
    compiled, cfg, loss = fresh_state(smoke_loop_config(data_dir, compile="default"))
    train_steps(compiled, loss, cfg, 3)
    for key in ("d_loss", "g_loss", "rec_loss", "grad_norm_d"):  # fused kernels round differently
        torch.testing.assert_close(torch.tensor(compiled.trace[key]), torch.tensor(eager.trace[key]),
                                   rtol=1e-4, atol=1e-5)
    save_checkpoint(compiled, tmp_path, cfg.model_dump())
    restarted, _, _ = fresh_state(smoke_loop_config(data_dir))
    restore_state(restarted, load_checkpoint(tmp_path))  # an eager run resumes a compiled one's checkpoint
    for a, b in zip(compiled.G.state_dict().values(), restarted.G.state_dict().values()):
        assert torch.equal(a, b)


def test_adaptive_augmentation_raises_p_while_d_is_more_confident_than_the_target(data_dir):
    """With a target below any r_t a real D reaches, p rises by batch * interval / (kimg * 1000) at every
    adjustment until it reaches 1; each step logs the p it trained with."""
    loss = {"diffaugment": "[translation]", "ada_target": -0.99, "ada_kimg": 0.2, "ada_interval": 2}
    state, cfg, gan_loss = fresh_state(smoke_loop_config(data_dir, loss=loss))
    train_steps(state, gan_loss, cfg, 8)
    step = cfg.batch_size * 2 / 200
    expected = [min(1.0, step * (i // 2)) for i in range(8)]
    assert state.trace["ada_p"] == pytest.approx(expected, abs=1e-6)

