"""The training split's VIA 2 file (``<labelled_dir>/via_region_data.json``) and writes that only
happen when the bytes change (so a second pull changes nothing)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cardamage.errors import BadInputError
from cardamage.fileio import write_bytes
from cardamage.labelling.files import kind_of, read_json


def load_via(path: Path) -> dict[str, Any]:
    """The VIA 2 mapping in ``path``; a missing file is empty.

    Raises:
        BadInputError: not UTF-8, not JSON, not a mapping, or an entry that is not an object (the
            message names the file and the entry).
    """
    if not path.is_file():
        return {}
    data = read_json(path, "the VIA file")
    if not isinstance(data, dict):
        raise BadInputError(f"{path}: expected a VIA 2 JSON export (a mapping, got {kind_of(data)})")
    for key, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("filename", ""), str):
            raise BadInputError(f"{path}: entry {key!r}: expected a VIA 2 image entry (an object with a filename)")
        if not isinstance(entry.get("file_attributes") or {}, dict):
            raise BadInputError(f"{path}: entry {key!r}: file_attributes must be an object")
    return data


def sha_of(entry: dict[str, Any]) -> str | None:
    """The ``cardamage_id`` file attribute of a VIA entry."""
    return (entry.get("file_attributes") or {}).get("cardamage_id")


def replace_entry(via: dict[str, Any], old_key: str | None, key: str, entry: dict[str, Any]) -> dict[str, Any]:
    """``via`` with ``old_key`` replaced by ``key: entry`` in place (order kept), or ``key`` appended."""
    if old_key is None or old_key == key:
        via[key] = entry
        return via
    return {(key if k == old_key else k): (entry if k == old_key else v) for k, v in via.items()}


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write ``data`` atomically unless the file already holds exactly these bytes; ``True`` if written."""
    if path.is_file() and path.read_bytes() == data:
        return False
    write_bytes(path, data)
    return True


def write_csv(path: Path, columns: Sequence[str], rows: list[dict[str, Any]]) -> None:
    """A CSV with a header (``\\n`` line ends), written only when it changes."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_if_changed(path, buffer.getvalue().encode("utf-8"))
