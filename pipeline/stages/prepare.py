"""prepare: image source -> validated Parquet shards + manifest.json.

Reads:  the configured source (`data.source`, `data.path`: a local path or a storage URI such as s3://...).
Writes: data/*.parquet, data/manifest.json, class_histogram.png, real_samples.png.
"""
from __future__ import annotations

import re
import warnings

import mlflow

from components.data.config import DataConfig
from components.data.prepare import prepare_dataset
from components.data.reader import class_samples
from components.data.streaming import STREAMABLE, streams
from components.errors import UserError
from components.plots import bar_chart, class_rows_grid
from components.storage import is_remote, localize
from pipeline.stages.context import StageContext


def metric_name(class_name: str) -> str:
    """A class name as MLflow accepts in a metric key (the manifest and the report keep the real name)."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", class_name)


def local_source(cfg: DataConfig) -> DataConfig:
    """`cfg` with a storage URI in data.path replaced by a node-local copy (fetched once per listing)."""
    if not cfg.path or not is_remote(cfg.path):
        return cfg
    print(f"  prepare: fetching {cfg.path.split('?', 1)[0]}", flush=True)
    try:
        local = localize(cfg.path)
    except FileNotFoundError:
        raise UserError(f"data.path not found: {cfg.path} (check the bucket, prefix and credentials)") from None
    return cfg.model_copy(update={"path": str(local)})


def needs_ray(cfg) -> bool:
    """Whether this config's prepare runs on Ray Data: a large (or, when remote, possibly large) image folder
    or Parquet source, unless data.streaming is never."""
    data = cfg.data
    if data.source not in STREAMABLE or data.streaming == "never":
        return False
    return data.streaming == "always" or (data.path is not None and is_remote(data.path)) or streams(data)


def run(ctx: StageContext) -> dict:
    data_dir = ctx.out_dir / "data"
    manifest = prepare_dataset(local_source(ctx.cfg.data), data_dir, source_uri=ctx.cfg.data.path)
    names, stats = manifest["class_names"], manifest["train_statistics"]
    print(f"  prepare: {manifest['num_images']} images, {len(names)} classes, "
          f"imbalance ratio {stats['imbalance_ratio']:.1f}, digest {manifest['digest'][:12]}", flush=True)

    mlflow.log_params({"imbalance_ratio": round(stats["imbalance_ratio"], 4),
                       "normalized_entropy": round(stats["normalized_entropy"], 4),
                       "rebalance": ctx.cfg.data.rebalance, "dataset_digest": manifest["digest"],
                       "prepare_engine": manifest.get("prepared_with", {}).get("engine", "in_memory")})
    mlflow.log_metrics({f"count_{split}_class_{metric_name(names[c])}": n
                        for split, counts in manifest["class_counts"].items() for c, n in enumerate(counts)})
    mlflow.log_metrics({"imbalance_ratio": stats["imbalance_ratio"], "normalized_entropy": stats["normalized_entropy"],
                        "num_images": manifest["num_images"]})
    _log_dataset(data_dir, manifest)

    fig = bar_chart(manifest["class_counts"], names, "Images per class", "images")
    fig.savefig(ctx.out_dir / "class_histogram.png", dpi=100)
    per_class = class_samples(data_dir, "train", len(names), 8)
    class_rows_grid(per_class, 8).save(ctx.out_dir / "real_samples.png")
    mlflow.log_artifact(str(ctx.out_dir / "class_histogram.png"))
    mlflow.log_artifact(str(ctx.out_dir / "real_samples.png"))
    mlflow.log_artifact(str(data_dir / "manifest.json"))
    return {"data": data_dir, "digest": manifest["digest"]}


def _log_dataset(data_dir, manifest: dict) -> None:
    """Record the dataset (digest, source, schema) on the run via mlflow.data."""
    import pyarrow.parquet as pq

    first = data_dir / manifest["files"]["train"][0]
    frame = pq.read_table(first, columns=["label", "sample_id", "split"]).to_pandas()
    with warnings.catch_warnings():  # the schema is inferred again when the input is logged
        warnings.filterwarnings("ignore", message=".*integer column.*")
        # MLflow 3.17 registers its local-artifact source twice and then warns that a path is ambiguous.
        warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways.*")
        dataset = mlflow.data.from_pandas(frame, source=str(data_dir),
                                          name=f"{manifest['source']['name']}-prepared", digest=manifest["digest"][:32])
        mlflow.log_input(dataset, context="training")
