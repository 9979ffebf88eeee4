"""Typed config of the networks."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from components.config_base import Section


class ModelConfig(Section):
    """Family, widths and options of the generator and discriminator."""

    family: Literal["seed", "resnet"] = Field(
        "seed", description="seed: the source document's conv encoder-decoder G and conv D; resnet: residual "
                            "blocks, class-conditional batch norm in G, projection D (SNGAN/BigGAN style).")

    g_base_channels: int = Field(32, gt=0, description="Encoder/decoder width; the document uses 64 (64/128/256).")
    d_base_channels: int = Field(32, gt=0, description="Discriminator width; the document uses 64 (64..512).")
    z_dim: int = Field(64, gt=0, description="Size of the latent vector z.")
    g_norm: Literal["batch", "none"] = Field("batch", description="Normalisation in the decoder.")
    d_norm: Literal["batch", "spectral", "none"] = Field(
        "spectral", description="Discriminator normalisation; `spectral` is norm-free and DDP-safe on CPU "
                                 "(the resnet family takes spectral or none).")
    d_conditioning: Literal["projection", "auxiliary"] = Field(
        "projection", description="How D uses the label: projection, or an auxiliary classifier head (AC-GAN).")

    @model_validator(mode="after")
    def _family_options(self) -> "ModelConfig":
        if self.family == "resnet" and self.d_norm == "batch":
            raise ValueError("d_norm: batch norm in D is the seed family's option; the resnet family takes "
                             "d_norm: spectral or none")
        return self
