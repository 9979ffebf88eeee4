"""FGSM against analytic answers."""
import torch

from components.attacks import fgsm


def test_fgsm_on_linear_model_matches_analytic_step():
    w = torch.tensor([[1.0, -2.0, 0.5]])
    x = torch.tensor([[0.1, 0.2, -0.3]])
    # loss = w.x has gradient w, so x_adv = x + eps * sign(w).
    x_adv = fgsm(lambda v: (v * w).sum(), x, eps=0.1)
    torch.testing.assert_close(x_adv, x + 0.1 * torch.sign(w))


def test_fgsm_stays_in_valid_range_and_ball():
    x = torch.rand(8, 1, 4, 4) * 2 - 1
    x_adv = fgsm(lambda v: (v ** 2).sum(), x, eps=0.3)
    assert x_adv.min() >= -1 and x_adv.max() <= 1
    assert (x_adv - x).abs().max() <= 0.3 + 1e-6
