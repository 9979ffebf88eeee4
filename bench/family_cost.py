"""What each model family costs per training step on this machine, with the default recipe.

For each data set (32x32 grey digits, 64x64 RGB color_digits) and family (seed, resnet) at the widths the
quality benchmark uses, the pipeline's own loop trains a few warm-up steps and then times `--steps` more,
in one process, one after the other on the same machine. Writes bench/results/family_cost.json.

    .venv/bin/python -m bench.family_cost --steps 20 --threads 1
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.quality import DATA_SETS, machine  # noqa: E402
from components.data.prepare import prepare_dataset  # noqa: E402
from components.training.loop import train_steps  # noqa: E402
from components.training.worker import build_worker_state  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.workers import build_worker_config  # noqa: E402

CASES = {  # (data set, label): overrides on the data set's preset
    ("digits", "seed, width 32"): [],
    ("digits", "resnet, width 16"): ["model.family=resnet", "model.g_base_channels=16", "model.d_base_channels=16"],
    ("color64", "seed, width 16"): [],
    ("color64", "resnet, width 16"): ["model.family=resnet"],
}


def step_ms(overrides: list[str], config: Path, work: Path, warmup: int, steps: int) -> dict:
    cfg = load_config(config, overrides)
    data_dir = work / f"data-{cfg.data.source}-{cfg.data.resolution}"
    if not (data_dir / "manifest.json").exists():
        prepare_dataset(cfg.data, data_dir)
    state, train_cfg, loss = build_worker_state(build_worker_config(cfg, data_dir, train_overrides={"num_workers": 1}),
                                                rank=0, world=1)
    train_steps(state, loss, train_cfg, warmup)
    t0 = time.perf_counter()
    train_steps(state, loss, train_cfg, warmup + steps)
    params = sum(p.numel() for m in (state.G, state.D) for p in m.parameters())
    return {"ms_per_step": round(1000 * (time.perf_counter() - t0) / steps, 1), "parameters": params}


def main(steps: int, warmup: int, threads: int, out: Path) -> dict:
    torch.set_num_threads(threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for (data, label), extra in CASES.items():
            config, preset = DATA_SETS[data]
            row = {"data": data, "model": label, **step_ms([*preset, *extra], config, Path(tmp), warmup, steps)}
            print(f"family cost: {data:<8} {label:<17} {row['ms_per_step']:8.1f} ms/step  "
                  f"{row['parameters'] / 1e6:.2f}M parameters", flush=True)
            rows.append(row)
    for data in dict.fromkeys(r["data"] for r in rows):
        seed, resnet = (r for r in rows if r["data"] == data)
        resnet["cost_vs_seed"] = round(resnet["ms_per_step"] / seed["ms_per_step"], 2)
    result = {"machine": machine(torch.device("cpu")), "threads": threads, "steps": steps, "warmup": warmup,
              "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "family_cost.json")
    args = parser.parse_args()
    main(args.steps, args.warmup, args.threads, args.out)
