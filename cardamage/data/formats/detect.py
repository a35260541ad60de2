"""Recognise an annotation file's format by asking each registered format's ``detect``.

Formats that detect on the file (``Format.detects == "file"``, e.g. VIA CSV) are asked first;
then the file is parsed as JSON and the JSON formats are asked, in registry order.
"""

from __future__ import annotations

import json
import re
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
    """Parse ``path`` as JSON; errors name the file, the position and the formats tried.

    Besides syntax errors, refuses what Python's parser accepts but nothing downstream can use:
    nesting deeper than the interpreter's recursion limit, integers of thousands of digits, and
    ``\\ud800``-style escapes of lone UTF-16 surrogates (not text; no UTF-8 file can hold them).
    """
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                              f"formats tried: {formats_tried()}") from exc
    except RecursionError:
        raise AnnotationError(f"{path}: JSON nested too deeply to read") from None
    except ValueError as exc:  # e.g. an integer literal over Python's 4300-digit limit
        raise AnnotationError(f"{path}: unusable JSON ({exc})") from exc
    check_surrogates(text, data, str(path))
    return data


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def check_surrogates(text: str, data: Any, where: str) -> None:
    """Raise :class:`AnnotationError` if ``data`` (parsed from ``text``) holds a lone UTF-16 surrogate.

    Cheap for ordinary files: the parsed data is only re-encoded when ``text`` has a surrogate escape
    (an emoji written as a ``\\ud83d\\ude00`` pair is fine).
    """
    match = _SURROGATE_ESCAPE.search(text)
    if match is None:
        return
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        line = text.count("\n", 0, match.start()) + 1
        raise AnnotationError(f"{where}: a lone UTF-16 surrogate escape (first escape {match.group(0)} at line "
                              f"{line}) is not text; fix or remove it") from None
    except RecursionError:
        raise AnnotationError(f"{where}: JSON nested too deeply to read") from None


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
        keys = f" with keys {[k[:40] for k in sorted(map(str, data))[:8]]}" if isinstance(data, dict) else ""
        raise AnnotationError(f"{path}: JSON {kind}{keys} is not a known annotation format; "
                              f"formats tried: {formats_tried()}")
    return get_format(name), data


def detect_format(path: Path) -> tuple[str, Any]:
    """Return ``(format name, parsed JSON)`` for ``path``, see :func:`detect`."""
    fmt, data = detect(path)
    return fmt.name, data
