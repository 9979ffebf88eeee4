"""Networks only: no losses, no training logic."""
from components.models.config import ModelConfig
from components.models.discriminator import Discriminator
from components.models.generator import Generator

__all__ = ["ModelConfig", "Generator", "Discriminator", "build_models"]


def build_models(cfg: ModelConfig, channels: int, resolution: int, num_classes: int) -> tuple[Generator, Discriminator]:
    """The generator and discriminator for one dataset shape."""
    g = Generator(channels, resolution, num_classes, cfg.g_base_channels, cfg.z_dim, cfg.g_norm)
    d = Discriminator(channels, resolution, num_classes, cfg.d_base_channels, cfg.d_norm, cfg.d_conditioning)
    return g, d
