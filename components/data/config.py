"""Typed config of the data component."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from components.config_base import Section


class DataConfig(Section):
    """How to turn an image source into validated Parquet shards, and how to read them back."""

    source: Literal["digits", "color_digits", "image_folder", "parquet", "cifar", "mnist_idx"] = Field(
        "digits", description="Image source; `digits` is sklearn's bundled set, `color_digits` the same glyphs "
                              "in random colours (needs channels: 3).")
    path: str | None = Field(None, description="The source's files, for file-based sources: a local path or a "
                                 "storage URI (s3://bucket/prefix, gs://...) that prepare fetches.")
    image_column: str = Field("image", description="Parquet column with encoded bytes or a uint8 array.")
    label_column: str = Field("label", description="Parquet column with integer labels.")
    image_shape: list[int] | None = Field(None, description="[H, W, C] of array images in Parquet.")
    num_classes: int | None = Field(None, ge=2, description="Number of classes; labels must lie in [0, C).")
    skip_corrupt: bool = Field(False, description="Skip unreadable images instead of failing.")
    resolution: Literal[32, 64] = Field(32, description="Square output size in pixels.")
    channels: Literal[1, 3] = Field(1, description="Output channels: 1 (gray) or 3 (RGB).")
    imbalance_ratio: float = Field(1.0, ge=1.0, description="Long-tail rho: n_c = n_max * rho^(-c/(C-1)); 1 keeps all.")
    val_fraction: float = Field(0.15, gt=0.0, lt=0.5, description="Share of each class held out for validation.")
    test_fraction: float = Field(0.15, ge=0.0, lt=0.5, description="Share of each class held out for test.")
    seed: int = Field(0, description="Seed of long-tail subsampling and splitting.")
    rebalance: Literal["none", "resample", "reweight", "sqrt"] = Field(
        "resample", description="How training batches counter class imbalance.")
    weight_scheme: Literal["inverse", "sqrt", "effective"] = Field(
        "effective", description="Class weights used by `reweight`.")
    effective_beta: float = Field(0.999, gt=0.0, lt=1.0, description="Beta of the effective number of samples.")
    rows_per_shard: int = Field(4096, gt=0, description="Rows per Parquet file.")
    streaming: Literal["auto", "always", "never"] = Field(
        "auto", description="Prepare image_folder and parquet sources on Ray Data in bounded memory: `auto` "
                            "when the source has more than stream_above_rows rows.")
    stream_above_rows: int = Field(200_000, ge=0, description="Source rows above which `auto` streams.")
    reader: Literal["local", "ray_data"] = Field(
        "local", description="`local`: each worker reads every shard (small data, exact class balance); "
                             "`ray_data`: ray.data.read_parquet with one shard per Ray Train worker.")

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> "DataConfig":
        if self.val_fraction + self.test_fraction >= 0.8:
            raise ValueError("val_fraction: val_fraction + test_fraction must be < 0.8 to leave training data")
        return self

    @model_validator(mode="after")
    def _rgb_source_has_three_channels(self) -> "DataConfig":
        if self.source == "color_digits" and self.channels != 3:
            raise ValueError("channels: source color_digits is RGB; set data.channels: 3 (or use source digits)")
        return self
