"""Does within-class collapse show? The user's case from the metrics issue, rebuilt: a long-tailed RGB image
folder (10 classes, each digit in its own colour on a noisy dark background, 32x32, 178 images falling to
18), through the whole DAG with configs/default.yaml, as a user would run it.

Writes the folder under a temp dir, runs `pipeline run`, and collects from the evaluation: the
classifier-feature numbers that looked good (class-matched FCD ratio, class KL, recall), and the
within-class diversity in the autoencoder's space and in pixels, per class and head/tail, with the
generated grid annotated by diversity (diversity.png, copied next to the JSON).

    python -m bench.collapse_check            # about 4 minutes on 2 cores
    python -m bench.collapse_check --set loss.r1_gamma=0 ... --out bench/results/collapse_check_spectral.json
Writes bench/results/collapse_check.json and bench/results/collapse_check_diversity.png (or --out's names).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

COUNTS = [178, 138, 107, 83, 64, 50, 39, 30, 23, 18]


def write_folder(root: Path, seed: int = 0) -> Path:
    """root/class_<c>/<n>.png: digit c in its own hue on a dark noisy background, long-tailed by COUNTS."""
    import colorsys

    from PIL import Image

    from components.data.config import DataConfig
    from components.data.sources import load_digits_source
    from components.data.transforms import resize_square

    digits = load_digits_source(DataConfig())
    glyphs = resize_square(digits.images_nhwc, 32).astype(np.float32) / 255.0  # (N, 32, 32, 1)
    rng = np.random.default_rng(seed)
    for c, n in enumerate(COUNTS):
        colour = np.array(colorsys.hsv_to_rgb(c / len(COUNTS), 0.8, 1.0))
        pick = np.flatnonzero(digits.labels == c)
        if len(pick) < n:
            raise ValueError(f"class {c}: {n} images asked, {len(pick)} glyphs")
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, g in enumerate(glyphs[pick[:n]]):
            background = rng.uniform(0.0, 0.25, (32, 32, 3))
            image = g * colour + (1 - g) * background
            Image.fromarray(np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root


def main(out: Path, extra: list[str] = ()) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = write_folder(tmp / "folder")
        sets = [f"work_dir={tmp / 'outputs'}", f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
                f"tracking.artifact_root={tmp / 'mlartifacts'}", "data.source=image_folder", f"data.path={folder}",
                "data.channels=3", "data.imbalance_ratio=1", "promote.model_name=collapse-check", *extra]
        cmd = [sys.executable, "-m", "pipeline", "run", "--config", "configs/default.yaml",
               *[a for s in sets for a in ("--set", s)]]
        env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"pipeline run failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        evaluation_file = next((tmp / "outputs").glob("**/evaluate/*/evaluation.json"), None) or \
            next((tmp / "outputs").glob("**/evaluation.json"))
        ev = json.loads(evaluation_file.read_text())
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(evaluation_file.parent / "diversity.png", out.with_name(out.stem + "_diversity.png"))
    keys = ("fcd_class_matched_ratio", "class_kl", "recall_mean", "tail_head_fcd_ratio", "copy_share_feature",
            "recall", "coverage", "fd_ae_class_matched_ratio", "recall_ae", "coverage_ae",
            "diversity_mean", "head_diversity", "tail_diversity", "diversity_pixel_mean", "head_diversity_pixel",
            "tail_diversity_pixel")
    command = " ".join(["python -m bench.collapse_check", *[f"--set {s}" for s in extra]])
    result = {"command": command, "folder": {"classes": 10, "counts": COUNTS},
              "config": "configs/default.yaml + image_folder, channels 3, imbalance_ratio 1", "overrides": list(extra),
              "metrics": {k: ev.get(k) for k in keys},
              "per_class": {c: {"diversity": ev.get(f"diversity_class_{c}"),
                                "diversity_pixel": ev.get(f"diversity_pixel_class_{c}")} for c in range(10)},
              "summary_lines": [line for line in done.stdout.splitlines() if "diversity" in line.lower()]}
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["metrics"], indent=2))
    return result


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="config override after the folder's (e.g. another recipe)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "collapse_check.json")
    args = parser.parse_args()
    main(args.out, args.extra)
