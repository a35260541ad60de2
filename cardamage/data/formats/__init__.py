"""Annotation formats: read any supported file into the canonical model, write it back out.

Format names (``write_annotations(..., fmt)`` and ``cardamage convert --to``):

``via``          VIA 2.x project-less JSON export (keys ``filename+size``, ``regions`` a list)
``via1``         VIA 1.x JSON (``regions`` a dict keyed ``"0"``, ``"1"``, ...)
``via-project``  full VIA 2 project (``_via_settings``, ``_via_img_metadata``, ``_via_attributes``)
``via-csv``      VIA CSV export
``coco``         COCO instance segmentation (polygons or RLE)
``labelstudio``  Label Studio JSON export (a list of tasks), coordinates in percent

The canonical model (:mod:`cardamage.data.annotations`) is always in pixels; Label Studio's percent
coordinates are converted at the boundary. Readers log a warning (and append it to
``Dataset.meta["issues"]``) for every record they skip, clip or repair; they raise
:class:`~cardamage.data.annotations.AnnotationError` only when the whole file cannot be used.

The helpers below the public functions are shared by the format modules. Nothing is imported
from the format modules until a function is called.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

from cardamage.data.annotations import AnnotationError, Dataset, ImageRecord, Polygon
from cardamage.data.images import ImageLoadError, image_size
from cardamage.data.masks import PolygonError, validate_polygon

log = logging.getLogger(__name__)

#: Formats a reader recognises, in the order :func:`~cardamage.data.formats.detect.detect_format` tries them.
READ_FORMATS: dict[str, str] = {
    "via-project": "VIA 2 project JSON",
    "coco": "COCO JSON",
    "labelstudio": "Label Studio JSON export",
    "via": "VIA 2.x JSON export",
    "via1": "VIA 1.x JSON",
    "via-csv": "VIA CSV export",
}
WRITE_FORMATS: tuple[str, ...] = ("coco", "via", "via1", "via-project", "via-csv", "labelstudio")


def read_annotations(path: str | os.PathLike, category_key: str | None = None,
                     root: str | os.PathLike | None = None, *, classes: Sequence[str] | None = None,
                     predictions: bool = False) -> Dataset:
    """Read an annotation file of any supported format (auto-detected) into a :class:`Dataset`.

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
    from cardamage.data.formats import coco, detect, labelstudio_json, via, via_csv

    p = Path(path)
    fmt, data = detect.detect_format(p)
    source = str(p)
    base = Path(root) if root is not None else p.parent
    if fmt == "via-csv":
        dataset = via_csv.read_via_csv(p, category_key=category_key)
    elif fmt == "coco":
        dataset = coco.parse_coco(data, source)
    elif fmt == "labelstudio":
        dataset = labelstudio_json.parse_labelstudio(data, source, root=base, predictions=predictions)
    else:
        dataset = via.parse_via(data, source, category_key=category_key)
    dataset.meta["format"] = fmt
    dataset.root = base
    if classes is not None:
        restrict_categories(dataset, classes, Issues(source, log))
    return dataset


def write_annotations(dataset: Dataset, path: str | os.PathLike, fmt: str, **options: Any) -> Path:
    """Write ``dataset`` to ``path`` (atomically) in format ``fmt`` (one of :data:`WRITE_FORMATS`).

    ``options`` go to the format's writer (e.g. ``start_id`` for COCO, ``from_name``/``to_name``/
    ``predictions`` for Label Studio, ``category_key`` for VIA). Returns the written path.
    """
    from cardamage.data.formats import coco, labelstudio_json, via, via_csv

    writers = {
        "coco": coco.write_coco,
        "via": lambda d, p, **o: via.write_via(d, p, version=2, **o),
        "via1": lambda d, p, **o: via.write_via(d, p, version=1, **o),
        "via-project": via.write_via_project,
        "via-csv": via_csv.write_via_csv,
        "labelstudio": labelstudio_json.write_labelstudio,
    }
    if fmt not in writers:
        raise AnnotationError(f"unknown output format {fmt!r}; choose one of {', '.join(WRITE_FORMATS)}")
    return writers[fmt](dataset, Path(path), **options)


# --- helpers shared by the format modules ------------------------------------------------------


class Issues:
    """Warnings raised while reading one file: each is logged and kept in :attr:`messages`."""

    def __init__(self, source: str, logger: logging.Logger = log) -> None:
        self.source = source
        self.logger = logger
        self.messages: list[str] = []

    def warn(self, message: str, prefix: bool = True) -> None:
        """Log ``"<source>: <message>"`` (or ``message`` alone) at WARNING and remember it."""
        text = f"{self.source}: {message}" if prefix else message
        self.logger.warning("%s", text)
        self.messages.append(text)


def clean_polygon(points: Sequence[Sequence[float]], width: int | None, height: int | None,
                  where: str, issues: Issues) -> Polygon | None:
    """Validate one polygon in pixels (:func:`cardamage.data.masks.validate_polygon`).

    Clips to ``[0, width] x [0, height]`` when the size is known and warns on self-intersection.
    Returns ``None`` (after a warning naming file, image and region) for an unusable polygon.
    """
    try:
        return validate_polygon([(float(x), float(y)) for x, y in points], width, height,
                                where=f"{issues.source}: {where}")
    except (PolygonError, TypeError, ValueError) as exc:
        message = str(exc) if isinstance(exc, PolygonError) else f"{issues.source}: {where}: bad points ({exc})"
        issues.warn(f"{message}; region skipped", prefix=False)
        return None


def finish_dataset(dataset: Dataset, issues: Issues) -> Dataset:
    """Merge records listing the same image twice, complete the category list, keep the issues."""
    kept: dict[str, ImageRecord] = {}
    for record in dataset.images:
        first = kept.get(record.path)
        if first is None:
            kept[record.path] = record
            continue
        issues.warn(f"image {record.path!r} is listed more than once; its regions were merged")
        first.instances.extend(record.instances)
        first.labelled = first.labelled or record.labelled
        first.attributes = {**record.attributes, **first.attributes}
    dataset.images = list(kept.values())
    dataset.ensure_categories()
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
                        f"(classes: {', '.join(classes)}); instance(s) dropped")
            record.instances = [i for i in record.instances if i.category in allowed]
    dataset.categories = list(classes)
    dataset.meta.setdefault("issues", []).extend(issues.messages[start:])


def image_file(dataset: Dataset, record: ImageRecord) -> Path | None:
    """The image file on disk (``dataset.root / record.path``), or ``None`` if root is unknown."""
    return None if dataset.root is None else Path(dataset.root) / record.path


def record_size(dataset: Dataset, record: ImageRecord) -> tuple[int, int] | None:
    """``(width, height)`` in pixels from the record, else from the image file header, else ``None``.

    Does not modify the record.
    """
    if record.width and record.height:
        return int(record.width), int(record.height)
    path = image_file(dataset, record)
    if path is not None and path.is_file():
        try:
            return image_size(path)
        except ImageLoadError as exc:
            log.warning("%s", exc)
    return None


def record_file_size(dataset: Dataset, record: ImageRecord) -> int:
    """File size in bytes from the record, else from the file on disk, else ``-1`` (VIA's 'unknown')."""
    if record.file_size is not None and record.file_size >= 0:
        return int(record.file_size)
    path = image_file(dataset, record)
    return path.stat().st_size if path is not None and path.is_file() else -1


def number(value: float, digits: int = 4) -> int | float:
    """A coordinate for output: rounded to ``digits`` decimals, an ``int`` when integral."""
    rounded = round(float(value), digits)
    return int(rounded) if rounded.is_integer() else rounded


__all__ = ["READ_FORMATS", "WRITE_FORMATS", "read_annotations", "write_annotations"]
