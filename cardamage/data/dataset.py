"""Load a dataset folder (one sub-folder per split) into the canonical :class:`Dataset`.

Layout (the embedded sample)::

    data/sample/train/via_region_data.json + train/*.jpg
    data/sample/val/via_region_data.json   + val/*.jpg
    data/sample/test/*.jpg                 (no labels: unlabelled records)

Image paths become relative to the dataset root (``train/2.jpg``), sizes come from the image
headers when the annotation format lacks them (no full decode), records whose image is missing
are dropped with a warning, and images without annotation are kept as ``labelled=False``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from cardamage.data.annotations import AnnotationError, Dataset, ImageRecord, is_file
from cardamage.data.images import ImageLoadError, image_size, list_images
from cardamage.data.warnings_summary import WarningSummary

log = logging.getLogger(__name__)

#: Split folders listed first, in this order; other folders follow alphabetically.
SPLIT_ORDER = ("train", "val", "valid", "validation", "test")


def load_dataset(root: str | os.PathLike, annotation_file: str = "via_region_data.json",
                 category_key: str | None = None, splits: Sequence[str] | None = None,
                 classes: Sequence[str] | None = None) -> Dataset:
    """Read every split of a dataset folder, or one annotation file given directly as ``root``.

    Args:
        root: dataset folder with one sub-folder per split, or an annotation file (its folder
            is then the root), or a folder holding ``annotation_file`` itself.
        annotation_file: label file name inside each split folder; ``{split}`` is replaced by the
            split name (e.g. ``"{split}_multiclass.json"``).
        category_key: VIA region attribute holding the class (``None``: auto-detect).
        splits: split folder names to read (default: every sub-folder).
        classes: allowed class names (others dropped with a warning), see ``read_annotations``.

    Raises:
        AnnotationError: missing root or split folder, or an unreadable annotation file.
    """
    path = Path(root)
    if path.is_file():
        return _load_single(path, path.parent, category_key, classes)
    if not path.is_dir():
        raise AnnotationError(f"{path}: no such dataset folder or annotation file")
    if "{split}" not in annotation_file and (path / annotation_file).is_file():
        return _load_single(path / annotation_file, path, category_key, classes)
    dataset = Dataset(root=path, categories=list(classes) if classes is not None else [])
    for split in _split_names(path, splits):
        folder = path / split
        if not folder.is_dir():
            raise AnnotationError(f"{path}: split folder {split!r} not found")
        ann = folder / annotation_file.format(split=split)
        if ann.is_file():
            _merge(dataset, _read_part(ann, folder, path, split, category_key, classes))
        _add_unlabelled(dataset, folder, path, split, ann if ann.is_file() else None)
    return dataset


def _split_names(root: Path, splits: Sequence[str] | None) -> list[str]:
    if splits is not None:
        return list(splits)
    names = [d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith((".", "_"))]
    return sorted(names, key=lambda n: (SPLIT_ORDER.index(n) if n in SPLIT_ORDER else len(SPLIT_ORDER), n))


def _load_single(ann: Path, root: Path, category_key: str | None, classes: Sequence[str] | None) -> Dataset:
    dataset = Dataset(root=root, categories=list(classes) if classes is not None else [])
    _merge(dataset, _read_part(ann, root, root, None, category_key, classes))
    _add_unlabelled(dataset, root, root, None, ann)
    return dataset


def _read_part(ann: Path, folder: Path, root: Path, split: str | None, category_key: str | None,
               classes: Sequence[str] | None) -> Dataset:
    """One annotation file: paths made relative to ``root``, sizes filled, missing images dropped."""
    from cardamage.data.formats import read_annotations

    part = read_annotations(ann, category_key=category_key, root=folder, classes=classes)
    prefix = folder.relative_to(root).as_posix() if folder != root else ""
    source = ann.relative_to(root).as_posix()
    warnings = WarningSummary(source, log)
    kept = []
    for record in part.images:
        file = folder / record.path
        if not is_file(file):
            warnings.warn(f"{source}: image {record.path!r} is annotated but {file} does not exist; record dropped",
                          kind="missing image")
            continue
        record.path = f"{prefix}/{record.path}" if prefix else record.path
        record.split, record.source = split, source
        _fill_size(record, file, source, warnings)
        _clip(record, source, warnings)
        kept.append(record)
    warnings.summarize()
    part.images = kept
    part.meta.setdefault("issues", []).extend(warnings.messages)
    part.meta["annotation_files"] = {split or "": source}
    return part


def _fill_size(record: ImageRecord, file: Path, source: str, warnings: WarningSummary) -> None:
    """Width/height from the file header; warn when the annotation's size disagrees (the annotation's is
    kept, unless it is over the photo pixel budget: a declared size is never trusted for memory)."""
    from cardamage.data.images import pixel_limit

    try:
        width, height = image_size(file)
    except ImageLoadError as exc:
        warnings.warn(f"{source}: {exc}", kind="unreadable image")
        return
    if record.width is None or record.height is None:
        record.width, record.height = width, height
    elif record.width * record.height > pixel_limit():
        warnings.warn(f"{source}: image {record.path!r}: annotation says {record.width}x{record.height}, over the "
                      f"{pixel_limit()}-pixel limit; the file's {width}x{height} is used", kind="size mismatch")
        record.width, record.height = width, height
    elif (record.width, record.height) != (width, height):
        warnings.warn(f"{source}: image {record.path!r}: annotation says {record.width}x{record.height} "
                      f"but the file is {width}x{height}", kind="size mismatch")


def _clip(record: ImageRecord, source: str, warnings: WarningSummary) -> None:
    """Clip polygon points (pixels) to the image; drop polygons that collapse below 3 points, and
    masks (RLE) that are malformed or of another size than the image."""
    from cardamage.data.masks import clamp_polygon
    from cardamage.data.rle import RLEError, check_rle

    if not record.width or not record.height:
        return
    where = f"{source}: image {record.path!r}"
    for inst in record.instances:
        polygons = []
        for poly in inst.polygons:
            clipped = clamp_polygon(poly, record.width, record.height)
            if clipped != poly:
                warnings.warn(f"{where}: {inst.category!r} polygon points outside the "
                              f"{record.width}x{record.height} image were clipped", kind="clipped polygon")
            if len(set(clipped)) >= 3:
                polygons.append(clipped)
            else:
                warnings.warn(f"{where}: polygon collapsed after clipping; dropped", kind="unusable polygon")
        inst.polygons = polygons
        if inst.rle is not None:
            try:
                inst.rle = check_rle(inst.rle, f"{where}: {inst.category!r} mask", record.height, record.width)
            except RLEError as exc:
                warnings.warn(f"{exc}; mask dropped", kind="unusable mask")
                inst.rle = None
    record.instances = [i for i in record.instances if i.polygons or i.rle is not None]


def _merge(dataset: Dataset, part: Dataset) -> None:
    dataset.images.extend(part.images)
    for name in part.categories:
        if name not in dataset.categories:
            dataset.categories.append(name)
    for key, value in part.meta.items():
        if key in ("issues",):
            dataset.meta.setdefault(key, []).extend(value)
        elif key == "annotation_files":
            dataset.meta.setdefault(key, {}).update(value)
        else:
            dataset.meta.setdefault(key, value)


def _add_unlabelled(dataset: Dataset, folder: Path, root: Path, split: str | None, ann: Path | None) -> None:
    """Add the images under ``folder`` that no annotation mentions, as ``labelled=False`` records."""
    known = {r.path for r in dataset.images}
    added = []
    warnings = WarningSummary(str(folder), log)
    for file in list_images(folder):
        rel = file.relative_to(root).as_posix()
        if rel in known:
            continue
        record = ImageRecord(path=rel, split=split, labelled=False)
        try:
            record.width, record.height = image_size(file)
        except ImageLoadError as exc:
            warnings.warn(str(exc), kind="unreadable image")
        dataset.images.append(record)
        added.append(rel)
    warnings.summarize()
    if added and ann is not None:
        message = (f"{ann.relative_to(root).as_posix()}: {len(added)} image(s) in {folder} have no annotation "
                   f"(e.g. {', '.join(added[:3])}); kept as unlabelled")
        log.warning("%s", message)
        dataset.meta.setdefault("issues", []).append(message)
    elif added:
        log.info("%s: %d unlabelled image(s)", folder, len(added))


def iter_images(dataset: Dataset, split: str | None = None, labelled: bool | None = None) -> Iterator[ImageRecord]:
    """Records of ``dataset``, optionally only one split and/or only (un)labelled ones."""
    for record in dataset.images:
        if (split is None or record.split == split) and (labelled is None or record.labelled == labelled):
            yield record


def image_path(dataset: Dataset, record: ImageRecord) -> Path:
    """The record's image file: ``dataset.root / record.path`` (``record.path`` alone if no root)."""
    return Path(dataset.root) / record.path if dataset.root is not None else Path(record.path)
