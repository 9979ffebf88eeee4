"""Pictures people would rather look at than read: sample grids, class histograms, curves."""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def image_grid(images_nchw: torch.Tensor, nrow: int, scale: int = 2, pad: int = 2) -> Image.Image:
    """Tile images in [-1, 1] into one PIL image, `nrow` images per row."""
    x = ((images_nchw.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    n, c, h, w = x.shape
    rows = (n + nrow - 1) // nrow
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        canvas[top:top + h, left:left + w] = x[i].transpose(1, 2, 0)
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def class_rows_grid(per_class: list[torch.Tensor], ncol: int) -> Image.Image:
    """One row per class: its first `ncol` images (N_c, C, H, W) in [-1, 1]. A class with fewer images, as a
    long tail's rarest often has, leaves the rest of its row blank (white, like the padding)."""
    c, h, w = next(x for x in per_class if len(x)).shape[1:]
    blank = torch.ones(ncol, c, h, w)
    rows = [torch.cat([x[:ncol].float(), blank[: max(0, ncol - len(x))]]) for x in per_class]
    return image_grid(torch.cat(rows), ncol)


def labelled_class_rows(per_class: list[torch.Tensor], ncol: int, labels: list[str]) -> Image.Image:
    """class_rows_grid with a caption left of each class's row (a class's name and, say, its diversity):
    the number beside the samples it describes."""
    from PIL import ImageDraw

    grid = class_rows_grid(per_class, ncol)
    row_h = grid.height / max(1, len(per_class))
    width = 8 + 7 * max((len(t) for t in labels), default=0)
    out = Image.new("RGB", (grid.width + width, grid.height), "white")
    out.paste(grid.convert("RGB"), (width, 0))
    draw = ImageDraw.Draw(out)
    for i, text in enumerate(labels):
        draw.text((4, int(i * row_h + row_h / 2 - 6)), text, fill="black")
    return out


@torch.no_grad()
def class_sample_grid(G: torch.nn.Module, num_classes: int, z_fixed: torch.Tensor) -> Image.Image:
    """One row per class, one column per fixed noise vector: G.generate(z, y) in eval mode."""
    per_class = len(z_fixed)
    y = torch.arange(num_classes).repeat_interleave(per_class).to(z_fixed.device)
    z = z_fixed.repeat(num_classes, 1)
    was_training = G.training
    G.eval()
    images = G.generate(z, y)
    G.train(was_training)
    return image_grid(images, per_class)


@torch.no_grad()
def nearest_neighbour_grid(fake: torch.Tensor, fake_labels: torch.Tensor, train: torch.Tensor,
                           num_classes: int, per_class: int = 4) -> Image.Image:
    """One row per class: its `per_class` samples nearest to the training set (pixel L2), each followed by
    that nearest training image. Copies show as identical pairs; a generalising generator's do not match."""
    dist, nearest = torch.cdist(fake.flatten(1), train.flatten(1)).min(dim=1)
    tiles = []
    for c in range(num_classes):
        idx = (fake_labels == c).nonzero().flatten()
        for i in idx[dist[idx].argsort()[:per_class]]:
            tiles += [fake[i], train[nearest[i]]]
    return image_grid(torch.stack(tiles), 2 * per_class)


def png_bytes(img: Image.Image) -> bytes:
    """Encode a PIL image as PNG bytes."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _figure(*grid: int, figsize: tuple[float, float]):
    """A matplotlib Figure and its axes, made without pyplot: pyplot keeps every figure it makes until it is
    closed, so a long-lived process (a notebook, a test session, repeated DAG runs) would hold them all.
    A bare Figure is freed with its last reference and renders PNGs with Agg, whatever the backend."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid)


def bar_chart(values_by_group: dict[str, list[float]], labels: list[str], title: str, ylabel: str):
    """Grouped bar chart (matplotlib Figure), e.g. class counts per split."""
    fig, ax = _figure(figsize=(7, 3.5))
    width = 0.8 / max(len(values_by_group), 1)
    xs = np.arange(len(labels))
    for i, (group, vals) in enumerate(values_by_group.items()):
        ax.bar(xs + i * width, vals, width, label=group)
    ax.set_xticks(xs + width * (len(values_by_group) - 1) / 2, labels)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.legend()
    fig.tight_layout()
    return fig


def line_chart(series: dict[str, list[float]], title: str, xlabel: str, x: list[float] | None = None,
               xs: dict[str, list[float]] | None = None, logy: bool = False, markers: bool = False):
    """Line chart (matplotlib Figure) of several series against step, a shared x, or per-series xs."""
    fig, ax = _figure(figsize=(7, 3.5))
    for name, ys in series.items():
        x_this = (xs or {}).get(name, x if x is not None else range(1, len(ys) + 1))
        ax.plot(x_this, ys, label=name, lw=1, marker="o" if markers else None, ms=3)
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.legend()
    fig.tight_layout()
    return fig


def scatter_chart(x: list[float], y: list[float], title: str, xlabel: str, ylabel: str, logx: bool = False):
    """Scatter plot (matplotlib Figure); non-finite y values are drawn at the top edge in red."""
    fig, ax = _figure(figsize=(5, 3.5))
    finite = [v for v in y if np.isfinite(v)]
    top = (max(finite) * 1.2 if finite else 1.0) or 1.0
    ax.scatter([a for a, b in zip(x, y) if np.isfinite(b)], finite)
    bad = [a for a, b in zip(x, y) if not np.isfinite(b)]
    if bad:
        ax.scatter(bad, [top] * len(bad), color="red", marker="x", label="diverged")
        ax.legend()
    if logx:
        ax.set_xscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    return fig


def robustness_figure(d_rows: list[dict], g_rows: list[dict], clf_rows: list[dict]):
    """Three panels over epsilon: D accuracy (FGSM, PGD), G reconstruction deviation, evaluator accuracy."""
    fig, axes = _figure(1, 3, figsize=(12, 3.5))
    for attack in sorted({r["attack"] for r in d_rows}):
        rows = [r for r in d_rows if r["attack"] == attack]
        axes[0].plot([r["eps"] for r in rows], [r["accuracy"] for r in rows], marker="o", label=attack)
    axes[0].set(title="Discriminator accuracy" if d_rows else "Discriminator: not evaluated", xlabel="L-inf eps",
                ylim=(0, 1))
    if d_rows:
        axes[0].legend()
    axes[1].plot([r["eps"] for r in g_rows], [r["rec_mse"] for r in g_rows], marker="o", label="MSE")
    axes[1].plot([r["eps"] for r in g_rows], [r["label_flip_rate"] for r in g_rows], marker="s", label="label flips")
    axes[1].set(title="Generator G(x) under PGD", xlabel="L-inf eps")
    axes[1].legend()
    axes[2].plot([r["eps"] for r in clf_rows], [r["accuracy"] for r in clf_rows], marker="o")
    axes[2].set(title="Evaluator accuracy (reference)", xlabel="L-inf eps", ylim=(0, 1))
    fig.tight_layout()
    return fig
