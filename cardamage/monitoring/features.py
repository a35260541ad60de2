"""Per-photo image features for drift monitoring: exposure, colour, focus, size and encoding.

Pure measurements, no model: every value is computed from the file alone, so the training
photos and any folder of new photos can be compared. Pixel statistics are measured on the
EXIF-rotated photo downsized (area interpolation) so its longer side is at most ``max_side``
pixels, which makes sharpness comparable between resolutions.

Columns of :func:`measure_photos` (units in brackets):

``brightness``       mean luma, ITU-R BT.601 [0-255]
``contrast``         standard deviation of luma (RMS contrast) [0-255]
``saturation``       mean HSV saturation [0-1]
``sharpness``        variance of the 3x3 Laplacian of luma [grey level squared]
``edge_density``     share of pixels on a Canny edge (thresholds 100/200) [0-1]
``width, height``    pixels after EXIF orientation; ``aspect_ratio`` = width / height
``file_kb``          file size [KiB]
``jpeg_quality``     IJG quality (1-100) estimated from the luminance/chrominance quantization
                     tables, NaN for files that are not JPEG
``exif_orientation`` 1 when the file carries an EXIF orientation tag other than 1 (rotated), else 0

plus ``hist_000 ...`` (a joint RGB histogram with ``bins**3`` cells summing to 1: the colour
embedding used when the model's embeddings are not available), ``path`` and ``sha256``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from cardamage.data.dedup import file_sha256
from cardamage.data.images import ImageLoadError, list_images, open_image

log = logging.getLogger(__name__)

PIXEL_FEATURES = ("brightness", "contrast", "saturation", "sharpness", "edge_density")
FILE_FEATURES = ("width", "height", "aspect_ratio", "file_kb", "jpeg_quality", "exif_orientation")
#: Numerical feature columns, in report order; ``exif_orientation`` is categorical (0/1).
FEATURE_COLUMNS = PIXEL_FEATURES + FILE_FEATURES
CATEGORICAL_FEATURES = ("exif_orientation",)
HIST_PREFIX = "hist_"

# JPEG Annex K tables (natural order), which libjpeg/IJG scale by the quality setting.
_LUMA_Q = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64)
_CHROMA_Q = np.full(64, 99.0)
_CHROMA_Q[[0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 24, 25]] = [17, 18, 24, 47, 18, 21, 26, 66, 24, 26, 56, 47, 66]


def ijg_table(base: np.ndarray, quality: int) -> np.ndarray:
    """The quantization table libjpeg writes for ``quality`` (1-100) from an Annex K ``base`` table."""
    scale = 5000.0 / quality if quality < 50 else 200.0 - 2.0 * quality
    return np.clip(np.floor((base * scale + 50.0) / 100.0), 1, 255)


def estimate_jpeg_quality(tables: dict[int, Sequence[int]]) -> int | None:
    """Nearest IJG quality (1-100) for a JPEG's quantization tables (``PIL.Image.quantization``).

    Compares the luminance table (and the first chrominance table when present) with the
    scaled standard tables and returns the quality with the smallest absolute difference;
    ``None`` when there is no 64-entry table. Cameras with custom tables get the nearest match.
    """
    luma = np.asarray(tables.get(0, ()), dtype=np.float64)
    if luma.size != 64:
        return None
    chroma = np.asarray(tables.get(1, ()), dtype=np.float64)
    best, best_err = None, np.inf
    for quality in range(1, 101):
        err = np.abs(ijg_table(_LUMA_Q, quality) - luma).sum()
        if chroma.size == 64:
            err += np.abs(ijg_table(_CHROMA_Q, quality) - chroma).sum()
        if err < best_err:
            best, best_err = quality, err
    return best


def downsize(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink ``uint8 [H, W, 3]`` (area interpolation) so the longer side is at most ``max_side`` px."""
    h, w = rgb.shape[:2]
    factor = max_side / max(h, w)
    if factor >= 1.0:
        return rgb
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def grey_stats(grey: np.ndarray) -> dict[str, float]:
    """Brightness, contrast (0-255) and sharpness (Laplacian variance, grey levels squared) of ``uint8 [H, W]``."""
    # cv2.meanStdDev: one pass each in C without the GIL (numpy's mean/std/var take 1.5 ms and hold it between passes)
    mean, std = cv2.meanStdDev(grey)
    _, lap_std = cv2.meanStdDev(cv2.Laplacian(grey, cv2.CV_64F, ksize=1))
    return {"brightness": float(mean[0, 0]), "contrast": float(std[0, 0]), "sharpness": float(lap_std[0, 0]) ** 2}


def pixel_stats(rgb: np.ndarray) -> dict[str, float]:
    """Brightness, contrast, saturation, sharpness and edge density of ``uint8 [H, W, 3]`` RGB."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    edges = cv2.Canny(grey, 100, 200)
    return {
        **grey_stats(grey),
        "saturation": float(hsv[..., 1].mean() / 255.0),
        "edge_density": float(np.count_nonzero(edges) / edges.size),
    }


def colour_histogram(rgb: np.ndarray, bins: int = 4) -> np.ndarray:
    """Joint RGB histogram of ``uint8 [H, W, 3]``: ``float [bins**3]`` summing to 1 (R major, B minor)."""
    if not 1 <= bins <= 16:
        raise ValueError(f"histogram bins: expected 1-16 per channel, got {bins}")
    q = (rgb.reshape(-1, 3).astype(np.int64) * bins) // 256
    cells = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
    hist = np.bincount(cells, minlength=bins ** 3).astype(np.float64)
    return hist / max(hist.sum(), 1.0)


def file_info(path: str | os.PathLike) -> dict[str, float]:
    """JPEG quality estimate and EXIF orientation flag from the file header (no full decode)."""
    try:
        with Image.open(path) as img:
            quality = estimate_jpeg_quality(img.quantization) if img.format == "JPEG" else None
            orientation = img.getexif().get(0x0112, 1)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"{path}: not a readable image ({exc})") from exc
    return {"jpeg_quality": float(quality) if quality is not None else np.nan,
            "exif_orientation": int(orientation not in (None, 1))}


def photo_features(path: str | os.PathLike, max_side: int = 512, bins: int = 4) -> dict[str, float]:
    """All feature columns (and the ``hist_*`` colour embedding) of one photo.

    Raises:
        ImageLoadError: unreadable photo.
    """
    p = Path(path)
    rgb = np.asarray(open_image(p), dtype=np.uint8)
    height, width = rgb.shape[:2]
    small = downsize(rgb, max_side)
    row: dict[str, float] = pixel_stats(small)
    row.update(width=float(width), height=float(height), aspect_ratio=width / height,
               file_kb=p.stat().st_size / 1024.0)
    row.update(file_info(p))
    hist = colour_histogram(small, bins)
    row.update({f"{HIST_PREFIX}{i:03d}": float(v) for i, v in enumerate(hist)})
    return row


def measure_photos(paths: Iterable[str | os.PathLike], root: str | os.PathLike | None = None,
                   max_side: int = 512, bins: int = 4) -> pd.DataFrame:
    """One row per readable photo: ``path`` (relative to ``root`` when given), ``sha256`` and features.

    Unreadable photos are skipped with a warning. Column order: ``path, sha256``,
    :data:`FEATURE_COLUMNS`, then the histogram cells.
    """
    rows = []
    for path in paths:
        p = Path(path)
        try:
            row = photo_features(p, max_side=max_side, bins=bins)
        except ImageLoadError as exc:
            log.warning("skipped: %s", exc)
            continue
        name = p.relative_to(root).as_posix() if root is not None else p.as_posix()
        rows.append({"path": name, "sha256": file_sha256(p), **row})
    hist_cols = [f"{HIST_PREFIX}{i:03d}" for i in range(bins ** 3)]
    columns = ["path", "sha256", *FEATURE_COLUMNS, *hist_cols]
    return pd.DataFrame(rows, columns=columns)


def measure_folder(folder: str | os.PathLike, max_side: int = 512, bins: int = 4) -> pd.DataFrame:
    """:func:`measure_photos` over every image under ``folder`` (recursive, sorted; paths relative to it)."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such photo folder")
    return measure_photos(list_images(root), root=root, max_side=max_side, bins=bins)


def histogram_columns(table: pd.DataFrame) -> list[str]:
    """The ``hist_*`` colour-embedding columns of a features table."""
    return [c for c in table.columns if c.startswith(HIST_PREFIX)]
