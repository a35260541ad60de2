"""Annotation formats: read any supported file into the canonical model, write it back out.

Format names (``write_annotations(..., fmt)`` and ``cardamage convert --to``):

``coco``         COCO instance segmentation (polygons or RLE)
``labelstudio``  Label Studio JSON export (a list of tasks), coordinates in percent
``via-project``  full VIA 2 project (``_via_settings``, ``_via_img_metadata``, ``_via_attributes``)
``via``          VIA 2.x project-less JSON export (keys ``filename+size``, ``regions`` a list)
``via1``         VIA 1.x JSON (``regions`` a dict keyed ``"0"``, ``"1"``, ...)
``via-csv``      VIA CSV export

Every format is an entry of the registry (:mod:`cardamage.data.formats.registry`): a
:class:`Format` with a name, a description, ``detect``, ``read`` and ``write``. **Adding a format**:
write a module in this package that ends with ``FORMATS = (Format(...),)`` and add its module
name to :data:`FORMAT_MODULES`; code outside the package calls :func:`register_format` instead.
``read_annotations``, ``write_annotations``, ``convert --to`` and the "formats tried" error
all come from the registry.

The canonical model (:mod:`cardamage.data.annotations`) is always in pixels; Label Studio's percent
coordinates are converted at the boundary. Readers log a warning (and append it to
``Dataset.meta["issues"]``) for every record they skip, clip or repair, naming the file, the entry
and the field; past the first few of a kind per file they log one summary line instead
(:mod:`cardamage.data.warnings_summary`). They raise
:class:`~cardamage.data.annotations.AnnotationError` only when the whole file cannot be used.
Well-formed JSON of the wrong shape (an id that is a list, a ``value`` that is a string) is such a
record, never a traceback; writers clip polygons to the image and drop masks of another size, warned.

The helpers below the public functions are shared by the format modules. Nothing is imported
from the format modules until the registry is first used.
"""

from __future__ import annotations

import logging
import math
import os
import reprlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from cardamage.data.annotations import AnnotationError, Dataset, ImageRecord, Instance, Polygon, is_file
from cardamage.data.formats.registry import (
    Format,
    ReadRequest,
    format_names,
    formats,
    get_format,
    register_format,
    unregister_format,
)
from cardamage.data.warnings_summary import WarningSummary

log = logging.getLogger(__name__)

#: The built-in format modules (each defines ``FORMATS``), in detection order.
FORMAT_MODULES: tuple[str, ...] = ("coco", "labelstudio_json", "via", "via_csv")


def __getattr__(name: str) -> Any:
    """``READ_FORMATS`` (name -> description of the readable formats) and ``WRITE_FORMATS``
    (writable names), computed from the registry when used."""
    if name == "READ_FORMATS":
        return {f.name: f.description for f in formats() if f.read is not None}
    if name == "WRITE_FORMATS":
        return format_names(writable=True)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def read_annotations(path: str | os.PathLike, category_key: str | None = None,
                     root: str | os.PathLike | None = None, *, classes: Sequence[str] | None = None,
                     predictions: bool = False) -> Dataset:
    """Read an annotation file of any registered format (auto-detected) into a :class:`Dataset`.

    Args:
        path: the annotation file (``.json`` or VIA ``.csv``).
        category_key: VIA region attribute holding the class; ``None`` auto-detects it
            (see :func:`cardamage.data.formats.via.detect_category_key`).
        root: folder the image names are relative to (default: the file's folder); used for
            ``Dataset.root`` and to resolve Label Studio local-file URLs.
        classes: if given, the allowed class names: other categories are dropped with a warning,
            and ``Dataset.categories`` becomes this list.
        predictions: Label Studio only: use a task's predictions when it has no annotation.

    Raises:
        AnnotationError: empty or unparsable file, unknown format, unsafe image names.
    """
    from cardamage.data.formats.detect import detect

    p = Path(path)
    base = Path(root) if root is not None else p.parent
    try:
        fmt, data = detect(p)
        dataset = fmt.read(ReadRequest(path=p, data=data, root=base, category_key=category_key,
                                       predictions=predictions))
    except RecursionError as exc:
        raise AnnotationError(f"{p}: JSON nested too deeply to read ({exc})") from None
    dataset.meta["format"] = fmt.name
    dataset.root = base
    if classes is not None:
        restrict_categories(dataset, classes, Issues(str(p), log))
    return dataset


def write_annotations(dataset: Dataset, path: str | os.PathLike, fmt: str, **options: Any) -> Path:
    """Write ``dataset`` to ``path`` (atomically) in format ``fmt`` (one of :func:`format_names` ``(writable=True)``).

    ``options`` go to the format's writer (e.g. ``start_id`` for COCO, ``from_name``/``to_name``/
    ``predictions`` for Label Studio, ``category_key`` for VIA). Returns the written path.
    """
    writable = format_names(writable=True)
    if fmt not in writable:
        raise AnnotationError(f"unknown output format {fmt!r}; choose one of {', '.join(writable)}")
    try:
        return get_format(fmt).write(dataset, Path(path), **options)
    except RecursionError:
        raise AnnotationError(f"{path}: attributes nested too deeply to write as {fmt}") from None
    except UnicodeEncodeError as exc:
        raise AnnotationError(f"{path}: text {describe(exc.object[exc.start:exc.end])} cannot be written as "
                              f"UTF-8 ({exc.reason})") from None


# --- helpers shared by the format modules ------------------------------------------------------


class Issues(WarningSummary):
    """Warnings raised while reading (or writing) one file: logged, kept in :attr:`messages`, and
    summarised per kind after the first few (:class:`~cardamage.data.warnings_summary.WarningSummary`)."""

    def __init__(self, source: str, logger: logging.Logger = log) -> None:
        super().__init__(source, logger)

    def warn(self, message: str, prefix: bool = True, kind: str = "other") -> None:  # type: ignore[override]
        """Log ``"<source>: <message>"`` (or ``message`` alone) at WARNING and remember it.

        ``kind`` groups warnings for the summary line (``... and N more <kind> warnings in <file>``).
        """
        super().warn(f"{self.source}: {message}" if prefix else message, kind)

    def polygon_warning(self, message: str, kind: str) -> None:
        """:data:`cardamage.data.masks.Warn` callback: ``message`` already names the file."""
        self.warn(message, prefix=False, kind=kind)


#: Largest image side accepted from an annotation file, in pixels (no camera comes near it).
MAX_SIDE = 1_000_000


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxstring, _SHORT.maxother = 2, 3, 4, 50, 30


def describe(value: Any, limit: int = 60) -> str:
    """A short ``repr`` of a value read from a file, for messages: long or deep values are cut
    (in constant time and stack depth, whatever the value's size or nesting)."""
    text = _SHORT.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def scalar_id(value: Any) -> int | float | str | None:
    """``value`` if it can be an id (a number or a string, not a boolean), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    return value


def as_number(value: Any) -> float | None:
    """A finite number from a JSON number or numeric string, else ``None`` (booleans are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number_ = float(value)
    except (ValueError, OverflowError):
        return None
    return number_ if math.isfinite(number_) else None


def pixel_size(value: Any) -> int | None:
    """An image width or height: a whole number of pixels in ``1 .. MAX_SIDE``, else ``None``."""
    number_ = as_number(value)
    if number_ is None or not number_.is_integer() or not 1 <= number_ <= MAX_SIDE:
        return None
    return int(number_)


def clean_polygon(points: Sequence[Sequence[float]], width: int | None, height: int | None,
                  where: str, issues: Issues) -> Polygon | None:
    """Validate one polygon in pixels (:func:`cardamage.data.masks.validate_polygon`).

    Clips to ``[0, width] x [0, height]`` when the size is known and warns on self-intersection.
    Returns ``None`` (after a warning naming file, image and region) for an unusable polygon.
    """
    from cardamage.data.masks import PolygonError, validate_polygon

    try:
        return validate_polygon(points, width, height, where=f"{issues.source}: {where}",
                                warn=issues.polygon_warning)
    except PolygonError as exc:
        issues.warn(f"{exc}; region skipped", prefix=False, kind="unusable polygon")
        return None


def fitted_instances(record: ImageRecord, size: tuple[int, int] | None, issues: Issues) -> list[Instance]:
    """The record's instances as a writer should write them, for an image of ``size = (width, height)``.

    Polygon points outside the image are clipped (warned; the caller's instances are not changed),
    polygons that collapse are dropped, and masks that are malformed or of another size than the
    image are dropped (warned). With ``size`` unknown, masks are only checked.
    """
    from cardamage.data.masks import RLEError, check_rle, clamp_polygon

    kept = []
    for n, inst in enumerate(record.instances):
        where = f"image {record.path!r} instance {n} ({inst.category!r})"
        if inst.rle is not None and not inst.polygons:
            try:
                rle = check_rle(inst.rle, f"{issues.source}: {where}", *(reversed(size) if size else ()))
            except RLEError as exc:
                issues.warn(f"{exc}; mask not written", prefix=False, kind="unusable mask")
                continue
            kept.append(replace(inst, rle=rle))
            continue
        if size is None:
            kept.append(inst)
            continue
        polygons = []
        for k, poly in enumerate(inst.polygons):
            points = [(float(x), float(y)) for x, y in poly]
            clipped = clamp_polygon(points, *size)
            if clipped != points:
                issues.warn(f"{where} polygon {k}: points outside the {size[0]}x{size[1]} image were clipped",
                            kind="clipped polygon")
            if len(set(clipped)) >= 3:
                polygons.append(clipped)
            else:
                issues.warn(f"{where} polygon {k}: lies outside the {size[0]}x{size[1]} image; not written",
                            kind="unusable polygon")
        if polygons or inst.rle is not None:
            kept.append(replace(inst, polygons=polygons))
    return kept


def finish_dataset(dataset: Dataset, issues: Issues) -> Dataset:
    """Merge records listing the same image twice, complete the category list, keep the issues."""
    kept: dict[str, ImageRecord] = {}
    for record in dataset.images:
        first = kept.get(record.path)
        if first is None:
            kept[record.path] = record
            continue
        issues.warn(f"image {record.path!r} is listed more than once; its regions were merged",
                    kind="duplicate image")
        first.instances.extend(record.instances)
        first.labelled = first.labelled or record.labelled
        first.attributes = {**record.attributes, **first.attributes}
    dataset.images = list(kept.values())
    dataset.ensure_categories()
    issues.summarize()
    dataset.meta.setdefault("issues", []).extend(issues.messages)
    return dataset


def restrict_categories(dataset: Dataset, classes: Sequence[str], issues: Issues) -> None:
    """Drop instances whose category is not in ``classes`` (warning per image); set the category list."""
    allowed = set(classes)
    start = len(issues.messages)
    for record in dataset.images:
        unknown = sorted({i.category for i in record.instances if i.category not in allowed})
        if unknown:
            issues.warn(f"image {record.path!r}: unknown category {', '.join(map(repr, unknown))} "
                        f"(classes: {', '.join(classes)}); instance(s) dropped", kind="unknown category")
            record.instances = [i for i in record.instances if i.category in allowed]
    dataset.categories = list(classes)
    issues.summarize()
    dataset.meta.setdefault("issues", []).extend(issues.messages[start:])


def image_file(dataset: Dataset, record: ImageRecord) -> Path | None:
    """The image file on disk (``dataset.root / record.path``), or ``None`` if root is unknown."""
    return None if dataset.root is None else Path(dataset.root) / record.path


def record_size(dataset: Dataset, record: ImageRecord, issues: Issues | None = None) -> tuple[int, int] | None:
    """``(width, height)`` in pixels from the record, else from the image file header, else ``None``.

    Does not modify the record. An unreadable image is warned about through ``issues`` (if given).
    """
    from cardamage.data.images import ImageLoadError, image_size

    if record.width and record.height:
        return int(record.width), int(record.height)
    path = image_file(dataset, record)
    if path is not None and is_file(path):
        try:
            return image_size(path)
        except ImageLoadError as exc:
            if issues is None:
                log.warning("%s", exc)
            else:
                issues.warn(str(exc), prefix=False, kind="unreadable image")
    return None


def record_file_size(dataset: Dataset, record: ImageRecord) -> int:
    """File size in bytes from the record, else from the file on disk, else ``-1`` (VIA's 'unknown')."""
    if record.file_size is not None and record.file_size >= 0:
        return int(record.file_size)
    path = image_file(dataset, record)
    try:
        return path.stat().st_size if path is not None and is_file(path) else -1
    except OSError:
        return -1


def number(value: float, digits: int = 4) -> int | float:
    """A coordinate for output: rounded to ``digits`` decimals, an ``int`` when integral."""
    rounded = round(float(value), digits)
    return int(rounded) if rounded.is_integer() else rounded


__all__ = ["FORMAT_MODULES", "Format", "Issues", "ReadRequest", "format_names", "formats", "get_format",
           "read_annotations", "register_format", "restrict_categories", "unregister_format",
           "write_annotations"]


def read_reviewed(value: Any, where: str, issues: Issues) -> list[tuple[float, float, float, float]] | None:
    """The reviewed boxes of an image entry (``None``: the whole photo; see :mod:`cardamage.data.reviewed`).

    A value that is not a list of ``[x, y, width, height]`` is warned and read as "nothing reviewed"
    (``[]``): the photo's labels then take no part in training rather than teach unlabelled pixels
    as background.
    """
    from cardamage.data.reviewed import parse_boxes

    if value is None:
        return None
    try:
        return parse_boxes(value, where)
    except ValueError as err:
        issues.warn(f"{err}; nothing of this photo counts as reviewed", kind="bad reviewed_boxes")
        return []
