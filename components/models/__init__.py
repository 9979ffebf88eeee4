"""Networks only: no losses, no training logic."""
from components.models.config import ModelConfig
from components.models.discriminator import Discriminator
from components.models.generator import Generator
from components.models.residual import ResidualDiscriminator, ResidualGenerator

__all__ = ["ModelConfig", "Generator", "Discriminator", "ResidualGenerator", "ResidualDiscriminator",
           "build_models", "build_generator", "family_of"]

GENERATORS = {"seed": Generator, "resnet": ResidualGenerator}
DISCRIMINATORS = {"seed": Discriminator, "resnet": ResidualDiscriminator}


def family_of(G) -> str:
    """The `model.family` a generator belongs to."""
    return next(name for name, cls in GENERATORS.items() if type(G) is cls)


def build_generator(family: str = "seed", **arch):
    """A generator of `family` from its constructor arguments (what the registry stores)."""
    return GENERATORS[family](**arch)


def build_models(cfg: ModelConfig, channels: int, resolution: int, num_classes: int):
    """The generator and discriminator of cfg.family for one dataset shape."""
    g = GENERATORS[cfg.family](channels, resolution, num_classes, cfg.g_base_channels, cfg.z_dim, cfg.g_norm)
    d = DISCRIMINATORS[cfg.family](channels, resolution, num_classes, cfg.d_base_channels, cfg.d_norm,
                                   cfg.d_conditioning)
    return g, d
