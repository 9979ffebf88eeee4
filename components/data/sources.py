"""Image sources. Each returns RawImages: uint8 (N, H, W, C) at the configured size and channels, labels.

Bad input raises UserError naming the file, row or class and the fix. With `skip_corrupt`, unreadable
images are skipped instead and listed in RawImages.skipped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from components.data.transforms import convert_channels, resize_square
from components.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


@dataclass(frozen=True)
class RawImages:
    """Images as loaded: uint8 (N, H, W, C), labels int64 (N,), class names, and what was skipped or resized."""

    images_nhwc: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    description: str
    skipped: list[str] = field(default_factory=list)
    resized: int = 0


def load_digits_source(cfg) -> RawImages:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 16 grey levels)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel values are 0..16; stretch to the full uint8 range.
    images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return RawImages(images[..., None], bunch.target.astype(np.int64), [str(n) for n in bunch.target_names],
                     "sklearn.datasets.load_digits (UCI optdigits, 8x8, 10 classes)")


def load_color_digits_source(cfg) -> RawImages:
    """The bundled digits in colour: each glyph in a random hue on a dark background of the opposite hue.

    Made here from a seeded RNG (nothing is downloaded), so a colour, long-tailed set exists on any machine:
    the class is the digit, and the colour pair is per-image variation that a generator has to cover.
    """
    import colorsys

    digits = load_digits_source(cfg)
    rng = np.random.default_rng(cfg.seed)
    hues = rng.uniform(0.0, 1.0, len(digits.labels))
    fg = np.array([colorsys.hsv_to_rgb(h, rng.uniform(0.6, 1.0), rng.uniform(0.8, 1.0)) for h in hues])
    bg = np.array([colorsys.hsv_to_rgb((h + 0.5) % 1.0, rng.uniform(0.4, 0.8), rng.uniform(0.1, 0.35))
                   for h in hues])
    ink = digits.images_nhwc.astype(np.float32) / 255.0  # (N, 8, 8, 1): glyph coverage
    rgb = ink * fg[:, None, None, :] + (1.0 - ink) * bg[:, None, None, :]
    images = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    return RawImages(images, digits.labels, digits.class_names,
                     f"{digits.description}, coloured (random glyph hue, opposite-hue background, seed {cfg.seed})")


def _require_path(cfg) -> Path:
    if not cfg.path:
        raise UserError(f"data.path is required for source '{cfg.source}': point it at the local files")
    path = Path(cfg.path).expanduser()
    if not path.exists():
        raise UserError(f"data.path not found: {path} (check the path, or use source 'digits' for the bundled set)")
    return path


def _decode_image(data_or_path, cfg, where: str) -> tuple[np.ndarray, bool]:
    """Decode one encoded image to uint8 (size, size, C); returns (array, was_resized)."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        src = io.BytesIO(data_or_path) if isinstance(data_or_path, (bytes, bytearray)) else data_or_path
        with Image.open(src) as img:
            img.load()  # force a full decode: truncated files fail here, not later
            img = img.convert("L" if cfg.channels == 1 else "RGB")
            arr = np.asarray(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise _Corrupt(f"{where}: not a readable image ({type(err).__name__}: {str(err)[:80]})") from None
    arr = arr[..., None] if arr.ndim == 2 else arr
    resized = arr.shape[:2] != (cfg.resolution, cfg.resolution)
    return resize_square(arr[None], cfg.resolution)[0], resized


class _Corrupt(Exception):
    """An unreadable image; becomes a UserError unless skip_corrupt."""


def _collect(items, cfg, describe: str, class_names: list[str]) -> RawImages:
    """Decode (payload, label, where) items, honouring skip_corrupt."""
    images, labels, skipped, resized = [], [], [], 0
    for payload, label, where in items:
        try:
            if isinstance(payload, (bytes, bytearray)) and len(payload) == 0 or (
                    isinstance(payload, Path) and payload.stat().st_size == 0):
                raise _Corrupt(f"{where}: zero-byte file")
            arr, was_resized = _decode_image(payload, cfg, where)
        except _Corrupt as err:
            if not cfg.skip_corrupt:
                raise UserError(f"{err}; fix or delete it, or pass --skip-corrupt to skip unreadable images") from None
            skipped.append(where)
            continue
        images.append(arr)
        labels.append(label)
        resized += was_resized
    if not images:
        raise UserError(f"no readable images in {describe}")
    return RawImages(np.stack(images), np.asarray(labels, np.int64), class_names, describe, skipped, resized)


def load_image_folder(cfg) -> RawImages:
    """root/<class>/<image>: one subfolder per class, PNG/JPEG/BMP, RGB or greyscale."""
    root = _require_path(cfg)
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"{root} has no class subfolders: expected {root}/<class name>/<image files>")
    items = []
    for label, folder in enumerate(classes):
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise UserError(f"class folder '{folder.name}' ({folder}) is empty: add images or remove the folder")
        items += [(f, label, str(f)) for f in files]
    return _collect(items, cfg, f"image folder {root}", [c.name for c in classes])




def finish(raw: RawImages, cfg) -> RawImages:
    """Bring array sources to the configured channels and size (file sources already are)."""
    images = resize_square(convert_channels(raw.images_nhwc, cfg.channels), cfg.resolution)
    return RawImages(images, raw.labels, raw.class_names, raw.description, raw.skipped, raw.resized)
