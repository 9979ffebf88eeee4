"""promote: register the candidate generator, set `challenger`, and move `champion` if every gate passes.

Reads:  tune's candidate/checkpoint.pt, evaluate's evaluation.json, prepare's manifest (data digest).
Writes: promotion.json (each gate with value, threshold, pass/fail) and registry versions/aliases.
"""
from __future__ import annotations

import mlflow
from mlflow.tracking import MlflowClient

from components.promotion import decide, ensure_registered_model, summary_tags
from components.registry import log_checkpoint_generator
from components.training.checkpoint import load_checkpoint
from pipeline.stages.context import StageContext, read_json


def print_decision(decision: dict) -> None:
    """One line per gate, then the outcome."""
    for g in decision["gates"]:
        print(f"  promote gate {g['gate']}: value {g['value']:.4g} threshold {g['threshold']:.4g} "
              f"{'pass' if g['passed'] else 'FAIL'}", flush=True)
    outcome = "champion" if decision["promoted"] else f"not promoted (failed: {', '.join(decision['failed_gates'])})"
    print(f"  promote: {decision['model_name']} v{decision['version']} -> {outcome}; aliases "
          f"{', '.join(decision['aliases']) or 'none'}", flush=True)


def run(ctx: StageContext) -> dict:
    pc = ctx.cfg.promote
    evaluation = read_json(ctx.input("evaluate") / "evaluation.json")
    info = log_checkpoint_generator(load_checkpoint(ctx.input("tune") / "candidate"))

    client = MlflowClient()
    ensure_registered_model(client, pc.model_name)
    tags = {**summary_tags(evaluation), "data_digest": evaluation.get("data_digest", ""),
            "pipeline_run_id": ctx.parent_run_id, "source_run_id": ctx.run_id}
    version = mlflow.register_model(info.model_uri, pc.model_name, tags=tags).version
    decision = decide(client, pc.model_name, str(version), pc.gates)
    ctx.write_json("promotion.json", decision)
    mlflow.log_artifact(str(ctx.out_dir / "promotion.json"))
    mlflow.log_metric("promoted", float(decision["promoted"]))
    print_decision(decision)
    return {"promotion": ctx.out_dir / "promotion.json", "model_name": pc.model_name, "model_version": version}
