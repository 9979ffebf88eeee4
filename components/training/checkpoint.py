"""Checkpoints as plain tensors and containers: saved with torch.save, loaded with weights_only=True.

A checkpoint never needs arbitrary pickles, so a file that contains one is refused, not executed.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import torch

from components.errors import UserError
from components.models import ModelConfig, build_models
from components.training.state import GanState

CHECKPOINT_FILE = "checkpoint.pt"


def _bare(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "module", module)


def rank_rng_state(state: GanState) -> dict[str, torch.Tensor]:
    """This rank's own random streams: torch's global RNG (augmentation, instance noise, GP alphas), the
    sampler's (per-rank when each rank reads its own shard) and CUDA's when on a GPU."""
    rng = {"torch": torch.get_rng_state(), "sampler": state.sampler.generator.get_state()}
    if state.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(state.device)
    return rng


def state_to_dict(state: GanState, resolved_config: dict, loss=None,
                  rank_rngs: list[dict[str, torch.Tensor]] | None = None) -> dict:
    """Everything needed to resume bit-identically, plus the resolved config as JSON text.

    rank_rngs: every rank's `rank_rng_state`, in rank order (rank 0 writes the file for all)."""
    return {
        "G": _bare(state.G).state_dict(),
        "D": _bare(state.D).state_dict(),
        "G_ema": state.G_ema.state_dict(),
        "opt_g": state.opt_g.state_dict(),
        "opt_d": state.opt_d.state_dict(),
        "step": state.step,
        "diverged": state.diverged,
        "rng": {"noise": state.noise.get_state(), "ranks": rank_rngs or [rank_rng_state(state)]},
        "scaler": state.scaler.state_dict() if state.scaler is not None else {},
        "loss": loss.state_dict() if loss is not None else {},
        "ada": {} if state.ada_p is None else {"p": float(state.ada_p), "sign_sum": float(state.ada_sign_sum),
                                                "count": state.ada_count},
        "trace": {k: torch.tensor(v, dtype=torch.float64) for k, v in state.trace.items()},
        # DP-SGD's accounting and noise stream: a resumed run's epsilon counts every step before it.
        "privacy": state.dp.state_dict() if state.dp is not None else {},
        "config_json": json.dumps(resolved_config, sort_keys=True),
        "shape": {"channels": state.G_ema.channels, "resolution": state.G_ema.resolution,
                  "num_classes": state.G_ema.num_classes},
    }


def save_checkpoint(state: GanState, directory: str | Path, resolved_config: dict, loss=None,
                    rank_rngs: list[dict[str, torch.Tensor]] | None = None) -> Path:
    """Write `directory/checkpoint.pt` atomically (temp file, then os.replace)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state_to_dict(state, resolved_config, loss, rank_rngs), tmp)
        os.replace(tmp, directory / CHECKPOINT_FILE)
    except BaseException:  # a full disk, say: the previous checkpoint stays, and no partial file with it
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return directory / CHECKPOINT_FILE


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint file (or the one inside a directory) safely; UserError if unsafe or unreadable."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for disallowed globals, RuntimeError for corrupt zips
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"refusing checkpoint {path}: not a plain-tensor checkpoint ({first[:160]}); "
                        "re-save it with save_checkpoint or use a trusted file") from None


def restore_state(state: GanState, ckpt: dict, loss=None) -> None:
    """Load weights, optimisers, scaler, RNG streams, LeCam anchors and trace into an already-built state.

    Each rank takes its own saved RNG streams; with a different world size it keeps its fresh seeding."""
    _bare(state.G).load_state_dict(ckpt["G"])
    _bare(state.D).load_state_dict(ckpt["D"])
    state.G_ema.load_state_dict(ckpt["G_ema"])
    state.opt_g.load_state_dict(ckpt["opt_g"])
    state.opt_d.load_state_dict(ckpt["opt_d"])
    state.step = int(ckpt["step"])
    state.diverged = bool(ckpt["diverged"])
    state.noise.set_state(ckpt["rng"]["noise"])
    ranks = ckpt["rng"]["ranks"]
    if len(ranks) == state.world:
        mine = ranks[state.rank]
        torch.set_rng_state(mine["torch"])
        state.sampler.generator.set_state(mine["sampler"])
        if "cuda" in mine and state.device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda"], state.device)
    elif state.rank == 0:
        print(f"  checkpoint: written by {len(ranks)} rank(s), loaded on {state.world}: per-rank random "
              "streams start afresh from the seed", flush=True)
    if state.scaler is not None and ckpt.get("scaler"):
        state.scaler.load_state_dict(ckpt["scaler"])
    if loss is not None and ckpt.get("loss"):
        loss.load_state_dict(ckpt["loss"])
    if ckpt.get("ada"):
        as_tensor = lambda v: torch.tensor(v, dtype=torch.float64, device=state.device)  # noqa: E731
        state.ada_p, state.ada_sign_sum = as_tensor(ckpt["ada"]["p"]), as_tensor(ckpt["ada"]["sign_sum"])
        state.ada_count = int(ckpt["ada"]["count"])
    state.trace = {k: v.tolist() for k, v in ckpt["trace"].items()}
    if state.dp is not None:
        if not ckpt.get("privacy") and state.step > 0:
            raise UserError(f"privacy.enabled: the checkpoint at step {state.step} was trained without DP-SGD, so no "
                            "epsilon covers it; train from scratch with privacy on")
        if ckpt.get("privacy"):
            state.dp.load_state_dict(ckpt["privacy"])


def models_from_checkpoint(ckpt: dict):
    """(G_ema, D, resolved_config) rebuilt from a checkpoint dict, in eval mode."""
    config = json.loads(ckpt["config_json"])
    model_cfg = ModelConfig(**config["model"])
    G, D = build_models(model_cfg, **ckpt["shape"])
    G.load_state_dict(ckpt["G_ema"])
    D.load_state_dict(ckpt["D"])
    return G.eval(), D.eval(), config
