"""The format registry: one :class:`Format` entry per annotation format name.

A format module declares its entries in a module-level tuple ``FORMATS``; the package lists its
format modules in :data:`cardamage.data.formats.FORMAT_MODULES`, and the registry imports them
(in that order) the first time it is used, so importing the package stays cheap. Code outside
the package (a plugin, a test) adds a format at run time with :func:`register_format`.

Detection order is registration order: the built-in modules in ``FORMAT_MODULES`` order (and
each module's ``FORMATS`` in tuple order), then formats registered at run time. Formats that
detect on the file (``detects="file"``, e.g. VIA CSV) are tried before the file is parsed as
JSON; the others are tried on the parsed JSON. Put a specific format before a catch-all one.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cardamage.data.annotations import AnnotationError, Dataset


@dataclass(frozen=True)
class ReadRequest:
    """What a format's reader gets.

    Attributes:
        path: the annotation file.
        data: its parsed JSON (``None`` for formats that detect on the file).
        root: folder the image names are relative to.
        category_key: VIA region attribute holding the class (``None``: auto-detect).
        predictions: Label Studio only: use a task's predictions when it has no annotation.
    """

    path: Path
    data: Any = None
    root: Path | None = None
    category_key: str | None = None
    predictions: bool = False

    @property
    def source(self) -> str:
        """The file name as used in warnings and errors."""
        return str(self.path)


#: ``read(request) -> Dataset`` (pixels; warnings kept in ``Dataset.meta["issues"]``).
Reader = Callable[[ReadRequest], Dataset]
#: ``write(dataset, path, **options) -> path written`` (atomically).
Writer = Callable[..., Path]


@dataclass(frozen=True)
class Format:
    """One annotation format.

    Attributes:
        name: the format name (``write_annotations(..., fmt)``, ``cardamage convert --to``).
        description: human-readable name, listed in the "formats tried" error.
        detect: ``True`` if the input is in this format; it gets the parsed JSON, or the file's
            :class:`~pathlib.Path` when ``detects == "file"``. Must not raise for foreign input.
        read: the reader (``None``: write-only format); requires ``detect``.
        write: the writer (``None``: read-only format, not offered by ``convert --to``).
        suffix: usual file name ending of the format's files.
        detects: ``"json"`` or ``"file"`` (non-JSON formats, tried before JSON parsing).
    """

    name: str
    description: str
    detect: Callable[[Any], bool] | None = None
    read: Reader | None = None
    write: Writer | None = None
    suffix: str = ".json"
    detects: Literal["json", "file"] = "json"

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.strip() or " " in self.name:
            raise ValueError(f"format name {self.name!r}: must be a non-empty word")
        if self.read is None and self.write is None:
            raise ValueError(f"format {self.name!r}: needs a reader, a writer or both")
        if (self.read is None) != (self.detect is None):
            raise ValueError(f"format {self.name!r}: a reader needs a detect function and vice versa")
        if self.detects not in ("json", "file"):
            raise ValueError(f"format {self.name!r}: detects must be 'json' or 'file', not {self.detects!r}")


_formats: dict[str, Format] = {}
_lock = threading.RLock()
_builtins_loaded = False


def _add(registry: dict[str, Format], fmt: Format) -> Format:
    if not isinstance(fmt, Format):
        raise TypeError(f"expected a Format, got {type(fmt).__name__}")
    if fmt.name in registry:
        raise ValueError(f"annotation format {fmt.name!r} is already registered "
                         f"({registry[fmt.name].description})")
    registry[fmt.name] = fmt
    return fmt


def _load_builtins() -> None:
    """Register the ``FORMATS`` of every module in ``FORMAT_MODULES``, once, in that order."""
    global _builtins_loaded
    with _lock:
        if _builtins_loaded:
            return
        from cardamage.data.formats import FORMAT_MODULES

        loaded: dict[str, Format] = {}
        for module in FORMAT_MODULES:
            for fmt in importlib.import_module(f"cardamage.data.formats.{module}").FORMATS:
                _add(loaded, fmt)
        _formats.update(loaded)
        _builtins_loaded = True


def register_format(fmt: Format) -> Format:
    """Add ``fmt`` to the registry (after the built-in formats); returns it.

    Raises:
        ValueError: a format of that name is already registered.
    """
    _load_builtins()
    with _lock:
        return _add(_formats, fmt)


def unregister_format(name: str) -> Format:
    """Remove the format ``name`` from the registry and return it (for tests and plugins)."""
    with _lock:
        get_format(name)
        return _formats.pop(name)


def formats() -> tuple[Format, ...]:
    """Every registered format, in detection order."""
    _load_builtins()
    with _lock:
        return tuple(_formats.values())


def format_names(writable: bool = False) -> tuple[str, ...]:
    """Names of the registered formats (only those with a writer if ``writable``), in detection order."""
    return tuple(f.name for f in formats() if f.write is not None or not writable)


def get_format(name: str) -> Format:
    """The format called ``name``.

    Raises:
        AnnotationError: no such format; the message names the known formats.
    """
    for fmt in formats():
        if fmt.name == name:
            return fmt
    raise AnnotationError(f"unknown annotation format {name!r}; known formats: {', '.join(format_names())}")


def readers(detects: Literal["json", "file"]) -> tuple[Format, ...]:
    """The readable formats that detect on ``"json"`` or on the ``"file"``, in detection order."""
    return tuple(f for f in formats() if f.read is not None and f.detects == detects)
