"""Quality benchmark: does the default recipe give good, stable, balanced samples on long-tailed digits?

Each recipe is a set of overrides on configs/default.yaml. It trains once, in this process, with the
pipeline's own loop (the one Ray Train workers run; one process with the whole global batch, two intra-op
threads), to 3x the default step budget, and is scored at every budget multiple by the evaluate stage's
own `evaluate_models` (evaluator CNN trained on the real train split, cached by data digest), so the 1x
and 3x rows come from the same run. Nothing here retunes a metric: the numbers are what the evaluate stage
would report.

    .venv/bin/python -m bench.quality                       # all recipes, 1x and 3x (about 15 min each)
    .venv/bin/python -m bench.quality --recipes default --budgets 1,3
    make quality                                            # the same as the first line

Writes bench/results/quality.json (one row per recipe and budget, with the quality targets next to them).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from components.data.prepare import prepare_dataset  # noqa: E402
from components.evaluation import evaluate_models  # noqa: E402
from components.training.checkpoint import models_from_checkpoint, state_to_dict  # noqa: E402
from components.training.loop import train_steps  # noqa: E402
from components.training.worker import build_worker_state  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.workers import build_worker_config  # noqa: E402

RESULTS = REPO / "bench" / "results"
DEFAULT_CONFIG = REPO / "configs" / "default.yaml"
# Each data set is a base config and overrides. color64 on the CPU keeps the default recipe and shrinks only
# the widths, so that one recipe and budget (1x and 3x, both scored) fits in about 30 minutes on 2 cores.
DATA_SETS: dict[str, tuple[Path, list[str]]] = {
    "digits": (DEFAULT_CONFIG, []),
    "color64": (DEFAULT_CONFIG, ["data.source=color_digits", "data.resolution=64", "data.channels=3",
                                 "model.g_base_channels=16", "model.d_base_channels=16"]),
    "color64-gpu": (REPO / "configs" / "color64-gpu.yaml", []),  # the document's widths, bf16, on a GPU
}
NO_REGULARISATION = ["model.d_norm=none", "loss.r1_gamma=0", "loss.lecam_lambda=0", "loss.diffaugment=[]",
                     "loss.ada_target=null", "loss.gsr_lambda=0", "loss.instance_noise=0", "train.ema_decay=0"]
RECIPES: dict[str, list[str]] = {
    "default": [],  # the base config's own recipe, as `make run` trains it
    "naive": ["data.rebalance=none", *NO_REGULARISATION],
    "balanced": ["data.rebalance=resample", *NO_REGULARISATION],
    # Resampling and spectral-norm D only: the recipe configs/default.yaml shipped before R1/LeCam/DiffAugment.
    "spectral": ["data.rebalance=resample", "model.d_norm=spectral", "loss.r1_gamma=0", "loss.lecam_lambda=0",
                 "loss.diffaugment=[]", "loss.ada_target=null", "loss.gsr_lambda=0"],
    # Fixed-strength DiffAugment: every D input augmented, from the first step.
    "full": ["data.rebalance=resample", "model.d_norm=spectral", "loss.r1_gamma=1.0", "loss.lecam_lambda=0.1",
             "loss.diffaugment=[translation,cutout,color]", "loss.ada_target=null", "loss.gsr_lambda=0",
             "train.ema_decay=0.999"],
    "gsr": ["loss.gsr_lambda=0.5"],  # the default recipe plus tail-class protection
    "resnet": ["model.family=resnet"],  # the default recipe on the residual family
}
TARGETS = {"class_matched_fcd_ratio_max": 3.0, "class_kl_max": 0.02, "tail_head_fcd_ratio_max": 1.5,
           "copy_share_max": 0.05, "fcd_at_3x_no_worse_than_1x": True}
KEYS = ("fcd", "fcd_real_vs_real", "fcd_ratio", "fcd_uniform_floor", "fcd_uniform_floor_ratio", "fcd_class_matched",
        "fcd_class_matched_ratio", "class_kl", "classes_covered", "recall_mean",
        "head_recall", "tail_recall", "head_fcd", "tail_fcd", "tail_head_fcd_ratio",
        "kid", "precision", "recall", "nn_distance_ratio_pixel", "copy_share_pixel", "nn_distance_ratio_feature",
        "copy_share_feature", "diversity_mean", "tail_diversity", "diverged", "epsilon", "delta", "noise_multiplier")
SUMMARY_KEYS = ("fcd_class_matched", "fcd_class_matched_ratio", "fcd_ratio", "class_kl", "tail_head_fcd_ratio",
                "head_fcd", "tail_fcd",
                "copy_share_pixel", "copy_share_feature", "diversity_mean", "tail_diversity", "train_seconds")


def run_recipe(name: str, overrides: list[str], budgets: list[int], base_steps: int, work: Path,
               config: Path = DEFAULT_CONFIG, device: torch.device = torch.device("cpu"), seed: int = 0,
               data: str = "digits", grids: Path | None = None) -> list[dict]:
    cfg = load_config(config, [*overrides, f"train.steps={max(budgets) * base_steps}", f"train.seed={seed}"])
    data_dir = work / f"data-{cfg.data.rebalance}"
    if not (data_dir / "manifest.json").exists():
        prepare_dataset(cfg.data, data_dir)
    loop_config = build_worker_config(cfg, data_dir, train_overrides={"num_workers": 1})
    torch.manual_seed(cfg.train.seed)
    state, train_cfg, loss = build_worker_state(loop_config, rank=0, world=1, wrap=lambda m: m.to(device),
                                                device=device)
    rows, t0 = [], time.perf_counter()
    for budget in sorted(budgets):
        train_steps(state, loss, train_cfg, budget * base_steps)
        print(f"quality bench: {data} {name} seed {seed} at {budget}x ({state.step} steps, "
              f"{time.perf_counter() - t0:.0f}s)", flush=True)
        out = work / f"{name}-{seed}-{budget}x"
        out.mkdir(parents=True, exist_ok=True)
        # The evaluate stage scores on the CPU; fp32 copies leave the training state untouched.
        G_eval, D_eval = (copy.deepcopy(m).float().cpu().eval() for m in (state.G_ema, state.D))
        if state.dp is not None:  # a copy of D would carry Opacus's hooks: rebuild it from the weights
            G_eval, D_eval, _ = models_from_checkpoint(state_to_dict(state, loop_config.resolved_config))
        private = {} if state.dp is None else {"epsilon": state.dp.epsilon(), "delta": state.dp.delta,
                                                "noise_multiplier": state.dp.sigma}
        result = evaluate_models(G_eval, D_eval, data_dir, cfg.evaluate, work / "cache", out,
                                 {"diverged": float(state.diverged), "train_steps": state.step, **private})
        if grids is not None:  # the evaluate stage's class grid (8 samples per class row), kept for the docs
            grids.mkdir(parents=True, exist_ok=True)
            shutil.copy(out / "samples.png", grids / f"{data}-{name}-seed{seed}-{budget}x.png")
        rows.append({"data": data, "recipe": name, "seed": seed, "budget": f"{budget}x", "steps": state.step,
                     "overrides": overrides, "train_seconds": round(time.perf_counter() - t0, 1),
                     **{k: result.get(k) for k in KEYS}})
        if state.diverged:
            break
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds of each recipe and budget (std 0 with one seed)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["recipe"], r["budget"]), []).append(r)
    out = []
    for (recipe, budget), group in groups.items():
        entry = {"recipe": recipe, "budget": budget, "seeds": sorted(r.get("seed", 0) for r in group)}
        for key in SUMMARY_KEYS:
            values = np.array([r[key] for r in group if r.get(key) is not None], dtype=float)
            if len(values):
                entry[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
        out.append(entry)
    return out


def verdicts(rows: list[dict]) -> dict:
    """Each target, per recipe, judged on the seed means (None where a budget or metric is missing)."""
    means = {(e["recipe"], e["budget"]): {k: v["mean"] for k, v in e.items() if isinstance(v, dict)}
             for e in summarise(rows)}
    out = {}
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        one, three = means.get((recipe, "1x")), means.get((recipe, "3x"))

        def at(m, key, bound):
            return None if m is None or key not in m else m[key] <= bound

        copies = lambda m: None if m is None else max(m.get("copy_share_pixel", 0.0),  # noqa: E731
                                                      m.get("copy_share_feature", 0.0)) <= TARGETS["copy_share_max"]
        out[recipe] = {
            "class_matched_fcd_ratio_at_1x_ok": at(one, "fcd_class_matched_ratio", TARGETS["class_matched_fcd_ratio_max"]),
            "class_kl_at_1x_ok": at(one, "class_kl", TARGETS["class_kl_max"]),
            "tail_head_fcd_at_1x_ok": at(one, "tail_head_fcd_ratio", TARGETS["tail_head_fcd_ratio_max"]),
            "tail_head_fcd_at_3x_ok": at(three, "tail_head_fcd_ratio", TARGETS["tail_head_fcd_ratio_max"]),
            "copy_share_ok": None if one is None else all(c for c in (copies(one), copies(three)) if c is not None),
            "fcd_3x_no_worse_than_1x_ok": None if one is None or three is None
            else three["fcd_class_matched"] <= one["fcd_class_matched"],
        }
    return out


def machine(device: torch.device) -> dict:
    info = {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
            "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def data_set_entry(rows: list[dict], meta: dict) -> dict:
    """One data set's block of quality.json: how it was run, every row, the seed summary and the verdicts."""
    return {**meta, "rows": rows, "summary": summarise(rows), "verdicts": verdicts(rows),
            "recipes_done": list(dict.fromkeys(r["recipe"] for r in rows))}


def write_data_set(out: Path, data: str, entry: dict) -> dict:
    """Replace one data set's block in `out`, keeping the others'."""
    result = json.loads(out.read_text()) if out.exists() else {}
    if "data_sets" not in result:
        result = {"data_sets": {}}
    result["targets"] = TARGETS
    result["data_sets"][data] = entry
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    return result


def main(recipes: list[str], budgets: list[int], out: Path, base_steps: int | None = None,
         config: Path | None = None, extra: list[str] = (), device: str = "cpu", threads: int = 2,
         time_budget_s: float | None = None, seeds: list[int] = (0,), data: str = "digits",
         grids: Path | None = None) -> dict:
    torch.set_num_threads(min(threads, os.cpu_count() or 1))
    dev = torch.device(device)
    preset_config, preset = DATA_SETS[data]
    config = config or preset_config
    extra = [*preset, *extra]
    base = base_steps or load_config(config, list(extra)).train.steps
    rows: list[dict] = []
    meta = {"machine": machine(dev), "config": str(config), "overrides": list(extra), "base_steps": base,
            "recipes_asked": recipes, "seeds_asked": list(seeds)}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in recipes:
            for seed in seeds:
                if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
                    print(f"quality bench: time budget {time_budget_s:.0f}s spent; {name} seed {seed} not run",
                          flush=True)
                    continue
                rows += run_recipe(name, [*extra, *RECIPES[name]], budgets, base, Path(tmp), config, dev, seed,
                                   data, grids)
                result = write_data_set(out, data, data_set_entry(rows, meta))  # a long run keeps what it has
    for line in summary_lines(result["data_sets"][data]):
        print(line, flush=True)
    print(json.dumps(result["data_sets"][data]["verdicts"], indent=2))
    return result


def merge(files: list[Path], out: Path) -> dict:
    """Per-run result files (e.g. seeds run side by side) into `out`, one block per data set."""
    by_data: dict[str, tuple[dict, list[dict]]] = {}
    for f in files:
        for data, entry in json.loads(f.read_text())["data_sets"].items():
            meta, rows = by_data.setdefault(data, ({k: v for k, v in entry.items() if k not in
                                                    ("rows", "summary", "verdicts", "recipes_done")}, []))
            rows += entry["rows"]
    result = {}
    for data, (meta, rows) in by_data.items():
        meta["recipes_asked"] = list(dict.fromkeys(r["recipe"] for r in rows))
        meta["seeds_asked"] = sorted({r["seed"] for r in rows})
        result = write_data_set(out, data, data_set_entry(rows, meta))
    return result


def _pm(entry: dict, key: str, fmt: str) -> str:
    v = entry.get(key)
    if v is None:
        return "–"
    return f"{v['mean']:{fmt}} ± {v['std']:{fmt}}" if len(entry["seeds"]) > 1 else f"{v['mean']:{fmt}}"


def summary_lines(entry: dict) -> list[str]:
    return [f"  {e['recipe']:<9} {e['budget']:<3} seeds {e['seeds']}: class-matched FCD "
            f"{_pm(e, 'fcd_class_matched_ratio', '.2f')}x  KL {_pm(e, 'class_kl', '.4f')}  tail/head "
            f"{_pm(e, 'tail_head_fcd_ratio', '.2f')}  copy {_pm(e, 'copy_share_pixel', '.3f')}/"
            f"{_pm(e, 'copy_share_feature', '.3f')}" for e in entry["summary"]]


def markdown_table(entry: dict) -> str:
    """The docs table of one data set: one line per recipe and budget, mean ± std over seeds."""
    lines = ["| recipe | budget | seeds | class-matched FCD ÷ real-vs-real | class KL | tail ÷ head intra-class FCD "
             "| head / tail intra-class FCD | copy share, pixels / features | diversity (tail) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in entry["summary"]:
        lines.append(f"| {e['recipe']} | {e['budget']} | {len(e['seeds'])} | {_pm(e, 'fcd_class_matched_ratio', '.2f')} "
                     f"| {_pm(e, 'class_kl', '.4f')} | {_pm(e, 'tail_head_fcd_ratio', '.2f')} | "
                     f"{_pm(e, 'head_fcd', '.0f')} / {_pm(e, 'tail_fcd', '.0f')} | "
                     f"{_pm(e, 'copy_share_pixel', '.3f')} / {_pm(e, 'copy_share_feature', '.3f')} | "
                     f"{_pm(e, 'diversity_mean', '.2f')} ({_pm(e, 'tail_diversity', '.2f')}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits", choices=list(DATA_SETS), help="data set preset (config + overrides)")
    parser.add_argument("--recipes", default="default,naive,full", help=f"comma-separated subset of {', '.join(RECIPES)}")
    parser.add_argument("--budgets", default="1,3", help="multiples of the default step budget to score")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds (train.seed)")
    parser.add_argument("--base-steps", type=int, help="the 1x budget (default: the config's train.steps)")
    parser.add_argument("--out", type=Path, default=RESULTS / "quality.json", help="result JSON (one block per data set)")
    parser.add_argument("--config", type=Path, help="base config the recipes override (default: the data set's)")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="override applied to every recipe (before the recipe's own)")
    parser.add_argument("--device", default="cpu", help="torch device to train on: cpu, cuda (scoring is on the CPU)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--time-budget-s", type=float, help="start no further run after this many seconds")
    parser.add_argument("--grids", type=Path, default=RESULTS / "quality_grids",
                        help="where each run's class sample grid is kept")
    parser.add_argument("--merge", type=Path, nargs="+", help="merge these result files into --out and exit")
    parser.add_argument("--table", type=Path, help="print the markdown tables of a result JSON and exit")
    args = parser.parse_args()
    if args.table:
        for name, block in json.loads(args.table.read_text())["data_sets"].items():
            print(f"\n{name}\n\n{markdown_table(block)}")
        sys.exit(0)
    if args.merge:
        merge(args.merge, args.out)
        sys.exit(0)
    unknown = set(args.recipes.split(",")) - set(RECIPES)
    if unknown:
        parser.error(f"--recipes: unknown {sorted(unknown)}; choose from {', '.join(RECIPES)}")
    main(args.recipes.split(","), [int(b) for b in args.budgets.split(",")], args.out, args.base_steps,
         args.config, args.extra, args.device, args.threads, args.time_budget_s,
         [int(s) for s in args.seeds.split(",")], args.data, args.grids)
