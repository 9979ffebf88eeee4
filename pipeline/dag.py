"""The DAG: which stage reads which, and which config sections make up each stage's fingerprint."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pipeline.stages import evaluate, prepare, promote, train, tune


@dataclass(frozen=True)
class Stage:
    """A node: its function, the upstream stages it reads, the config sections it depends on, and whether a
    config makes it use Ray (the runner starts Ray before the first stage that does)."""

    name: str
    fn: Callable
    inputs: tuple[str, ...]
    sections: tuple[str, ...]
    needs_ray: Callable[[object], bool] = lambda cfg: False


def _always(cfg) -> bool:
    return True


STAGES: tuple[Stage, ...] = (
    Stage("prepare", prepare.run, (), ("data",), needs_ray=prepare.needs_ray),
    Stage("train", train.run, ("prepare",), ("data", "model", "loss", "train", "privacy"), needs_ray=_always),
    Stage("tune", tune.run, ("prepare", "train"), ("data", "model", "loss", "train", "privacy", "tune"),
          needs_ray=_always),
    Stage("evaluate", evaluate.run, ("prepare", "tune"), ("evaluate",)),
    Stage("promote", promote.run, ("evaluate", "tune"), ("promote",)),
)

STAGE_BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}


def stage_names() -> list[str]:
    """Stage names in dependency order."""
    return [s.name for s in STAGES]


def describe() -> str:
    """The DAG as text, one edge list per stage."""
    return "\n".join(f"  {s.name:<9} <- {', '.join(s.inputs) or '(source)'}" for s in STAGES)
