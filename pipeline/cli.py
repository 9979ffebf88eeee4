"""Command line: `python -m pipeline run --config configs/default.yaml [--set a.b=v] [--dry-run]`.

Errors in input become one line on stderr and exit code 2; `--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys

from components.errors import RunFailed, UserError, environment_failure
from components.storage import redact
from pipeline import signals
from pipeline.ray_edge import keep_ray_on_loopback

ENV_OVERRIDES = {"MLFLOW_TRACKING_URI": "tracking.uri", "RAY_ADDRESS": "ray.address"}


# The DAG's stage names, here so that `--help` imports no stage code (tests check it against pipeline.dag).
STAGE_NAMES = ("prepare", "train", "tune", "evaluate", "promote")

ENVIRONMENT = """environment:
  MLFLOW_TRACKING_URI   tracking store; overrides tracking.uri (the registry and report commands need only this)
  RAY_ADDRESS           Ray cluster to join; overrides ray.address (unset: a local Ray on 127.0.0.1)
  RAY_AUTH_TOKEN        token for clusters with token auth (or ~/.ray/auth_token)
  GLIBC_TUNABLES        malloc settings of training processes; set it empty to keep glibc's defaults"""

EXAMPLES = {
    "run": """examples:
  ganpipe run --config configs/default.yaml
  ganpipe run --config configs/default.yaml --set data.source=image_folder --set data.path=/data/imgs \\
      --set data.channels=3 --set data.imbalance_ratio=1
  ganpipe run --config configs/default.yaml --dry-run       # resolved config, DAG and plan; runs nothing
  ganpipe run --config configs/default.yaml --from tune     # tune and everything after it""",
    "tune": """examples:
  ganpipe tune --config configs/default.yaml --campaign configs/tune/pbt.yaml
  ganpipe tune --config configs/default.yaml --resume       # continue a campaign stopped by Ctrl+C""",
    "submit": """examples:
  ganpipe submit --address http://127.0.0.1:8265 --config configs/cluster-gpu.yaml --follow
  ganpipe submit --address http://127.0.0.1:8265 --follow -- tune --config configs/cluster-gpu.yaml \\
      --campaign configs/tune/pbt.yaml
  ganpipe submit --address http://127.0.0.1:8265 -- promote --model ganpipe-digits-cluster --version 3""",
    "report": """examples:
  ganpipe report 0123456789abcdef0123456789abcdef --out report.html --tracking-uri sqlite:////abs/mlflow.db""",
    "promote": """examples:
  ganpipe promote --model ganpipe-digits --version 3 --dry-run""",
    "rollback": """examples:
  ganpipe rollback --model ganpipe-digits""",
    "evaluate": """examples:
  ganpipe evaluate --model models:/ganpipe-digits@champion --out evaluation/
  ganpipe evaluate --model outputs/stages/tune/<fingerprint>/candidate/checkpoint.pt --out evaluation/""",
    "generate": """examples:
  ganpipe generate --model models:/ganpipe-digits@champion --per-class 8 --out grid.png""",
}


class _Parser(argparse.ArgumentParser):
    """Usage errors are input errors too: one line and exit status 2, through main's UserError path."""

    def error(self, message):
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


def _sub(sub, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=summary, description=description, epilog=EXAMPLES[name],
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("ganpipe")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ganpipe", description="Distributed, imbalance-aware GAN pipeline on Ray and MLflow: "
                     "prepare -> train -> tune -> evaluate -> promote.", epilog=ENVIRONMENT,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"ganpipe {_version()}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    run = _sub(sub, "run", "run the DAG: prepare -> train -> tune -> evaluate -> promote",
               "Run every stage whose inputs changed; stages with unchanged config, code and inputs are reused.")
    run.add_argument("--config", required=True, help="YAML config, e.g. configs/default.yaml")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.lr_g=1e-4")
    run.add_argument("--dry-run", action="store_true", help="print the resolved config and the plan, then exit")
    run.add_argument("--force", action="append", default=[], choices=STAGE_NAMES, metavar="STAGE",
                     help=f"rerun STAGE even if cached, discarding its interrupted state ({', '.join(STAGE_NAMES)})")
    run.add_argument("--from", dest="from_stage", choices=STAGE_NAMES, metavar="STAGE",
                     help="rerun STAGE and everything downstream")
    run.add_argument("--only", choices=STAGE_NAMES, metavar="STAGE",
                     help="run just STAGE (its upstream outputs must be cached)")
    run.add_argument("--until", choices=STAGE_NAMES, metavar="STAGE",
                     help="stop after STAGE; the stages before it run or are reused as usual")
    run.add_argument("--verify", action="store_true",
                     help="re-read cached outputs and check their content digests (file sizes are always checked)")
    run.add_argument("--skip-corrupt", action="store_true", help="skip unreadable images (listed in the log)")
    run.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")

    tune = _sub(sub, "tune", "run a hyperparameter campaign (prepare and train first, cached)",
                "Run prepare and train (reused when unchanged), then a Ray Tune campaign scored by stability.")
    tune.add_argument("--config", required=True, help="YAML config, e.g. configs/default.yaml")
    tune.add_argument("--campaign", help="campaign file, e.g. configs/tune/lr-batch.yaml (sets tune.campaign)")
    tune.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. tune.steps=100")
    tune.add_argument("--resume", action="store_true", help="continue an interrupted campaign (Tuner.restore)")
    tune.add_argument("--force", action="store_true",
                      help="rerun tune even if cached, discarding an interrupted campaign (as `run --force tune`)")
    tune.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")

    submit = _sub(sub, "submit", "run a ganpipe command as a Ray job on a cluster",
                  "Submit a ganpipe command as a Ray job: `run` of --config by default (the whole DAG on the "
                  "cluster, one stage per Ray task), or any subcommand given after --.")
    submit.add_argument("--address", required=True, help="Ray dashboard address, e.g. http://127.0.0.1:8265")
    submit.add_argument("--config", help="config file for `run`, relative to the repository")
    submit.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for `run`")
    submit.add_argument("--follow", action="store_true", help="stream logs and exit with the job's status")
    submit.add_argument("--entrypoint-cpus", type=float, default=0.0, help="CPUs reserved for the driver")
    submit.add_argument("--image", help="container image for the job (instead of pip deps)")
    submit.add_argument("--pip", action="append", help="pip requirement to install for the job")
    submit.add_argument("--secrets-file", metavar="PATH",
                        help="a KEY=VALUE file readable on the cluster's nodes (mode 600) with the job's secrets "
                             "(MLFLOW_TRACKING_PASSWORD, AWS_SECRET_ACCESS_KEY, ...); only its path is sent")
    submit.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    submit.add_argument("job", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                        help="the ganpipe command the job runs, e.g. -- tune --config configs/default.yaml "
                             "--campaign configs/tune/pbt.yaml")

    report = _sub(sub, "report", "regenerate a pipeline run's HTML report from MLflow",
                  "Rebuild the HTML report of a pipeline run from its stages' MLflow artifacts.")
    report.add_argument("run_id", help="the pipeline's parent run id")
    report.add_argument("--out", default="report.html", help="output HTML file")
    _settings_arguments(report)

    promote = _registry_parser(sub, "promote", "judge a registered version by the gates; move aliases",
                               "Judge a registered version by the promotion gates of the config it was made under "
                               "(or --config) and move champion/challenger/previous-champion.")
    promote.add_argument("--version", required=True, help="model version to judge")
    promote.add_argument("--dry-run", action="store_true", help="decide, but move no alias")
    promote.add_argument("--fail-if-rejected", action="store_true",
                         help="exit with status 3 when a gate rejects the version (for CI)")
    _registry_parser(sub, "rollback", "move champion back to previous-champion",
                     "Move the champion alias back to the version that holds previous-champion.")
    ev = _registry_parser(sub, "evaluate", "evaluate a saved model outside the DAG (quality, per-class, robustness)",
                          "Evaluate a registered model, a run's generator or a checkpoint file on the data of the "
                          "config it was made under (or --config).")
    ev.add_argument("--out", default="evaluation", help="output directory (evaluation.json, plots, per_class.csv)")
    gen = _registry_parser(sub, "generate", "write a per-class sample grid from a registered model",
                           "Write a PNG grid, one row per class, sampled from a registered model.")
    gen.add_argument("--per-class", type=int, default=8, help="samples per class")
    gen.add_argument("--seed", type=int, default=0, help="first noise seed")
    gen.add_argument("--out", default="grid.png", help="output PNG")
    return parser


def _registry_parser(sub, name: str, help_text: str, description: str) -> argparse.ArgumentParser:
    p = _sub(sub, name, help_text, description)
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


def load_secrets_file(environ=os.environ) -> None:
    """In a submitted job: the secrets from the file GANPIPE_SECRETS_FILE names (KEY=VALUE lines) become
    environment variables of this process and the Ray workers it starts. The file must be private (mode 600)."""
    path = environ.get("GANPIPE_SECRETS_FILE")
    if not path:
        return
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        raise UserError(f"GANPIPE_SECRETS_FILE {path} does not exist on this node; put it on every node")
    if file.stat().st_mode & 0o077:
        raise UserError(f"secrets file {path} is readable by other users; chmod 600 {path}")
    for number, line in enumerate(file.read_text().splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            if not sep or not key.strip().isidentifier():
                raise UserError(f"secrets file {path} line {number}: expected KEY=VALUE")
            environ.setdefault(key.strip(), value.strip())


def env_overrides(environ=os.environ) -> list[str]:
    """MLFLOW_TRACKING_URI / RAY_ADDRESS as `--set` overrides (explicit --set flags still win)."""
    return [f"{key}={environ[var]}" for var, key in ENV_OVERRIDES.items() if environ.get(var)]


def cmd_run(args) -> int:
    from pipeline.config import dump_config, load_config
    from pipeline.dag import describe

    flags = ["data.skip_corrupt=true"] if args.skip_corrupt else []
    cfg = load_config(args.config, env_overrides() + flags + args.set)
    from pipeline.runner import downstream_of

    force = set(args.force) | (downstream_of(args.from_stage) if args.from_stage else set())
    force |= {args.only} if args.only else set()
    if args.dry_run:
        from pipeline.runner import plan

        print(dump_config(cfg))
        print("DAG:\n" + describe())
        print("Plan:\n" + "\n".join(f"  {name:<9} {status}" for name, status in plan(cfg, force)))
        return 0
    from pipeline.runner import run_pipeline

    if args.only and args.until:
        raise UserError("--only and --until do not go together: --only runs one stage, --until stops after one")
    summary = run_pipeline(cfg, force, args.only, args.until, verify=args.verify)
    if args.only:
        print(f"ran only {args.only}; parent run {summary['parent_run_id']}")
    elif args.until:
        print(f"stopped after {args.until}; parent run {summary['parent_run_id']}")
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
    print(f"MLflow tracking URI : {redact(s['tracking_uri'])}")
    print(f"parent run id       : {s['parent_run_id']}")
    print(f"cached stages       : {', '.join(s['cached']) or 'none'}")
    print(f"registered model    : {s['model_name']} version {s['model_version']}")
    print(f"aliases             : {', '.join(s['aliases']) or 'none'} (promoted: {s['promoted']})")
    print(f"FCD                 : {m['fcd']:.2f} (real vs real {m['fcd_real_vs_real']:.2f}, ratio {m['fcd_ratio']:.1f}x)")
    print(f"class KL / recall   : {m['class_kl']:.4f} / {m['recall_mean']:.3f} ({m['classes_covered']:.0f} classes covered)")
    if "diversity_mean" in m:
        print(f"diversity ratio     : {m['diversity_mean']:.2f} autoencoder (tail {m['tail_diversity']:.2f}), "
              f"{m['diversity_pixel_mean']:.2f} pixels; 1 = as varied as the data, 0 = one image per class")
    print(f"D accuracy          : clean {m['d_clean_accuracy']:.3f}, under FGSM {m['d_fgsm_accuracy']:.3f}")
    uri = redact(s["tracking_uri"])
    print(f"report              : {s['report']}")
    if uri.startswith("sqlite:"):
        print(f"browse              : mlflow ui --backend-store-uri {uri}")


def _registry_commands() -> dict:
    from pipeline import registry_commands as rc

    return {"promote": rc.cmd_promote, "rollback": rc.cmd_rollback, "generate": rc.cmd_generate,
            "report": rc.cmd_report, "evaluate": rc.cmd_evaluate}


def job_command(args) -> list[str]:
    """The ganpipe arguments a submitted job runs, checked here (usage and config) rather than on the cluster."""
    from pipeline.config import load_config

    job = args.job[1:] if args.job[:1] == ["--"] else args.job
    if job and (args.config or args.set):
        raise UserError("submit: give --config/--set for `run`, or a whole command after --, not both")
    if not job:
        if not args.config:
            raise UserError("submit: pass --config (to run the DAG) or a command after -- (see ganpipe submit --help)")
        job = ["run", "--config", args.config, *[x for o in args.set for x in ("--set", o)]]
    if job[0] == "submit":
        raise UserError("submit: a submitted job cannot submit another job")
    leaking = next((arg for arg in job if redact(arg) != arg), None)
    if leaking is not None:  # the entrypoint is part of the job record, in clear
        raise UserError(f"submit: {redact(leaking)} holds a credential, which the job record would show; pass "
                        "it through --secrets-file (AWS_SECRET_ACCESS_KEY, MLFLOW_TRACKING_PASSWORD, ...) instead")
    inner = _parser().parse_args(job)  # a usage error is one line here, not a failed job
    if getattr(inner, "config", None):
        load_config(inner.config, getattr(inner, "set", []))
    return job


def cmd_submit(args) -> int:
    from pipeline.submit import submit

    return submit(args.address, job_command(args), args.follow, args.entrypoint_cpus, args.image, args.pip,
                  args.secrets_file)


COMMANDS = {"run": cmd_run, "tune": cmd_tune, "submit": cmd_submit}


def main(argv: list[str] | None = None) -> int:
    keep_ray_on_loopback()
    signals.install()
    try:
        load_secrets_file()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        args = _parser().parse_args(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        return {**COMMANDS, **_registry_commands()}[args.command](args)
    except UserError as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RunFailed as err:
        if args.debug:
            raise
        print(f"failed: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # a full disk or an unreachable tracking server: one line, not a traceback
        failure = environment_failure(err)
        if failure is None or args.debug:
            raise
        print(f"failed: {failure}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        status = signals.exit_status()
        print("terminated" if status == 143 else "interrupted", file=sys.stderr)
        return status
