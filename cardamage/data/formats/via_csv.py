"""VIA CSV export: one row per region (``region_count`` 0 rows for images without regions).

Columns: ``filename, file_size, file_attributes, region_count, region_id,
region_shape_attributes, region_attributes``; the last three JSON columns hold VIA 2 dicts with
pixel coordinates. VIA writes JavaScript ``undefined`` for unset attributes (``"type":undefined``),
which is not JSON: the reader warns (file, line, text), reads it as ``null`` and lists each such
cell in ``Dataset.meta["via_csv_recovered"]``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cardamage.data.annotations import AnnotationError, Dataset
from cardamage.data.formats import Issues, fitted_instances, record_file_size, record_size
from cardamage.data.formats.detect import check_surrogates, formats_tried, read_text
from cardamage.data.formats.registry import Format, ReadRequest
from cardamage.data.formats.via import DEFAULT_CATEGORY_KEY, file_attributes, parse_via, via_regions
from cardamage.fileio import write_text

log = logging.getLogger(__name__)

CSV_HEADER = ("filename", "file_size", "file_attributes", "region_count", "region_id",
              "region_shape_attributes", "region_attributes")

_STRING_OR_UNDEFINED = re.compile(r'"(?:[^"\\]|\\.)*"|\bundefined\b')
#: Rows warned about in full before the rest are summed up in one line.
MAX_ROW_WARNINGS = 3


def replace_undefined(text: str) -> str:
    """Replace bare JavaScript ``undefined`` (outside JSON strings) by ``null``."""
    return _STRING_OR_UNDEFINED.sub(lambda m: "null" if m.group(0) == "undefined" else m.group(0), text)


class _CellParser:
    """Parses the JSON cells of one file, recovering and recording what it can."""

    def __init__(self, issues: Issues) -> None:
        self.issues = issues
        self.recovered: list[dict[str, Any]] = []

    def parse(self, text: str | None, column: str, line: int) -> dict[str, Any] | None:
        """The cell as a dict; ``{}`` for an empty cell; ``None`` (warned) when unrecoverable."""
        text = (text or "").strip()
        if not text:
            return {}
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            value = self._recover(text, column, line, exc)
        except (ValueError, RecursionError) as exc:  # a 5000-digit integer, deep nesting
            self.issues.warn(f"line {line}: unusable JSON in {column} ({type(exc).__name__}); ignored",
                             kind="invalid JSON cell")
            return None
        if value is not None and not isinstance(value, dict):
            self.issues.warn(f"line {line}: {column} is not a JSON object: {text!r:.80}; ignored",
                             kind="invalid JSON cell")
            return None
        if value:
            check_surrogates(text, value, f"{self.issues.source}: line {line}: {column}")
        return value

    def _recover(self, text: str, column: str, line: int, exc: json.JSONDecodeError) -> dict[str, Any] | None:
        try:
            value = json.loads(replace_undefined(text))
        except (ValueError, RecursionError):
            self.issues.warn(f"line {line}: invalid JSON in {column} ({exc.msg}): {text!r:.200}; ignored",
                             kind="invalid JSON cell")
            return None
        self.recovered.append({"line": line, "column": column, "text": text})
        if len(self.recovered) <= MAX_ROW_WARNINGS:
            self.issues.warn(f"line {line}: invalid JSON in {column}: {text!r:.200}; "
                             "bare 'undefined' read as null", kind="undefined")
        return value

    def summary(self) -> None:
        """One warning for the recovered cells not warned about individually."""
        rest = self.recovered[MAX_ROW_WARNINGS:]
        if rest:
            self.issues.warn(f"bare 'undefined' also read as null in {len(rest)} more cell(s) "
                             f"(lines {rest[0]['line']}-{rest[-1]['line']})", kind="undefined summary")


def looks_like_csv(path: Path) -> bool:
    """A ``.csv`` file, or a file starting with VIA's CSV header."""
    if path.suffix.lower() == ".csv":
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(200).decode("utf-8-sig", errors="replace")
    except OSError:
        return False  # reading it as JSON reports why it cannot be read
    return head.startswith("filename,file_size")


def _rows(path: Path) -> csv.DictReader:
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    try:
        fieldnames = reader.fieldnames or []
    except csv.Error as exc:
        raise AnnotationError(f"{path}: line 1: unreadable CSV header ({exc})") from exc
    missing = [c for c in CSV_HEADER if c not in fieldnames]
    if missing:
        raise AnnotationError(f"{path}: not a VIA CSV export (missing column(s) {', '.join(missing)}); "
                              f"formats tried: {formats_tried()}")
    return reader


def _region_count(row: dict[str, Any]) -> int:
    try:
        return int(str(row.get("region_count") or 0).strip()[:20])
    except ValueError:
        return 1


def _each_row(reader: csv.DictReader, path: Path) -> Iterator[dict[str, Any]]:
    """The reader's rows; the csv module's own errors (a cell over its size limit) name the line."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise AnnotationError(f"{path}: line {reader.line_num}: unreadable CSV ({exc})") from exc
        yield row


def csv_to_via(path: Path, issues: Issues) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """VIA 2 entries (``filename``, ``size``, ``regions``, ``file_attributes``) from the CSV rows,
    plus the list of recovered cells."""
    reader = _rows(path)
    cells = _CellParser(issues)
    entries: dict[str, dict[str, Any]] = {}
    for row in _each_row(reader, path):
        line = reader.line_num
        name = str(row.get("filename") or "").strip()
        if not name:
            issues.warn(f"line {line}: empty filename; row skipped", kind="bad row")
            continue
        entry = entries.get(f"{name}{row.get('file_size')}")
        if entry is None:
            attrs = cells.parse(row.get("file_attributes"), "file_attributes", line) or {}
            entry = {"filename": name, "size": row.get("file_size"), "regions": [], "file_attributes": attrs}
            entries[f"{name}{row.get('file_size')}"] = entry
        if _region_count(row) == 0:
            continue
        shape = cells.parse(row.get("region_shape_attributes"), "region_shape_attributes", line)
        if not shape:
            issues.warn(f"line {line}: image {name!r}: no usable region_shape_attributes; region skipped",
                        kind="bad region")
            continue
        attrs = cells.parse(row.get("region_attributes"), "region_attributes", line)
        entry["regions"].append({"shape_attributes": shape, "region_attributes": attrs or {}})
    cells.summary()
    issues.summarize()
    return list(entries.values()), cells.recovered


def read_via_csv(path: str | Path, category_key: str | None = None) -> Dataset:
    """Read a VIA CSV export into a :class:`Dataset` (see the module docstring for ``undefined``)."""
    p = Path(path)
    issues = Issues(str(p), log)
    entries, recovered = csv_to_via(p, issues)
    dataset = parse_via(entries, str(p), category_key=category_key)
    dataset.meta["issues"] = issues.messages + dataset.meta.get("issues", [])
    dataset.meta["via_csv_recovered"] = recovered
    return dataset


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def to_via_csv_rows(dataset: Dataset, category_key: str | None = None,
                    source: str = "VIA CSV output") -> list[list[Any]]:
    """CSV rows (header first) for the labelled records; pixel coordinates, one row per polygon.

    Polygon points outside a known image size are clipped with a warning naming ``source``."""
    key = category_key or dataset.meta.get("via_category_key") or DEFAULT_CATEGORY_KEY
    issues = Issues(source, log)
    rows: list[list[Any]] = [list(CSV_HEADER)]
    for record in dataset.images:
        if not record.labelled:
            continue
        size = record_file_size(dataset, record)
        file_attrs = _compact(file_attributes(record))
        instances = fitted_instances(record, record_size(dataset, record, issues), issues)
        regions = via_regions(record, key, instances, issues)
        if not regions:
            rows.append([record.path, size, file_attrs, 0, 0, "{}", "{}"])
        for i, region in enumerate(regions):
            rows.append([record.path, size, file_attrs, len(regions), i,
                         _compact(region["shape_attributes"]), _compact(region["region_attributes"])])
    issues.summarize()
    return rows


def write_via_csv(dataset: Dataset, path: str | Path, category_key: str | None = None) -> Path:
    """Write a VIA CSV export atomically."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(to_via_csv_rows(dataset, category_key, source=str(path)))
    return write_text(path, buffer.getvalue())


def _read(request: ReadRequest) -> Dataset:
    return read_via_csv(request.path, category_key=request.category_key)


FORMATS = (Format("via-csv", "VIA CSV export", detect=looks_like_csv, read=_read, write=write_via_csv,
                  suffix=".csv", detects="file"),)
