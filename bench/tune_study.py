"""Tune study: does a low stability score mean a better generator, and does early stopping keep the pick?

Every trial is a sampled setting of learning rates, batch size and regularisers on the long-tailed digits.
It trains from scratch to the same budget with the worker routine Ray Tune trials run (`run_worker`, the
campaign's TrialScorer reporting every `REPORT_EVERY` steps), never stopped early, and is then fully
evaluated by the evaluate stage's `evaluate_models`. The design trials (0-23) are what a score is designed
on; the held-out trials (24-35) only check it. The control is the default config itself.

    .venv/bin/python -m bench.tune_study warm                         # data, evaluator and autoencoder, once
    .venv/bin/python -m bench.tune_study run --trials 0,2,4 --out L0.jsonl --threads 1   # one lane per core
    .venv/bin/python -m bench.tune_study run --trials control,5 --seeds 1,2 --out L2.jsonl
    .venv/bin/python -m bench.tune_study analyse L0.jsonl L1.jsonl L2.jsonl   # -> bench/results/tune_study.json

The records behind the committed result are in bench/results/tune_study_runs.jsonl (`analyse` with no files
reads them).

The analysis (bench/tune_analysis.py) needs no training: it ranks, correlates and replays ASHA on the recorded
reports.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.quality import KEYS  # noqa: E402
from components.data.prepare import prepare_dataset  # noqa: E402
from components.data.reader import load_split  # noqa: E402
from components.data.shards import read_manifest  # noqa: E402
from components.evaluation import evaluate_models  # noqa: E402
from components.metrics.autoencoder import cached_autoencoder  # noqa: E402
from components.metrics.classifier import cached_classifier, classifier_cache_path, predict  # noqa: E402
from components.metrics.scoring_config import ScoringSpec, StabilityWeights  # noqa: E402
from components.training.worker import build_worker_state, run_worker  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.workers import build_worker_config  # noqa: E402

DEFAULT_CONFIG = REPO / "configs" / "default.yaml"
STEPS, REPORT_EVERY, WINDOW = 600, 50, 50
DESIGN, HELD_OUT = range(0, 24), range(24, 36)
SPACE_SEED = 27
RUNS = REPO / "bench" / "results" / "tune_study_runs.jsonl"
# What each report keeps: the score, every component it is made of, and the signals worth plotting.
REPORT_KEYS = ("step", "stability_score", "d_loss_std", "g_loss_std", "r_t_gap", "grad_spike_rate", "class_kl",
               "uncovered_share", "collapse", "fcd", "diverged", "diversity_pixel_mean", "r_t", "ada_p", "d_loss",
               "g_loss", "step_time_s")


def sampled_space(n: int = HELD_OUT.stop, seed: int = SPACE_SEED) -> list[list[str]]:
    """n settings, each a list of config overrides, drawn from the space of configs/tune/ttur-regularisation.yaml
    plus LeCam and adaptive augmentation on or off."""
    rng = np.random.default_rng(seed)
    log_uniform = lambda lo, hi: float(np.exp(rng.uniform(np.log(lo), np.log(hi))))  # noqa: E731
    out = []
    for _ in range(n):
        aug = bool(rng.integers(2))
        out.append([f"train.lr_g={log_uniform(5e-5, 2e-3):.3g}", f"train.lr_d={log_uniform(5e-5, 2e-3):.3g}",
                    f"train.batch_size={int(rng.choice([16, 32, 64]))}",
                    f"loss.r1_gamma={float(rng.choice([0.0, 1.0, 10.0]))}",
                    f"loss.lecam_lambda={float(rng.choice([0.0, 0.1]))}",
                    f"model.d_norm={rng.choice(['spectral', 'none'])}",
                    *([] if aug else ["loss.diffaugment=[]", "loss.ada_target=null"])])
    return out


def overrides_of(trial: str) -> list[str]:
    return [] if trial == "control" else sampled_space()[int(trial)]


def role_of(trial: str) -> str:
    return "control" if trial == "control" else "design" if int(trial) in DESIGN else "held_out"


def prepared(work: Path) -> tuple[Path, Path]:
    """The long-tailed digits as `make run` prepares them, and the evaluation cache (shared by every lane)."""
    cfg = load_config(DEFAULT_CONFIG)
    data_dir, cache = work / "data", work / "cache"
    if not (data_dir / "manifest.json").exists():
        prepare_dataset(cfg.data, data_dir)
    return data_dir, cache


def scoring_spec(data_dir: Path, cache: Path, work: Path) -> ScoringSpec:
    """The campaign's own spec (pipeline/stages/tune.py scoring_spec), with the real features always there,
    so every report carries the FCD term whatever its weight."""
    cfg = load_config(DEFAULT_CONFIG)
    manifest, ec = read_manifest(data_dir), cfg.evaluate
    clf = cached_classifier(cache, manifest["digest"], load_split(data_dir, "train"), manifest["num_classes"],
                            ec.classifier_steps, ec.seed)
    features = work / "real_features.npy"
    if not features.exists():
        feats, _ = predict(clf, load_split(data_dir, "val").images_float())
        np.save(features, feats.numpy())
    return ScoringSpec(window=WINDOW, weights=StabilityWeights(), divergence_bound=cfg.train.divergence_bound,
                       per_class=cfg.tune.coverage_per_class,
                       evaluator=str(classifier_cache_path(cache, manifest["digest"], ec.classifier_steps, ec.seed)),
                       real_features=str(features))


def warm(work: Path) -> None:
    data_dir, cache = prepared(work)
    scoring_spec(data_dir, cache, work)
    cfg, manifest = load_config(DEFAULT_CONFIG), read_manifest(data_dir)
    cached_autoencoder(cache, manifest["digest"], load_split(data_dir, "train"), manifest["num_classes"],
                       cfg.evaluate.autoencoder_steps, cfg.evaluate.seed)


class RecordingSession:
    """A trial's session that keeps every report instead of handing it to Tune, and never checkpoints."""

    rank, world = 0, 1

    def __init__(self):
        self.reports: list[dict[str, float]] = []

    def restore(self, state, loss) -> bool:
        return False

    def checkpoint_due(self, step: int, last_checkpoint: int, final: bool) -> bool:
        return False

    def annotate(self, state, metrics: dict[str, float], final: bool) -> dict:
        return metrics

    def rank_rngs(self, state) -> None:
        return None

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        self.reports.append({k: float(metrics[k]) for k in REPORT_KEYS if k in metrics})
        last = self.reports[-1]
        print(f"    step {int(last['step'])}: score {last['stability_score']:.3g}", flush=True)


def run_trial(trial: str, seed: int, work: Path) -> dict:
    data_dir, cache = prepared(work)
    overrides = overrides_of(trial)
    cfg = load_config(DEFAULT_CONFIG, [*overrides, f"train.steps={STEPS}", f"train.report_every={REPORT_EVERY}",
                                       f"train.seed={seed}"])
    config = build_worker_config(cfg, data_dir, train_overrides={"num_workers": 1}) \
        .with_overrides(scoring=scoring_spec(data_dir, cache, work))
    torch.manual_seed(seed)
    state, train_cfg, loss = build_worker_state(config, rank=0, world=1)
    session = RecordingSession()
    t0 = time.perf_counter()
    run_worker(config, session, state, train_cfg, loss)
    train_seconds = time.perf_counter() - t0
    quality: dict = {"diverged": float(state.diverged)}
    if not state.diverged:
        out = work / "eval" / f"{trial}-{seed}"
        out.mkdir(parents=True, exist_ok=True)
        G, D = (copy.deepcopy(m).float().cpu().eval() for m in (state.G_ema, state.D))
        result = evaluate_models(G, D, data_dir, cfg.evaluate, cache, out, {"diverged": 0.0, "train_steps": state.step})
        quality = {k: result.get(k) for k in KEYS}
    return {"trial": trial, "role": role_of(trial), "seed": seed, "overrides": overrides, "steps": state.step,
            "train_seconds": round(train_seconds, 1), "eval_seconds": round(time.perf_counter() - t0 - train_seconds, 1),
            "reports": session.reports, "quality": quality}


def run(trials: list[str], seeds: list[int], out: Path, work: Path) -> None:
    done = set()
    if out.exists():  # a lane restarted after an interruption skips what it has
        done = {(r["trial"], r["seed"]) for r in map(json.loads, out.read_text().splitlines())}
    for trial in trials:
        for seed in seeds:
            if (trial, seed) in done:
                continue
            print(f"tune study: trial {trial} seed {seed}: {' '.join(overrides_of(trial)) or 'the default config'}",
                  flush=True)
            record = run_trial(trial, seed, work)
            q = record["quality"]
            print(f"tune study: trial {trial} seed {seed}: score {record['reports'][-1]['stability_score']:.3g}, "
                  f"class-matched FCD {q.get('fcd_class_matched', float('nan')):.1f} "
                  f"({record['train_seconds']:.0f}s + {record['eval_seconds']:.0f}s)", flush=True)
            with out.open("a") as f:
                f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["warm", "run", "analyse"])
    parser.add_argument("files", nargs="*", type=Path, help="analyse: the lanes' JSONL files")
    parser.add_argument("--trials", default="", help="run: comma-separated trial indices or 'control'")
    parser.add_argument("--seeds", default="0", help="run: comma-separated training seeds")
    parser.add_argument("--out", type=Path, help="run: JSONL file the records are appended to; analyse: result JSON")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tune_study"), help="data and evaluator cache")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(min(args.threads, os.cpu_count() or 1))
    args.work.mkdir(parents=True, exist_ok=True)
    if args.command == "warm":
        warm(args.work)
    elif args.command == "run":
        run([t for t in args.trials.split(",") if t], [int(s) for s in args.seeds.split(",")], args.out, args.work)
    else:
        from bench.tune_analysis import analyse

        analyse(args.files or [RUNS], args.out or REPO / "bench" / "results" / "tune_study.json")
