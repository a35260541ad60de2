"""The model history: one JSON object per line in ``publish.history`` (``reports/history.jsonl``).

``cardamage publish`` adds a line for every gate decision, ``--force`` and ``--rollback``::

    {"time": "2026-01-02T03:04:05+00:00", "event": "gate" | "force" | "rollback",
     "model_version": ..., "production_before": ..., "promoted": true, "action": "promoted", "reason": ...,
     "data_version": "manifest 1a2b... / dvc 3c4d...", "test_set": {"n_photos", "fingerprint"},
     "metrics": {"damage_iou": {"value", "ci"}, "mean_iou": {...}, "iou": {class: {...}}},
     "photos": {"train": {"sample": 53, "labelled": 4}, "val": {...}, "test": {...}}}

Lines are only ever added: the file is rewritten atomically with the new line at the end, so a
crash leaves the old file, and lines this version cannot read stay as they are. A line that is not
a JSON object is skipped when reading, with a warning naming the file and line number.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from cardamage.fileio import write_bytes

log = logging.getLogger(__name__)


def append_entry(path: str | os.PathLike, entry: dict[str, Any]) -> Path:
    """Add ``entry`` as the last line of the history file (created when missing)."""
    target = Path(path)
    old = target.read_bytes() if target.is_file() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    line = json.dumps(entry, ensure_ascii=False, sort_keys=False, allow_nan=False) + "\n"
    return write_bytes(target, old + line.encode("utf-8"))


def read_entries(path: str | os.PathLike) -> tuple[list[dict[str, Any]], list[str]]:
    """The history's entries in file order, and one message per line skipped (``FILE:LINE: why``).

    A missing file is an empty history.
    """
    target = Path(path)
    if not target.is_file():
        return [], []
    entries, problems = [], []
    text = target.read_bytes().decode("utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{target}:{number}: not JSON ({exc.msg} at column {exc.colno}); line skipped")
            continue
        if not isinstance(entry, dict):
            problems.append(f"{target}:{number}: not a JSON object ({type(entry).__name__}); line skipped")
            continue
        entries.append(entry)
    for problem in problems:
        log.warning("%s", problem)
    return entries, problems


def rolled_back_versions(entries: list[dict[str, Any]]) -> dict[str, str]:
    """``{model version: time}`` of the versions a person rolled back and did not force in again since."""
    out: dict[str, str] = {}
    for entry in entries:
        if entry.get("event") == "rollback" and entry.get("rolled_back_version"):
            out[str(entry["rolled_back_version"])] = str(entry.get("time", "?"))
        elif entry.get("event") == "force" and entry.get("promoted"):
            out.pop(str(entry.get("model_version")), None)
    return out
