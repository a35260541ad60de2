"""Uploaded files to photos: size, media type, pixel budgets and decoding checks, each with a clear 4xx.

Every photo of a request is first checked from its header alone: a readable picture in an accepted
format, at most ``data.max_pixels`` pixels, and all photos together at most
``serve.max_request_pixels`` pixels. Only then is anything decoded, and each photo is decoded to at
most ``serve.max_side`` pixels on its longer side (JPEG by DCT scaling, so no full-size array exists):
memory follows the working size, not what a small, highly compressed file claims to hold.

Decoding goes through :func:`cardamage.data.images.load_image_bytes` (the one loader, from memory: EXIF orientation,
truncation, decompression bombs), so the service refuses exactly what training would.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import struct
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from cardamage.data.images import ImageLoadError, load_image_bytes, pixel_limit

log = logging.getLogger(__name__)

#: Decoded format -> suffix stored in the incoming pool (all in :data:`cardamage.data.images.IMAGE_SUFFIXES`).
FORMAT_SUFFIX = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}
#: Declared part types accepted besides ``image/*`` (some clients send no specific type).
GENERIC_TYPES = ("application/octet-stream", "", None)


class UploadError(Exception):
    """A request the client must fix: HTTP ``status``, a ``code``, a sentence, per-file problems, and any
    more fields of the error body (``limit``)."""

    def __init__(self, status: int, code: str, message: str, files: Sequence[dict[str, Any]] = (),
                 **more: Any):
        super().__init__(message)
        self.status, self.code, self.message, self.files, self.more = status, code, message, list(files), more

    def body(self) -> dict[str, Any]:
        """The JSON error body (without the request id)."""
        out: dict[str, Any] = {"code": self.code, "message": self.message, **self.more}
        if self.files:
            out["files"] = self.files
        return out


@dataclass
class Upload:
    """One uploaded file as received."""

    filename: str
    content_type: str | None
    data: bytes


@dataclass
class Photo:
    """A decoded upload.

    Attributes:
        rgb: ``uint8 [h, w, 3]`` RGB pixels (EXIF-rotated) at the working size: the longer side at most
            ``serve.max_side`` px, so ``h, w`` may be smaller than ``height, width``.
        sha256: of the uploaded bytes; suffix: the pool file suffix.
        width, height: the uploaded photo's own size in px (after EXIF rotation), from its header.
    """

    filename: str
    data: bytes = field(repr=False)
    rgb: np.ndarray = field(repr=False)
    sha256: str
    suffix: str
    width: int = 0
    height: int = 0

    def __post_init__(self) -> None:
        if not self.width or not self.height:
            self.height, self.width = (int(n) for n in self.rgb.shape[:2])

    @property
    def scale(self) -> tuple[float, float]:
        """``(sx, sy)``: original px per working px along x and y (1.0 when decoded at full size)."""
        h, w = self.rgb.shape[:2]
        return self.width / w, self.height / h


@dataclass
class _Checked:
    """An upload whose header passed: its size as stored (px, before EXIF rotation) and pool suffix."""

    upload: Upload
    width: int
    height: int
    suffix: str


def _fail(upload: Upload, status: int, code: str, message: str) -> dict[str, Any]:
    return {"filename": upload.filename, "status": status, "code": code, "message": message}


def _too_many_pixels(width: int | None = None, height: int | None = None) -> str:
    has = f"is {width}x{height} = {width * height:,} pixels" if width and height else "has too many pixels"
    return (f"The picture {has}, over the limit of {pixel_limit():,} pixels per photo (data.max_pixels): "
            "send a normal camera photo.")


def _classify(exc: ImageLoadError) -> tuple[int, str, str]:
    text = str(exc)
    if "bomb" in text or "exceeds the limit" in text:
        size = re.search(r"(\d+)x(\d+) pixels", text)
        return 413, "too_many_pixels", _too_many_pixels(*(int(n) for n in size.groups()) if size else ())
    if "not a readable image" in text:
        return 415, "not_an_image", "The file is not a picture: upload a JPEG or PNG photo."
    return 400, "truncated", "The file is incomplete or damaged: upload the photo again."


def check_header(upload: Upload) -> _Checked | dict[str, Any]:
    """Check ``upload`` from its header alone, no pixel decoded: not empty, an image type, a readable
    picture within ``data.max_pixels``, an accepted format.

    (Not :func:`cardamage.data.images.image_size`: its EXIF look decodes a whole PNG. The pixel count
    does not depend on the EXIF rotation; :func:`decode` applies it.)

    Returns:
        The checked upload, or the problem (``filename, status, code, message``) that stops it.
    """
    if not upload.data:
        return _fail(upload, 400, "empty_file", "The file is empty: choose the photo again.")
    ctype = (upload.content_type or "").split(";")[0].strip().lower()
    if ctype not in GENERIC_TYPES and not ctype.startswith("image/"):
        return _fail(upload, 415, "unsupported_media_type", f"Files of type {ctype!r} are not accepted: "
                                                            "upload JPEG or PNG photos.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(upload.data)) as img:  # reads the header only
                fmt, (width, height) = img.format, img.size
    except Image.DecompressionBombError:
        return _fail(upload, 413, "too_many_pixels", _too_many_pixels())
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, struct.error, EOFError):
        return _fail(upload, 415, "not_an_image", "The file is not a picture: upload a JPEG or PNG photo.")
    if width * height > pixel_limit():
        return _fail(upload, 413, "too_many_pixels", _too_many_pixels(width, height))
    if fmt not in FORMAT_SUFFIX:
        return _fail(upload, 415, "unsupported_format", f"{fmt or 'This'} pictures are not accepted: "
                                                        "upload JPEG or PNG photos.")
    return _Checked(upload, width, height, FORMAT_SUFFIX[fmt])


def _oriented(width: int, height: int, rgb: np.ndarray) -> tuple[int, int]:
    """The stored ``width, height`` swapped when the decoded (EXIF-rotated) ``rgb`` is turned by 90 degrees."""
    h, w = rgb.shape[:2]
    if w != h and width != height and (w > h) != (width > height):
        return height, width
    return width, height


#: Decodes running at once in this process, whatever the number of request threads: a PNG is decoded
#: at full size before it is reduced (up to ``data.max_pixels`` x 3 bytes), so this bounds that memory.
DECODE_SLOTS = threading.BoundedSemaphore(max(1, min(4, os.cpu_count() or 1)))


def decode(checked: _Checked, max_side: int | None = None) -> Photo | dict[str, Any]:
    """The photo decoded to at most ``max_side`` px on its longer side (``None``: full size), or the problem.

    Decoded from the request's bytes in memory (no temp file); ``data.max_pixels`` still bounds it.
    """
    upload = checked.upload
    try:
        with DECODE_SLOTS:
            rgb = load_image_bytes(upload.data, upload.filename or "upload", max_side=max_side)
    except ImageLoadError as exc:
        return _fail(upload, *_classify(exc))
    width, height = _oriented(checked.width, checked.height, rgb)
    return Photo(upload.filename, upload.data, rgb, hashlib.sha256(upload.data).hexdigest(), checked.suffix,
                 width, height)


def _refuse(results: Sequence[object]) -> None:
    """Raise one :class:`UploadError` listing every problem in ``results`` (the status of the first)."""
    bad = [r for r in results if isinstance(r, dict)]
    if bad:
        names = ", ".join(b["filename"] for b in bad)
        raise UploadError(bad[0]["status"], bad[0]["code"], f"{len(bad)} file(s) cannot be used: {names}", bad)


def check_request_pixels(checked: Sequence[_Checked], max_request_pixels: int) -> None:
    """Raise a 413 ``too_many_pixels`` when the photos' header pixels add up to more than ``max_request_pixels``."""
    total = sum(c.width * c.height for c in checked)
    if total > max_request_pixels:
        files = [{"filename": c.upload.filename, "width": c.width, "height": c.height, "pixels": c.width * c.height}
                 for c in checked]
        raise UploadError(413, "too_many_pixels",
                          f"The {len(checked)} photos have {total:,} pixels in all, over the limit of "
                          f"{max_request_pixels:,} pixels per request (serve.max_request_pixels): "
                          "send fewer photos in one request, or smaller ones.", files, limit=max_request_pixels)


def decode_all(uploads: Sequence[Upload], max_photos: int, max_request_pixels: int | None = None,
               max_side: int | None = None) -> list[Photo]:
    """Check every upload from its header, then the request's pixel budget, then decode each to ``max_side``.

    One bad file rejects the request (:class:`UploadError` listing every bad file, with the status of
    the first); nothing is decoded unless every header passed and the budget holds.

    Args:
        max_photos: ``serve.max_photos_per_request``.
        max_request_pixels: ``serve.max_request_pixels`` (``None``: no request budget).
        max_side: ``serve.max_side``: longer side of the decoded photos in px (``None``: full size).
    """
    if not uploads:
        raise UploadError(400, "no_photo", "Add at least one photo (form field 'photos').")
    if len(uploads) > max_photos:
        raise UploadError(413, "too_many_photos", f"{len(uploads)} photos in one request: send at most {max_photos}.")
    checked = [check_header(u) for u in uploads]
    _refuse(checked)
    good = [c for c in checked if isinstance(c, _Checked)]
    if max_request_pixels is not None:
        check_request_pixels(good, max_request_pixels)
    results = [decode(c, max_side) for c in good]
    _refuse(results)
    return [r for r in results if isinstance(r, Photo)]
