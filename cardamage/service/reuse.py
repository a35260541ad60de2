"""Reused photos (a fraud signal): a claim photo seen before under another claim id.

Each assessed photo is checked against the photos of earlier claims and then recorded:

* **exact**: the same bytes (sha256), looked up in SQLite's B-tree index on ``sha256``;
* **near**: a 64-bit perceptual hash (:func:`phash64`, DCT pHash) within ``max_hamming`` bits, found
  with a multi-index hash (:class:`HammingIndex`), then confirmed by the model embeddings' cosine
  distance (at most ``max_embedding_distance``) when both photos have one from the same model. A
  candidate whose embeddings are farther apart is dropped; one where either embedding is missing
  (or comes from another model, or has another size) is reported with ``"confirmed": false``.

The store is one SQLite file (``serve.reuse.index_path``, default ``<serve.incoming_dir>/reuse.sqlite``,
WAL journal): table ``photos`` (sha256, claim id, photo name, pHash as a signed 64-bit integer,
first seen, UTC) with one row per (sha256, claim id), and table ``embeddings`` (``float32 [D]`` blobs,
by photo row id). Only the hashes and row ids are held in memory (:class:`HammingIndex`: 76 bytes a
photo); embeddings stay in SQLite and only the few candidates' vectors are read, by row id. Rows are
never pruned with the photos (:mod:`.store`): the hashes are what a fraud check needs for years.

Photos without a claim id are checked (a photo of claim X assessed anonymously is still claim X's
photo, and the handler should know) but **not recorded**: they belong to no claim, so they cannot be
"an earlier claim" of anyone, and recording them would make every later honest claim of a photo first
tried out anonymously look like reuse. A resubmitted photo of the same claim id is not a match.

Several threads share one :class:`ReuseIndex` (a lock around the connection); several processes
(uvicorn workers, Ray replicas) may share the file: every check runs in a ``BEGIN IMMEDIATE``
transaction that first reads the rows other processes added since (by row id), so no process
misses another's photo. A file that is not a reuse index raises :class:`~cardamage.errors.BadInputError`
naming it; :func:`open_reuse_index` then logs an error and the service runs without reuse checks
(the file is left alone for an operator), and :func:`check_reuse` never fails a request.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
import sqlite3
import threading
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
from PIL import Image

from cardamage.config_serve import ServeParams
from cardamage.errors import BadInputError, BadParameterError
from cardamage.service.hamming import HammingIndex, popcount64

log = logging.getLogger(__name__)

APPLICATION_ID = 0x43444D52  # "CDMR": marks a cardamage reuse index (PRAGMA application_id)
SCHEMA_VERSION = 1  # PRAGMA user_version
MAX_MATCHES = 5  # matches reported per photo: the best one per other claim id, closest first
# multi-index hashing: 64 bits = 5 bands (13, 13, 13, 13, 12 bits); r = 8 -> each probed within 1 bit
MAX_CANDIDATES = 2000  # near candidates read from SQLite per photo, closest first
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_U64 = 1 << 64

SCHEMA = """
CREATE TABLE photos (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  sha256 TEXT NOT NULL,
  claim_id TEXT NOT NULL,
  photo TEXT NOT NULL,
  phash INTEGER NOT NULL,      -- the unsigned 64-bit hash as a signed (two's complement) integer
  first_seen TEXT NOT NULL     -- ISO 8601, UTC
);
CREATE UNIQUE INDEX photos_sha256_claim ON photos (sha256, claim_id);
CREATE TABLE embeddings (
  id INTEGER PRIMARY KEY REFERENCES photos (id),
  model TEXT,                  -- model version the vector came from (NULL: unknown)
  vector BLOB NOT NULL         -- float32 [D], little endian
);
"""


def phash64(rgb: np.ndarray) -> int:
    """64-bit perceptual hash (``imagehash.phash``: DCT of the 32x32 greyscale picture) as an int in ``[0, 2**64)``.

    ``rgb``: ``uint8 [H, W, 3]``. Invariant to resizing and JPEG re-saving (0-2 bits on the sample
    photos); a 2-3 % crop moves 2-10 bits, a 5 % crop 10-14.
    """
    if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3):
        raise BadInputError(f"photo: expected an RGB uint8 [H, W, 3] array, got {getattr(rgb, 'dtype', type(rgb))} "
                            f"{getattr(rgb, 'shape', '')}")
    # imagehash.phash resizes to 32x32 with LANCZOS over the whole photo (1.2 ms of its 1.7 ms at 512 px);
    # reducing_gap box-averages by an integer factor first (to >= 96 px), so the same 32x32 picture
    # comes out within rounding: 0 bits of difference on 63 of the 70 sample photos, 2 on the other 7.
    # phash then finds the picture at its size already and only takes the DCT.
    grey = Image.fromarray(rgb).convert("L").resize((32, 32), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return int(str(imagehash.phash(grey, hash_size=8)), 16)


def _signed(h: int) -> int:
    return h - _U64 if h >= 1 << 63 else h


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _claim(claim_id: str | None) -> str | None:
    return claim_id.strip() or None if isinstance(claim_id, str) else None


def _vector(embedding: np.ndarray | None) -> np.ndarray | None:
    """``float32 [D]`` of a finite 1-D embedding; ``None`` for none."""
    if embedding is None:
        return None
    vec = np.asarray(embedding, dtype=np.float32)
    if vec.ndim != 1 or vec.size == 0 or not np.isfinite(vec).all():
        raise BadInputError(f"embedding: expected a finite 1-D vector, got shape {vec.shape}")
    return vec


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float | None:
    """``1 - cos(a, b)`` of two ``float32 [D]`` vectors (0: same direction, 2: opposite); ``None`` if one is zero."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return None
    return max(0.0, 1.0 - float(np.dot(a, b)) / (na * nb))


class ReuseIndex:
    """Photos of earlier claims in a SQLite file, with a :class:`HammingIndex` of their hashes (thread safe).

    Args:
        path: the SQLite file; created (with its folder) on first use.
        max_hamming: most pHash bits (of 64) that differ in a near match.
        max_embedding_distance: most cosine distance of the two embeddings that confirms a near match.

    Raises:
        BadInputError: ``path`` is not a reuse index (corrupt, another application's, a newer format).
    """

    def __init__(self, path: str | Path, max_hamming: int = 8, max_embedding_distance: float = 0.05):
        if not 0 <= int(max_hamming) <= 24:
            raise BadParameterError(f"serve.reuse.max_hamming: expected 0..24 bits, got {max_hamming!r}")
        if not 0.0 <= float(max_embedding_distance) <= 2.0:
            raise BadParameterError("serve.reuse.max_embedding_distance: expected a cosine distance in 0..2, "
                                    f"got {max_embedding_distance!r}")
        self.path, self.max_hamming = Path(path), int(max_hamming)
        self.max_embedding_distance = float(max_embedding_distance)
        self._lock = threading.RLock()
        self._memory, self._last_id = HammingIndex(), 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise BadInputError(f"{self.path}: cannot open the reuse index ({exc})") from exc
        try:
            self._open_schema()
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: consistent after a crash
            self._sync()
        except (sqlite3.Error, BadInputError) as exc:
            self._conn.close()
            self._conn = None
            if isinstance(exc, BadInputError):
                raise
            raise BadInputError(f"{self.path}: not a usable reuse index ({exc})") from exc
        log.info("reuse index %s: %d photo(s)", self.path, len(self))

    def _open_schema(self) -> None:
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")  # two processes creating the same file: one creates, one checks
        try:
            app = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if app == 0 and not tables:
                for statement in [*SCHEMA.split(";")[:-1], f"PRAGMA application_id = {APPLICATION_ID}",
                                  f"PRAGMA user_version = {SCHEMA_VERSION}"]:
                    conn.execute(statement)  # not executescript: it would commit the open transaction
            elif app != APPLICATION_ID:
                raise BadInputError(f"{self.path}: a SQLite file of another application (application_id {app}, "
                                    f"tables {sorted(tables)}), not a cardamage reuse index")
            elif version > SCHEMA_VERSION:
                raise BadInputError(f"{self.path}: reuse index format {version}, newer than this cardamage's "
                                    f"({SCHEMA_VERSION}): upgrade cardamage")
            elif not {"photos", "embeddings"} <= tables:
                raise BadInputError(f"{self.path}: reuse index without its tables (has {sorted(tables)})")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"{self.path}: the reuse index is closed")
        return self._conn

    def _sync(self) -> None:
        """Load the rows added since the last call (by this or another process) into the memory index."""
        rows = self._db().execute("SELECT id, phash FROM photos WHERE id > ? ORDER BY id", (self._last_id,)).fetchall()
        if rows:
            arr = np.array(rows, dtype=np.int64)
            self._memory.add(arr[:, 1].view(np.uint64), arr[:, 0])
            self._last_id = int(arr[-1, 0])

    def __len__(self) -> int:
        with self._lock:
            return len(self._memory)

    def close(self) -> None:
        """Close the SQLite connection (idempotent); later calls raise ``RuntimeError``."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> ReuseIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_and_add(self, sha256: str, phash: int, embedding: np.ndarray | None, claim_id: str | None,
                      photo: str, embedding_model: str | None = None) -> list[dict[str, Any]]:
        """Matches of this photo with other claims' photos (at most :data:`MAX_MATCHES`), then record it.

        Args:
            sha256: hex sha256 of the uploaded bytes.
            phash: :func:`phash64` of the photo.
            embedding: the model's ``float32 [D]`` embedding of the photo, or ``None``.
            claim_id: the claim; ``None`` / blank: checked but not recorded (see the module docstring).
            photo: a name for the handler (the uploaded file name).
            embedding_model: the model version of ``embedding``: vectors of other versions are not compared.

        Returns:
            One dict per other claim id, exact matches first, then by Hamming distance:
            ``{"kind": "exact" | "near", "claim_id", "sha256", "photo", "hamming": int,
            "embedding_distance": float | None, "confirmed": bool, "first_seen": ISO UTC}``.
        """
        sha256, phash, claim, vec = self._checked(sha256, phash, embedding, claim_id)
        with self._lock:
            conn = self._db()
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._sync()
                matches = self._matches(sha256, phash, vec, embedding_model, claim)
                new_id = self._record(sha256, phash, vec, embedding_model, claim, str(photo)) if claim else None
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
                    raise BadInputError(f"{self.path}: the reuse index is corrupt ({exc})") from exc
                raise
            if new_id is not None:  # every row below it is synced: we held the write lock
                self._memory.add(np.array([phash], np.uint64), np.array([new_id], np.int64))
                self._last_id = new_id
        return matches

    @staticmethod
    def _checked(sha256: str, phash: int, embedding: np.ndarray | None,
                 claim_id: str | None) -> tuple[str, int, str | None, np.ndarray | None]:
        if not (isinstance(sha256, str) and SHA256_RE.match(sha256)):
            raise BadInputError(f"sha256: expected 64 lowercase hex digits, got {sha256!r}")
        if not (isinstance(phash, (int, np.integer)) and 0 <= int(phash) < _U64):
            raise BadInputError(f"phash: expected an unsigned 64-bit integer, got {phash!r}")
        return sha256, int(phash), _claim(claim_id), _vector(embedding)

    def _record(self, sha256: str, phash: int, vec: np.ndarray | None, model: str | None, claim: str,
                photo: str) -> int | None:
        """Insert the row (once per sha256 and claim id) and its embedding; the new row id, ``None`` if known."""
        conn = self._db()
        cur = conn.execute("INSERT OR IGNORE INTO photos (sha256, claim_id, photo, phash, first_seen) "
                           "VALUES (?, ?, ?, ?, ?)", (sha256, claim, photo, _signed(phash), _now()))
        new = cur.rowcount == 1
        row_id = cur.lastrowid if new else conn.execute(
            "SELECT id FROM photos WHERE sha256 = ? AND claim_id = ?", (sha256, claim)).fetchone()[0]
        if vec is not None:  # a known row without an embedding gets this one
            conn.execute("INSERT OR IGNORE INTO embeddings (id, model, vector) VALUES (?, ?, ?)",
                         (row_id, model, vec.astype("<f4").tobytes()))
        return int(row_id) if new else None

    def _matches(self, sha256: str, phash: int, vec: np.ndarray | None, model: str | None,
                 claim: str | None) -> list[dict[str, Any]]:
        conn = self._db()
        cols = "id, claim_id, sha256, photo, phash, first_seen"
        rows = conn.execute(f"SELECT {cols} FROM photos WHERE sha256 = ? AND claim_id IS NOT ?",
                            (sha256, claim)).fetchall()
        ids, dist = self._memory.search(phash, self.max_hamming)
        ids = ids[np.argsort(dist, kind="stable")[:MAX_CANDIDATES]].tolist()  # a crowded hash must not stall
        rows += self._by_ids(f"SELECT {cols} FROM photos WHERE id IN ({{ids}}) AND claim_id IS NOT ? AND sha256 != ?",
                             ids, claim, sha256)
        wanted = [r[0] for r in rows] if vec is not None else []
        vectors = {row_id: (m, np.frombuffer(blob, dtype="<f4")) for row_id, m, blob in self._by_ids(
            "SELECT id, model, vector FROM embeddings WHERE id IN ({ids})", wanted)}
        found = [m for m in (self._match(r, sha256, phash, vec, model, vectors) for r in rows) if m is not None]
        found.sort(key=lambda m: (m["kind"] != "exact", m["hamming"], not m["confirmed"],
                                  m["embedding_distance"] or 0.0))
        best: dict[str, dict[str, Any]] = {}
        for m in found:
            best.setdefault(m["claim_id"], m)
        return list(best.values())[:MAX_MATCHES]

    def _by_ids(self, sql: str, ids: list[int], *params: object) -> list[tuple]:
        """Rows of ``sql`` (``{ids}``: the placeholders of ``ids``), 500 ids a query (SQLite's variable limit)."""
        rows: list[tuple] = []
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            rows += self._db().execute(sql.format(ids=",".join("?" * len(chunk))), (*chunk, *params)).fetchall()
        return rows

    def _match(self, row: tuple, sha256: str, phash: int, vec: np.ndarray | None, model: str | None,
               vectors: dict[int, tuple[str | None, np.ndarray]]) -> dict[str, Any] | None:
        """The match dict of a candidate row; ``None`` when the embeddings deny a near match."""
        row_id, claim, sha, photo, stored_hash, first_seen = row
        distance = None
        if vec is not None and row_id in vectors:
            other_model, other = vectors[row_id]
            if other_model == model and other.shape == vec.shape:
                distance = cosine_distance(vec, other)
        exact = sha == sha256
        if not exact and distance is not None and distance > self.max_embedding_distance:
            return None
        return {"kind": "exact" if exact else "near", "claim_id": claim, "sha256": sha, "photo": photo,
                "hamming": int(popcount64(np.uint64(stored_hash % _U64) ^ np.uint64(phash))),
                "embedding_distance": None if distance is None else round(distance, 6),
                "confirmed": exact or distance is not None, "first_seen": first_seen}


def index_path(serve: ServeParams) -> Path:
    """``serve.reuse.index_path``, else ``<serve.incoming_dir>/reuse.sqlite``."""
    return Path(serve.reuse.index_path or Path(serve.incoming_dir) / "reuse.sqlite")


def open_reuse_index(serve: ServeParams) -> ReuseIndex | None:
    """The service's index; ``None`` when ``serve.reuse.enabled`` is false or the file is unusable.

    An unusable file (corrupt, foreign, unreadable) is logged as an error and left in place for an
    operator; the service then runs without reuse checks rather than refusing every claim.
    """
    if not serve.reuse.enabled:
        return None
    try:
        return ReuseIndex(index_path(serve), serve.reuse.max_hamming, serve.reuse.max_embedding_distance)
    except (BadInputError, OSError) as exc:
        log.error("reuse checks are off: %s", exc)
        return None


def check_reuse(index: ReuseIndex | None, rgb: np.ndarray, sha256: str, claim_id: str | None, photo: str,
                embedding: np.ndarray | None = None, embedding_model: str | None = None) -> list[dict[str, Any]] | None:
    """:meth:`ReuseIndex.check_and_add` of a decoded photo (``uint8 [H, W, 3]``) for a claim request.

    Returns ``None`` (not checked) without an index or when the check fails (logged: a locked or
    broken index must not fail the claim), else the matches (``[]``: none).
    """
    if index is None:
        return None
    try:
        return index.check_and_add(sha256, phash64(rgb), embedding, claim_id, photo, embedding_model)
    except Exception:  # anything from the index: the claim is still assessed, without the check
        log.exception("%s: reuse check failed", photo)
        return None
