"""Keep the service's folders within ``serve.storage``: a background thread that prunes them every few seconds.

* Splash pictures (``serve.splash_dir``): oldest first over ``splash_max_mb``, and all older than
  ``splash_max_age_h``; they are re-created by assessing the photo again. One written in the last
  :data:`SPLASH_GRACE_S` seconds stays (its URL was just answered).
* Incoming photos (``serve.incoming_dir``): the same over ``incoming_max_mb`` / ``incoming_max_age_days``,
  each photo with its ``<sha256>.json``, but only photos that are done with: their sha256 is an
  ``id`` of the scores table (``score.out``: ``cardamage score`` has scored them), or the Label
  Studio ledger (``labelstudio.ledger``) has them ``labelled`` or ``unusable`` (the pool leaves
  those out, so they are never scored, and ``pull`` copied labelled ones into the training data).
  A photo the ledger has as ``pushed`` (sent for labelling, not back yet) stays whatever the table
  says: Label Studio may read it from disk (``local-files``) and ``pull`` copies it from there.
  Photos with neither are waiting to be scored and stay, even over the limits (a warning says so).

The scores table and the ledger are read again only when their size, mtime or inode change, and
only when a limit is exceeded (the table's ``id`` column alone). When either cannot be read (no
table yet, a corrupt table, a ledger that is not a ledger), no incoming photo is removed and one
warning says why; the service goes on. ``MB`` are MiB (as ``serve.max_upload_mb``).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Generic, TypeVar

from cardamage.config import Params, StorageParams
from cardamage.errors import BadInputError, BadParameterError
from cardamage.service.store import IncomingStore, SplashStore, StoredFile, over_limits, prune_files

log = logging.getLogger(__name__)

MIB = 1 << 20
SPLASH_GRACE_S = 60.0

T = TypeVar("T")


def check_storage(storage: StorageParams) -> None:
    """Raise :class:`BadParameterError` naming ``serve.storage.<key>`` for a value that is not a number >= 0."""
    for f in fields(storage):
        value = getattr(storage, f.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise BadParameterError(f"serve.storage.{f.name}: must be a number >= 0 (0: no limit), got {value!r}")


def read_scored_ids(path: str | os.PathLike) -> frozenset[str]:
    """The ``id`` column (sha256 of each scored photo) of the scores table at ``path``, nothing else read.

    Raises:
        FileNotFoundError: no table. BadInputError: not a Parquet file with an ``id`` column (names the file).
    """
    import pyarrow.parquet as pq

    p = Path(path)
    try:
        schema = pq.read_schema(p)
        if "id" not in schema.names:
            raise BadInputError(f"{p}: not a scores table (no 'id' column)")
        ids = pq.read_table(p, columns=["id"]).column("id").to_pylist()
    except (FileNotFoundError, BadInputError):
        raise
    except Exception as exc:  # pyarrow raises OSError, ArrowInvalid and friends for corrupt or truncated files
        raise BadInputError(f"{p}: not a readable scores table ({' '.join(str(exc).split())})") from None
    return frozenset(str(i) for i in ids if i is not None)


@dataclass(frozen=True)
class LedgerState:
    """sha256 sets of the ledger: ``done`` (``labelled`` / ``unusable``) and ``pending`` (``pushed``)."""

    done: frozenset[str] = frozenset()
    pending: frozenset[str] = frozenset()


def read_ledger_state(path: str | os.PathLike) -> LedgerState:
    """The ledger's done and pending photos (:mod:`cardamage.labelling.ledger`); a missing file is empty.

    Raises:
        BadInputError: not a ledger (names the file and the entry).
    """
    from cardamage.labelling.ledger import LABELLED, PUSHED, UNUSABLE, load_ledger

    try:
        ledger = load_ledger(path)
    except OSError as exc:
        raise BadInputError(f"{path}: the ledger cannot be read ({exc})") from None
    status = {sha: entry.get("status", PUSHED) for sha, entry in ledger.items()}
    return LedgerState(frozenset(s for s, v in status.items() if v in (LABELLED, UNUSABLE)),
                       frozenset(s for s, v in status.items() if v == PUSHED))


class FileWatch(Generic[T]):
    """A value read from a file, read again only when the file's (mtime, size, inode) change.

    ``get()`` returns ``(value, None)``, or ``(None, problem)`` when the file is missing (and
    ``missing`` is ``None``) or ``read`` raised :class:`BadInputError` / ``OSError``.
    """

    def __init__(self, path: str | os.PathLike, read: Callable[[Path], T], what: str, missing: T | None = None):
        self.path, self.read, self.what, self.missing = Path(path), read, what, missing
        self._key: tuple[int, int, int] | None = None
        self._value: T | None = None
        self._problem: str | None = None
        self.reads = 0

    def get(self) -> tuple[T | None, str | None]:
        """The current value (read now only when the file changed) and what is wrong, if anything."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return self._gone()
        except OSError as exc:
            self._key = None
            return None, f"{self.path}: {self.what} cannot be read ({exc})"
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if key != self._key:  # stat before reading: a change during the read is seen next time
            self._key, self.reads = key, self.reads + 1
            try:
                self._value, self._problem = self.read(self.path), None
            except FileNotFoundError:
                return self._gone()
            except (BadInputError, OSError) as exc:
                self._value, self._problem = None, str(exc)
        return self._value, self._problem

    def _gone(self) -> tuple[T | None, str | None]:
        self._key = self._value = self._problem = None
        if self.missing is not None:
            return self.missing, None
        return None, f"no {self.what} at {self.path}"


class Pruner:
    """Prune the splash and incoming folders now (:meth:`prune_once`) or every ``prune_every_s`` (:meth:`start`).

    Args:
        storage: ``serve.storage`` (checked: numbers >= 0, ``0`` turns a limit off).
        incoming_dir, splash_dir: ``serve.incoming_dir``, ``serve.splash_dir``.
        scores_path: ``score.out``; ledger_path: ``labelstudio.ledger`` (``None``: no ledger: only
            scored photos may go, and none is known to be pending).
        clock: seconds since the epoch (tests pass their own).

    Raises:
        BadParameterError: a storage value that is negative or not a number.
    """

    def __init__(self, storage: StorageParams, incoming_dir: str | os.PathLike, splash_dir: str | os.PathLike,
                 scores_path: str | os.PathLike, ledger_path: str | os.PathLike | None = None,
                 clock: Callable[[], float] = time.time):
        check_storage(storage)
        self.storage, self.clock = storage, clock
        self.incoming, self.splashes = IncomingStore(incoming_dir), SplashStore(splash_dir)
        self.scores: FileWatch[frozenset[str]] = FileWatch(scores_path, read_scored_ids, "scores table")
        self.ledger: FileWatch[LedgerState] | None = (
            None if ledger_path is None else FileWatch(ledger_path, read_ledger_state, "ledger", LedgerState()))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned: dict[str, str | None] = {"blocked": None, "kept": None}

    @classmethod
    def from_params(cls, params: Params) -> Pruner:
        """The pruner of a service run with ``params`` (``serve.storage``, its folders, ``score.out``, the ledger)."""
        s = params.serve
        return cls(s.storage, s.incoming_dir, s.splash_dir, params.score.out, params.labelstudio.ledger)

    # ------------------------------------------------------------------ one prune

    def prune_once(self) -> dict[str, int]:
        """Prune both folders once; logs one line when something was removed.

        Returns:
            ``splash_removed`` / ``incoming_removed`` (pictures, photos), ``splash_freed_bytes`` /
            ``incoming_freed_bytes`` (photos with their JSON), ``splash_bytes`` / ``incoming_bytes``
            (what the folder holds after; ``0`` when its limits are off and it was not listed), and
            ``incoming_kept`` (photos over a limit kept because they may not go yet).
        """
        with self._lock:
            start, now, s = time.perf_counter(), self.clock(), self.storage
            splash, splash_left = self._prune_splashes(now)
            incoming, incoming_left, kept = self._prune_incoming(now)
            counts = {"splash_removed": len(splash), "splash_freed_bytes": sum(f.size for f in splash),
                      "splash_bytes": splash_left, "incoming_removed": len(incoming),
                      "incoming_freed_bytes": sum(f.size for f in incoming), "incoming_bytes": incoming_left,
                      "incoming_kept": kept}
        if splash or incoming:
            log.info("pruned %d splash picture(s) (%.1f MiB, limit %g MiB / %g h) and %d incoming photo(s) "
                     "(%.1f MiB, limit %g MiB / %g days) in %.2f s", len(splash), counts["splash_freed_bytes"] / MIB,
                     s.splash_max_mb, s.splash_max_age_h, len(incoming), counts["incoming_freed_bytes"] / MIB,
                     s.incoming_max_mb, s.incoming_max_age_days, time.perf_counter() - start)
        return counts

    def _prune_splashes(self, now: float) -> tuple[list[StoredFile], int]:
        max_bytes, max_age = int(self.storage.splash_max_mb * MIB), self.storage.splash_max_age_h * 3600.0
        if not max_bytes and not max_age:
            return [], 0
        files = self.splashes.files()
        removed = prune_files(files, max_bytes, max_age, now, min_age_s=SPLASH_GRACE_S)
        return removed, sum(f.size for f in files) - sum(f.size for f in removed)

    def _prune_incoming(self, now: float) -> tuple[list[StoredFile], int, int]:
        max_bytes, max_age = int(self.storage.incoming_max_mb * MIB), self.storage.incoming_max_age_days * 86400.0
        if not max_bytes and not max_age:
            return [], 0, 0
        files = self.incoming.files()
        total = sum(f.size for f in files)
        if not over_limits(files, max_bytes, max_age, now):
            self._note("kept", None)
            return [], total, 0
        scored, ledger, problem = self._done_photos()
        self._note("blocked", problem and f"no incoming photo is removed: {problem}")
        removed: list[StoredFile] = []
        if problem is None:
            removed = self.incoming.prune(scored or frozenset(), max_bytes, max_age, now, ledger.done,
                                          ledger.pending, files=files)
        gone = set(removed)
        left = [f for f in files if f not in gone]
        kept = self._kept_over_limits(left, max_bytes, max_age, now)
        if problem is None:
            self._note("kept", kept and (f"{kept} incoming photo(s) over serve.storage limits kept: not scored yet "
                                         f"({self.scores.path}) or pending in Label Studio"))
        return removed, sum(f.size for f in left), kept

    def _done_photos(self) -> tuple[frozenset[str] | None, LedgerState, str | None]:
        """Scored ids, the ledger's sets, and why the pool must not be touched (``None``: it may)."""
        scored, problem = self.scores.get()
        ledger, ledger_problem = self.ledger.get() if self.ledger is not None else (LedgerState(), None)
        return scored, ledger or LedgerState(), problem or ledger_problem

    @staticmethod
    def _kept_over_limits(left: list[StoredFile], max_bytes: int, max_age: float, now: float) -> int:
        """How many of the photos left are over a limit: all when over the size limit, else the expired ones."""
        if max_bytes > 0 and sum(f.size for f in left) > max_bytes:
            return len(left)
        return sum(1 for f in left if max_age > 0 and now - f.mtime > max_age)

    def _note(self, kind: str, problem: Any) -> None:
        """Warn once per new problem of ``kind`` (not every prune); say so once it is over."""
        problem = problem or None
        if problem == self._warned[kind]:
            return
        if problem:
            log.warning("%s", problem)
        elif kind == "blocked":
            log.info("incoming photos can be pruned again (%s readable)", self.scores.path)
        self._warned[kind] = problem

    # ------------------------------------------------------------------ background thread

    def start(self) -> None:
        """Prune now and then every ``prune_every_s`` seconds on a daemon thread (``0``: never; no thread)."""
        if self.storage.prune_every_s <= 0:
            log.info("storage pruning is off (serve.storage.prune_every_s = 0)")
            return
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="cardamage-pruner", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread (a prune under way finishes first, waiting at most ``timeout_s`` seconds)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.prune_once()
            except Exception:  # a bug or a full disk must not end pruning for the rest of the service's life
                log.exception("storage prune failed; trying again in %g s", self.storage.prune_every_s)
            self._stop.wait(self.storage.prune_every_s)
