"""Image sources. Each returns RawImages: uint8 (N, H, W, C) at the configured size and channels, labels.

Bad input raises UserError naming the file, row or class and the fix. With `skip_corrupt`, unreadable
images are skipped instead and listed in RawImages.skipped.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from components.data.transforms import convert_channels, resize_square
from components.errors import UserError

# What an image folder's files may be; anything else (a README, Thumbs.db, .DS_Store) is ignored and listed.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class RawImages:
    """Images as loaded: uint8 (N, H, W, C), labels int64 (N,), class names, and what was skipped or resized."""

    images_nhwc: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    description: str
    skipped: list[str] = field(default_factory=list)
    resized: int = 0
    ignored: list[str] = field(default_factory=list)  # files that are not images by their suffix


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


def decode_image(data_or_path, cfg, where: str) -> tuple[np.ndarray, bool]:
    """Decode one encoded image to uint8 (size, size, C); returns (array, was_resized). Every pixel format
    is brought to 8 bits deliberately (see `eight_bit`); what cannot be is refused, naming `where`."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        src = io.BytesIO(data_or_path) if isinstance(data_or_path, (bytes, bytearray)) else data_or_path
        with Image.open(src) as img:
            frames = getattr(img, "n_frames", 1)
            if frames > 1:
                raise _Corrupt(f"{where}: animated image ({frames} frames); export one frame as a still image")
            img.load()  # force a full decode: truncated files fail here, not later
            arr = np.asarray(eight_bit(img, where).convert("L" if cfg.channels == 1 else "RGB"))
    except Image.DecompressionBombError as err:
        raise _Corrupt(f"{where}: too large to decode ({str(err)[:100]}); downscale it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise _Corrupt(f"{where}: not a readable image ({type(err).__name__}: {str(err)[:80]})") from None
    arr = arr[..., None] if arr.ndim == 2 else arr
    resized = arr.shape[:2] != (cfg.resolution, cfg.resolution)
    return resize_square(arr[None], cfg.resolution)[0], resized


def eight_bit(img, where: str):
    """`img` as an 8-bit PIL image with the same picture: 16-bit and 32-bit integers scaled (not clipped at
    255), floats in [0, 1] scaled by 255 (floats in [0, 255] kept), transparency composited on black, CMYK
    and palettes converted. Float or integer ranges that fit none of these are refused."""
    from PIL import Image

    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(img, dtype=np.float64)
        top = 255.0 if mode == "I" and values.max() <= 255 else 65535.0
        if values.min() < 0 or values.max() > 65535:
            raise _Corrupt(f"{where}: integer pixels in [{values.min():.0f}, {values.max():.0f}]; "
                           "expected 8- or 16-bit values")
        return Image.fromarray(np.rint(values * (255.0 / top)).astype(np.uint8), mode="L")
    if mode == "F":
        values = np.asarray(img, dtype=np.float64)
        lo, hi = float(values.min()), float(values.max())
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > 255:
            raise _Corrupt(f"{where}: float pixels in [{lo:.4g}, {hi:.4g}]; expected [0, 1] or [0, 255]")
        scale = 255.0 if hi <= 1.0 else 1.0
        return Image.fromarray(np.rint(values * scale).astype(np.uint8), mode="L")
    if (mode == "P" and "transparency" in img.info) or mode in ("PA", "LA", "RGBA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    return img


class _Corrupt(Exception):
    """An unreadable image; becomes a UserError unless skip_corrupt."""


def _collect(items, cfg, describe: str, class_names: list[str]) -> RawImages:
    """Decode (payload, label, where) items, honouring skip_corrupt."""
    images, labels, skipped, resized = [], [], [], 0
    for payload, label, where in items:
        try:
            if payload is None:
                raise _Corrupt(f"{where}: no image (null)")
            if isinstance(payload, Path) and not payload.is_file():  # a FIFO would block the read forever
                raise _Corrupt(f"{where}: not a regular file")
            if isinstance(payload, (bytes, bytearray)) and len(payload) == 0 or (
                    isinstance(payload, Path) and payload.stat().st_size == 0):
                raise _Corrupt(f"{where}: zero-byte file")
            arr, was_resized = decode_image(payload, cfg, where)
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
    """root/<class>/<image>: one subfolder per class; files by IMAGE_SUFFIXES, anything else ignored and listed.
    Links may point anywhere inside root, never outside it."""
    items, class_names, ignored = list_image_folder(cfg)
    root = Path(cfg.path).expanduser()
    return replace(_collect(items, cfg, f"image folder {root}", class_names), ignored=ignored)


def list_image_folder(cfg) -> tuple[list[tuple[Path, int, str]], list[str], list[str]]:
    """The image folder's (file, label, where) items in order, its class names, and the ignored files;
    validated without decoding an image."""
    root = _require_path(cfg)
    if not root.is_dir():
        raise UserError(f"data.path {root} is a file; image_folder needs a folder of class subfolders "
                        "(or use source parquet, cifar or mnist_idx for array files)")
    real_root = root.resolve()
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"{root} has no class subfolders: expected {root}/<class name>/<image files>")
    if len(classes) == 1:
        raise UserError(f"{root} has only one class folder ('{classes[0].name}'); a class-conditional GAN needs "
                        "at least two classes")
    items, ignored = [], []
    for label, folder in enumerate(classes):
        _check_name(folder)
        _inside(folder, real_root, root)
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
        for entry in entries:
            _inside(entry, real_root, root)
        files = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
        ignored += [str(p) for p in entries if p.suffix.lower() not in IMAGE_SUFFIXES]
        if not files:
            listed = f" (ignored: {', '.join(p.name for p in entries[:3])})" if entries else ""
            raise UserError(f"class folder '{folder.name}' ({folder}) has no images{listed}: add images "
                            f"({', '.join(sorted(IMAGE_SUFFIXES))}) or remove the folder")
        items += [(f, label, str(f)) for f in files]
    return items, [c.name for c in classes], ignored


def _check_name(folder: Path) -> None:
    try:
        folder.name.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"class folder name {folder.name!r} in {folder.parent} is not valid UTF-8; rename it "
                        "(class names end up in the manifest, MLflow and the report)") from None


def _inside(path: Path, real_root: Path, root: Path) -> None:
    """Refuse a link that leads out of the data folder: the data set is what is under data.path."""
    if path.is_symlink() and not path.resolve().is_relative_to(real_root):
        raise UserError(f"{path.relative_to(root)} is a link to {path.resolve()}, outside {root}; copy the "
                        "files in, or point data.path at a folder that holds them")


def finish(raw: RawImages, cfg) -> RawImages:
    """Bring array sources to the configured channels and size (file sources already are)."""
    images = resize_square(convert_channels(raw.images_nhwc, cfg.channels), cfg.resolution)
    return replace(raw, images_nhwc=images)
