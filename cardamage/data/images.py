"""The one image loader: EXIF orientation, RGB conversion, bomb and corruption checks.

Every module that reads a photo goes through :func:`load_image` so the same rules apply
in training, scoring, prediction and the service.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cardamage.errors import BadInputError

log = logging.getLogger(__name__)

#: Largest accepted image, in pixels (about 8K x 11K). Bigger files are refused as decompression bombs.
MAX_PIXELS = 89_478_485
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class ImageLoadError(BadInputError, OSError):
    """An image that cannot be used; the message names the file and the reason."""


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode (L, LA, P, RGBA, CMYK, I;16, I, F) to 8-bit RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 0.0
        scale = 255.0 / 65535.0 if hi > 255 else 1.0
        arr8 = np.clip(arr * scale, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def open_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open, fully decode, EXIF-rotate and convert ``path`` to an RGB PIL image.

    Raises:
        ImageLoadError: missing, empty, truncated, corrupt, not-an-image or too-large files.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageLoadError(f"{p}: file not found")
    if p.stat().st_size == 0:
        raise ImageLoadError(f"{p}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageLoadError(f"{p}: {w}x{h} pixels exceeds the limit of {max_pixels} "
                                         "(possible decompression bomb)")
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_rgb(img)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(f"{p}: refused as a decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(f"{p}: not a readable image") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"{p}: truncated or corrupt image ({exc})") from exc


def load_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Load ``path`` as an RGB array.

    Returns:
        ``uint8`` array of shape ``[height, width, 3]`` after EXIF orientation.

    Raises:
        ImageLoadError: see :func:`open_image`.
    """
    return np.asarray(open_image(path, max_pixels), dtype=np.uint8)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """Return ``(width, height)`` after EXIF orientation, reading only the header."""
    p = Path(path)
    try:
        with Image.open(p) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
    except (OSError, UnidentifiedImageError) as exc:
        raise ImageLoadError(f"{p}: not a readable image ({exc})") from exc
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Return the image files directly or recursively under ``folder``, sorted by path."""
    root = Path(folder)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
