"""Pixel-level transforms applied once at prepare time; stored pixels stay uint8."""
from __future__ import annotations

import numpy as np
from PIL import Image


def convert_channels(images_nhwc: np.ndarray, channels: int) -> np.ndarray:
    """Gray <-> RGB conversion with ITU-R 601 luma weights for RGB -> gray."""
    have = images_nhwc.shape[-1]
    if have == channels:
        return images_nhwc
    if have == 1 and channels == 3:
        return np.repeat(images_nhwc, 3, axis=-1)
    if have == 3 and channels == 1:
        luma = images_nhwc.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None]
    raise ValueError(f"cannot convert {have} channels to {channels}")


def resize_square(images_nhwc: np.ndarray, size: int) -> np.ndarray:
    """Resize every image to size x size with bilinear filtering (antialiased when shrinking)."""
    if images_nhwc.shape[1] == size and images_nhwc.shape[2] == size:
        return images_nhwc
    out = np.empty((len(images_nhwc), size, size, images_nhwc.shape[-1]), np.uint8)
    for i, img in enumerate(images_nhwc):
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        arr = np.asarray(pil.resize((size, size), Image.BILINEAR))
        out[i] = arr[..., None] if arr.ndim == 2 else arr
    return out


def to_unit_range(images_uint8):
    """uint8 [0, 255] -> float [-1, 1]; works for numpy arrays and torch tensors."""
    return images_uint8 / 127.5 - 1.0
