"""promote: register the candidate generator, set `challenger`, and move `champion` if every gate passes.

Reads:  tune's candidate/checkpoint.pt, evaluate's evaluation.json.
Writes: promotion.json (each gate with value, threshold, pass/fail) and registry versions/aliases.
"""
from __future__ import annotations

import mlflow
from mlflow.tracking import MlflowClient

from components.registry import (CHALLENGER, CHAMPION, alias_version, check_gates, ensure_registered_model,
                                 generator_arch, log_generator, move_champion)
from components.training.checkpoint import load_checkpoint, models_from_checkpoint
from pipeline.stages.context import StageContext, read_json

SUMMARY_KEYS = ("fcd", "fcd_real_vs_real", "class_kl", "recall_mean", "d_fgsm_accuracy")


def champion_evaluation(client: MlflowClient, name: str) -> dict | None:
    """The champion's evaluation summary from its version tags, or None if there is no champion."""
    version = alias_version(client, name, CHAMPION)
    if version is None:
        return None
    tags = client.get_model_version(name, version).tags
    return {k: float(tags[f"eval.{k}"]) for k in SUMMARY_KEYS if f"eval.{k}" in tags}


def run(ctx: StageContext) -> dict:
    pc = ctx.cfg.promote
    evaluation = read_json(ctx.input("evaluate") / "evaluation.json")
    G, _, config = models_from_checkpoint(load_checkpoint(ctx.input("tune") / "candidate"))
    info = log_generator(G, generator_arch(G, config["model"]["g_base_channels"], config["model"]["g_norm"]))

    client = MlflowClient()
    ensure_registered_model(client, pc.model_name)
    previous = champion_evaluation(client, pc.model_name)
    version = mlflow.register_model(info.model_uri, pc.model_name,
                                    tags={f"eval.{k}": str(evaluation[k]) for k in SUMMARY_KEYS}).version
    client.set_registered_model_alias(pc.model_name, CHALLENGER, version)
    gates = check_gates(evaluation, pc.gates.model_dump(), previous)
    passed = all(g["passed"] for g in gates)
    if passed:
        move_champion(client, pc.model_name, version)
    decision = {"model_name": pc.model_name, "version": version, "promoted": passed, "gates": gates,
                "pipeline_run_id": ctx.parent_run_id,
                "aliases": client.get_model_version(pc.model_name, version).aliases}
    client.set_model_version_tag(pc.model_name, version, "promotion.decision", "champion" if passed else "rejected")
    client.set_model_version_tag(pc.model_name, version, "pipeline_run_id", ctx.parent_run_id)
    failing = [g["gate"] for g in gates if not g["passed"]]
    client.set_model_version_tag(pc.model_name, version, "promotion.failed_gates", ",".join(failing) or "none")
    ctx.write_json("promotion.json", decision)
    mlflow.log_artifact(str(ctx.out_dir / "promotion.json"))
    mlflow.log_metric("promoted", float(passed))
    for g in gates:
        print(f"  promote gate {g['gate']}: value {g['value']:.4g} threshold {g['threshold']:.4g} "
              f"{'pass' if g['passed'] else 'FAIL'}", flush=True)
    print(f"  promote: {pc.model_name} v{version} -> {', '.join(decision['aliases'])}", flush=True)
    return {"promotion": ctx.out_dir / "promotion.json"}
