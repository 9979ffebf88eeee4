"""A self-contained HTML report of one pipeline run: data, training, tuning, evaluation, promotion.

Built from each stage's files (its output dir, or its MLflow artifacts when regenerated from a run id);
images are embedded as base64, so the file can be mailed or opened offline.
"""
from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path

STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{border-bottom:2px solid #444}h2{margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}
th{background:#eee}.pass{background:#d8f5d8}.fail{background:#f8d4d4}img{max-width:100%;margin:4px}
.imgs{display:flex;flex-wrap:wrap;gap:8px}"""


def _find(root: Path, name: str) -> Path | None:
    hits = sorted(root.rglob(name)) if root and root.exists() else []
    return hits[0] if hits else None


def _img(root: Path, name: str, title: str) -> str:
    path = _find(root, name)
    if path is None:
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(title)}</figcaption></figure>'


def _number(value, spec: str) -> str:
    """A number formatted by `spec`; anything else (a report rebuilt from tampered artifacts) escaped as text."""
    return format(value, spec) if isinstance(value, (int, float)) else html.escape(str(value))


def _table(rows: list[dict], cls=None) -> str:
    if not rows:
        return "<p>(none)</p>"
    keys = list(rows[0])
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in keys)
    body = "".join(
        f"<tr class='{cls(r) if cls else ''}'>" + "".join(f"<td>{html.escape(_fmt(r[k]))}</td>" for k in keys) + "</tr>"
        for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _json(root: Path, name: str) -> dict:
    path = _find(root, name)
    return json.loads(path.read_text()) if path else {}


def _csv(root: Path, name: str) -> list[dict]:
    path = _find(root, name)
    return list(csv.DictReader(path.read_text().splitlines())) if path else []


def _control_line(control: dict) -> str:
    """Whether tuning paid: the candidate against the untuned control (the default config, same steps)."""
    if not control:
        return "<p class='note'>No untuned control was trained (tune.control is off).</p>"
    cand, ctrl = control["candidate"], control["control"]
    verdict = ("Tuning paid" if control["tuning_paid"] else
               "Tuning did not pay; the control went on to evaluation" if control.get("handed_on") == "control" else
               "Tuning neither paid nor cost (a tie)")
    return (f"<p id='control'><b>{verdict}</b>: class-matched FCD {_number(cand['fcd_class_matched'], '.1f')} for the "
            f"tuned candidate against {_number(ctrl['fcd_class_matched'], '.1f')} for the untuned control (the "
            f"default config trained for the same steps: {_number(cand['steps'], ',')} and {_number(ctrl['steps'], ',')}).</p>")


def build_html(sources: dict[str, Path], title: str) -> str:
    """The report from per-stage directories {stage name: dir holding that stage's files}."""
    manifest = _json(sources.get("prepare"), "manifest.json")
    evaluation = _json(sources.get("evaluate"), "evaluation.json")
    promotion = _json(sources.get("promote"), "promotion.json")
    stats = manifest.get("train_statistics", {})
    data_rows = [{"split": s, **{manifest["class_names"][c]: n for c, n in enumerate(counts)}}
                 for s, counts in manifest.get("class_counts", {}).items()]
    headline = [{"metric": k, "value": evaluation[k]} for k in
                ("fcd", "fcd_real_vs_real", "fcd_ratio", "kid", "precision", "recall", "density", "coverage",
                 "class_kl", "recall_mean", "head_recall", "tail_recall", "tail_head_fcd_ratio", "classes_covered",
                 "fd_ae_class_matched_ratio", "precision_ae", "recall_ae", "coverage_ae", "diversity_mean",
                 "head_diversity", "tail_diversity", "diversity_pixel_mean",
                 "d_clean_accuracy", "d_fgsm_accuracy", "d_pgd_accuracy", "g_amplification",
                 "g_label_flip_rate", "classifier_val_accuracy", "epsilon", "delta", "noise_multiplier")
                if k in evaluation]
    gates = promotion.get("gates", [])
    decision = ("promoted to champion" if promotion.get("promoted") else
                f"not promoted (failed: {', '.join(promotion.get('failed_gates', [])) or '-'})")
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Data</h2>",
        f"<p>{html.escape(manifest.get('source', {}).get('description', ''))}: {html.escape(str(manifest.get('num_images', '?')))} images, "
        f"imbalance ratio {_number(stats.get('imbalance_ratio'), '.2f')}, normalised entropy "
        f"{_number(stats.get('normalized_entropy'), '.3f')}, digest <code>{html.escape(str(manifest.get('digest', ''))[:16])}</code></p>",
        _table(data_rows),
        "<div class='imgs'>", _img(sources.get("prepare"), "class_histogram.png", "class histogram"),
        _img(sources.get("prepare"), "real_samples.png", "real samples per class"), "</div>",
        "<h2>Training</h2>", "<div class='imgs'>",
        _img(sources.get("train"), "training_curves.png", "training losses"), "</div>",
        "<h2>Tuning</h2>", _table(_csv(sources.get("tune"), "results.csv")),
        _control_line(_json(sources.get("tune"), "control.json")) if sources.get("tune") else "", "<div class='imgs'>",
        *[_img(sources.get("tune"), n, n[:-4].replace("_", " ")) for n in
          ("score_vs_lr.png", "score_vs_batch.png", "score_traces.png")], "</div>",
        "<h2>Evaluation</h2>", _table(headline),
        *(f"<p class='note'>Note: {html.escape(note)}</p>" for note in evaluation.get("notes", [])),
        _table(_csv(sources.get("evaluate"), "per_class.csv")),
        "<div class='imgs'>", _img(sources.get("evaluate"), "diversity.png",
                                   "generated samples per class, with diversity (autoencoder / pixels)"),
        _img(sources.get("evaluate"), "samples.png", "generated samples, one row per class"),
        _img(sources.get("evaluate"), "generated_classes.png", "generated class histogram"),
        _img(sources.get("evaluate"), "robustness_curves.png", "robustness under attack"), "</div>",
        "<h2>Promotion</h2>",
        f"<p>{html.escape(str(promotion.get('model_name', '')))} version {html.escape(str(promotion.get('version', '?')))}: "
        f"{html.escape(decision)}; aliases {html.escape(', '.join(promotion.get('aliases', [])))}</p>",
        f"<div id='promotion'>{_table(gates, cls=lambda r: 'pass' if r['passed'] else 'fail')}</div>",
    ]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")


def sources_from_mlflow(client, parent_run_id: str, download_dir: Path) -> dict[str, Path]:
    """Download the artifacts of every stage run of a pipeline run (including cached stages' earlier runs,
    which the parent run names in its `stage_run.<stage>` tags)."""
    tags = client.get_run(parent_run_id).data.tags
    stage_runs = {k.split(".", 1)[1]: v for k, v in tags.items() if k.startswith("stage_run.")}
    out = {}
    for stage, run_id in stage_runs.items():
        target = download_dir / stage
        target.mkdir(parents=True, exist_ok=True)
        for art in client.list_artifacts(run_id):
            if not art.is_dir and art.path.endswith((".png", ".json", ".csv")):
                client.download_artifacts(run_id, art.path, str(target))
        out[stage] = target
    return out
