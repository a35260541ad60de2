"""Recognise an annotation file's format from its name and JSON shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cardamage.data.annotations import AnnotationError

CSV_HEADER = ("filename", "file_size", "file_attributes", "region_count", "region_id",
              "region_shape_attributes", "region_attributes")


def formats_tried() -> str:
    """Human-readable list of the formats a reader recognises."""
    from cardamage.data.formats import READ_FORMATS

    return ", ".join(READ_FORMATS.values())


def read_text(path: Path) -> str:
    """The file's text (UTF-8, BOM allowed); empty or unreadable files raise :class:`AnnotationError`."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read annotation file ({exc.strerror or exc})") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AnnotationError(f"{path}: not UTF-8 text ({exc}); formats tried: {formats_tried()}") from exc
    if not text.strip():
        raise AnnotationError(f"{path}: empty file; expected one of: {formats_tried()}")
    return text


def load_json(path: Path) -> Any:
    """Parse ``path`` as JSON; errors name the file, the position and the formats tried."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                              f"formats tried: {formats_tried()}") from exc


def _is_via_entry(entry: Any) -> bool:
    return isinstance(entry, dict) and "filename" in entry and ("regions" in entry or "file_attributes" in entry)


def _via_version(entries: list[Any]) -> str:
    return "via1" if any(isinstance(e.get("regions"), dict) for e in entries) else "via"


def detect_json(data: Any) -> str | None:
    """Format name for parsed JSON ``data`` (see :data:`cardamage.data.formats.READ_FORMATS`), or ``None``.

    Empty containers are accepted as empty files of the format that writes them:
    ``{}`` as a VIA export, ``[]`` as a Label Studio export.
    """
    if isinstance(data, dict):
        if isinstance(data.get("_via_img_metadata"), dict):
            return "via-project"
        if isinstance(data.get("images"), list) and isinstance(data.get("annotations", []), list) \
                and ("annotations" in data or "categories" in data):
            return "coco"
        if isinstance(data.get("data"), dict):
            return "labelstudio"
        values = list(data.values())
        if all(_is_via_entry(v) for v in values):
            return _via_version(values)
        return None
    if isinstance(data, list):
        if all(isinstance(t, dict) and isinstance(t.get("data"), dict) for t in data):
            return "labelstudio"
        if all(_is_via_entry(e) for e in data):
            return _via_version(data)
    return None


def _looks_like_csv(path: Path) -> bool:
    if path.suffix.lower() == ".csv":
        return True
    with path.open("rb") as fh:
        head = fh.read(200).decode("utf-8-sig", errors="replace")
    return head.startswith("filename,file_size")


def detect_format(path: Path) -> tuple[str, Any]:
    """Return ``(format name, parsed JSON)`` for ``path``; the JSON is ``None`` for VIA CSV.

    Raises:
        AnnotationError: missing, empty or unparsable file, or JSON of no known format
            (the message names the file and lists the formats tried).
    """
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found")
    if _looks_like_csv(path):
        read_text(path)  # empty-file check
        return "via-csv", None
    data = load_json(path)
    fmt = detect_json(data)
    if fmt is None:
        kind = type(data).__name__
        keys = f" with keys {sorted(map(str, data))[:8]}" if isinstance(data, dict) else ""
        raise AnnotationError(f"{path}: JSON {kind}{keys} is not a known annotation format; "
                              f"formats tried: {formats_tried()}")
    if isinstance(data, dict) and fmt == "labelstudio":
        data = [data]
    return fmt, data
