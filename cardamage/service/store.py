"""Where the service keeps what it received: the incoming pool and the colour splash pictures.

Incoming pool (``serve.incoming_dir``): every accepted photo as ``<sha256>.<ext>`` (content
addressed: the same bytes are stored once and never overwritten), with ``<sha256>.json`` beside
it holding the model's latest prediction. The folder is a photo pool as ``cardamage score``,
``select`` and ``drift`` read it (``data.pool`` / ``--current``): only image suffixes are photos,
and half-written files never carry one.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cardamage.fileio import write_bytes, write_json

log = logging.getLogger(__name__)

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
SPLASH_ID_RE = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class StoredPhoto:
    """A photo in the incoming pool: its sha256, path, and whether this call wrote it (``False``: known)."""

    sha256: str
    path: Path
    created: bool


class IncomingStore:
    """The incoming pool folder (created on first write)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def photo_path(self, sha256: str, ext: str) -> Path:
        """``<folder>/<sha256><ext>``; ``ext`` with its dot (``.jpg``)."""
        if not SHA256_RE.match(sha256):
            raise ValueError(f"sha256: expected 64 hex digits, got {sha256!r}")
        return self.folder / f"{sha256}{ext}"

    def save_photo(self, data: bytes, sha256: str, ext: str) -> StoredPhoto:
        """Store ``data`` once under its hash: written beside the target with a non-image suffix, then
        hard-linked into place, which fails instead of overwriting when the photo is already there."""
        target = self.photo_path(sha256, ext)
        if target.exists():
            return StoredPhoto(sha256, target, False)
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{sha256}.", suffix=".part", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.link(tmp, target)
            created = True
        except FileExistsError:
            created = False  # a concurrent request stored the same bytes first
        finally:
            Path(tmp).unlink(missing_ok=True)
        if created:
            log.info("stored %s (%d bytes)", target.name, len(data))
        return StoredPhoto(sha256, target, created)

    def save_prediction(self, sha256: str, record: dict[str, Any]) -> Path:
        """Write ``<sha256>.json`` atomically (the latest prediction replaces an older one)."""
        return write_json(self.photo_path(sha256, ".json"), record)


class SplashStore:
    """Colour splash JPEGs by id (32 hex characters), served at ``/v1/splash/<id>.jpg``."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def path(self, splash_id: str) -> Path:
        """Path of a splash id; ``ValueError`` for anything but 32 hex characters (no path tricks)."""
        if not SPLASH_ID_RE.match(splash_id):
            raise ValueError(f"splash id: expected 32 hex characters, got {splash_id!r}")
        return self.folder / f"{splash_id}.jpg"

    def save(self, splash_id: str, jpeg: bytes) -> Path:
        """Write the JPEG bytes atomically."""
        return write_bytes(self.path(splash_id), jpeg)
