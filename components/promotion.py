"""Promotion through the MLflow Model Registry: gates, aliases, rollback. No version is ever deleted.

Each version carries its evaluation summary as `eval.*` tags, and the data digest and evaluator settings it
was measured with, so any version can be judged later by the same gates (`ganpipe promote --model NAME
--version V`) and two versions are compared only where their numbers mean the same thing.

Alias moves are compare-and-swap: the champion a decision was made against must still be champion when the
aliases move (`lock` serialises deciders that share a store; the check catches the rest). Every move is
recorded as version tags, which is what rollback walks back along.
"""
from __future__ import annotations

import contextlib
import math
import operator
import time

import mlflow

from components.promotion_config import GatesConfig

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous-champion"
SUMMARY_KEYS = ("fcd", "fcd_real_vs_real", "fcd_ratio", "fcd_class_matched", "fcd_class_matched_ratio", "kid",
                "class_kl", "recall_mean", "tail_recall", "head_recall", "tail_head_fcd_ratio", "d_fgsm_accuracy",
                "copy_share_feature", "diversity_mean", "tail_diversity", "diversity_pixel_mean", "diverged",
                "epsilon", "delta")
CONTEXT_TAGS = ("data_digest", "evaluator_settings")  # what an FCD value is relative to

# (gate, threshold key in the gates config, evaluation key, passes(value, threshold))
THRESHOLD_GATES = (
    ("max_fcd_ratio", "max_fcd_ratio", "fcd_class_matched_ratio", operator.le),
    ("max_fcd", "max_fcd", "fcd", operator.le),
    ("max_class_kl", "max_class_kl", "class_kl", operator.le),
    ("min_tail_recall", "min_tail_recall", "tail_recall", operator.ge),
    ("min_d_fgsm_accuracy", "min_d_fgsm_accuracy", "d_fgsm_accuracy", operator.ge),
    # A low FCD is also what memorising the training set scores: do not promote a copier.
    ("max_copy_share", "max_copy_share", "copy_share_feature", operator.le),
    # A classifier's features cannot see a class collapse to one image; the autoencoder's diversity can.
    ("min_diversity_ratio", "min_diversity_ratio", "diversity_mean", operator.ge),
    ("min_tail_diversity_ratio", "min_tail_diversity_ratio", "tail_diversity", operator.ge),
    ("max_epsilon", "max_epsilon", "epsilon", operator.le),
)


def check_gates(evaluation: dict, gates: GatesConfig, champion_evaluation: dict | None,
                comparable: bool = True) -> list[dict]:
    """Each gate as {gate, value, threshold, passed[, note]}; a gate whose threshold is None is not checked, and a
    missing or non-finite metric fails its gate. `comparable`: the champion was measured on the same data with
    the same evaluator, so raw FCDs compare; otherwise their ratios to real-vs-real do."""
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
    if champion_evaluation is not None:
        rows.append(_beats_champion(evaluation, gates, champion_evaluation, comparable))
    return rows


def _beats_champion(evaluation: dict, gates: GatesConfig, champion: dict, comparable: bool) -> dict:
    if comparable:
        bar = champion.get("fcd", math.nan) - gates.min_improvement
        value = float(evaluation.get("fcd", math.nan))
        return {"gate": "beats_champion_fcd", "value": value, "threshold": bar,
                "passed": math.isfinite(value) and math.isfinite(bar) and value < bar}
    # Another data set or evaluator: raw FCDs are on different scales (a retrained evaluator alone moves them
    # a lot); each version's FCD relative to its own real-vs-real is what still compares.
    key = "fcd_class_matched_ratio" if "fcd_class_matched_ratio" in champion else "fcd_ratio"
    bar, value = float(champion.get(key, math.nan)), float(evaluation.get(key, math.nan))
    note = (f"champion measured on other data or with another evaluator: compared {key}" if math.isfinite(bar)
            else "champion measured on other data or with another evaluator and has no FCD ratio: not comparable")
    return {"gate": f"beats_champion_{key}", "value": value, "threshold": bar, "note": note,
            "passed": math.isfinite(value) and math.isfinite(bar) and value < bar}


def summary_tags(evaluation: dict) -> dict[str, str]:
    """`eval.*` version tags from an evaluation.json."""
    return {f"eval.{k}": str(evaluation[k]) for k in SUMMARY_KEYS if k in evaluation}


def version_evaluation(client, name: str, version: str) -> dict:
    """The evaluation summary stored on a version's tags."""
    tags = client.get_model_version(name, version).tags
    return {k: float(tags[f"eval.{k}"]) for k in SUMMARY_KEYS if f"eval.{k}" in tags}


def comparable(client, name: str, version: str, other: str) -> bool:
    """Whether two versions were evaluated on the same data digest with the same evaluator settings."""
    a, b = client.get_model_version(name, version).tags, client.get_model_version(name, other).tags
    return all(a.get(k) and a.get(k) == b.get(k) for k in CONTEXT_TAGS)


def alias_version(client, name: str, alias: str) -> str | None:
    """The version behind `alias`, or None."""
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def ensure_registered_model(client, name: str) -> None:
    """Create the registered model if it does not exist yet (another process may be creating it too)."""
    if not client.search_registered_models(filter_string=f"name = '{name}'"):
        try:
            client.create_registered_model(name)
        except mlflow.exceptions.MlflowException:
            if not client.search_registered_models(filter_string=f"name = '{name}'"):
                raise


class ChampionMoved(Exception):
    """The champion changed between reading it and moving the aliases."""


def _set_aliases(client, name: str, expected_champion: str | None, moves: dict[str, str | None]) -> None:
    """Move aliases (None deletes one) if `champion` is still `expected_champion`; else ChampionMoved."""
    if alias_version(client, name, CHAMPION) != expected_champion:
        raise ChampionMoved(name)
    for alias, version in moves.items():
        if version is None:
            with contextlib.suppress(mlflow.exceptions.MlflowException):
                client.delete_registered_model_alias(name, alias)
        else:
            client.set_registered_model_alias(name, alias, version)


def gate_table(decision: dict) -> str:
    """The decision as a Markdown table, for the version's description in the registry UI."""
    lines = [f"**Promotion: {'champion' if decision['promoted'] else 'rejected'}** "
             f"(against champion {decision['previous_champion'] or 'none'})", "",
             "| gate | value | threshold | result |", "|---|---|---|---|"]
    for g in decision["gates"]:
        lines.append(f"| {g['gate']} | {g['value']:.4g} | {g['threshold']:.4g} | {'pass' if g['passed'] else 'FAIL'} |")
    lines += [f"\n{g['gate']}: {g['note']}" for g in decision["gates"] if g.get("note")]
    return "\n".join(lines)


def decide(client, name: str, version: str, gates: GatesConfig, dry_run: bool = False,
           lock=contextlib.nullcontext) -> dict:
    """Judge `version` by the gates against the current champion; unless dry_run, set `challenger`, move
    `champion` if every gate passes, and record the decision as version tags and description. `lock()`:
    a context manager that excludes other deciders on this registry while the aliases move."""
    version = str(version)
    with lock():
        for _ in range(5):  # retried only if another decider without the lock moved the champion meanwhile
            champion = alias_version(client, name, CHAMPION)
            other = champion if champion not in (None, version) else None
            champion_eval = version_evaluation(client, name, other) if other else None
            rows = check_gates(version_evaluation(client, name, version), gates, champion_eval,
                               comparable(client, name, version, other) if other else True)
            passed = all(r["passed"] for r in rows)
            failing = [r["gate"] for r in rows if not r["passed"]]
            if dry_run:
                break
            moves = {CHALLENGER: version}
            if passed and champion != version:
                moves.update({CHAMPION: version, PREVIOUS: champion})
            try:
                _set_aliases(client, name, champion, moves)
                break
            except ChampionMoved:
                time.sleep(0.2)
        else:
            raise ChampionMoved(f"model '{name}': the champion kept moving while deciding version {version}")
        aliases = [str(a) for a in client.get_model_version(name, version).aliases]
        decision = {"model_name": name, "version": version, "promoted": passed, "failed_gates": failing,
                    "gates": rows, "previous_champion": champion, "aliases": aliases, "dry_run": dry_run}
        if not dry_run:
            tags = {"promotion.decision": "champion" if passed else "rejected",
                    "promotion.failed_gates": ",".join(failing) or "none",
                    "promotion.replaced": champion if passed and champion and champion != version else "none",
                    "promotion.decided_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            for key, value in tags.items():
                client.set_model_version_tag(name, version, key, value)
            client.update_model_version(name, version, description=gate_table(decision))
    return decision


def rollback(client, name: str, lock=contextlib.nullcontext) -> tuple[str, str]:
    """Move `champion` back to `previous-champion`; returns (from_version, to_version).

    The demoted version is tagged `promotion.decision=rolled_back` and never comes back through a rollback;
    `previous-champion` moves one step further back along the `promotion.replaced` chain (skipping versions
    that were rolled back or failed their gates), so a second rollback goes further back, never forward."""
    from components.errors import UserError

    with lock():
        current, previous = alias_version(client, name, CHAMPION), alias_version(client, name, PREVIOUS)
        if previous is None:
            raise UserError(f"model '{name}' has no '{PREVIOUS}' alias to roll back to")
        if _decision(client, name, previous) not in ("champion", None):
            raise UserError(f"model '{name}': version {previous} ({PREVIOUS}) was "
                            f"{_decision(client, name, previous)}; it will not be made champion again")
        _set_aliases(client, name, current, {CHAMPION: previous, PREVIOUS: _earlier_champion(client, name, previous)})
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if current is not None:
            client.set_model_version_tag(name, current, "promotion.decision", "rolled_back")
            client.set_model_version_tag(name, current, "rollback.at", stamp)
            client.set_model_version_tag(name, current, "rollback.to", previous)
        client.set_model_version_tag(name, previous, "rollback.restored_at", stamp)
        client.set_model_version_tag(name, previous, "rollback.restored_from", current or "none")
    return current, previous


def _decision(client, name: str, version: str) -> str | None:
    return client.get_model_version(name, version).tags.get("promotion.decision")


def _earlier_champion(client, name: str, version: str) -> str | None:
    """The champion `version` replaced, or the one before that, ...: the first that is still fit to return."""
    seen = {version}
    replaced = client.get_model_version(name, version).tags.get("promotion.replaced", "none")
    while replaced not in ("none", "") and replaced not in seen:
        if _decision(client, name, replaced) == "champion":
            return replaced
        seen.add(replaced)
        replaced = client.get_model_version(name, replaced).tags.get("promotion.replaced", "none")
    return None
