"""evaluate: sample quality, per-class (minority) metrics and D robustness of the candidate generator.

Reads:  prepare's data/, tune's candidate/checkpoint.pt.
Writes: evaluation.json (schema-versioned; promote reads it), per_class.csv, samples.png, diversity.png,
        generated_classes.png, robustness_curves.png, nearest_neighbours.png; logs the candidate as an MLflow
        LoggedModel of this stage's run with the evaluation metrics linked to it (promote registers it). Its id
        stays out of the output files, which must depend only on what was measured.
"""
from __future__ import annotations

import mlflow

from components.evaluation import OUTPUT_FILES, evaluate_models
from components.privacy.accountant import privacy_summary
from components.registry import log_checkpoint_generator
from components.training.checkpoint import load_checkpoint, models_from_checkpoint
from pipeline.stages.context import StageContext


def run(ctx: StageContext) -> dict:
    ckpt = load_checkpoint(ctx.input("tune") / "candidate")
    G, D, _ = models_from_checkpoint(ckpt)
    result = evaluate_models(G, D, ctx.input("prepare") / "data", ctx.cfg.evaluate, ctx.work_dir / "cache",
                             ctx.out_dir, {"diverged": float(ckpt["diverged"]), "train_steps": int(ckpt["step"]),
                                           **privacy_summary(ckpt)})
    model = log_checkpoint_generator(ckpt, "candidate")
    mlflow.log_metrics({k: v for k, v in result.items() if isinstance(v, (int, float))}, model_id=model.model_id)
    for name in OUTPUT_FILES:
        if (ctx.out_dir / name).exists():
            mlflow.log_artifact(str(ctx.out_dir / name))
    return {"evaluation": ctx.out_dir / "evaluation.json", "model_id": model.model_id}
