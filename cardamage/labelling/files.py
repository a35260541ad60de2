"""Reading the files the labelling code keeps (ledger, selection, VIA file, label config) with one-line
errors that name the file: not UTF-8, not JSON, or JSON of the wrong shape."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cardamage.errors import BadInputError


def kind_of(value: Any) -> str:
    """What a JSON value is, for messages: ``a list``, ``an object``, ``a string``, ``a number``, ..."""
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__)


def read_text(path: str | os.PathLike, what: str = "the file") -> str:
    """The UTF-8 text of ``path`` (a leading byte-order mark is dropped).

    Raises:
        BadInputError: the bytes are not UTF-8 (the message names the file and the first bad byte).
    """
    p = Path(path)
    data = p.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise BadInputError(f"{p}: {what} is not UTF-8 text (byte {exc.start}, line {line}: "
                            f"{data[exc.start:exc.start + 1]!r}); save it as UTF-8") from None


def read_json(path: str | os.PathLike, what: str = "the file") -> Any:
    """The JSON value in ``path``.

    Raises:
        BadInputError: not UTF-8 or not valid JSON (the message names the file, line and column).
    """
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInputError(f"{Path(path)}: {what} is not valid JSON ({exc.msg} at line {exc.lineno}, "
                            f"column {exc.colno})") from None
