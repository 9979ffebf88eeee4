"""A user's long-tailed RGB image folder, down to the rarest class the split allows (one training image, one
for val, one for test), through the whole smoke DAG: every stage copes, and what is undefined says so. The
folder is prepared on Ray Data (data.streaming: always), the path a folder too large for memory takes."""
import csv
import json
import math
from pathlib import Path

import pytest

from components.storage import localize
from tests.conftest import REPO, smoke_overrides
from tests.helpers import write_longtail_folder

pytestmark = pytest.mark.slow

COUNTS = [60, 40, 27, 18, 12, 8, 6, 4, 3, 3]  # the last two: 1 train, 1 val, 1 test image each


def test_smoke_dag_on_a_folder_whose_tail_reaches_the_split_minimum(ray_cluster, tmp_path):
    from pipeline.config import load_config
    from pipeline.runner import run_pipeline

    folder = write_longtail_folder(tmp_path / "folder", COUNTS)
    cfg = load_config(REPO / "configs" / "smoke.yaml", smoke_overrides(tmp_path) + [
        "data.source=image_folder", f"data.path={folder}", "data.channels=3", "data.imbalance_ratio=1",
        "data.streaming=always", "data.rows_per_shard=64",
        'tune.search_space={"train.lr_g": {type: grid, values: [0.0002]}}', "promote.model_name=tail-folder"])
    summary = run_pipeline(cfg)
    assert summary["model_version"] is not None

    stage = {name: Path(localize(uri)) for name, uri in summary["stage_uris"].items()}
    manifest = json.loads((stage["prepare"] / "data" / "manifest.json").read_text())
    assert manifest["prepared_with"]["engine"] == "ray_data" and len(manifest["files"]["train"]) == 3
    train_counts = manifest["class_counts"]["train"]
    assert train_counts[-2:] == [1, 1] and sum(manifest["class_counts"]["val"]) >= 10
    assert (stage["prepare"] / "real_samples.png").stat().st_size > 0  # 8 slots per row, most of two blank

    evaluation = json.loads((stage["evaluate"] / "evaluation.json").read_text())
    undefined = [c for c in range(10) if math.isnan(evaluation[f"fcd_class_{c}"])]
    assert undefined == [8, 9]  # the classes with one training image, and only those
    assert len(evaluation["notes"]) == 2 and all("intra-class FCD undefined" in n for n in evaluation["notes"])
    assert evaluation["tail_fcd_undefined"] == 2.0 and math.isfinite(evaluation["tail_fcd"])  # class 7 remains
    assert math.isfinite(evaluation["tail_recall"]) and math.isfinite(evaluation["class_kl"])
    assert math.isfinite(evaluation["fcd"]) and math.isfinite(evaluation["fcd_class_matched"])

    rows = list(csv.DictReader((stage["evaluate"] / "per_class.csv").open()))
    assert [int(r["train_count"]) for r in rows] == train_counts
    assert [r["intra_class_fcd"] == "" for r in rows] == [c in undefined for c in range(10)]
    assert all(r["note"] for r in rows[-2:]) and not any(r["note"] for r in rows[:-2])

    trials = list(csv.DictReader((stage["tune"] / "results.csv").open()))
    assert trials and all(math.isfinite(float(t["score"])) for t in trials)
    page = Path(summary["report"]).read_text()
    assert page.count("Note: class ") == 2 and "Note: class class_08:" in page and "Note: class class_09:" in page
