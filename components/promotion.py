"""Promotion through the MLflow Model Registry: gates, aliases, rollback. No version is ever deleted.

Each version carries its evaluation summary as `eval.*` tags, so any version can be judged later by
the same gates (`python -m pipeline promote --model NAME --version V`).
"""
from __future__ import annotations

import math
import operator

import mlflow

from components.promotion_config import GatesConfig

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous-champion"
SUMMARY_KEYS = ("fcd", "fcd_real_vs_real", "kid", "class_kl", "recall_mean", "tail_recall", "head_recall",
                "tail_head_fcd_ratio", "d_fgsm_accuracy", "copy_share_feature", "diverged")

# (gate, threshold key in the gates config, evaluation key, passes(value, threshold))
THRESHOLD_GATES = (
    ("max_fcd", "max_fcd", "fcd", operator.le),
    ("max_class_kl", "max_class_kl", "class_kl", operator.le),
    ("min_tail_recall", "min_tail_recall", "tail_recall", operator.ge),
    ("min_d_fgsm_accuracy", "min_d_fgsm_accuracy", "d_fgsm_accuracy", operator.ge),
    # A low FCD is also what memorising the training set scores: do not promote a copier.
    ("max_copy_share", "max_copy_share", "copy_share_feature", operator.le),
)


def check_gates(evaluation: dict, gates: GatesConfig, champion_evaluation: dict | None) -> list[dict]:
    """Each gate as {gate, value, threshold, passed}; a gate whose threshold is None is not checked."""
    rows = []
    for name, key, metric, passes in THRESHOLD_GATES:
        threshold = getattr(gates, key)
        if threshold is not None:
            value = float(evaluation.get(metric, math.nan))
            rows.append({"gate": name, "value": value, "threshold": threshold,
                         "passed": math.isfinite(value) and bool(passes(value, threshold))})
    if gates.require_no_divergence:  # a version with no record of how its training ended fails too
        diverged = float(evaluation.get("diverged", math.nan))
        rows.append({"gate": "no_divergence", "value": diverged, "threshold": 0.0, "passed": diverged == 0.0})
    if champion_evaluation is not None and "fcd" in champion_evaluation:
        bar = champion_evaluation["fcd"] - gates.min_improvement
        value = float(evaluation.get("fcd", math.nan))
        rows.append({"gate": "beats_champion_fcd", "value": value, "threshold": bar,
                     "passed": math.isfinite(value) and value < bar})
    return rows


def summary_tags(evaluation: dict) -> dict[str, str]:
    """`eval.*` version tags from an evaluation.json."""
    return {f"eval.{k}": str(evaluation[k]) for k in SUMMARY_KEYS if k in evaluation}


def version_evaluation(client, name: str, version: str) -> dict:
    """The evaluation summary stored on a version's tags."""
    tags = client.get_model_version(name, version).tags
    return {k: float(tags[f"eval.{k}"]) for k in SUMMARY_KEYS if f"eval.{k}" in tags}


def alias_version(client, name: str, alias: str) -> str | None:
    """The version behind `alias`, or None."""
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def ensure_registered_model(client, name: str) -> None:
    """Create the registered model if it does not exist yet."""
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        client.create_registered_model(name)


def move_champion(client, name: str, version: str) -> None:
    """champion -> version; the old champion keeps `previous-champion`."""
    old = alias_version(client, name, CHAMPION)
    if old is not None and old != str(version):
        client.set_registered_model_alias(name, PREVIOUS, old)
    client.set_registered_model_alias(name, CHAMPION, str(version))


def decide(client, name: str, version: str, gates: GatesConfig, dry_run: bool = False) -> dict:
    """Judge `version` by the gates against the current champion; unless dry_run, set `challenger`, move
    `champion` if every gate passes, and record the decision as version tags."""
    version = str(version)
    champion = alias_version(client, name, CHAMPION)
    champion_eval = version_evaluation(client, name, champion) if champion not in (None, version) else None
    rows = check_gates(version_evaluation(client, name, version), gates, champion_eval)
    passed = all(r["passed"] for r in rows)
    failing = [r["gate"] for r in rows if not r["passed"]]
    if not dry_run:
        client.set_registered_model_alias(name, CHALLENGER, version)
        if passed:
            move_champion(client, name, version)
        client.set_model_version_tag(name, version, "promotion.decision", "champion" if passed else "rejected")
        client.set_model_version_tag(name, version, "promotion.failed_gates", ",".join(failing) or "none")
    aliases = [str(a) for a in client.get_model_version(name, version).aliases]
    return {"model_name": name, "version": version, "promoted": passed, "failed_gates": failing, "gates": rows,
            "previous_champion": champion, "aliases": aliases, "dry_run": dry_run}


def rollback(client, name: str) -> tuple[str, str]:
    """Move `champion` back to `previous-champion`; returns (from_version, to_version)."""
    current, previous = alias_version(client, name, CHAMPION), alias_version(client, name, PREVIOUS)
    if previous is None:
        from components.errors import UserError

        raise UserError(f"model '{name}' has no '{PREVIOUS}' alias to roll back to")
    client.set_registered_model_alias(name, CHAMPION, previous)
    if current is not None:
        client.set_registered_model_alias(name, PREVIOUS, current)
    return current, previous
