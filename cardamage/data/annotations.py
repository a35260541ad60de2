"""The canonical annotation model every format converts to and from.

Coordinates are always pixels of the image as stored on disk (x to the right, y down,
origin at the top-left corner of the top-left pixel). A polygon is a list of ``(x, y)``
float pairs, not closed (the first point is not repeated at the end).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from cardamage.errors import BadInputError

log = logging.getLogger(__name__)

Point = tuple[float, float]
Polygon = list[Point]


class AnnotationError(BadInputError):
    """An annotation file or record that cannot be read; the message names the file and the reason."""


@dataclass
class Instance:
    """One labelled object (a damaged region, a car part) in one image.

    Attributes:
        category: class name, e.g. ``"damage"`` or ``"door"``.
        polygons: one or more polygons in pixel coordinates (several for a split region).
        rle: optional COCO RLE ``{"size": [height, width], "counts": str | list[int]}``;
            set when the source stored a mask instead of (or beside) polygons.
        attributes: any other per-region attributes (damage type, car part, VIA extras).
        score: model confidence in [0, 1] for predictions, ``None`` for human labels.
        iscrowd: the COCO ``iscrowd`` flag.
    """

    category: str
    polygons: list[Polygon] = field(default_factory=list)
    rle: dict[str, Any] | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    score: float | None = None
    iscrowd: bool = False

    def bbox(self) -> tuple[float, float, float, float] | None:
        """Return ``(x, y, width, height)`` in pixels around all polygons, or ``None`` if none."""
        points = [p for poly in self.polygons for p in poly]
        if not points:
            return None
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        return min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)


@dataclass
class ImageRecord:
    """One image and its labels.

    Attributes:
        path: image path relative to the dataset root, POSIX separators (e.g. ``"train/2.jpg"``).
        width, height: pixel size, ``None`` when the source did not say and it was not read.
        sha256: hex digest of the file bytes, filled by :func:`cardamage.data.dedup.fill_hashes`.
        split: ``"train"``, ``"val"``, ``"test"`` or ``None``.
        source: where the labels came from (file name or ``"labelstudio"``).
        instances: the labelled objects; an empty list means "labelled, no damage".
        labelled: ``False`` for an image listed without any label information.
        attributes: image-level attributes (VIA ``file_attributes``, Label Studio choices).
        file_size: size in bytes as recorded by the source (VIA keys use it).
        reviewed: the reviewed area as boxes ``(x, y, width, height)`` in pixels, ``None`` for the
            whole photo (see :mod:`cardamage.data.reviewed`); pixels outside it are unlabelled.
    """

    path: str
    width: int | None = None
    height: int | None = None
    sha256: str | None = None
    split: str | None = None
    source: str | None = None
    instances: list[Instance] = field(default_factory=list)
    labelled: bool = True
    attributes: dict[str, Any] = field(default_factory=dict)
    file_size: int | None = None
    reviewed: list[tuple[float, float, float, float]] | None = None

    @property
    def name(self) -> str:
        """The file name without folders."""
        return PurePosixPath(self.path).name


@dataclass
class Dataset:
    """A set of image records sharing one root folder and one category list.

    Attributes:
        images: image records in file order.
        categories: category names in id order (COCO ids follow this order).
        root: folder the image paths are relative to (``None`` if unknown).
        meta: format-specific extras kept for lossless round trips
            (e.g. ``"via_attributes"``, ``"via_settings"``, ``"coco_info"``).
    """

    images: list[ImageRecord] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    root: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def instances(self) -> Iterable[tuple[ImageRecord, Instance]]:
        """Yield every ``(image, instance)`` pair."""
        for image in self.images:
            for inst in image.instances:
                yield image, inst

    def ensure_categories(self) -> list[str]:
        """Add every category used by an instance to :attr:`categories` (keeping order); return it."""
        for _, inst in self.instances():
            if inst.category not in self.categories:
                self.categories.append(inst.category)
        return self.categories

    def by_path(self) -> dict[str, ImageRecord]:
        """Map image path to record."""
        return {img.path: img for img in self.images}


def category_mapper(classes: Sequence[str], class_map: dict[str, str]) -> Callable[[Instance], str | None]:
    """``inst -> model class name`` via ``data.class_map`` (identity for unmapped names).

    Returns ``None`` for an instance whose (mapped) category is not one of ``classes``: it
    counts as background.
    """
    wanted = set(classes)

    def category_of(inst: Instance) -> str | None:
        name = class_map.get(inst.category, inst.category)
        return name if name in wanted else None

    return category_of


def safe_relative_path(name: str, source: str | Path = "annotation file") -> str:
    """Return ``name`` as a normalised relative POSIX path, rejecting escapes from the dataset root.

    Raises:
        AnnotationError: for absolute paths, drive letters, URLs with schemes, or ``..`` parts.
    """
    if "\x00" in name:
        raise AnnotationError(f"{source}: image name {name!r:.80} contains a NUL character")
    cleaned = name.replace("\\", "/")
    pure = PurePosixPath(cleaned)
    if cleaned.startswith("/") or (len(cleaned) > 1 and cleaned[1] == ":") or "://" in cleaned:
        raise AnnotationError(f"{source}: image name {name!r} is an absolute path or URL; "
                              "names must be relative to the dataset folder")
    if any(part == ".." for part in pure.parts):
        raise AnnotationError(f"{source}: image name {name!r} points outside the dataset folder")
    parts = [p for p in pure.parts if p not in ("", ".")]
    if not parts:
        raise AnnotationError(f"{source}: empty image name")
    return "/".join(parts)


def is_file(path: str | os.PathLike) -> bool:
    """``Path(path).is_file()`` that answers ``False`` instead of raising for names the OS refuses
    (too long, NUL bytes, unencodable, permission denied on a parent folder)."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False
