"""MLflow Model Registry edge: the generator as a pyfunc model, promotion gates, and aliases."""
from __future__ import annotations

import json
import math
import tempfile
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from components.models.generator import Generator

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous-champion"


class GeneratorPyfunc(mlflow.pyfunc.PythonModel):
    """predict(DataFrame[label, seed?]) -> float32 images (N, C, H, W) in [-1, 1], one per row."""

    def load_context(self, context) -> None:
        blob = torch.load(context.artifacts["generator"], map_location="cpu", weights_only=True)
        self.generator = Generator(**json.loads(blob["arch_json"]))
        self.generator.load_state_dict(blob["state_dict"])
        self.generator.eval()

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        labels = torch.tensor(model_input["label"].to_numpy(), dtype=torch.long)
        seeds = model_input["seed"].to_numpy() if "seed" in model_input else np.arange(len(labels))
        z = torch.stack([torch.randn(self.generator.z_dim, generator=torch.Generator().manual_seed(int(s)))
                         for s in seeds])
        with torch.no_grad():
            return self.generator.generate(z, labels).numpy().astype(np.float32)


def generator_arch(G: Generator, base: int, norm: str) -> dict:
    """Constructor arguments that rebuild `G`."""
    return {"channels": G.channels, "resolution": G.resolution, "num_classes": G.num_classes,
            "base": base, "z_dim": G.z_dim, "norm": norm}


def log_generator(G: Generator, arch: dict, artifact_name: str = "generator"):
    """Log G as a pyfunc model (weights as a plain-tensor file) in the active run; returns ModelInfo."""
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "generator.pt"
        torch.save({"state_dict": G.state_dict(), "arch_json": json.dumps(arch)}, weights)
        example = pd.DataFrame({"label": np.arange(min(4, arch["num_classes"]), dtype=np.int64),
                                "seed": np.arange(min(4, arch["num_classes"]), dtype=np.int64)})
        model = GeneratorPyfunc()
        model.generator = G.eval()
        with warnings.catch_warnings():  # labels are integers by design; missing values are not valid input
            warnings.filterwarnings("ignore", message=".*integer column.*")
            signature = mlflow.models.infer_signature(example, model.predict(None, example))
        components_dir = Path(__file__).resolve().parent
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*integer column.*")
            return mlflow.pyfunc.log_model(name=artifact_name, python_model=model,
                                           artifacts={"generator": str(weights)}, signature=signature,
                                           input_example=example, code_paths=[str(components_dir)])


def check_gates(evaluation: dict, gates: dict, champion_evaluation: dict | None) -> list[dict]:
    """Each gate as {gate, value, threshold, passed}; a gate whose threshold is None is not checked."""
    rows = []

    def gate(name, value, threshold, passed):
        rows.append({"gate": name, "value": value, "threshold": threshold, "passed": bool(passed)})

    if gates.get("max_fcd") is not None:
        gate("max_fcd", evaluation["fcd"], gates["max_fcd"], evaluation["fcd"] <= gates["max_fcd"])
    if gates.get("max_class_kl") is not None:
        gate("max_class_kl", evaluation["class_kl"], gates["max_class_kl"],
             evaluation["class_kl"] <= gates["max_class_kl"])
    if gates.get("min_d_fgsm_accuracy") is not None:
        gate("min_d_fgsm_accuracy", evaluation["d_fgsm_accuracy"], gates["min_d_fgsm_accuracy"],
             evaluation["d_fgsm_accuracy"] >= gates["min_d_fgsm_accuracy"])
    if gates.get("require_no_divergence", True):
        gate("no_divergence", evaluation.get("diverged", 0.0), 0.0, not evaluation.get("diverged", 0.0))
    if champion_evaluation is not None:
        bar = champion_evaluation["fcd"] - gates.get("min_improvement", 0.0)
        gate("beats_champion_fcd", evaluation["fcd"], bar, math.isfinite(evaluation["fcd"]) and evaluation["fcd"] < bar)
    return rows


def ensure_registered_model(client, name: str) -> None:
    """Create the registered model if it does not exist yet."""
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name)


def alias_version(client, name: str, alias: str) -> str | None:
    """The version behind `alias`, or None."""
    try:
        return client.get_model_version_by_alias(name, alias).version
    except mlflow.exceptions.MlflowException:
        return None


def move_champion(client, name: str, version: str) -> None:
    """champion -> version; the old champion keeps `previous-champion`. No version is ever deleted."""
    old = alias_version(client, name, CHAMPION)
    if old is not None and old != str(version):
        client.set_registered_model_alias(name, PREVIOUS, old)
    client.set_registered_model_alias(name, CHAMPION, version)
