"""What privacy costs: utility of DP-SGD training against epsilon on the long-tailed digits, tail classes apart.

Each level trains configs/private.yaml's recipe (DP-SGD on D, G on noise only, no class-balanced resampling)
to the same budget with a target epsilon. Two rows have no privacy (epsilon = inf): the same recipe with DP off,
and configs/default.yaml, the recipe a user gets without privacy. The training
and scoring are bench/quality.py's: the pipeline's own loop in this process, then the evaluate stage's
`evaluate_models`.

    .venv/bin/python -m bench.privacy --levels default,inf,4 --out A.json --threads 1   # one lane per core
    .venv/bin/python -m bench.privacy --levels 10,1 --out B.json --threads 1
    .venv/bin/python -m bench.privacy --merge A.json B.json                       # -> bench/results/privacy.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.quality import DEFAULT_CONFIG, machine, run_recipe  # noqa: E402

PRIVATE_CONFIG = REPO / "configs" / "private.yaml"
KEYS = ("epsilon", "delta", "noise_multiplier", "fcd_class_matched_ratio", "class_kl", "head_recall", "tail_recall",
        "tail_head_fcd_ratio", "head_fcd", "tail_fcd", "copy_share_pixel", "copy_share_feature",
        "nn_distance_ratio_pixel", "nn_distance_ratio_feature", "diversity_mean", "tail_diversity", "train_seconds",
        "steps", "diverged")


def level_run(level: str) -> tuple[Path, list[str]]:
    """(config, overrides) of a level. A number: that target epsilon at the run's budget. `inf`: the private
    recipe with privacy off. `default`: configs/default.yaml, the best recipe without privacy (epsilon inf)."""
    if level == "default":
        return DEFAULT_CONFIG, ["train.num_workers=1"]
    return PRIVATE_CONFIG, ["privacy.enabled=false"] if level == "inf" else [f"privacy.target_epsilon={float(level)}"]


def run(levels: list[str], steps: int, seed: int, out: Path, extra: list[str]) -> dict:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for level in levels:
            t0 = time.perf_counter()
            config, overrides = level_run(level)
            (row,) = run_recipe(f"epsilon={level}", [*extra, *overrides], [1], steps, Path(tmp), config, seed=seed)
            rows.append({"level": level, **{k: row.get(k) for k in KEYS}, "wall_seconds": round(time.perf_counter() - t0, 1)})
            print(f"privacy bench: epsilon {level}: {json.dumps(rows[-1])}", flush=True)
            write(out, rows, steps, seed, extra)
    return json.loads(out.read_text())


def write(out: Path, rows: list[dict], steps: int, seed: int, extra: list[str]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(torch.device("cpu")), "config": str(PRIVATE_CONFIG.relative_to(REPO)),
              "steps": steps, "seed": seed, "overrides": extra, "rows": rows}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=lambda v: None))
    tmp.replace(out)


def merge(files: list[Path], out: Path) -> dict:
    parts = [json.loads(f.read_text()) for f in files]
    order = {"default": math.inf, "inf": 1e300}
    rows = sorted((r for p in parts for r in p["rows"]), key=lambda r: -(order[r["level"]] if r["level"] in order else float(r["level"])))
    write(out, rows, parts[0]["steps"], parts[0]["seed"], parts[0]["overrides"])
    return json.loads(out.read_text())


def markdown_table(result: dict) -> str:
    def f(v, spec):
        return "–" if v is None else format(v, spec)

    lines = ["| ε (achieved) | noise σ | class-matched FCD ÷ real-vs-real | class KL | head / tail recall | "
             "tail ÷ head intra-class FCD | copy share (features) | NN distance ratio (features) | train s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        eps = {"default": "∞: the default recipe", "inf": "∞: this recipe, DP off"}.get(
            r["level"], f"{r['level']} ({f(r['epsilon'], '.2f')})")
        lines.append(f"| {eps} | {f(r['noise_multiplier'], '.2f')} | {f(r['fcd_class_matched_ratio'], '.2f')} | "
                     f"{f(r['class_kl'], '.3f')} | {f(r['head_recall'], '.2f')} / {f(r['tail_recall'], '.2f')} | "
                     f"{f(r['tail_head_fcd_ratio'], '.2f')} | {f(r['copy_share_feature'], '.3f')} | "
                     f"{f(r['nn_distance_ratio_feature'], '.2f')} | {f(r['train_seconds'], '.0f')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="default,inf,10,4,1",
                        help="comma-separated target epsilons; inf: this recipe with privacy off; default: default.yaml")
    parser.add_argument("--steps", type=int, default=1000, help="training steps of every level")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "privacy.json")
    parser.add_argument("--merge", type=Path, nargs="+", help="merge these result files into --out and exit")
    parser.add_argument("--table", type=Path, help="print the docs table of a result file and exit")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(json.loads(args.table.read_text())))
        sys.exit(0)
    if args.merge:
        print(markdown_table(merge(args.merge, args.out)))
        sys.exit(0)
    torch.set_num_threads(min(args.threads, os.cpu_count() or 1))
    run(args.levels.split(","), args.steps, args.seed, args.out, args.extra)
