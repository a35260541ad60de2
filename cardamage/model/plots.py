"""Report figures (matplotlib, Agg backend): training curves, precision-recall curve, overlay grids.

Every figure is written atomically as PNG through :mod:`cardamage.fileio`.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cardamage.fileio import atomic_path

log = logging.getLogger(__name__)

#: RGB colours of classes 1, 2, ... in overlays (background is not painted).
PALETTE = np.array([(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128)], np.uint8)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    plt = _pyplot()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    plt.close(fig)
    return Path(path)


def read_history(path: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of a training history CSV as floats (empty cells become NaN)."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: float(v) if v not in ("", None) else math.nan for k, v in row.items()} for row in csv.DictReader(f)]


def plot_training_curves(history_csv: str | os.PathLike, out: str | os.PathLike) -> Path | None:
    """Loss and IoU per epoch (train and validation) from ``train_history.csv``; ``None`` if no CSV."""
    if not Path(history_csv).is_file():
        log.warning("no training history at %s: training curves not drawn", history_csv)
        return None
    rows = read_history(history_csv)
    if not rows:
        return None
    plt = _pyplot()
    epochs = [r["epoch"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key, style in (("loss", "-"), ("val_loss", "--")):
        ax1.plot(epochs, [r.get(key, math.nan) for r in rows], style, label=key)
    for key, style in (("mean_iou", "-"), ("val_mean_iou", "--"), ("damage_iou", "-"), ("val_damage_iou", "--")):
        ax2.plot(epochs, [r.get(key, math.nan) for r in rows], style, label=key)
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax2.set(xlabel="epoch", ylabel="IoU", title="IoU", ylim=(0, 1))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, out)


def plot_pr_curve(precision: Sequence[float], recall: Sequence[float], out: str | os.PathLike,
                  operating_point: tuple[float, float] | None = None, title: str = "") -> Path:
    """Image-level precision-recall curve; ``operating_point`` = ``(recall, precision)`` at the threshold."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(np.r_[0.0, recall], np.r_[precision[0] if len(precision) else 1.0, precision], drawstyle="steps-post")
    if operating_point is not None:
        ax.plot(*operating_point, "o", label="threshold")
        ax.legend()
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02),
           title=title or "image-level damage detection")
    ax.grid(alpha=0.3)
    return _save(fig, out)


def colorize(mask: np.ndarray, image: np.ndarray | None = None, alpha: float = 0.5,
             ignore: int = 255) -> np.ndarray:
    """Paint class mask ``[H, W]`` (0 = background) over ``image`` ``uint8 [H, W, 3]`` (or black).

    Ignored pixels are shown in grey.
    """
    base = np.zeros(mask.shape + (3,), np.uint8) if image is None else image.astype(np.uint8).copy()
    out = base.astype(np.float32)
    for c in np.unique(mask):
        if c == 0:
            continue
        sel = mask == c
        colour = np.array((128, 128, 128), np.float32) if c == ignore else PALETTE[(int(c) - 1) % len(PALETTE)]
        out[sel] = (1 - alpha) * out[sel] + alpha * colour
    return out.clip(0, 255).astype(np.uint8)


@dataclass
class OverlayItem:
    """One row of an overlay grid: photo ``uint8 [S,S,3]``, truth and prediction masks ``[S,S]``."""

    title: str
    image: np.ndarray
    truth: np.ndarray
    prediction: np.ndarray


def overlay_grid(items: Sequence[OverlayItem], out: str | os.PathLike, title: str = "") -> Path | None:
    """A grid with one row per photo: image, truth overlay, prediction overlay. ``None`` if no items."""
    if not items:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(items), 3, figsize=(9, 3 * len(items)), squeeze=False)
    for row, item in zip(axes, items):
        panels = (item.image, colorize(item.truth, item.image), colorize(item.prediction, item.image))
        for ax, panel, name in zip(row, panels, ("photo", "truth", "prediction")):
            ax.imshow(panel)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{item.title}: {name}" if name == "photo" else name, fontsize=9)
    if title:
        fig.suptitle(title)
    return _save(fig, out)
