"""Recognise an annotation file's format by asking each registered format's ``detect``.

Formats that detect on the file (``Format.detects == "file"``, e.g. VIA CSV) are asked first;
then the file is parsed as JSON and the JSON formats are asked, in registry order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cardamage.data.annotations import AnnotationError
from cardamage.data.formats.registry import Format, get_format, readers


def formats_tried() -> str:
    """Human-readable list of the formats a reader recognises (registry order)."""
    return ", ".join(f.description for f in (*readers("json"), *readers("file")))


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


def detect_json(data: Any) -> str | None:
    """Name of the first registered JSON format whose ``detect`` accepts ``data``, or ``None``.

    Empty containers are accepted as empty files of the format that writes them:
    ``{}`` as a VIA export, ``[]`` as a Label Studio export.
    """
    return next((f.name for f in readers("json") if f.detect(data)), None)


def detect(path: Path) -> tuple[Format, Any]:
    """Return ``(format, parsed JSON)`` for ``path``; the JSON is ``None`` for file-detected formats.

    Raises:
        AnnotationError: missing, empty or unparsable file, or JSON of no known format
            (the message names the file and lists the formats tried).
    """
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found")
    for fmt in readers("file"):
        if fmt.detect(path):
            read_text(path)  # empty-file check
            return fmt, None
    data = load_json(path)
    name = detect_json(data)
    if name is None:
        kind = type(data).__name__
        keys = f" with keys {sorted(map(str, data))[:8]}" if isinstance(data, dict) else ""
        raise AnnotationError(f"{path}: JSON {kind}{keys} is not a known annotation format; "
                              f"formats tried: {formats_tried()}")
    return get_format(name), data


def detect_format(path: Path) -> tuple[str, Any]:
    """Return ``(format name, parsed JSON)`` for ``path``, see :func:`detect`."""
    fmt, data = detect(path)
    return fmt.name, data
