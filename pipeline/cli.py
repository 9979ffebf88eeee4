"""Command line: `python -m pipeline run --config configs/default.yaml [--set a.b=v] [--dry-run]`.

Errors in input become one line on stderr and exit code 2; `--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys

from components.errors import UserError
from pipeline.ray_edge import keep_ray_on_loopback

ENV_OVERRIDES = {"MLFLOW_TRACKING_URI": "tracking.uri", "RAY_ADDRESS": "ray.address"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ganpipe", description="Distributed, imbalance-aware GAN pipeline.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the DAG: prepare -> train -> tune -> evaluate -> promote")
    run.add_argument("--config", required=True, help="YAML config, e.g. configs/default.yaml")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.lr_g=1e-4")
    run.add_argument("--dry-run", action="store_true", help="print the resolved config and the plan, then exit")
    run.add_argument("--force", action="append", default=[], metavar="STAGE", help="rerun STAGE even if cached")
    run.add_argument("--from", dest="from_stage", metavar="STAGE", help="rerun STAGE and everything downstream")
    run.add_argument("--only", metavar="STAGE", help="run just STAGE (its upstream outputs must be cached)")
    run.add_argument("--skip-corrupt", action="store_true", help="skip unreadable images (listed in the log)")
    run.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")

    tune = sub.add_parser("tune", help="run a hyperparameter campaign (prepare and train first, cached)")
    tune.add_argument("--config", required=True, help="YAML config, e.g. configs/default.yaml")
    tune.add_argument("--campaign", help="campaign file, e.g. configs/tune/lr-batch.yaml (sets tune.campaign)")
    tune.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. tune.steps=100")
    tune.add_argument("--resume", action="store_true", help="continue an interrupted campaign (Tuner.restore)")
    tune.add_argument("--force", action="store_true", help="discard an interrupted or cached campaign, start over")
    tune.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")

    submit = sub.add_parser("submit", help="run the pipeline as a Ray job on a cluster")
    submit.add_argument("--address", required=True, help="Ray dashboard address, e.g. http://127.0.0.1:8265")
    submit.add_argument("--config", required=True, help="config file, relative to the repository")
    submit.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    submit.add_argument("--follow", action="store_true", help="stream logs and exit with the job's status")
    submit.add_argument("--entrypoint-cpus", type=float, default=0.0, help="CPUs reserved for the driver")
    submit.add_argument("--image", help="container image for the job (instead of pip deps)")
    submit.add_argument("--pip", action="append", help="pip requirement to install for the job")
    submit.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")

    report = sub.add_parser("report", help="regenerate a pipeline run's HTML report from MLflow")
    report.add_argument("run_id", help="the pipeline's parent run id")
    report.add_argument("--out", default="report.html", help="output HTML file")
    _settings_arguments(report)

    promote = _registry_parser(sub, "promote", "judge a registered version by the gates; move aliases")
    promote.add_argument("--version", required=True, help="model version to judge")
    promote.add_argument("--dry-run", action="store_true", help="decide, but move no alias")
    _registry_parser(sub, "rollback", "move champion back to previous-champion")
    ev = _registry_parser(sub, "evaluate", "evaluate a saved model outside the DAG (quality, per-class, robustness)")
    ev.add_argument("--out", default="evaluation", help="output directory (evaluation.json, plots, per_class.csv)")
    gen = _registry_parser(sub, "generate", "write a per-class sample grid from a registered model")
    gen.add_argument("--per-class", type=int, default=8, help="samples per class")
    gen.add_argument("--seed", type=int, default=0, help="first noise seed")
    gen.add_argument("--out", default="grid.png", help="output PNG")
    return parser


def _registry_parser(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text)
    p.add_argument("--model", required=True,
                   help="registered model name (generate: a URI such as models:/NAME@champion; evaluate: that, a run id or a checkpoint path)")
    _settings_arguments(p)
    return p


def _settings_arguments(p: argparse.ArgumentParser) -> None:
    """What the registry and report commands need: a tracking URI; a config only to override settings."""
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--config", help="config file to take settings from (default: the config logged with the "
                                    "model's run, else built-in defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")


def env_overrides(environ=os.environ) -> list[str]:
    """MLFLOW_TRACKING_URI / RAY_ADDRESS as `--set` overrides (explicit --set flags still win)."""
    return [f"{key}={environ[var]}" for var, key in ENV_OVERRIDES.items() if environ.get(var)]


def cmd_run(args) -> int:
    from pipeline.config import dump_config, load_config
    from pipeline.dag import describe, stage_names

    flags = ["data.skip_corrupt=true"] if args.skip_corrupt else []
    cfg = load_config(args.config, env_overrides() + flags + args.set)
    from pipeline.runner import downstream_of

    for flag, names in (("--force", args.force), ("--from", [args.from_stage] if args.from_stage else []),
                        ("--only", [args.only] if args.only else [])):
        unknown = sorted(set(names) - set(stage_names()))
        if unknown:
            raise UserError(f"{flag} {unknown[0]}: no such stage; choose from {', '.join(stage_names())}")
    force = set(args.force) | (downstream_of(args.from_stage) if args.from_stage else set())
    force |= {args.only} if args.only else set()
    if args.dry_run:
        from pipeline.runner import plan

        print(dump_config(cfg))
        print("DAG:\n" + describe())
        print("Plan:\n" + "\n".join(f"  {name:<9} {status}" for name, status in plan(cfg, force)))
        return 0
    from pipeline.runner import run_pipeline

    summary = run_pipeline(cfg, force, args.only)
    if args.only:
        print(f"ran only {args.only}; parent run {summary['parent_run_id']}")
    else:
        print_summary(summary)
    return 0


def cmd_tune(args) -> int:
    import json
    from pathlib import Path

    from pipeline.config import load_config
    from pipeline.runner import run_pipeline

    campaign = [f"tune.campaign={args.campaign}"] if args.campaign else []
    cfg = load_config(args.config, env_overrides() + campaign + args.set)
    summary = run_pipeline(cfg, {"tune"} if args.force else set(), until="tune", resume=args.resume or args.force)
    out = Path(summary["stage_dirs"]["tune"])
    best = json.loads((out / "best_config.json").read_text())
    print(f"\nbest config (stability score {best['score']:.4g}): {json.dumps(best['config'])}")
    print(f"results table       : {out / 'results.csv'}")
    print(f"MLflow tune run     : {summary['stage_run_ids']['tune']}")
    return 0


def print_summary(s: dict) -> None:
    """The one end-of-run summary a user reads."""
    m = s["metrics"]
    print("\n=== pipeline summary ===")
    print(f"MLflow tracking URI : {s['tracking_uri']}")
    print(f"parent run id       : {s['parent_run_id']}")
    print(f"cached stages       : {', '.join(s['cached']) or 'none'}")
    print(f"registered model    : {s['model_name']} version {s['model_version']}")
    print(f"aliases             : {', '.join(s['aliases']) or 'none'} (promoted: {s['promoted']})")
    print(f"FCD                 : {m['fcd']:.2f} (real vs real {m['fcd_real_vs_real']:.2f}, ratio {m['fcd_ratio']:.1f}x)")
    print(f"class KL / recall   : {m['class_kl']:.4f} / {m['recall_mean']:.3f} ({m['classes_covered']:.0f} classes covered)")
    print(f"D accuracy          : clean {m['d_clean_accuracy']:.3f}, under FGSM {m['d_fgsm_accuracy']:.3f}")
    uri = s["tracking_uri"]
    print(f"report              : {s['report']}")
    if uri.startswith("sqlite:"):
        print(f"browse              : mlflow ui --backend-store-uri {uri}")


def _registry_commands() -> dict:
    from pipeline import registry_commands as rc

    return {"promote": rc.cmd_promote, "rollback": rc.cmd_rollback, "generate": rc.cmd_generate,
            "report": rc.cmd_report, "evaluate": rc.cmd_evaluate}


def cmd_submit(args) -> int:
    from pipeline.config import load_config
    from pipeline.submit import submit

    load_config(args.config, args.set)  # fail here, not on the cluster, if the config is invalid
    return submit(args.address, args.config, args.set, args.follow, args.entrypoint_cpus, args.image, args.pip)


COMMANDS = {"run": cmd_run, "tune": cmd_tune, "submit": cmd_submit}


def main(argv: list[str] | None = None) -> int:
    keep_ray_on_loopback()
    args = _parser().parse_args(argv)
    try:
        return {**COMMANDS, **_registry_commands()}[args.command](args)
    except UserError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
