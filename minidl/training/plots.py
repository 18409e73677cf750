"""Pictures of a run: training curves (matplotlib, optional) and the first layer's filters (Pillow).

The filter grid is the paper's Figure 3: each kernel of the first
convolution, scaled to [0, 1] on its own, as a small RGB (or grey) tile.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy

from ..backend import CPU, transfer

__all__ = ["plot_curves", "filter_grid"]


def plot_curves(metrics_jsonl, path) -> Path | None:
    """Loss and accuracy per epoch from ``metrics.jsonl`` into a PNG; None if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("training curves need matplotlib: pip install 'minidl[plots]'", stacklevel=2)
        return None
    rows = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line.strip()]
    if not rows:
        return None
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], label="train")
    if "val_loss" in rows[0]:
        ax_loss.plot(epochs, [r["val_loss"] for r in rows], label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.plot(epochs, [100 * r["train_top1"] for r in rows], label="train top-1")
    if "val_top1" in rows[0]:
        ax_acc.plot(epochs, [100 * r["val_top1"] for r in rows], label="validation top-1")
        ax_acc.plot(epochs, [100 * r["val_top5"] for r in rows], label="validation top-5")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def filter_grid(weight, path, scale: int = 8, columns: int | None = None) -> Path:
    """Save first-layer kernels (O, C, kh, kw) as a grid PNG (C = 3 in colour, else the channel mean in grey)."""
    from PIL import Image

    w = numpy.asarray(transfer(weight, CPU), dtype=numpy.float32)
    o, c, kh, kw = w.shape
    tiles = w if c == 3 else w.mean(axis=1, keepdims=True)
    low = tiles.min(axis=(1, 2, 3), keepdims=True)
    high = tiles.max(axis=(1, 2, 3), keepdims=True)
    tiles = (tiles - low) / numpy.maximum(high - low, 1e-12)
    columns = columns or int(numpy.ceil(numpy.sqrt(o)))
    rows = -(-o // columns)
    pad = 1
    grid = numpy.ones((tiles.shape[1], rows * (kh + pad) + pad, columns * (kw + pad) + pad), numpy.float32)
    for i in range(o):
        r, col = divmod(i, columns)
        top, left = pad + r * (kh + pad), pad + col * (kw + pad)
        grid[:, top:top + kh, left:left + kw] = tiles[i]
    pixels = (grid * 255).round().astype(numpy.uint8)
    image = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    path = Path(path)
    image.save(path)
    return path
