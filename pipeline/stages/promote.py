"""promote: register the candidate generator, set `challenger`, and move `champion` if every gate passes.

Reads:  evaluate's evaluation.json, and the LoggedModel its run measured.
Writes: promotion.json (each gate with value, threshold, pass/fail) and registry versions/aliases.
"""
from __future__ import annotations

import hashlib
import json

import mlflow
from mlflow.tracking import MlflowClient

from components.promotion import decide, ensure_registered_model, summary_tags
from pipeline.stages.context import StageContext, read_json
from pipeline.tracking import registry_lock


def print_decision(decision: dict) -> None:
    """One line per gate, then the outcome."""
    for g in decision["gates"]:
        note = f" ({g['note']})" if g.get("note") else ""
        print(f"  promote gate {g['gate']}: value {g['value']:.4g} threshold {g['threshold']:.4g} "
              f"{'pass' if g['passed'] else 'FAIL'}{note}", flush=True)
    outcome = "champion" if decision["promoted"] else f"not promoted (failed: {', '.join(decision['failed_gates'])})"
    print(f"  promote: {decision['model_name']} v{decision['version']} -> {outcome}; aliases "
          f"{', '.join(decision['aliases']) or 'none'}", flush=True)


def evaluator_settings(cfg) -> str:
    """Digest of the evaluate section: two versions' FCDs compare only if it (and the data digest) match."""
    return hashlib.sha256(json.dumps(cfg.evaluate.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def registered_version(client, name: str, fingerprint: str) -> str | None:
    """The version an earlier attempt of this stage (same fingerprint) registered, if any."""
    found = [v for v in client.search_model_versions(f"name = '{name}'") if v.tags.get("fingerprint") == fingerprint]
    return str(min(int(v.version) for v in found)) if found else None


def evaluated_model_uri(client, evaluate_run_id: str) -> str:
    """models:/<id> of the LoggedModel the evaluate run measured (its metrics are linked to it)."""
    outputs = client.get_run(evaluate_run_id).outputs
    models = outputs.model_outputs if outputs is not None else []
    if not models:
        raise RuntimeError(f"evaluate run {evaluate_run_id} logged no model; rerun with --force evaluate")
    return f"models:/{models[-1].model_id}"


def run(ctx: StageContext) -> dict:
    pc = ctx.cfg.promote
    evaluation = read_json(ctx.input("evaluate") / "evaluation.json")
    client = MlflowClient()
    ensure_registered_model(client, pc.model_name)
    # Idempotent: a rerun after a crash between registering and publishing judges the version it made.
    version = registered_version(client, pc.model_name, ctx.fingerprint)
    if version is None:
        candidate = evaluated_model_uri(client, ctx.upstream_run_ids["evaluate"])
        tags = {**summary_tags(evaluation), "data_digest": evaluation.get("data_digest", ""),
                "evaluator_settings": evaluator_settings(ctx.cfg), "fingerprint": ctx.fingerprint,
                "pipeline_run_id": ctx.parent_run_id, "source_run_id": ctx.run_id}
        version = str(mlflow.register_model(candidate, pc.model_name, tags=tags).version)
    else:
        print(f"  promote: {pc.model_name} v{version} was registered for this fingerprint already; judging it",
              flush=True)
    decision = decide(client, pc.model_name, version, pc.gates, lock=registry_lock(ctx.tracking_uri, pc.model_name))
    ctx.write_json("promotion.json", decision)
    mlflow.log_artifact(str(ctx.out_dir / "promotion.json"))
    mlflow.log_metric("promoted", float(decision["promoted"]))
    print_decision(decision)
    return {"promotion": ctx.out_dir / "promotion.json", "model_name": pc.model_name, "model_version": version}
