"""FGSM against analytic answers."""
import pytest
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


from components.attacks import ead, pgd  # noqa: E402


def test_first_linf_pgd_step_without_random_start_is_analytic():
    w = torch.tensor([[1.0, -2.0, 0.5]])
    x = torch.tensor([[0.1, 0.2, -0.3]])
    x_adv = pgd(lambda v: (v * w).sum(), x, eps=0.2, steps=1, step_size=0.05, random_start=False)
    torch.testing.assert_close(x_adv, x + 0.05 * torch.sign(w))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_never_leaves_the_ball_or_the_pixel_range(norm):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 8, 8, generator=g) * 2 - 1
    w = torch.randn(1, 1, 8, 8, generator=g)
    eps = 0.3 if norm == "linf" else 1.0
    x_adv = pgd(lambda v: (v * w).sum() + (v ** 3).sum(), x, eps=eps, steps=20, norm=norm, generator=g)
    d = (x_adv - x).flatten(1)
    size = d.abs().max(dim=1).values if norm == "linf" else d.norm(dim=1)
    assert (size <= eps + 1e-5).all()
    assert x_adv.min() >= -1 and x_adv.max() <= 1


def test_pgd_increases_the_loss_more_than_fgsm_on_a_nonlinear_model():
    g = torch.Generator().manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    x = torch.rand(64, 10, generator=g) * 2 - 1
    loss = lambda v: net(v).sum()  # noqa: E731
    assert loss(pgd(loss, x, 0.1, steps=20, generator=g)) >= loss(fgsm(loss, x, 0.1)) - 1e-4


def test_ead_is_sparser_than_pgd_at_matched_success():
    # Linear "classifier" score s(x) = w.x; success = the score rises by at least 5.
    g = torch.Generator().manual_seed(2)
    w = torch.randn(1, 64, generator=g)
    x = torch.zeros(8, 64)
    loss = lambda v: (v * w).sum()  # noqa: E731
    x_ead = ead(loss, x, c=1.0, beta=1.0, steps=300, lr=0.01)
    x_pgd = pgd(loss, x, eps=0.1, steps=20, random_start=False)
    rise_ead, rise_pgd = ((x_ead - x) * w).sum(1), ((x_pgd - x) * w).sum(1)
    assert (rise_ead >= 5).all() and (rise_pgd >= 5).all()  # both succeed
    l1 = lambda d: d.abs().sum(1)  # noqa: E731
    assert (l1(x_ead - x) < l1(x_pgd - x)).all()
    assert ((x_ead - x).abs() < 1e-8).float().mean() > 0.5  # most coordinates untouched


def test_soft_threshold():
    from components.attacks.ead import soft_threshold

    torch.testing.assert_close(soft_threshold(torch.tensor([-2.0, -0.1, 0.05, 1.5]), 0.5),
                               torch.tensor([-1.5, 0.0, 0.0, 1.0]))
