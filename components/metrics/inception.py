"""Standard FID and KID on InceptionV3 pool features, from weights the user already has on disk.

Nothing is downloaded. The network is torch-fidelity's port of the TF-slim InceptionV3 used by the
reference FID code, so with its weights file (pt_inception-2015-12-05-6726825d.pth) the numbers are the
standard ones. The weights are loaded with `torch.load(weights_only=True)`: tensors, never pickled code.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch

from components.errors import UserError
from components.metrics.quality import frechet_distance, kernel_inception_distance

FEATURE = "2048"  # pool3 features, as in FID


def _inception_module():
    """torch_fidelity.feature_extractor_inceptionv3 without importing torch_fidelity/__init__.py.

    The package's __init__ imports its dataset helpers, which need torchvision; PyPI's torchvision wheels
    are CUDA builds that do not load against the CPU torch wheel. The extractor itself needs only torch.
    """
    name = "torch_fidelity.feature_extractor_inceptionv3"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("torch_fidelity")  # locates the package without executing it
    if spec is None or not spec.submodule_search_locations:
        raise UserError("evaluate.inception_weights is set but torch-fidelity is not installed: "
                        "pip install --no-deps torch-fidelity (or unset evaluate.inception_weights)")
    if "torch_fidelity" not in sys.modules:
        package = types.ModuleType("torch_fidelity")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["torch_fidelity"] = package
    return importlib.import_module(name)


def load_inception(weights_path: str | Path) -> torch.nn.Module:
    """The InceptionV3 feature extractor with the given weights; UserError naming the file if they don't fit."""
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise UserError(f"evaluate.inception_weights: {path} does not exist; point it to a local InceptionV3 "
                        "weights file (pt_inception-2015-12-05-6726825d.pth) or unset it")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable or pickled-code file is the same user error
        raise UserError(f"evaluate.inception_weights: {path} is not a tensors-only weights file ({err})") from None
    module = _inception_module()
    # Hand the safely loaded tensors to the constructor in place of its download (which would also unpickle).
    original = module.load_state_dict_from_url
    module.load_state_dict_from_url = lambda *args, **kwargs: state
    try:
        return module.FeatureExtractorInceptionV3("inception-v3-compat", [FEATURE])
    except RuntimeError as err:
        raise UserError(f"evaluate.inception_weights: {path} does not hold InceptionV3 FID weights "
                        f"({str(err).splitlines()[0]})") from None
    finally:
        module.load_state_dict_from_url = original


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images with 1 or 3 channels -> uint8 RGB, what the extractor takes (it resizes to 299)."""
    x = ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


@torch.no_grad()
def inception_features(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 50) -> np.ndarray:
    feats = [model(to_uint8_rgb(images[i:i + batch_size]))[0] for i in range(0, len(images), batch_size)]
    return torch.cat(feats).double().numpy()


def inception_metrics(model: torch.nn.Module, fake: torch.Tensor, real: torch.Tensor, kid_subsets: int,
                      kid_subset_size: int, seed: int) -> dict[str, float]:
    """FID and KID between generated and real images on InceptionV3 pool3 features."""
    f_fake, f_real = inception_features(model, fake), inception_features(model, real)
    kid = kernel_inception_distance(f_fake, f_real, kid_subsets, kid_subset_size, seed)
    return {"fid": frechet_distance(f_fake, f_real)["fd"], "kid_inception": kid["kid"],
            "kid_inception_std": kid["kid_std"]}
