"""MLflow Model Registry edge: the generator as a pyfunc model from code (components/generator_model.py)
with its weights as a tensor-only file: loading it runs this package's code and `torch.load(weights_only)`,
never an unpickler on a Python object."""
from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from mlflow.types import ColSpec, Schema

from components.models import build_generator, family_of
from components.models.generator import Generator


class GeneratorPyfunc(mlflow.pyfunc.PythonModel):
    """predict(DataFrame[label, seed?, count?]) -> float32 images (N, C, H, W) in [-1, 1].

    Each row asks for `count` images (default 1) of class `label`, from noise seeds seed, seed+1, ...;
    without a seed column, rows get consecutive seeds from 0. Images come in row order."""

    def load_context(self, context) -> None:
        self.generator = load_generator_file(context.artifacts["generator"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        labels = model_input["label"].to_numpy(np.int64)
        counts = model_input["count"].to_numpy(np.int64) if "count" in model_input else np.ones(len(labels), np.int64)
        if (counts < 1).any():
            raise ValueError(f"count must be at least 1 in every row, got {counts.min()}")
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])  # consecutive seeds when none are given
        seeds = model_input["seed"].to_numpy(np.int64) if "seed" in model_input else first
        all_seeds = np.concatenate([s + np.arange(c) for s, c in zip(seeds, counts)])
        z = torch.stack([torch.randn(self.generator.z_dim, generator=torch.Generator().manual_seed(int(s)))
                         for s in all_seeds])
        with torch.no_grad():
            return self.generator.generate(z, torch.from_numpy(np.repeat(labels, counts))).numpy().astype(np.float32)


def load_generator_file(path) -> Generator:
    """The generator in eval mode from a generator.pt written by this module (tensors and JSON only); files
    without a family are the seed family's."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    generator = build_generator(**json.loads(blob["arch_json"]))
    generator.load_state_dict(blob["state_dict"])
    return generator.eval()


def generator_arch(G: Generator, base: int, norm: str) -> dict:
    """Constructor arguments that rebuild `G`, with its model family."""
    return {"family": family_of(G), "channels": G.channels, "resolution": G.resolution, "num_classes": G.num_classes,
            "base": base, "z_dim": G.z_dim, "norm": norm}


MODEL_CODE = Path(__file__).resolve().parent / "generator_model.py"


def _requirements() -> list[str]:
    """Pinned runtime requirements, as an index (PyPI) has them: a local label such as torch's `+cpu` names a
    build no index serves, so it is dropped. Explicit, so MLflow need not load the model to infer them."""
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg).split('+', 1)[0]}" for pkg in ("torch", "numpy", "pandas", "mlflow", "pydantic")]


def _model_parts(G: Generator, arch: dict, tmp: str) -> dict:
    """Keyword arguments of the pyfunc flavour: model code, weights file, signature, example, code paths."""
    weights = Path(tmp) / "generator.pt"
    torch.save({"state_dict": G.state_dict(), "arch_json": json.dumps(arch)}, weights)
    n = min(4, arch["num_classes"])
    example = pd.DataFrame({"label": np.arange(n, dtype=np.int64), "seed": np.arange(n, dtype=np.int64) * 10,
                            "count": np.full(n, 2, dtype=np.int64)})
    live = GeneratorPyfunc()  # the outputs' schema, from the generator in hand
    live.generator = G.eval()
    inputs = Schema([ColSpec("long", "label"), ColSpec("long", "seed", required=False),
                     ColSpec("long", "count", required=False)])
    signature = mlflow.models.ModelSignature(
        inputs, mlflow.models.infer_signature(example, live.predict(None, example)).outputs)
    return {"python_model": str(MODEL_CODE), "artifacts": {"generator": str(weights)}, "signature": signature,
            "input_example": example, "code_paths": [str(Path(__file__).resolve().parent)],
            "pip_requirements": _requirements()}


def log_generator(G: Generator, arch: dict, name: str = "generator", run_id: str | None = None,
                  tracking_uri: str | None = None):
    """Log G as an MLflow LoggedModel (pyfunc from code, weights as a tensor file) in run `run_id` (default:
    the active run), without making that run active here: rank 0 of a Ray Train job logs into the driver's
    stage run this way. Returns the ModelInfo (model_id, model_uri models:/<model_id>)."""
    if tracking_uri is not None:
        mlflow.set_tracking_uri(tracking_uri)
    if run_id is not None:  # the model belongs to its run's experiment, wherever this process is
        mlflow.set_experiment(experiment_id=mlflow.MlflowClient().get_run(run_id).info.experiment_id)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # Labels are integers by design; missing values are not valid input.
        warnings.filterwarnings("ignore", message=".*integer column.*")
        return mlflow.models.Model.log(artifact_path=None, name=name, flavor=mlflow.pyfunc, run_id=run_id,
                                       **_model_parts(G, arch, tmp))


def log_checkpoint_generator(ckpt: dict, name: str = "generator"):
    """Log a training checkpoint's EMA generator in the active run (see log_generator); returns ModelInfo."""
    from components.training.checkpoint import models_from_checkpoint

    G, _, config = models_from_checkpoint(ckpt)
    return log_generator(G, generator_arch(G, config["model"]["g_base_channels"], config["model"]["g_norm"]), name)
