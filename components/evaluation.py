"""Evaluation of a generator (and its discriminator, when given) against prepared data: quality on the
evaluator's features, per-class and head/tail metrics, a copying check and robustness curves. The evaluate
stage, `ganpipe evaluate` and bench/quality.py all call evaluate_models.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import torch

from components.data.reader import SplitTensors, load_split
from components.data.shards import read_manifest
from components.evaluation_config import EvaluateConfig
from components.metrics import QUALITY_METRICS
from components.metrics.autoencoder import cached_autoencoder, encode, reconstruction_mse
from components.metrics.classifier import cached_classifier, predict
from components.metrics.robustness import classifier_robustness, d_robustness, g_robustness
from components.plots import (bar_chart, class_sample_grid, labelled_class_rows, nearest_neighbour_grid,
                              robustness_figure)

EVALUATION_SCHEMA_VERSION = 1


@torch.no_grad()
def generate_per_class(G, num_classes: int, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """per_class samples of every class from fixed-seed noise: (images, requested labels)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(num_classes).repeat_interleave(per_class)
    z = torch.randn(len(y), G.z_dim, generator=gen)
    return torch.cat([G.generate(z[i:i + 500], y[i:i + 500]) for i in range(0, len(y), 500)]), y


def robustness_curves(ec, D, G, clf, real, y_real, fake, y_fake) -> dict[str, list[dict]]:
    """D under FGSM and PGD, G's reconstruction under PGD, and the evaluator's reference curve."""
    eps_list = sorted({0.0, *ec.robustness_eps, ec.fgsm_eps})
    d_rows = [] if D is None else [row for attack in ("fgsm", "pgd")
                                   for row in d_robustness(D, real, y_real, fake, y_fake, eps_list, attack, ec.pgd_steps)]
    return {"discriminator": d_rows,
            "generator": g_robustness(G, clf, real, y_real, eps_list, ec.pgd_steps),
            "classifier": classifier_robustness(clf, real, y_real, eps_list, ec.pgd_steps)}


def head_and_tail(train_counts: list[int]) -> tuple[list[int], list[int]]:
    """Classes in the most frequent third and the rarest third of the training split (at least one each)."""
    order = sorted(range(len(train_counts)), key=lambda c: (-train_counts[c], c))
    third = max(1, len(order) // 3)
    return order[:third], order[-third:]


def undefined_class_notes(result: dict, names: list[str], train_counts: list[int], generated: int) -> list[str]:
    """One sentence per class whose intra-class FCD is undefined, saying why and where it was left out."""
    return [f"class {names[c]}: intra-class FCD undefined ({train_counts[c]} training image(s) and {generated} "
            "generated; it needs 2 of each), left out of the head/tail FCD means"
            for c in range(len(names)) if math.isnan(result[f"fcd_class_{c}"])]


def write_per_class_csv(path: Path, result: dict, names: list[str], train_counts: list[int]) -> None:
    """class, name, train_count, generated_share, recall, intra_class_fcd, intra_class_fd_ae, diversity (the
    autoencoder's), diversity_pixel (empty cells: undefined), note."""
    def cell(value: float) -> str:
        return "" if math.isnan(value) else f"{value:.4f}"

    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["class", "name", "train_count", "generated_share", "recall", "intra_class_fcd",
                      "intra_class_fd_ae", "diversity", "diversity_pixel", "note"])
        for c, name in enumerate(names):
            fcd = result[f"fcd_class_{c}"]
            note = "" if not math.isnan(fcd) else f"intra-class FCD undefined: {train_counts[c]} training image(s)"
            out.writerow([c, name, train_counts[c], f"{result[f'share_class_{c}']:.4f}",
                          f"{result[f'recall_class_{c}']:.4f}", cell(fcd), cell(result[f"fd_ae_class_{c}"]),
                          cell(result[f"diversity_class_{c}"]), cell(result[f"diversity_pixel_class_{c}"]), note])


def autoencoder_space(ae, train_x: torch.Tensor, train_labels: torch.Tensor, held_x: torch.Tensor, fake: torch.Tensor,
                      y_req: torch.Tensor, train_shares: np.ndarray, n_classes: int, k: int) -> dict[str, float]:
    """The classifier-space metrics again in the autoencoder's space (`*_ae`, `fd_ae_*`), which keeps the
    variation within a class, and within-class diversity there (`diversity_*`) and in pixels
    (`diversity_pixel_*`)."""
    a_train, a_held, a_fake = (encode(ae, x).numpy().astype(np.float64) for x in (train_x, held_x, fake))
    labels, requested = train_labels.numpy(), y_req.numpy()
    fd = QUALITY_METRICS["frechet_distance"]
    out = {"fd_ae": fd(a_fake, a_train)["fd"], "fd_ae_real_vs_real": fd(a_held, a_train)["fd"],
           "fd_ae_class_matched": QUALITY_METRICS["class_reweighted_frechet_distance"](
               a_fake, requested, train_shares, a_train)["fd"],
           "ae_reconstruction_mse": reconstruction_mse(ae, held_x)}
    for key in ("fd_ae", "fd_ae_class_matched"):
        out[f"{key}_ratio"] = out[key] / max(out["fd_ae_real_vs_real"], 1e-9)
    prdc = QUALITY_METRICS["precision_recall_density_coverage"](a_train, a_fake, k)
    out.update({f"{name}_ae": value for name, value in prdc.items()})
    out.update(QUALITY_METRICS["intra_class_fd"](a_train, labels, a_fake, requested, n_classes, prefix="fd_ae"))
    out.update(QUALITY_METRICS["diversity_ratios"](a_fake, requested, a_train, labels, n_classes))
    out.update(QUALITY_METRICS["diversity_ratios"](fake.flatten(1).numpy(), requested, train_x.flatten(1).numpy(),
                                                   labels, n_classes, prefix="diversity_pixel"))
    return out


def load_heldout(data_dir: Path, manifest: dict) -> SplitTensors:
    """val and test splits together: the real reference that training never saw."""
    splits = [load_split(data_dir, s) for s in ("val", "test") if s in manifest["files"]]
    return SplitTensors(torch.cat([s.images_u8 for s in splits]), torch.cat([s.labels for s in splits]))


def class_matched_fcd(f_fake: torch.Tensor, y_req: torch.Tensor, f_train: torch.Tensor, train_labels: np.ndarray,
                      n_classes: int, fcd_real_vs_real: float) -> dict[str, float]:
    """The headline: FCD with the samples weighted to the train split's class shares, and its ratio to the
    real-vs-real FCD (1 = as close to the train split as held-out real images are)."""
    shares = np.bincount(train_labels, minlength=n_classes) / len(train_labels)
    fd = QUALITY_METRICS["class_reweighted_frechet_distance"](
        f_fake.numpy().astype(np.float64), y_req.numpy(), shares, f_train.numpy().astype(np.float64))["fd"]
    return {"fcd_class_matched": fd, "fcd_class_matched_ratio": fd / max(fcd_real_vs_real, 1e-9)}


@torch.no_grad()
def headline_quality(generators: dict[str, torch.nn.Module], data_dir: Path, ec: EvaluateConfig,
                     cache_dir: Path) -> dict[str, dict[str, float]]:
    """Class-matched FCD (and its ratio) and class KL of each named generator, exactly as evaluate_models
    computes them, without the rest: cheap enough to compare a tuned model with its untuned control. The real
    features are computed once for all of them."""
    manifest = read_manifest(data_dir)
    n_classes = manifest["num_classes"]
    train = load_split(data_dir, "train")
    clf = cached_classifier(cache_dir, manifest["digest"], train, n_classes, ec.classifier_steps, ec.seed)
    f_train, _ = predict(clf, train.images_float())
    f_held, _ = predict(clf, load_heldout(data_dir, manifest).images_float())
    real_vs_real = QUALITY_METRICS["frechet_distance"](f_held.numpy(), f_train.numpy())["fd"]
    out = {}
    for name, G in generators.items():
        fake, y_req = generate_per_class(G, n_classes, ec.samples_per_class, ec.seed)
        f_fake, p_fake = predict(clf, fake)
        out[name] = {**class_matched_fcd(f_fake, y_req, f_train, train.labels.numpy(), n_classes, real_vs_real),
                     "class_kl": QUALITY_METRICS["class_histogram"](p_fake.numpy(), n_classes)["class_kl"]}
    return out


OUTPUT_FILES = ("evaluation.json", "per_class.csv", "samples.png", "generated_classes.png", "robustness_curves.png",
                "nearest_neighbours.png", "diversity.png")


def standard_fid(ec, fake: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
    """FID/KID on InceptionV3 features when the config points to local weights; otherwise one log line."""
    if not ec.inception_weights:
        print("  evaluate: standard FID/KID skipped (evaluate.inception_weights not set; nothing is downloaded)",
              flush=True)
        return {}
    from components.metrics.inception import inception_metrics, load_inception

    gen = torch.Generator().manual_seed(ec.seed)
    pick = lambda x: x[torch.randperm(len(x), generator=gen)[:ec.inception_samples]]  # noqa: E731
    fake_n, real_n = pick(fake), pick(real)
    print(f"  evaluate: standard FID/KID on InceptionV3 features ({len(fake_n)} generated vs {len(real_n)} real)",
          flush=True)
    out = inception_metrics(load_inception(ec.inception_weights), fake_n, real_n, ec.kid_subsets,
                            ec.kid_subset_size, ec.seed)
    print(f"  evaluate: FID {out['fid']:.2f}, KID {out['kid_inception']:.4f}", flush=True)
    return out


def evaluate_models(G, D, data_dir: Path, ec: EvaluateConfig, cache_dir: Path, out_dir: Path,
                    extra: dict | None = None) -> dict:
    """Every quality, per-class and robustness metric of generator G (and discriminator D, if given) against
    the prepared data in data_dir; writes OUTPUT_FILES into out_dir and returns the evaluation dict."""
    manifest = read_manifest(data_dir)
    n_classes, names = manifest["num_classes"], manifest["class_names"]
    train, val = load_split(data_dir, "train"), load_split(data_dir, "val")
    held = load_heldout(data_dir, manifest)

    clf = cached_classifier(cache_dir, manifest["digest"], train, n_classes, ec.classifier_steps, ec.seed)
    _, val_pred = predict(clf, val.images_float())
    fake, y_req = generate_per_class(G, n_classes, ec.samples_per_class, ec.seed)

    # Section: quality on evaluator features.
    train_x, held_x = train.images_float(), held.images_float()  # [-1, 1], reused by every section below
    f_train, _ = predict(clf, train_x)
    f_held, _ = predict(clf, held_x)
    f_fake, p_fake = predict(clf, fake)
    fd = QUALITY_METRICS["frechet_distance"]
    result = {
        "schema_version": EVALUATION_SCHEMA_VERSION,
        "classifier_val_accuracy": float((val_pred == val.labels).float().mean()),
        "fcd": fd(f_fake.numpy(), f_train.numpy())["fd"],
        "fcd_real_vs_real": fd(f_held.numpy(), f_train.numpy())["fd"],
        **QUALITY_METRICS["class_histogram"](p_fake.numpy(), n_classes),
        **QUALITY_METRICS["class_recall"](p_fake.numpy(), y_req.numpy(), n_classes),
        **(extra or {}),
    }
    result["fcd_ratio"] = result["fcd"] / max(result["fcd_real_vs_real"], 1e-9)
    # The plain FCD compares class-uniform samples with the long-tailed train split, so it also charges the
    # class mixture: even perfect samples score fcd_uniform_floor. fcd_class_matched weights the samples to the
    # train split's class shares, leaving only how well each class is drawn.
    train_labels = train.labels.numpy()
    train_shares = np.bincount(train_labels, minlength=n_classes) / len(train_labels)
    result.update(class_matched_fcd(f_fake, y_req, f_train, train_labels, n_classes, result["fcd_real_vs_real"]))
    f_train64 = f_train.numpy().astype(np.float64)
    result["fcd_uniform_floor"] = QUALITY_METRICS["class_reweighted_frechet_distance"](
        f_train64, train_labels, np.full(n_classes, 1 / n_classes), f_train64)["fd"]
    result["fcd_uniform_floor_ratio"] = result["fcd_uniform_floor"] / max(result["fcd_real_vs_real"], 1e-9)
    # A low FCD against the training split is also what a generator that copies it would score: compare the
    # samples' nearest-training-image distances with those of held-out real images, in pixels and features.
    memorisation = QUALITY_METRICS["nearest_neighbour_memorisation"]
    spaces = {"pixel": (fake.flatten(1), train_x.flatten(1), held_x.flatten(1)),
              "feature": (f_fake, f_train, f_held)}
    for space, (a, b, c) in spaces.items():
        result.update({f"{k}_{space}": v for k, v in memorisation(a.numpy(), b.numpy(), c.numpy()).items()})
    result["data_digest"] = manifest["digest"]
    result.update(QUALITY_METRICS["kernel_inception_distance"](f_fake.numpy(), f_train.numpy(), ec.kid_subsets,
                                                               ec.kid_subset_size, ec.seed))
    result.update(standard_fid(ec, fake, train_x))
    result.update(QUALITY_METRICS["precision_recall_density_coverage"](f_train.numpy(), f_fake.numpy(), ec.nn_k))
    result.update(QUALITY_METRICS["intra_class_fd"](f_train.numpy(), train.labels.numpy(), f_fake.numpy(),
                                                    y_req.numpy(), n_classes))
    # Section: the autoencoder's space, which keeps the variation within a class that the classifier's
    # features are trained to ignore, and within-class diversity there and in pixels.
    ae = cached_autoencoder(cache_dir, manifest["digest"], train, n_classes, ec.autoencoder_steps, ec.seed)
    result.update(autoencoder_space(ae, train_x, train.labels, held_x, fake, y_req, train_shares, n_classes, ec.nn_k))
    # Section: head vs tail (most frequent third vs rarest third): the headline imbalance numbers.
    head, tail = head_and_tail(manifest["class_counts"]["train"])
    for metric in ("recall", "fcd", "fd_ae", "diversity", "diversity_pixel"):
        result.update(QUALITY_METRICS["head_tail_gap"](result, metric, head, tail))
    result.update(head_classes=head, tail_classes=tail)
    result["notes"] = undefined_class_notes(result, names, manifest["class_counts"]["train"], ec.samples_per_class)

    # Section: robustness of D (held-out real vs fresh fakes of the same labels).
    n = min(len(held.labels), 256)
    y_fake = held.labels[:n]
    with torch.no_grad():
        z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(ec.seed + 1))
        fake_eval = G.generate(z, y_fake)
    real_eval = held_x[:n]
    curves = robustness_curves(ec, D, G, clf, real_eval, held.labels[:n], fake_eval, y_fake)
    d_rows = curves["discriminator"]
    if d_rows:
        at_eps = {r["attack"]: r for r in d_rows if r["eps"] == ec.fgsm_eps}
        result.update(d_clean_accuracy=next(r["accuracy"] for r in d_rows if r["eps"] == 0.0),
                      d_fgsm_accuracy=at_eps["fgsm"]["accuracy"], d_fgsm_accuracy_real=at_eps["fgsm"]["acc_real"],
                      d_fgsm_accuracy_fake=at_eps["fgsm"]["acc_fake"], d_pgd_accuracy=at_eps["pgd"]["accuracy"])
    result["fgsm_eps"] = ec.fgsm_eps
    g_at = next((r for r in curves["generator"] if r["eps"] == ec.fgsm_eps), {})
    result.update(g_rec_mse_adv=g_at.get("rec_mse", float("nan")), g_amplification=g_at.get("amplification", float("nan")),
                  g_label_flip_rate=g_at.get("label_flip_rate", float("nan")))

    # Section: outputs.
    (out_dir / "evaluation.json").write_text(json.dumps({**result, "robustness_curves": curves}, indent=2, sort_keys=True))
    robustness_figure(curves["discriminator"], curves["generator"], curves["classifier"]) \
        .savefig(out_dir / "robustness_curves.png", dpi=100)
    write_per_class_csv(out_dir / "per_class.csv", result, names, manifest["class_counts"]["train"])
    z8 = torch.randn(8, G.z_dim, generator=torch.Generator().manual_seed(1234))
    class_sample_grid(G, n_classes, z8).save(out_dir / "samples.png")
    nearest_neighbour_grid(fake, y_req, train_x, n_classes).save(out_dir / "nearest_neighbours.png")
    captions = [f"{names[c][:12]}  {result[f'diversity_class_{c}']:.2f} / {result[f'diversity_pixel_class_{c}']:.2f}"
                for c in range(n_classes)]
    labelled_class_rows([fake[y_req == c][:8] for c in range(n_classes)], 8, captions).save(out_dir / "diversity.png")
    hist = np.bincount(p_fake.numpy(), minlength=n_classes).tolist()
    bar_chart({"generated (evaluator's labels)": hist}, names, "Generated class histogram", "samples") \
        .savefig(out_dir / "generated_classes.png", dpi=100)
    print(f"  evaluate: KID {result['kid']:.4f}, precision {result['precision']:.3f} recall {result['recall']:.3f} "
          f"density {result['density']:.3f} coverage {result['coverage']:.3f}; tail/head intra-class FCD "
          f"{result['tail_head_fcd_ratio']:.2f}, tail-head recall gap {result['tail_head_recall_gap']:+.3f}", flush=True)
    print(f"  evaluate: within-class diversity (generated ÷ real spread, 1 = as varied as the data): "
          f"{result['diversity_mean']:.2f} in autoencoder features (head {result['head_diversity']:.2f}, tail "
          f"{result['tail_diversity']:.2f}), {result['diversity_pixel_mean']:.2f} in pixels; autoencoder FD "
          f"class-matched {result['fd_ae_class_matched_ratio']:.2f}x real-vs-real", flush=True)
    for note in result["notes"]:
        print(f"  evaluate: note: {note}", flush=True)
    print(f"  evaluate: nearest-training-image distance ÷ held-out's {result['nn_distance_ratio_pixel']:.2f} (pixels), "
          f"{result['nn_distance_ratio_feature']:.2f} (features); samples nearer than 95% of held-out images "
          f"{result['copy_share_pixel']:.1%} / {result['copy_share_feature']:.1%} (5% expected without copying)",
          flush=True)
    print(f"  evaluate: FCD {result['fcd']:.2f} (real-vs-real {result['fcd_real_vs_real']:.2f}; a perfect "
          f"class-uniform generator {result['fcd_uniform_floor']:.2f}; class-matched {result['fcd_class_matched']:.2f}), "
          f"class KL {result['class_kl']:.4f}, recall {result['recall_mean']:.3f}, "
          + (f"D acc clean {result['d_clean_accuracy']:.3f} / FGSM {result['d_fgsm_accuracy']:.3f}"
             if D is not None else "no discriminator given: D robustness skipped"), flush=True)
    return result
