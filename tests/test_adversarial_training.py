"""Adversarial training of D (PGD-perturbed real and fake inputs): bounded perturbations, and a D trained
that way is more robust at the training epsilon than the same D trained without it (smoke config)."""
import pytest
import torch

from components.data.reader import load_split
from components.losses import GANLoss, LossConfig
from components.metrics.robustness import d_robustness
from components.models import Discriminator, Generator
from components.training.loop import train_steps
from tests.helpers import fresh_state, smoke_loop_config


def test_adversarial_inputs_stay_in_the_ball_and_fool_d_more():
    torch.manual_seed(0)
    G, D = Generator(1, 32, 10, base=4, z_dim=8), Discriminator(1, 32, 10, base=4, norm="batch")
    x, y = torch.rand(8, 1, 32, 32) * 2 - 1, torch.arange(8) % 10
    fake = G.generate(torch.randn(8, 8), y).detach()
    loss = GANLoss(LossConfig(adv_train_eps=0.1, adv_train_steps=5, adv_train_fraction=0.5))
    running_mean = D.features[3].running_mean.clone()
    real_adv, fake_adv = loss._adversarial_inputs(D, x, y, fake, y)
    assert D.training and torch.equal(D.features[3].running_mean, running_mean)  # attack left D untouched
    assert (real_adv - x).abs().max() <= 0.1 + 1e-6 and (fake_adv - fake).abs().max() <= 0.1 + 1e-6
    assert torch.equal(real_adv[4:], x[4:]) and not torch.equal(real_adv[:4], x[:4])  # half perturbed
    D.eval()
    with torch.no_grad():
        assert D(real_adv[:4], y[:4]).mean() < D(x[:4], y[:4]).mean()  # real pushed towards "fake"
        assert D(fake_adv[:4], y[:4]).mean() > D(fake[:4], y[:4]).mean()  # fake pushed towards "real"


@pytest.mark.slow
def test_adversarially_trained_d_is_more_robust_at_the_training_eps(tmp_path):
    eps = 0.1
    data_dir = tmp_path / "data"
    accuracy = {}
    for name, loss in (("plain", {}), ("robust", {"adv_train_eps": eps, "adv_train_steps": 3,
                                                  "adv_train_fraction": 1.0})):
        state, cfg, gan_loss = fresh_state(smoke_loop_config(data_dir, loss=loss, steps=150))
        train_steps(state, gan_loss, cfg, cfg.steps)
        G, D = state.G_ema, state.D.eval()
        held = load_split(data_dir, "val")
        real, y = held.images_float(), held.labels
        with torch.no_grad():
            fake = G.generate(torch.randn(len(y), G.z_dim, generator=torch.Generator().manual_seed(5)), y)
        rows = d_robustness(D, real, y, fake, y, [eps], attack="pgd", steps=10)
        accuracy[name] = rows[0]["accuracy"]
    assert accuracy["robust"] > accuracy["plain"] + 0.05, accuracy
