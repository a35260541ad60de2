"""The Label Studio ledger: which photo (by sha256) was sent to which task, and what came back.

``annotation/ledger.json`` maps ``sha256 -> {"path", "task_id", "project_id", "pushed_at", "status"}``
(plus ``"labelled_at"`` once pulled). Statuses:

* ``pushed``: a task exists and no usable label has come back yet (the photo is *pending*);
* ``labelled``: its label (damage polygons or "no damage") is in the training data;
* ``unusable``: the annotator marked it "unusable photo"; it never goes back to the pool.

The file is written atomically with sorted keys, so an unchanged ledger is byte-identical.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cardamage.errors import BadInputError
from cardamage.fileio import write_json
from cardamage.labelling.files import kind_of, read_json

log = logging.getLogger(__name__)

PUSHED, LABELLED, UNUSABLE = "pushed", "labelled", "unusable"
STATUSES = (PUSHED, LABELLED, UNUSABLE)

Ledger = dict[str, dict[str, Any]]


def load_ledger(path: str | os.PathLike) -> Ledger:
    """Read the ledger; a missing file is an empty ledger.

    Raises:
        BadInputError: the file is not UTF-8, not JSON, or not a mapping of sha256 to entries of the
            documented shape (the message names the file and the entry).
    """
    p = Path(path)
    if not p.is_file():
        return {}
    data = read_json(p, "the ledger")
    if not isinstance(data, dict):
        raise BadInputError(f"{p}: the ledger must be an object mapping sha256 to entries (got {kind_of(data)})")
    for sha, entry in data.items():
        problem = entry_problem(entry)
        if problem:
            raise BadInputError(f"{p}: entry {sha}: {problem}")
    return data


#: Optional entry fields and their JSON types (``status`` is checked against :data:`STATUSES`).
_FIELDS: dict[str, tuple[type, ...]] = {"path": (str,), "task_id": (int,), "project_id": (int,),
                                        "pushed_at": (str,), "labelled_at": (str,)}


def entry_problem(entry: Any) -> str | None:
    """What is wrong with one ledger entry, or ``None`` when it is usable."""
    if not isinstance(entry, dict):
        return f"must be an object with path, task_id, project_id, status (got {kind_of(entry)})"
    status = entry.get("status", PUSHED)
    if not isinstance(status, str) or status not in STATUSES:
        got = repr(status) if isinstance(status, str) else kind_of(status)
        return f"status must be one of {', '.join(STATUSES)} (got {got})"
    for name, types in _FIELDS.items():
        value = entry.get(name)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            wanted = "an integer" if types == (int,) else "a string"
            return f"{name} must be {wanted} (got {kind_of(value)})"
    return None


def save_ledger(path: str | os.PathLike, ledger: Ledger) -> Path:
    """Write the ledger atomically (sorted keys, 2-space indent)."""
    return write_json(path, {sha: dict(sorted(entry.items())) for sha, entry in sorted(ledger.items())})


def pending(ledger: Ledger) -> set[str]:
    """sha256 of the photos pushed and not yet returned (status ``pushed``)."""
    return {sha for sha, entry in ledger.items() if entry.get("status", PUSHED) == PUSHED}


def now_iso() -> str:
    """Current UTC time as ISO 8601 with seconds (``2026-11-21T05:01:05Z``)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def record_push(ledger: Ledger, sha256: str, path: str, task_id: int, project_id: int,
                pushed_at: str | None = None) -> dict[str, Any]:
    """Add (or replace) the entry of a photo just sent to task ``task_id``; return it."""
    entry = {"path": path, "task_id": int(task_id), "project_id": int(project_id),
             "pushed_at": pushed_at or now_iso(), "status": PUSHED}
    ledger[sha256] = entry
    return entry


def mark(ledger: Ledger, sha256: str, status: str, **fields: Any) -> bool:
    """Set an entry's status (and fields); return ``True`` when anything changed.

    ``labelled_at`` is stamped only when the status changes, so marking twice changes nothing.
    """
    if status not in STATUSES:
        raise ValueError(f"ledger status {status!r} is not one of {STATUSES}")
    entry = ledger.setdefault(sha256, {"status": PUSHED})
    updates = {k: v for k, v in fields.items() if v is not None and entry.get(k) != v}
    if entry.get("status") != status:
        updates["status"] = status
        if status != PUSHED:
            updates["labelled_at"] = now_iso()
    entry.update(updates)
    return bool(updates)


def for_project(ledger: Ledger, project_id: int) -> Ledger:
    """The entries of one project."""
    return {sha: e for sha, e in ledger.items() if e.get("project_id") == project_id}
