"""Standard FID/KID from local InceptionV3 weights: the path is honoured, bad files are refused, and without
weights the evaluation says it skipped them. Real FID weights cannot be downloaded here, so the network
gets randomly initialised weights saved in the same format; that checks the plumbing and the maths on its
features, not the published FID scale."""
from __future__ import annotations

import argparse
import importlib.util

import pytest
import torch

from components.errors import UserError
from components.metrics import inception
from pipeline.config import load_config
from components.evaluation import standard_fid
from tests.conftest import REPO

if importlib.util.find_spec("torch_fidelity") is None:  # its __init__ needs torchvision: only locate it
    pytest.skip("torch-fidelity is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A state dict of the FID InceptionV3 with random weights, built without the download."""
    module = inception._inception_module()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(module, "load_state_dict_from_url", lambda *a, **k: None)
        mp.setattr(module.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        torch.manual_seed(0)
        net = module.FeatureExtractorInceptionV3("inception-v3-compat", [inception.FEATURE])
    path = tmp_path_factory.mktemp("inception") / "pt_inception-random.pth"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().images[:48], dtype=torch.float32) / 8 - 1  # [0, 16] -> [-1, 1]
    return torch.nn.functional.interpolate(x[:, None], size=32, mode="bilinear")


def test_fid_is_zero_on_identical_sets_and_grows_with_a_real_difference(weights_file, digits):
    from components.metrics.quality import frechet_distance, kernel_inception_distance

    net = inception.load_inception(weights_file)
    first, second = inception.inception_features(net, digits[:16]), inception.inception_features(net, digits[16:32])
    noise = inception.inception_features(net, torch.rand_like(digits[:16]) * 2 - 1)
    assert first.shape == (16, 2048)
    same, halves, far = (frechet_distance(a, b)["fd"] for a, b in ((first, first), (first, second), (noise, second)))
    assert same < 1e-6 * halves and far > halves
    kid = lambda a, b: kernel_inception_distance(a, b, 2, 8, 0)["kid"]  # noqa: E731
    assert kid(noise, second) > kid(first, second)


def test_grayscale_becomes_uint8_rgb():
    x = inception.to_uint8_rgb(torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 1, 3))
    assert x.dtype == torch.uint8 and x.shape == (1, 3, 1, 3) and x[0, :, 0].tolist() == [[0, 128, 255]] * 3


def test_pickled_code_and_wrong_tensors_are_refused(tmp_path):
    pickled = tmp_path / "pickled.pth"
    torch.save({"not": argparse.Namespace(a=1)}, pickled)
    with pytest.raises(UserError, match="evaluate.inception_weights: .*tensors-only"):
        inception.load_inception(pickled)
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(UserError, match="does not hold InceptionV3"):
        inception.load_inception(wrong)


def test_config_names_a_missing_weights_file(tmp_path):
    with pytest.raises(UserError, match=r"evaluate\.inception_weights: .*missing\.pth is not a file"):
        load_config(REPO / "configs" / "smoke.yaml", [f"evaluate.inception_weights={tmp_path / 'missing.pth'}"])


def test_evaluation_computes_fid_with_weights_and_says_so_without(weights_file, digits, capsys):
    ec = load_config(REPO / "configs" / "smoke.yaml", [f"evaluate.inception_weights={weights_file}",
                                                       "evaluate.inception_samples=16"]).evaluate
    out = standard_fid(ec.model_copy(update={"inception_samples": 8}), digits[:32], digits[16:])
    assert set(out) == {"fid", "kid_inception", "kid_inception_std"} and out["fid"] > 0
    assert "8 generated vs 8 real" in capsys.readouterr().out
    assert standard_fid(ec.model_copy(update={"inception_weights": None}), digits, digits) == {}
    assert "standard FID/KID skipped (evaluate.inception_weights not set" in capsys.readouterr().out
