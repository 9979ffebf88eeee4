"""Image sources: each returns raw uint8 images (N, H, W, C), int labels and class names."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RawImages:
    """Images as loaded, before resizing: uint8 (N, H, W, C), labels int64 (N,)."""

    images_nhwc: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    description: str


def load_digits_source() -> RawImages:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 16 grey levels)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel values are 0..16; stretch to the full uint8 range.
    images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return RawImages(
        images_nhwc=images[..., None],
        labels=bunch.target.astype(np.int64),
        class_names=[str(n) for n in bunch.target_names],
        description="sklearn.datasets.load_digits (UCI optdigits, 8x8, 10 classes)",
    )


SOURCES = {"digits": lambda cfg: load_digits_source()}
