"""Robustness curves on small models: zero budget changes nothing, attacks only hurt, budgets hold."""
import torch

from components.metrics.classifier import EvaluatorCNN
from components.metrics.robustness import classifier_robustness, d_robustness, g_robustness
from components.models import Discriminator, Generator


def setup_models():
    torch.manual_seed(0)
    G = Generator(1, 32, 10, base=4, z_dim=8, norm="none").eval()
    D = Discriminator(1, 32, 10, base=4, norm="none").eval()
    clf = EvaluatorCNN(1, 32, 10).eval()
    x = torch.rand(16, 1, 32, 32) * 2 - 1
    y = torch.arange(16) % 10
    return G, D, clf, x, y


def test_d_curve_starts_at_clean_accuracy_and_pgd_only_hurts():
    G, D, _, x, y = setup_models()
    fake = G.generate(torch.randn(16, 8), y).detach()
    rows = d_robustness(D, x, y, fake, y, [0.0, 0.05, 0.2], attack="pgd", steps=10)
    with torch.no_grad():
        clean = float(torch.cat([D(x, y) > 0, D(fake, y) < 0]).float().mean())
    assert rows[0]["accuracy"] == clean
    assert rows[-1]["accuracy"] <= rows[0]["accuracy"]


def test_g_curve_is_zero_at_zero_budget_and_grows():
    G, _, clf, x, y = setup_models()
    rows = g_robustness(G, clf, x, y, [0.0, 0.05, 0.2], steps=5)
    assert rows[0]["rec_mse"] == 0.0 and rows[0]["label_flip_rate"] == 0.0
    assert rows[2]["rec_mse"] >= rows[1]["rec_mse"] > 0.0
    assert rows[1]["amplification"] > 0.0


def test_classifier_reference_curve_is_bounded():
    _, _, clf, x, y = setup_models()
    rows = classifier_robustness(clf, x, y, [0.0, 0.1], steps=5)
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows) and rows[1]["accuracy"] <= rows[0]["accuracy"]
