"""The one image loader: EXIF orientation, RGB conversion, bomb and corruption checks.

Every module that reads a photo goes through :func:`load_image` so the same rules apply
in training, scoring, prediction and the service.
"""

from __future__ import annotations

import io
import logging
import os
import re
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cardamage.errors import BadInputError, BadParameterError

log = logging.getLogger(__name__)

#: Default largest accepted photo, in decoded pixels (50 MP: above every phone camera's 48 MP).
#: ``data.max_pixels`` sets it for a run (:func:`set_pixel_limit`); bigger files are refused by name,
#: from their header, before any pixel is decoded.
MAX_PIXELS = 50_000_000
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

_pixel_limit = MAX_PIXELS


def set_pixel_limit(max_pixels: int) -> None:
    """Set the pixel budget of every later :func:`open_image` / :func:`image_size` call (``data.max_pixels``).

    Pillow's own bomb limit (``Image.MAX_IMAGE_PIXELS``) follows, so that no reader of Pillow's
    decodes more than this either.
    """
    global _pixel_limit
    if int(max_pixels) < 1:
        raise BadParameterError(f"data.max_pixels: must be >= 1, got {max_pixels}")
    _pixel_limit = int(max_pixels)
    Image.MAX_IMAGE_PIXELS = _pixel_limit


def pixel_limit() -> int:
    """The pixel budget in force (decoded pixels per photo)."""
    return _pixel_limit


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


def _check_file(p: Path) -> None:
    try:
        _check_stat(p)
    except ImageLoadError:
        raise
    except OSError as exc:  # a name the OS refuses (too long, bad bytes), an I/O error
        raise ImageLoadError(f"{p}: cannot be read ({exc.strerror or exc})") from None


def _check_stat(p: Path) -> None:
    if not p.exists():
        raise ImageLoadError(f"{p}: file not found")
    if not p.is_file():
        raise ImageLoadError(f"{p}: not a file")
    if not os.access(p, os.R_OK):
        raise ImageLoadError(f"{p}: cannot be read (permission denied)")
    if p.stat().st_size == 0:
        raise ImageLoadError(f"{p}: empty file")


def _check_pixels(p: Path | str, w: int, h: int, max_pixels: int) -> None:
    if w * h > max_pixels:
        raise ImageLoadError(f"{p}: {w}x{h} pixels exceeds the limit of {max_pixels} "
                             "(data.max_pixels; possible decompression bomb)")


def _bomb(p: Path | str, limit: int, exc: Exception) -> ImageLoadError:
    """Pillow's own bomb refusal, in the words of :func:`_check_pixels`."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(found.group(1))} pixels" if found else "its size"
    return ImageLoadError(f"{p}: {size} exceeds the limit of {limit} (data.max_pixels; possible decompression bomb)")


def _reduced(img: Image.Image, max_side: int | None) -> Image.Image:
    """``img`` decoded at most ``max_side`` on its longer side: JPEG by DCT scaling before decoding
    (no full-resolution array exists), other formats by ``reduce`` right after."""
    if max_side is None or max(img.size) <= max_side:
        img.load()
        return img
    if img.format in ("JPEG", "MPO"):
        img.draft("RGB", (max_side, max_side))
    img.load()
    if max(img.size) > max_side:
        factor = max(1, max(img.size) // max_side)
        if factor > 1:
            img = img.reduce(factor)
        if max(img.size) > max_side:
            img = img.copy()
            img.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return img


def open_image(path: str | os.PathLike, max_pixels: int | None = None, max_side: int | None = None) -> Image.Image:
    """Open, fully decode, EXIF-rotate and convert ``path`` to an RGB PIL image.

    Args:
        max_pixels: the pixel budget (default :func:`pixel_limit`, i.e. ``data.max_pixels``), checked
            on the header before decoding.
        max_side: decode at most this many pixels on the longer side (JPEG: scaled while decoding,
            so memory follows ``max_side``, not the file's own size); ``None`` keeps full resolution.

    Raises:
        ImageLoadError: missing, unreadable, empty, truncated, corrupt, not-an-image or too-large files.
    """
    p = Path(path)
    _check_file(p)
    return _decode(p, p, max_pixels, max_side)


def open_image_bytes(data: bytes, name: str, max_pixels: int | None = None,
                     max_side: int | None = None) -> Image.Image:
    """:func:`open_image` of an in-memory file (an upload), named ``name`` in the messages; no temp file."""
    if not data:
        raise ImageLoadError(f"{name}: empty file")
    return _decode(io.BytesIO(data), name, max_pixels, max_side)


def _decode(source: Path | io.BytesIO, p: str | Path, max_pixels: int | None,
            max_side: int | None) -> Image.Image:
    """The decoding of :func:`open_image` from a path or a stream; ``p`` is what messages call it."""
    limit = pixel_limit() if max_pixels is None else int(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                _check_pixels(p, *img.size, limit)
                img = _reduced(img, max_side)
                img = ImageOps.exif_transpose(img)
                return _to_rgb(img)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb(p, limit, exc) from None
    except UnidentifiedImageError as exc:
        raise ImageLoadError(f"{p}: not a readable image") from exc
    except PermissionError as exc:
        raise ImageLoadError(f"{p}: cannot be read (permission denied)") from exc
    except MemoryError as exc:
        raise ImageLoadError(f"{p}: too large to decode in memory") from exc
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        raise ImageLoadError(f"{p}: truncated or corrupt image ({exc})") from exc


def load_image(path: str | os.PathLike, max_pixels: int | None = None, max_side: int | None = None) -> np.ndarray:
    """Load ``path`` as an RGB array.

    Returns:
        ``uint8`` array of shape ``[height, width, 3]`` after EXIF orientation.

    Raises:
        ImageLoadError: see :func:`open_image`.
    """
    return np.asarray(open_image(path, max_pixels, max_side), dtype=np.uint8)


def load_image_bytes(data: bytes, name: str, max_pixels: int | None = None, max_side: int | None = None) -> np.ndarray:
    """:func:`load_image` of an in-memory file: ``uint8 [height, width, 3]``; messages name it ``name``."""
    return np.asarray(open_image_bytes(data, name, max_pixels, max_side), dtype=np.uint8)


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1-8) without decoding pixels.

    Pillow's ``getexif()`` loads a whole PNG to look for a late ``eXIf`` chunk; a PNG's EXIF is read
    from the chunks before the pixel data instead.
    """
    if img.format == "PNG":
        raw = img.info.get("exif")
        if not raw:
            return 1
        exif = Image.Exif()
        exif.load(raw)
        return int(exif.get(0x0112, 1) or 1)
    return int(img.getexif().get(0x0112, 1) or 1)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """Return ``(width, height)`` after EXIF orientation, reading only the header.

    Raises:
        ImageLoadError: missing, unreadable, not an image, or over the pixel budget (a bomb).
    """
    p = Path(path)
    _check_file(p)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                w, h = img.size
                orientation = _orientation(img)
    except Image.DecompressionBombError as exc:
        raise _bomb(p, pixel_limit(), exc) from None
    except PermissionError as exc:
        raise ImageLoadError(f"{p}: cannot be read (permission denied)") from exc
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, struct.error, EOFError) as exc:
        raise ImageLoadError(f"{p}: not a readable image ({exc})") from exc
    _check_pixels(p, w, h, pixel_limit())
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Return the image files directly or recursively under ``folder``, sorted by path."""
    root = Path(folder)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
