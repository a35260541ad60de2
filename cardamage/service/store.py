"""Where the service keeps what it received: the incoming pool and the colour splash pictures.

Incoming pool (``serve.incoming_dir``): every accepted photo as ``<sha256>.<ext>`` (content
addressed: the same bytes are stored once and never overwritten), with ``<sha256>.json`` beside
it holding the model's latest prediction. The folder is a photo pool as ``cardamage score``,
``select`` and ``drift`` read it (``data.pool`` / ``--current``): only image suffixes are photos,
and half-written files never carry one.

Both folders are bounded (``serve.storage``, applied by :mod:`.pruner`): :func:`prune_files` removes
the oldest files first until the folder is under its size limit, and every file older than the age
limit, among those a caller allows (incoming photos: only once scored or labelled). Only the names
this module writes are ever listed or removed (``<sha256>.<image ext>``, ``<sha256>.json``,
``<32 hex>.jpg``): other files (``reuse.sqlite``, temporary files) are never touched.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cardamage.data.images import IMAGE_SUFFIXES
from cardamage.fileio import write_bytes, write_json

log = logging.getLogger(__name__)

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
SPLASH_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_INCOMING_NAME_RE = re.compile(r"^([0-9a-f]{64})(\.[A-Za-z]+)$")
_SPLASH_NAME_RE = re.compile(r"^([0-9a-f]{32})\.jpg$")


@dataclass(frozen=True)
class StoredFile:
    """One removable unit of a store: ``paths`` are removed together, the main file first.

    ``key``: the sha256 (incoming pool) or splash id; ``size``: bytes of all ``paths``; ``mtime``:
    the newest modification time of ``paths`` in seconds since the epoch (a photo received again,
    its prediction rewritten, counts from then).
    """

    key: str
    paths: tuple[Path, ...]
    size: int
    mtime: float

    @property
    def path(self) -> Path:
        """The main file (the photo; the JSON when the photo is gone)."""
        return self.paths[0]


def _remove(entry: StoredFile) -> bool | None:
    """Unlink ``entry``'s files, main first: ``True`` removed, ``None`` already gone, ``False`` not removable.

    A main file that cannot be removed (permission, I/O) keeps the others, so a photo never loses its JSON.
    """
    try:
        entry.path.unlink()
    except FileNotFoundError:
        log.info("%s vanished before it was pruned", entry.path)
        return None
    except OSError as exc:
        log.warning("%s: cannot be removed (%s); kept", entry.path, exc)
        return False
    for extra in entry.paths[1:]:
        try:
            extra.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("%s: cannot be removed (%s); kept", extra, exc)
    return True


def prune_files(files: Sequence[StoredFile], max_bytes: int, max_age_s: float, now: float,
                removable: Callable[[StoredFile], bool] | None = None, min_age_s: float = 0.0) -> list[StoredFile]:
    """Remove the oldest of ``files`` until their total is at most ``max_bytes``, and all older than ``max_age_s``.

    Args:
        files: the store's content (all of it: files that may not be removed count in the total too).
        max_bytes: size limit in bytes, ``0`` none; max_age_s: age limit in seconds (``now - mtime``), ``0`` none.
        now: seconds since the epoch.
        removable: which files may go (default: all); asked only of files the limits would remove.
        min_age_s: files younger than this stay whatever the limits (one just served may still be fetched).

    Returns:
        The entries removed, oldest first. A file that vanished meanwhile is skipped (its bytes no
        longer count), one that cannot be removed is logged and kept; neither raises.
    """
    total = sum(f.size for f in files)
    removed: list[StoredFile] = []
    for entry in sorted(files, key=lambda f: (f.mtime, f.key)):
        age = now - entry.mtime
        if not ((max_age_s > 0 and age > max_age_s) or (max_bytes > 0 and total > max_bytes)):
            break  # oldest first: no later file is older, and the total only shrinks
        if age < min_age_s or (removable is not None and not removable(entry)):
            continue
        outcome = _remove(entry)
        if outcome is not False:
            total -= entry.size
        if outcome:
            removed.append(entry)
    return removed


def over_limits(files: Sequence[StoredFile], max_bytes: int, max_age_s: float, now: float) -> bool:
    """Whether ``files`` total more than ``max_bytes`` or hold one older than ``max_age_s`` (``0``: no limit)."""
    if max_bytes > 0 and sum(f.size for f in files) > max_bytes:
        return True
    return max_age_s > 0 and any(now - f.mtime > max_age_s for f in files)


def _scan(folder: Path, name_re: re.Pattern[str]) -> list[tuple[str, Path, os.stat_result]]:
    """``(key, path, stat)`` of the regular files of ``folder`` whose name matches (none: the folder is missing)."""
    found = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    for entry in entries:
        match = name_re.match(entry.name)
        if not match:
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                found.append((match.group(1), Path(entry.path), entry.stat(follow_symlinks=False)))
        except FileNotFoundError:
            continue  # removed while listing
    return found


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
        """Write ``<sha256>.json`` atomically (the latest prediction replaces an older one).

        Compact JSON: with an indent the standard library encodes in Python (1.4 ms for a photo with a few
        regions, on every request); without one its C encoder takes a tenth of that."""
        return write_json(self.photo_path(sha256, ".json"), record, indent=None)

    def files(self) -> list[StoredFile]:
        """One entry per sha256: its photo(s) first, then ``<sha256>.json`` (a JSON without photo is its own entry).

        Only ``<sha256>.<image suffix>`` and ``<sha256>.json`` are listed; anything else in the folder is not.
        """
        groups: dict[str, list[tuple[Path, os.stat_result]]] = {}
        for sha, path, st in _scan(self.folder, _INCOMING_NAME_RE):
            suffix = path.suffix.lower()
            if suffix in IMAGE_SUFFIXES or path.suffix == ".json":
                groups.setdefault(sha, []).append((path, st))
        out = []
        for sha, members in groups.items():
            members.sort(key=lambda m: (m[0].suffix == ".json", m[0].name))  # photos first
            out.append(StoredFile(sha, tuple(p for p, _ in members), sum(st.st_size for _, st in members),
                                  max(st.st_mtime for _, st in members)))
        return out

    def prune(self, scored: Collection[str], max_bytes: int, max_age_s: float, now: float | None = None,
              labelled: Collection[str] = frozenset(), pending: Collection[str] = frozenset(),
              files: Sequence[StoredFile] | None = None) -> list[StoredFile]:
        """Apply the limits (bytes, seconds; ``0`` none) to photos that may go, each with its JSON.

        A photo may go when its sha256 is in ``scored`` (the scores table's ids) or ``labelled``
        (done with in Label Studio), and not in ``pending`` (sent for labelling, not back yet: the
        labelling still reads the file). Any other photo stays, even over the limits. ``files``: a
        listing of :meth:`files` just made (default: listed now).

        Returns:
            What was removed (see :func:`prune_files`).
        """
        def removable(entry: StoredFile) -> bool:
            return (entry.key in scored or entry.key in labelled) and entry.key not in pending

        listing = self.files() if files is None else files
        return prune_files(listing, max_bytes, max_age_s, time.time() if now is None else now, removable)


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

    def files(self) -> list[StoredFile]:
        """One entry per ``<32 hex>.jpg``; nothing else in the folder is listed."""
        found = _scan(self.folder, _SPLASH_NAME_RE)
        return [StoredFile(key, (path,), st.st_size, st.st_mtime) for key, path, st in found]

    def prune(self, max_bytes: int, max_age_s: float, now: float | None = None, min_age_s: float = 0.0
              ) -> list[StoredFile]:
        """Apply the limits (bytes, seconds; ``0`` none) to the splash pictures, oldest first (all re-creatable),
        sparing those younger than ``min_age_s`` seconds. Returns what was removed (see :func:`prune_files`)."""
        return prune_files(self.files(), max_bytes, max_age_s, time.time() if now is None else now,
                           min_age_s=min_age_s)
