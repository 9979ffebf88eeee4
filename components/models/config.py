"""Typed config of the networks."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from components.config_base import Section


class ModelConfig(Section):
    """Widths and options of the source document's generator and discriminator."""

    g_base_channels: int = Field(32, gt=0, description="Encoder/decoder width; the document uses 64 (64/128/256).")
    d_base_channels: int = Field(32, gt=0, description="Discriminator width; the document uses 64 (64..512).")
    z_dim: int = Field(64, gt=0, description="Size of the latent vector z.")
    g_norm: Literal["batch", "none"] = Field("batch", description="Normalisation in the decoder.")
    d_norm: Literal["batch", "spectral", "none"] = Field(
        "spectral", description="Discriminator normalisation; `spectral` is norm-free and DDP-safe on CPU.")
    d_conditioning: Literal["projection", "auxiliary"] = Field(
        "projection", description="How D uses the label: projection, or an auxiliary classifier head (AC-GAN).")
