"""The pool of unlabelled claim photos, minus what must not be sent for labelling again.

A pool is a folder (searched recursively) or a list file with one photo path per line (blank
lines and ``#`` comments ignored; relative paths are taken from the current folder, else from the
list file's folder). A photo is excluded, with a reason, when it is

* already labelled: the same bytes (sha256) as, or a near-duplicate (dHash Hamming distance
  <= ``data.near_duplicate_distance``) of, a labelled photo of the dataset (``data.root``);
* already sent for labelling, labelled or marked unusable in Label Studio: in the ledger
  (``labelstudio.ledger``, ``sha256 -> {"path", "task_id", "project_id", "pushed_at", "status"}``,
  read through :mod:`cardamage.labelling.ledger`), or a near-duplicate of a ledger photo;
* a second copy of a pool photo with the same bytes.

Unreadable photos are reported by name and skipped. Hashes are cached in a JSON file keyed by
path, size and modification time so that a large dataset is hashed once.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cardamage.config import DataParams, Params
from cardamage.data.dedup import file_sha256, hamming_matrix, perceptual_hash
from cardamage.data.images import IMAGE_SUFFIXES, ImageLoadError, list_images
from cardamage.errors import EmptyInputError
from cardamage.fileio import write_json

log = logging.getLogger(__name__)


@dataclass
class PoolPhoto:
    """A candidate photo: ``name`` is the path as shown and stored (POSIX, relative to the cwd when inside it)."""

    path: Path
    name: str
    sha256: str
    phash: str


@dataclass
class KnownPhoto:
    """A labelled or pending photo (``kind``: ``labelled``, ``pushed``, ``ledger-labelled`` or ``unusable``)."""

    name: str
    sha256: str
    phash: str | None
    kind: str
    detail: str = ""
    file: Path | None = None


@dataclass
class Pool:
    """Result of :func:`build_pool`: candidates, exclusions (``name -> reason``) and unreadable photos."""

    source: str
    photos: list[PoolPhoto] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)
    known: list[KnownPhoto] = field(default_factory=list)

    def summary(self) -> str:
        """One line: how many candidates, exclusions and unreadable photos."""
        total = len(self.photos) + len(self.excluded) + len(self.unreadable)
        return (f"pool {self.source}: {total} photo(s), {len(self.photos)} candidate(s), "
                f"{len(self.excluded)} excluded, {len(self.unreadable)} unreadable")


# ----------------------------------------------------------------------------- hash cache

def _valid_entry(entry: Any) -> bool:
    """A cache entry of the expected shape (anything else is recomputed)."""
    return (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
            and isinstance(entry.get("size"), int) and isinstance(entry.get("mtime_ns"), int)
            and isinstance(entry.get("phash"), (str, type(None))) and isinstance(entry.get("error"), (str, type(None))))


class HashCache:
    """sha256 and dHash per file, remembered by absolute path, size and mtime (JSON file, optional)."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else None
        self.entries: dict[str, dict[str, Any]] = {}
        self.dirty = False
        if self.path is not None and self.path.is_file():
            try:
                entries = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                log.warning("%s: unreadable hash cache, starting afresh (%s)", self.path, exc)
                entries = {}
            if not isinstance(entries, dict):
                log.warning("%s: hash cache is a JSON %s, not an object: starting afresh", self.path,
                            type(entries).__name__)
                entries = {}
            self.entries = {k: v for k, v in entries.items() if _valid_entry(v)}
            self.dirty = len(self.entries) != len(entries)

    def hashes(self, file: str | os.PathLike) -> tuple[str | None, str | None, str | None]:
        """``(sha256, dhash, error)`` of ``file``: ``error`` (else ``None``) names an unreadable image.

        A file that cannot be read at all (permissions, I/O error) has no sha256 either, and is not
        remembered, so that it is tried again next time.
        """
        p = Path(file)
        try:
            stat = p.stat()
            key = str(p.resolve())
            entry = self.entries.get(key)
            if not entry or entry.get("size") != stat.st_size or entry.get("mtime_ns") != stat.st_mtime_ns:
                entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": file_sha256(p),
                         "phash": None, "error": None}
                try:
                    entry["phash"] = perceptual_hash(p)
                except ImageLoadError as exc:
                    entry["error"] = str(exc)
                self.entries[key] = entry
                self.dirty = True
        except PermissionError:
            return None, None, f"{p}: cannot be read (permission denied)"
        except OSError as exc:
            return None, None, f"{p}: cannot be read ({exc.strerror or exc})"
        return entry["sha256"], entry["phash"], entry["error"]

    def save(self) -> None:
        """Write the cache back (atomically) if anything changed."""
        if self.path is not None and self.dirty:
            write_json(self.path, self.entries, indent=None)
            self.dirty = False


# ----------------------------------------------------------------------------- listing

def display_name(path: Path) -> str:
    """``path`` relative to the current folder when inside it, else absolute; POSIX separators."""
    absolute = path.resolve()
    try:
        return absolute.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return absolute.as_posix()


def list_pool_files(source: str | os.PathLike) -> list[Path]:
    """Photo files of a pool folder (recursive, sorted) or list file (in file order, duplicates dropped).

    Raises:
        FileNotFoundError: the folder or list file does not exist.
    """
    src = Path(source)
    if src.is_dir():
        return list_images(src)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: pool folder or list file not found (data.pool)")
    if src.suffix.lower() in IMAGE_SUFFIXES:
        return [src]
    files: list[Path] = []
    seen: set[Path] = set()
    for line in src.read_text(encoding="utf-8").splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        p = Path(entry).expanduser()
        if not p.is_absolute() and not p.exists() and (src.parent / p).exists():
            p = src.parent / p
        if p not in seen:
            seen.add(p)
            files.append(p)
    return files


# ----------------------------------------------------------------------------- known photos

def labelled_photos(data: DataParams, cache: HashCache) -> list[KnownPhoto]:
    """Hashes of every labelled photo of the dataset under ``data.root`` (empty if there is none)."""
    from cardamage.data.dataset import load_dataset

    root = Path(data.root)
    if not root.exists():
        log.warning("data.root %s not found: no labelled photos to exclude", root)
        return []
    dataset = load_dataset(root, annotation_file=data.annotation_file, category_key=data.category_key)
    base = Path(dataset.root or root)
    known = []
    for record in dataset.images:
        file = base / record.path
        if record.labelled and file.is_file():
            sha, ph, error = cache.hashes(file)
            if sha is None:
                log.warning("labelled photo %s", error)
                continue
            known.append(KnownPhoto(record.path, sha, ph, "labelled", file=file))
    return known


def read_ledger(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The Label Studio ledger ``sha256 -> entry`` (:func:`cardamage.labelling.ledger.load_ledger`; missing = empty)."""
    from cardamage.labelling.ledger import load_ledger

    return dict(load_ledger(path))


def ledger_photos(path: str | os.PathLike, cache: HashCache) -> list[KnownPhoto]:
    """Photos in the ledger, with a dHash when the file is still on disk (else exact matching only).

    A region task's key is ``<sha256>@x,y,w,h``: its photo counts as sent (or labelled) like a whole
    photo, so a photo labelled by regions leaves the pool too.
    """
    known = []
    for key, entry in read_ledger(path).items():
        entry = entry if isinstance(entry, dict) else {}
        sha, _, box = str(key).partition("@")
        name = str(entry.get("path") or sha)
        status = entry.get("status", "pushed")
        status = status if isinstance(status, str) else "pushed"
        ph = None
        if entry.get("path") and Path(name).is_file():
            _, ph, _ = cache.hashes(name)
        kind = {"labelled": "ledger-labelled", "unusable": "unusable"}.get(status, "pushed")
        known.append(KnownPhoto(name, sha, ph, kind, f"task {entry.get('task_id', '?')}"
                                + (f", region {box}" if box else "")))
    return known


# ----------------------------------------------------------------------------- pool

_KIND_TEXT = {"labelled": "already labelled", "pushed": "already sent for labelling",
              "ledger-labelled": "already labelled in Label Studio",
              "unusable": "marked unusable in Label Studio"}


def build_pool(source: str | os.PathLike, data: DataParams, ledger: str | os.PathLike | None = None,
               hash_cache: str | os.PathLike | None = None, known: Sequence[KnownPhoto] | None = None) -> Pool:
    """List the pool and drop labelled, pending and duplicate photos (each with a reason).

    Args:
        source: pool folder or list file.
        data: the ``data`` section (dataset root for the labelled photos, near-duplicate distance).
        ledger: Label Studio ledger file (missing = empty).
        hash_cache: JSON file for the hash cache (``None``: no cache).
        known: labelled / pending photos to use instead of reading the dataset and the ledger.
    """
    cache = HashCache(hash_cache)
    pool = Pool(source=str(source))
    if known is None:
        known = labelled_photos(data, cache) + (ledger_photos(ledger, cache) if ledger else [])
    pool.known = list(known)
    by_sha = {k.sha256: k for k in known}
    seen: dict[str, str] = {}
    for file in list_pool_files(source):
        name = display_name(file)
        if not file.is_file():
            pool.unreadable[name] = f"{name}: file not found"
            continue
        sha, ph, error = cache.hashes(file)
        if sha is None:
            pool.unreadable[name] = error or f"{name}: cannot be read"
        elif sha in by_sha:
            k = by_sha[sha]
            pool.excluded[name] = f"{_KIND_TEXT[k.kind]}: same file as {k.name}"
        elif sha in seen:
            pool.excluded[name] = f"duplicate: same file as pool photo {seen[sha]}"
        elif error:
            pool.unreadable[name] = error
        else:
            seen[sha] = name
            pool.photos.append(PoolPhoto(file, name, sha, ph))
    _exclude_near(pool, [k for k in known if k.phash], data.near_duplicate_distance)
    cache.save()
    for name, why in pool.unreadable.items():
        log.warning("skipping unreadable photo %s: %s", name, why)
    log.info("%s", pool.summary())
    return pool


def pool_for(params: Params, source: str | os.PathLike | None = None) -> Pool:
    """:func:`build_pool` of ``source`` (default ``data.pool``) with the project's dataset, Label
    Studio ledger and hash cache: the pool ``score``, ``select`` and ``train --pseudo-teacher`` see."""
    return build_pool(source or params.data.pool, params.data, params.labelstudio.ledger, params.score.hash_cache)


def _exclude_near(pool: Pool, known: list[KnownPhoto], max_distance: int, chunk: int = 4096) -> None:
    """Move pool photos within ``max_distance`` of a known photo's dHash to ``pool.excluded``."""
    if not known or not pool.photos or max_distance < 0:
        return
    known_hashes = [k.phash for k in known]
    keep = []
    for start in range(0, len(pool.photos), chunk):
        part = pool.photos[start:start + chunk]
        dist = hamming_matrix([p.phash for p in part], known_hashes)
        nearest = dist.argmin(axis=1)
        for photo, j, row in zip(part, nearest, dist):
            if row[j] <= max_distance:
                k = known[int(j)]
                pool.excluded[photo.name] = (f"{_KIND_TEXT[k.kind]}: near-duplicate of {k.name} "
                                             f"(dHash distance {int(row[j])})")
            else:
                keep.append(photo)
    pool.photos = keep


def check_not_empty(pool: Pool) -> None:
    """Raise a one-line :class:`ValueError` when the pool has no candidate, saying why."""
    if pool.photos:
        return
    if pool.unreadable and not pool.excluded:
        names = ", ".join(list(pool.unreadable)[:3]) + (" ..." if len(pool.unreadable) > 3 else "")
        raise EmptyInputError(f"pool {pool.source}: all {len(pool.unreadable)} photo(s) are unreadable ({names})")
    if not pool.unreadable and not pool.excluded:
        raise EmptyInputError(f"pool {pool.source}: no photos found")
    raise EmptyInputError(f"{pool.summary()}: nothing left to score or select")
