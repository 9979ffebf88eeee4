"""Cross-check of our FGSM and L-inf PGD against the Adversarial Robustness Toolbox on a small CNN."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

art = pytest.importorskip("art")

from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent  # noqa: E402
from art.estimators.classification import PyTorchClassifier  # noqa: E402

from components.attacks import fgsm, pgd  # noqa: E402
from components.metrics.classifier import EvaluatorCNN  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = EvaluatorCNN(1, 32, 10).eval()
    x = torch.rand(16, 1, 32, 32) * 2 - 1
    y = torch.arange(16) % 10
    clf = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 32, 32),
                            nb_classes=10, clip_values=(-1.0, 1.0))
    return model, x, y, clf


def _share_equal(a: torch.Tensor, b: np.ndarray) -> float:
    return float(np.isclose(a.numpy(), b, atol=1e-5).mean())


def test_fgsm_matches_art(setup):
    model, x, y, clf = setup
    ours = fgsm(lambda v: F.cross_entropy(model(v), y, reduction="sum"), x, eps=0.05)
    theirs = FastGradientMethod(clf, norm=np.inf, eps=0.05).generate(x.numpy(), y=np.eye(10)[y.numpy()])
    assert (ours - x).abs().max() == pytest.approx(0.05, abs=1e-6)  # a real perturbation, not x itself
    assert _share_equal(ours, theirs) > 0.999


def test_linf_pgd_matches_art(setup):
    model, x, y, clf = setup
    ours = pgd(lambda v: F.cross_entropy(model(v), y, reduction="sum"), x, eps=0.05, steps=5, step_size=0.02,
               random_start=False)
    theirs = ProjectedGradientDescent(clf, norm=np.inf, eps=0.05, eps_step=0.02, max_iter=5, num_random_init=0,
                                      verbose=False).generate(x.numpy(), y=np.eye(10)[y.numpy()])
    assert (ours - x).abs().mean() > 0.02
    assert _share_equal(ours, theirs) > 0.99  # a few pixels may differ where a gradient is exactly 0
