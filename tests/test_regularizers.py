"""Every regulariser on a case with a known answer, and where each enters GANLoss."""
import math

import pytest
import torch
import torch.nn.functional as F

from components import regularizers as R
from components.losses import Batch, GANLoss, LossConfig, d_adversarial, g_adversarial
from components.models import Discriminator, Generator
from components.training.loop import update_ema


def test_r1_on_a_quadratic_is_the_squared_input_norm():
    x = torch.randn(5, 1, 4, 4, requires_grad=True)
    logits = 0.5 * x.pow(2).flatten(1).sum(dim=1)  # grad_x = x
    torch.testing.assert_close(R.r1_penalty(logits, x), x.detach().pow(2).flatten(1).sum(dim=1))


def test_r1_on_a_linear_d_is_the_squared_weight_norm_and_trains_d():
    w = torch.randn(16, requires_grad=True)
    x = torch.randn(3, 1, 4, 4, requires_grad=True)
    penalty = R.r1_penalty(x.flatten(1) @ w, x)
    torch.testing.assert_close(penalty, w.detach().pow(2).sum().expand(3))
    penalty.sum().backward()  # create_graph: the penalty has a gradient w.r.t. D's weights (2 * 3 * w)
    torch.testing.assert_close(w.grad, 6 * w.detach())


@pytest.mark.parametrize("weight_norm, expected", [(1.0, 0.0), (2.0, 1.0), (3.0, 4.0)])
def test_gradient_penalty_on_a_linear_d(weight_norm, expected):
    w = torch.zeros(16)
    w[0] = weight_norm
    x_hat = R.interpolate(torch.randn(4, 1, 4, 4), torch.randn(4, 1, 4, 4), torch.rand(4))
    gp = R.gradient_penalty(x_hat.flatten(1) @ w, x_hat)
    torch.testing.assert_close(gp, torch.full((4,), expected))


def test_interpolate_endpoints():
    real, fake = torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    out = R.interpolate(real, fake, torch.tensor([1.0, 0.25]))
    assert out.requires_grad and out.is_leaf
    torch.testing.assert_close(out[0], real[0])
    torch.testing.assert_close(out[1], torch.full((1, 2, 2), 0.25))


def test_lecam_known_value():
    # relu([1, 3] - 2)^2 -> [0, 1], mean 0.5; relu(1 - [0])^2 -> 1.
    value = R.lecam(torch.tensor([1.0, 3.0]), torch.tensor([0.0]), anchor_real=1.0, anchor_fake=2.0)
    torch.testing.assert_close(value, torch.tensor(1.5))


def test_instance_noise_schedule_and_scale():
    assert R.instance_noise_std(0.2, 100, 0) == 0.2
    assert math.isclose(R.instance_noise_std(0.2, 100, 50), 0.1)
    assert R.instance_noise_std(0.2, 100, 100) == 0.0 == R.instance_noise_std(0.2, 100, 500)
    x = torch.zeros(200_000)
    torch.manual_seed(0)
    assert abs(float(R.add_instance_noise(x, 0.3).std()) - 0.3) < 0.005
    assert R.add_instance_noise(x, 0.0) is x


def test_translate_shifts_with_zero_fill():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = R.translate(x, torch.tensor([[1, 0]]))  # one row down
    torch.testing.assert_close(out[0, 0, 1:], x[0, 0, :3])
    assert out[0, 0, 0].abs().sum() == 0
    out = R.translate(x, torch.tensor([[0, -2]]))  # two columns left
    torch.testing.assert_close(out[0, 0, :, :2], x[0, 0, :, 2:])
    assert out[0, 0, :, 2:].abs().sum() == 0


def test_cutout_zeroes_a_square():
    x = torch.ones(2, 3, 8, 8)
    out = R.cutout(x, torch.tensor([[4, 4], [0, 0]]), size=4)
    assert int((out[0, 0] == 0).sum()) == 16  # interior: the full 4x4 square
    assert int((out[1, 0] == 0).sum()) == 4  # corner: clipped to 2x2
    assert torch.equal(out[:, 0], out[:, 2])  # same mask on every channel


def test_color_identity_and_brightness():
    x = torch.randn(3, 3, 4, 4)
    ones, zeros = torch.ones(3), torch.zeros(3)
    torch.testing.assert_close(R.color(x, zeros, ones, ones), x)
    torch.testing.assert_close(R.color(x, torch.full((3,), 0.5), ones, ones), x + 0.5)
    flat = R.color(x, zeros, ones, zeros)  # contrast 0: every pixel becomes the image mean
    torch.testing.assert_close(flat, x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x))


def test_diff_augment_is_differentiable_and_random_per_sample():
    torch.manual_seed(0)
    x = torch.randn(8, 1, 16, 16, requires_grad=True)
    out = R.diff_augment(x, ["color", "translation", "cutout"])
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    same = R.diff_augment(x.detach()[:1].expand(2, 1, 16, 16).clone(), ["translation", "cutout"])
    assert not torch.equal(same[0], same[1])
    with pytest.raises(ValueError, match="unknown augmentation"):
        R.diff_augment(x, ["rotate"])


def test_adamw_weight_decay_shrinks_by_lr_times_decay():
    p = torch.nn.Parameter(torch.full((3,), 2.0))
    opt = torch.optim.AdamW([p], lr=0.01, weight_decay=0.1)
    p.grad = torch.zeros(3)  # Adam's own update is 0/(0+eps) = 0: only the decay acts
    opt.step()
    torch.testing.assert_close(p.detach(), torch.full((3,), 2.0 * (1 - 0.01 * 0.1)))


def test_spectral_norm_bounds_each_layer_to_unit_singular_value():
    torch.manual_seed(0)
    D = Discriminator(1, 32, 10, base=8, norm="spectral")
    with torch.no_grad():
        for _ in range(30):  # power iteration converges over forward passes in train mode
            D(torch.randn(4, 1, 32, 32), torch.zeros(4, dtype=torch.long))
    conv = D.features[0]
    sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
    assert 0.9 < float(sigma) < 1.05


def test_ema_update_is_a_convex_combination():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = a.weight.detach().clone()
    update_ema(a, b, decay=0.75)
    torch.testing.assert_close(a.weight, 0.75 * before + 0.25 * b.weight.detach())


def test_wgan_objective_values():
    real, fake = d_adversarial("wgan_gp", torch.tensor([2.0]), torch.tensor([-1.0]))
    assert float(real + fake) == -3.0  # -(D(real) - D(fake))
    torch.testing.assert_close(g_adversarial("wgan_gp", torch.tensor([0.5])), torch.tensor([-0.5]))
    assert LossConfig(objective="wgan_gp").effective_gp_lambda == 10.0
    assert LossConfig().effective_gp_lambda == 0.0


# Section: where each regulariser enters GANLoss.

def _nets(conditioning="projection", norm="none"):
    torch.manual_seed(0)
    return Generator(1, 32, 10, base=4, z_dim=8), Discriminator(1, 32, 10, base=4, norm=norm,
                                                                conditioning=conditioning)


def _batch(n=4, **schedule):
    torch.manual_seed(1)
    return Batch(torch.rand(n, 1, 32, 32) * 2 - 1, torch.arange(n) % 10, torch.ones(n), torch.randn(n, 8),
                 (torch.arange(n) + 3) % 10, **schedule)


def test_lazy_r1_adds_gamma_half_times_interval_times_penalty():
    G, D = _nets()
    cfg = LossConfig(r1_gamma=2.0, r1_every=4)
    off, _ = GANLoss(cfg).d_loss(G, D, _batch(r1_due=False))
    on, stats = GANLoss(cfg).d_loss(G, D, _batch(r1_due=True))
    torch.testing.assert_close(on - off, 0.5 * 2.0 * 4 * stats["r1"])
    assert stats["r1"] > 0


def test_gradient_penalty_shares_the_single_d_forward():
    G, D = _nets()
    calls = []
    D.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    loss, stats = GANLoss(LossConfig(objective="wgan_gp")).d_loss(G, D, _batch(4))
    assert calls == [12]  # real, fake and interpolates in one forward
    assert "gp" in stats and stats["gp"] >= 0
    loss.backward()
    assert all(p.grad is not None for p in D.parameters())


def test_lecam_anchors_track_the_logits_and_round_trip():
    G, D = _nets()
    loss = GANLoss(LossConfig(lecam_lambda=0.3, lecam_decay=0.5))
    _, stats = loss.d_loss(G, D, _batch())
    assert "lecam" in stats and loss.anchors["real"] != 0.0
    restored = GANLoss(loss.cfg)
    restored.load_state_dict(loss.state_dict())
    assert restored.anchors == loss.anchors


def test_auxiliary_classifier_adds_class_cross_entropy():
    G, D = _nets(conditioning="auxiliary")
    b = _batch()
    _, stats = GANLoss(LossConfig(lambda_ac=1.0)).d_loss(G, D, b)
    with torch.no_grad():
        fake = G.generate(b.z, b.y_fake)
        _, cls = D(torch.cat([b.x, fake]), torch.cat([b.y, b.y_fake]), with_classes=True)
    expected = F.cross_entropy(cls[:4], b.y) + F.cross_entropy(cls[4:], b.y_fake)
    torch.testing.assert_close(stats["d_ac"], expected)
    g_loss, g_stats = GANLoss(LossConfig(lambda_ac=2.0)).g_loss(G, D, b)
    torch.testing.assert_close(g_loss.detach(), g_stats["rec_loss"] + g_stats["g_adv"] + 0.05 * g_stats["kl"]
                               + 2.0 * g_stats["g_ac"])


def test_instance_noise_and_diffaugment_change_what_d_sees():
    G, D = _nets()
    plain, _ = GANLoss(LossConfig()).d_loss(G, D, _batch())
    noisy, _ = GANLoss(LossConfig()).d_loss(G, D, _batch(noise_std=0.5))
    augmented, _ = GANLoss(LossConfig(diffaugment=["translation", "cutout", "color"])).d_loss(G, D, _batch())
    assert not torch.isclose(plain, noisy) and not torch.isclose(plain, augmented)


def test_adaptive_augmentation_applies_the_policy_with_probability_p():
    x = torch.randn(64, 1, 16, 16)
    torch.manual_seed(0)
    full = R.diff_augment(x, ["translation", "cutout"])
    torch.manual_seed(0)
    assert torch.equal(R.diff_augment(x, ["translation", "cutout"], p=1.0), full)  # transforms drawn first
    assert torch.equal(R.diff_augment(x, ["translation", "cutout"], p=0.0), x)
    torch.manual_seed(0)
    half = R.diff_augment(x, ["translation", "cutout"], p=torch.tensor(0.5, dtype=torch.float64))
    changed = (half != x).flatten(1).any(1)
    assert 16 < int(changed.sum()) < 48 and torch.equal(half[changed], full[changed])


def test_the_ada_controller_moves_p_towards_the_target_within_0_and_1():
    p = torch.tensor(0.5, dtype=torch.float64)
    assert float(R.ada_adjust(p, torch.tensor(0.9), 0.6, 0.1)) == pytest.approx(0.6)  # D overconfident: more
    assert float(R.ada_adjust(p, torch.tensor(0.2), 0.6, 0.1)) == pytest.approx(0.4)  # less
    assert float(R.ada_adjust(torch.tensor(0.95, dtype=torch.float64), torch.tensor(1.0), 0.6, 0.1)) == 1.0
    assert float(R.ada_adjust(torch.tensor(0.05, dtype=torch.float64), torch.tensor(-1.0), 0.6, 0.1)) == 0.0



def test_group_shape_is_as_square_as_the_width_allows():
    assert R.group_shape(64) == (8, 8) and R.group_shape(128) == (8, 16)
    assert R.group_shape(256) == (16, 16) and R.group_shape(10) == (2, 5)
    assert R.group_shape(7) == (1, 7)


def test_group_spectral_penalty_known_values():
    ones = torch.ones(2, 64)  # each row folds into an 8x8 all-ones matrix: largest singular value 8
    torch.testing.assert_close(R.group_spectral_penalty([ones], torch.ones(2)), torch.tensor(8.0))
    u, v = torch.tensor([3.0, 0, 0, 4]), torch.tensor([1.0, 2, 2, 0])  # rank one: sigma = |u| |v| = 5 * 3
    rows = torch.stack([torch.outer(u, v).flatten(), torch.zeros(16)])
    torch.testing.assert_close(R.group_spectral_penalty([rows], torch.tensor([3.0, 1.0])),
                               torch.tensor(15.0 * 0.75))  # class weights normalised: 3/4 and 1/4
    torch.testing.assert_close(R.group_spectral_penalty([ones, rows], torch.tensor([3.0, 1.0])),
                               torch.tensor(8.0 + 15.0 * 0.75))


def test_group_spectral_penalty_shrinks_tail_rows_fastest():
    torch.manual_seed(0)
    table = torch.randn(2, 16, requires_grad=True)
    start = table.detach().clone()
    opt = torch.optim.SGD([table], lr=0.05)
    for _ in range(20):
        opt.zero_grad()
        R.group_spectral_penalty([table], torch.tensor([1.0, 9.0])).backward()
        opt.step()
    sigma = lambda t: torch.linalg.matrix_norm(t.reshape(2, 4, 4), ord=2)  # noqa: E731
    shrink = sigma(table.detach()) / sigma(start)
    assert (shrink < 1).all() and shrink[1] < shrink[0]  # class 1, weighted 9x, shrinks more


@pytest.mark.parametrize("family", ["seed", "resnet"])
def test_gsr_enters_the_generator_loss_with_its_weight(family):
    from components.models import ModelConfig, build_models

    G, D = build_models(ModelConfig(family=family, g_base_channels=4, d_base_channels=4, z_dim=8), 1, 32, 10)
    with torch.no_grad():
        for table in G.class_tables():
            table.normal_()
    b = _batch()
    weights = [float(k + 1) for k in range(10)]
    on, stats = GANLoss(LossConfig(gsr_lambda=0.5), weights).g_loss(G, D, b)
    expected = R.group_spectral_penalty(G.class_tables(), torch.tensor(weights))
    torch.testing.assert_close(stats["gsr"], expected.detach())
    torch.testing.assert_close(on.detach(), stats["rec_loss"] + stats["g_adv"] + 0.05 * stats["kl"]
                               + 0.5 * stats["gsr"])
    on.backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in G.class_tables())
