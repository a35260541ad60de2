"""Uploaded files to photos: size, media type and decoding checks, each with a clear 4xx.

Decoding goes through :func:`cardamage.data.images.load_image` (the one loader: EXIF orientation,
truncation, decompression bombs), so the service refuses exactly what training would.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from cardamage.data.images import ImageLoadError, load_image

log = logging.getLogger(__name__)

#: Decoded format -> suffix stored in the incoming pool (all in :data:`cardamage.data.images.IMAGE_SUFFIXES`).
FORMAT_SUFFIX = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}
#: Declared part types accepted besides ``image/*`` (some clients send no specific type).
GENERIC_TYPES = ("application/octet-stream", "", None)


class UploadError(Exception):
    """A request the client must fix: HTTP ``status``, a ``code``, a sentence, and per-file problems."""

    def __init__(self, status: int, code: str, message: str, files: Sequence[dict[str, Any]] = ()):
        super().__init__(message)
        self.status, self.code, self.message, self.files = status, code, message, list(files)

    def body(self) -> dict[str, Any]:
        """The JSON error body (without the request id)."""
        out: dict[str, Any] = {"code": self.code, "message": self.message}
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
    """A decoded upload: RGB pixels ``uint8 [H, W, 3]`` (EXIF-rotated), sha256 of the bytes, pool suffix."""

    filename: str
    data: bytes = field(repr=False)
    rgb: np.ndarray = field(repr=False)
    sha256: str
    suffix: str


def _fail(upload: Upload, status: int, code: str, message: str) -> dict[str, Any]:
    return {"filename": upload.filename, "status": status, "code": code, "message": message}


def _classify(exc: ImageLoadError) -> tuple[int, str, str]:
    text = str(exc)
    if "bomb" in text or "exceeds the limit" in text:
        return 413, "too_many_pixels", "The picture has too many pixels: send a normal camera photo."
    if "not a readable image" in text:
        return 415, "not_an_image", "The file is not a picture: upload a JPEG or PNG photo."
    return 400, "truncated", "The file is incomplete or damaged: upload the photo again."


def decode(upload: Upload, tmp_dir: str) -> Photo | dict[str, Any]:
    """The decoded photo, or the problem (``filename, status, code, message``) that stops it."""
    if not upload.data:
        return _fail(upload, 400, "empty_file", "The file is empty: choose the photo again.")
    ctype = (upload.content_type or "").split(";")[0].strip().lower()
    if ctype not in GENERIC_TYPES and not ctype.startswith("image/"):
        return _fail(upload, 415, "unsupported_media_type", f"Files of type {ctype!r} are not accepted: "
                                                            "upload JPEG or PNG photos.")
    fd, path = tempfile.mkstemp(suffix=".upload", dir=tmp_dir)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(upload.data)
        rgb = load_image(path)
    except ImageLoadError as exc:
        return _fail(upload, *_classify(exc))
    finally:
        os.unlink(path)
    fmt = _format(upload.data)
    if fmt not in FORMAT_SUFFIX:
        return _fail(upload, 415, "unsupported_format", f"{fmt or 'This'} pictures are not accepted: "
                                                        "upload JPEG or PNG photos.")
    return Photo(upload.filename, upload.data, rgb, hashlib.sha256(upload.data).hexdigest(), FORMAT_SUFFIX[fmt])


def _format(data: bytes) -> str | None:
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.format
    except (OSError, UnidentifiedImageError):
        return None


def decode_all(uploads: Sequence[Upload], max_photos: int) -> list[Photo]:
    """Decode every upload; one bad file rejects the request (:class:`UploadError` listing every bad file,
    with the status of the first)."""
    if not uploads:
        raise UploadError(400, "no_photo", "Add at least one photo (form field 'photos').")
    if len(uploads) > max_photos:
        raise UploadError(413, "too_many_photos", f"{len(uploads)} photos in one request: send at most {max_photos}.")
    with tempfile.TemporaryDirectory(prefix="cardamage-upload-") as tmp:
        results = [decode(u, tmp) for u in uploads]
    bad = [r for r in results if isinstance(r, dict)]
    if bad:
        names = ", ".join(b["filename"] for b in bad)
        raise UploadError(bad[0]["status"], bad[0]["code"], f"{len(bad)} file(s) cannot be used: {names}", bad)
    return [r for r in results if isinstance(r, Photo)]
