"""GAN losses on cases with known answers."""
import math

import torch

from components.losses import Batch, GANLoss, LossConfig, d_adversarial, g_adversarial, kl_to_standard_normal
from components.models import Discriminator, Generator


def test_bce_at_zero_logits_is_log2():
    real, fake = d_adversarial("bce", torch.zeros(3), torch.zeros(3))
    torch.testing.assert_close(real, torch.full((3,), math.log(2)))
    torch.testing.assert_close(fake, torch.full((3,), math.log(2)))
    torch.testing.assert_close(g_adversarial("bce", torch.zeros(2)), torch.full((2,), math.log(2)))


def test_label_smoothing_moves_the_real_target():
    # BCE(l, 0.9) is minimised at sigmoid(l) = 0.9, i.e. l = log(9).
    logit = torch.tensor([math.log(9.0)], requires_grad=True)
    real, _ = d_adversarial("bce", logit, torch.zeros(1), smoothing=0.1)
    real.sum().backward()
    assert abs(logit.grad.item()) < 1e-6


def test_hinge_and_lsgan_known_values():
    real, fake = d_adversarial("hinge", torch.tensor([0.5, 2.0]), torch.tensor([-2.0, 0.0]))
    torch.testing.assert_close(real, torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(fake, torch.tensor([0.0, 1.0]))
    real, fake = d_adversarial("lsgan", torch.tensor([1.0]), torch.tensor([0.5]))
    torch.testing.assert_close(real + fake, torch.tensor([0.25]))


def test_kl_is_zero_for_the_prior_and_known_otherwise():
    torch.testing.assert_close(kl_to_standard_normal(torch.zeros(2, 4), torch.zeros(2, 4)), torch.zeros(2))
    # KL(N(1, 1) || N(0, 1)) = 0.5 per dimension.
    torch.testing.assert_close(kl_to_standard_normal(torch.ones(1, 3), torch.zeros(1, 3)), torch.tensor([0.5]))


def _batch(n=4):
    return Batch(torch.rand(n, 1, 32, 32) * 2 - 1, torch.arange(n) % 10, torch.ones(n), torch.randn(n, 8),
                 torch.arange(n) % 10)


def test_d_loss_runs_d_once_on_real_and_fake():
    torch.manual_seed(0)
    G, D = Generator(1, 32, 10, base=4, z_dim=8), Discriminator(1, 32, 10, base=4, norm="batch")
    calls = []
    D.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    loss, stats = GANLoss(LossConfig()).d_loss(G, D, _batch(4))
    assert calls == [8]  # one forward over cat(real, fake)
    assert loss.requires_grad and 0 <= stats["d_acc_real"] <= 1
    assert all(p.grad is None for p in G.parameters())


def test_g_loss_combines_document_terms():
    torch.manual_seed(0)
    G, D = Generator(1, 32, 10, base=4, z_dim=8), Discriminator(1, 32, 10, base=4, norm="none")
    cfg = LossConfig(lambda_rec=2.0, lambda_adv=0.5, lambda_kl=0.1)
    torch.manual_seed(1)
    loss, s = GANLoss(cfg).g_loss(G, D, _batch(4))
    torch.testing.assert_close(loss.detach(), 2.0 * s["rec_loss"] + 0.5 * s["g_adv"] + 0.1 * s["kl"])


def test_sample_weights_scale_the_real_terms():
    torch.manual_seed(0)
    G, D = Generator(1, 32, 10, base=4, z_dim=8), Discriminator(1, 32, 10, base=4, norm="none")
    b = _batch(4)
    loss_fn = GANLoss(LossConfig())
    base, _ = loss_fn.d_loss(G, D, b)
    b.w = torch.tensor([1.0, 0.0, 0.0, 0.0])  # only the first real sample counts
    only_first, _ = loss_fn.d_loss(G, D, b)
    assert not torch.isclose(base, only_first)
