"""COCO instance segmentation JSON (``images``, ``annotations``, ``categories``).

Coordinates are pixels. A polygon annotation may hold several polygons (one
:class:`~cardamage.data.annotations.Instance` with several polygons); an RLE annotation (compressed
``str`` counts or uncompressed ``list`` counts) is kept as is in ``Instance.rle``. Ids may start
at 0 or 1 (any hashable id works); the writer numbers from ``start_id`` (default 1).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from pycocotools import mask as mask_utils

from cardamage.data.annotations import AnnotationError, Dataset, ImageRecord, Instance, Polygon, safe_relative_path
from cardamage.data.formats import (
    MAX_SIDE,
    Issues,
    as_number,
    clean_polygon,
    describe,
    finish_dataset,
    fitted_instances,
    number,
    pixel_size,
    read_reviewed,
    record_size,
    scalar_id,
)
from cardamage.data.formats.registry import Format, ReadRequest
from cardamage.data.masks import PolygonError, clamp_polygon, polygons_to_rle, unflatten
from cardamage.data.reviewed import FIELD as REVIEWED_FIELD
from cardamage.data.rle import RLEError, check_rle, pycoco_rle
from cardamage.fileio import write_json

log = logging.getLogger(__name__)


# --- reading ---------------------------------------------------------------------------------


def is_coco(data: Any) -> bool:
    """A dict with an ``images`` list and an ``annotations`` list or a ``categories`` key."""
    return isinstance(data, dict) and isinstance(data.get("images"), list) \
        and isinstance(data.get("annotations", []), list) and ("annotations" in data or "categories" in data)


def _section(data: dict[str, Any], key: str, issues: Issues) -> list[Any]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise AnnotationError(f"{issues.source}: {key!r} is {describe(value)}, not a list")
    return value


def _categories(items: list[Any], issues: Issues) -> tuple[dict[Any, str], list[str], list[dict[str, Any]]]:
    """``{id: name}``, the names in id order (categories without instances included), the usable entries."""
    by_id: dict[Any, str] = {}
    kept = []
    for n, cat in enumerate(items):
        cid = scalar_id(cat.get("id")) if isinstance(cat, dict) else None
        name = cat.get("name") if isinstance(cat, dict) else None
        if not isinstance(cat, dict):
            issues.warn(f"category {n}: {describe(cat)} is not an object; ignored", kind="bad category")
        elif cid is None:
            issues.warn(f"category {n}: 'id' is {describe(cat.get('id'))}, not a number or string; ignored",
                        kind="bad category")
        elif scalar_id(name) is None or name == "":
            issues.warn(f"category {n} (id {cid!r}): 'name' is {describe(name)}, not a non-empty string; ignored",
                        kind="bad category")
        else:
            by_id[cid] = str(name)
            kept.append(cat)
    ordered = sorted(by_id, key=lambda i: (0, i, "") if isinstance(i, (int, float)) and i == i else (1, 0, str(i)))
    return by_id, list(dict.fromkeys(by_id[i] for i in ordered)), kept


def _size_of(item: dict[str, Any], name: str, issues: Issues) -> tuple[int | None, int | None]:
    """``(width, height)`` of an image entry; both ``None`` (warned) if either is not a pixel count."""
    sizes = []
    for key in ("width", "height"):
        value = item.get(key)
        size = pixel_size(value)
        if size is None and value not in (None, "", 0):
            issues.warn(f"image {name!r}: {key!r} is {describe(value)}, not a whole number of pixels "
                        f"(1..{MAX_SIDE}); size ignored", kind="bad image size")
        sizes.append(size)
    return (sizes[0], sizes[1]) if None not in sizes else (None, None)


def _image(item: Any, n: int, source: str, issues: Issues) -> ImageRecord | None:
    if not isinstance(item, dict):
        issues.warn(f"image entry {n}: {describe(item)} is not an object; skipped", kind="bad image entry")
        return None
    if scalar_id(item.get("id")) is None:
        issues.warn(f"image entry {n}: 'id' is {describe(item.get('id'))}, not a number or string; skipped",
                    kind="bad image entry")
        return None
    name = item.get("file_name")
    if not isinstance(name, str) or not name:
        issues.warn(f"image entry {n} (id {item['id']!r}): 'file_name' is {describe(name)}, not a file name; "
                    "skipped", kind="bad image entry")
        return None
    path = safe_relative_path(name, source)
    width, height = _size_of(item, path, issues)
    attrs = item.get("attributes")
    return ImageRecord(path=path, width=width, height=height, source=Path(source).name,
                       attributes=dict(attrs) if isinstance(attrs, dict) else {},
                       reviewed=read_reviewed(item.get(REVIEWED_FIELD), f"image {path!r}", issues))


def _polygons(segmentation: list[Any], record: ImageRecord, where: str, issues: Issues) -> list[Polygon]:
    if segmentation and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in segmentation):
        segmentation = [segmentation]  # a single flat polygon, as some tools write it
    polygons = []
    for k, flat in enumerate(segmentation):
        try:
            points = unflatten(flat)
        except PolygonError as exc:
            issues.warn(f"{where} polygon {k}: {exc}; polygon skipped", kind="unusable polygon")
            continue
        poly = clean_polygon(points, record.width, record.height, f"{where} polygon {k}", issues)
        if poly is not None:
            polygons.append(poly)
    return polygons


def _rle(segmentation: dict[str, Any], record: ImageRecord, where: str, issues: Issues) -> dict[str, Any] | None:
    """The checked RLE; ``None`` (warned, naming the field) when malformed or of another size than the image."""
    try:
        return check_rle(segmentation, f"{issues.source}: {where}", record.height, record.width)
    except RLEError as exc:
        issues.warn(f"{exc}; annotation skipped", prefix=False, kind="unusable mask")
        return None


def _score(ann: dict[str, Any], where: str, issues: Issues) -> float | None:
    if ann.get("score") is None:
        return None
    score = as_number(ann["score"])
    if score is None:
        issues.warn(f"{where}: 'score' is {describe(ann['score'])}, not a number; ignored", kind="bad score")
    return score


def _instance(ann: dict[str, Any], category: str, record: ImageRecord, where: str,
              issues: Issues) -> Instance | None:
    seg = ann.get("segmentation")
    inst = Instance(category=category, iscrowd=bool(as_number(ann.get("iscrowd", 0))),
                    score=_score(ann, where, issues),
                    attributes=dict(ann["attributes"]) if isinstance(ann.get("attributes"), dict) else {})
    if isinstance(seg, dict):
        inst.rle = _rle(seg, record, where, issues)
        return inst if inst.rle is not None else None
    if seg:
        inst.polygons = _polygons(seg, record, where, issues) if isinstance(seg, list) else []
        if not inst.polygons:
            issues.warn(f"{where}: no usable polygon in 'segmentation'; annotation skipped", kind="unusable polygon")
        return inst if inst.polygons else None
    bbox = ann.get("bbox")
    box = [as_number(v) for v in bbox] if isinstance(bbox, list) and len(bbox) == 4 else None
    if box is not None and None not in box:
        log.info("%s: %s: no segmentation; its bbox is used as a rectangle", issues.source, where)
        x, y, w, h = box
        inst.polygons = [p for p in [clean_polygon([(x, y), (x + w, y), (x + w, y + h), (x, y + h)],
                                                   record.width, record.height, where, issues)] if p]
        return inst if inst.polygons else None
    found = "no bbox" if bbox is None else f"'bbox' {describe(bbox)} is not [x, y, width, height]"
    issues.warn(f"{where}: no segmentation and {found}; annotation skipped", kind="unusable annotation")
    return None


def _annotation_record(ann: Any, n: int, by_id: dict[Any, ImageRecord], issues: Issues
                       ) -> tuple[ImageRecord, str] | None:
    """The annotation's image record and its ``where`` text; ``None`` (warned) if it has none."""
    if not isinstance(ann, dict):
        issues.warn(f"annotation {n}: {describe(ann)} is not an object; skipped", kind="bad annotation")
        return None
    label = ann.get("id", n) if scalar_id(ann.get("id", n)) is not None else n
    image_id = scalar_id(ann.get("image_id"))
    if image_id is None:
        issues.warn(f"annotation {label}: 'image_id' is {describe(ann.get('image_id'))}, not a number or string; "
                    "skipped", kind="bad annotation")
        return None
    record = by_id.get(image_id)
    if record is None:
        issues.warn(f"annotation {label}: unknown image_id {describe(image_id)}; skipped", kind="unknown image_id")
        return None
    return record, f"image {record.path!r} annotation {label}"


def parse_coco(data: dict[str, Any], source: str) -> Dataset:
    """Parse COCO JSON; ``meta`` keeps ``coco_info``, ``coco_licenses`` and ``coco_categories``."""
    issues = Issues(source, log)
    cat_names, categories, cat_entries = _categories(_section(data, "categories", issues), issues)
    images: list[ImageRecord] = []
    by_id: dict[Any, ImageRecord] = {}
    for n, item in enumerate(_section(data, "images", issues)):
        record = _image(item, n, source, issues)
        if record is not None:
            images.append(record)
            by_id[item["id"]] = record
    for n, ann in enumerate(_section(data, "annotations", issues)):
        found = _annotation_record(ann, n, by_id, issues)
        if found is None:
            continue
        record, where = found
        category_id = scalar_id(ann.get("category_id"))
        if category_id is None:
            issues.warn(f"{where}: 'category_id' is {describe(ann.get('category_id'))}, not a number or string; "
                        "annotation skipped", kind="unknown category_id")
            continue
        if category_id not in cat_names:
            issues.warn(f"{where}: unknown category_id {describe(category_id)}; annotation skipped",
                        kind="unknown category_id")
            continue
        inst = _instance(ann, cat_names[category_id], record, where, issues)
        if inst is not None:
            record.instances.append(inst)
    meta = {"coco_info": data.get("info"), "coco_licenses": data.get("licenses"), "coco_categories": cat_entries}
    return finish_dataset(Dataset(images=images, categories=categories, meta=meta), issues)


# --- writing ---------------------------------------------------------------------------------


def geometry(inst: Instance, height: int, width: int) -> tuple[Any, float, list[float]] | None:
    """``(segmentation, area, bbox)`` of an instance in pixels; ``None`` if it has no shape.

    Polygons: clamped to the ``width x height`` image, area of their merged masks (pycocotools,
    which only ever sees polygons clipped to the image). RLE: the mask's pixel count.

    Raises:
        PolygonError: a polygon too long to draw. RLEError: a malformed RLE.
    """
    if inst.polygons:
        polygons = [clamp_polygon(poly, width, height) for poly in inst.polygons]
        flat = [[number(c) for point in poly for c in point] for poly in polygons]
        merged = polygons_to_rle(polygons, height, width)
        xs, ys = [x for poly in polygons for x, _ in poly], [y for poly in polygons for _, y in poly]
        bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
        return flat, float(mask_utils.area(merged)) if merged else 0.0, [number(v) for v in bbox]
    if inst.rle is not None:
        compressed = pycoco_rle(inst.rle, f"{inst.category!r} mask")
        bbox = [number(v) for v in mask_utils.toBbox(compressed).tolist()]
        return dict(inst.rle), float(mask_utils.area(compressed)), bbox
    return None


def _size(dataset: Dataset, record: ImageRecord, issues: Issues) -> tuple[int, int]:
    """``(width, height)``: known, read from the file, or (with a warning) the shapes' extent.

    Raises:
        AnnotationError: the size is unknown and the shapes reach beyond the photo pixel budget.
    """
    from cardamage.data.images import pixel_limit

    size = record_size(dataset, record, issues)
    if size is not None:
        return size
    for inst in record.instances:
        if isinstance(inst.rle, dict) and isinstance(inst.rle.get("size"), list) and len(inst.rle["size"]) == 2:
            h, w = (pixel_size(v) for v in inst.rle["size"])
            if h and w:
                return w, h
    points = [p for inst in record.instances for poly in inst.polygons for p in poly
              if math.isfinite(p[0]) and math.isfinite(p[1])]
    width = max([math.ceil(x) for x, _ in points], default=1)
    height = max([math.ceil(y) for _, y in points], default=1)
    if width < 1 or height < 1 or width * height > pixel_limit():
        raise AnnotationError(f"image {record.path!r}: size unknown (file not found under {dataset.root}) and its "
                              f"polygons reach {width}x{height}, beyond the {pixel_limit()}-pixel limit; "
                              "give the image's width and height")
    issues.warn(f"image {record.path!r}: size unknown and file not found; COCO width/height set to the polygons' "
                f"extent {width}x{height}", kind="unknown size")
    return width, height


def to_coco(dataset: Dataset, start_id: int = 1, source: str = "COCO output") -> dict[str, Any]:
    """COCO JSON for the labelled records; image, annotation and category ids from ``start_id``.

    ``Instance.attributes`` go under ``attributes``, ``Instance.score`` under ``score``. Polygon points
    outside the image are clipped and masks of another size than their image left out, each with a
    warning naming ``source`` and the image.
    """
    issues = Issues(source, log)
    names = list(dataset.categories) + [c for c in dict.fromkeys(i.category for _, i in dataset.instances())
                                        if c not in dataset.categories]
    cat_ids = {name: start_id + i for i, name in enumerate(names)}
    supercats = {c["name"]: c.get("supercategory", "") for c in dataset.meta.get("coco_categories") or []
                 if isinstance(c, dict) and isinstance(c.get("name"), str)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for record in (r for r in dataset.images if r.labelled):
        width, height = _size(dataset, record, issues)
        image = {"id": start_id + len(images), "file_name": record.path, "width": width, "height": height}
        if record.attributes:
            image["attributes"] = dict(record.attributes)
        if record.reviewed is not None:
            image[REVIEWED_FIELD] = [[number(v, 2) for v in box] for box in record.reviewed]
        images.append(image)
        for inst in fitted_instances(record, (width, height), issues):
            try:
                geo = geometry(inst, height, width)
            except (PolygonError, RLEError) as exc:
                issues.warn(f"image {record.path!r}: {inst.category!r} instance: {exc}; not written",
                            kind="unusable instance")
                continue
            if geo is None:
                issues.warn(f"image {record.path!r}: {inst.category!r} instance has no polygon or mask; not written",
                            kind="unusable instance")
                continue
            ann = {"id": start_id + len(annotations), "image_id": image["id"], "category_id": cat_ids[inst.category],
                   "segmentation": geo[0], "area": geo[1], "bbox": geo[2], "iscrowd": int(inst.iscrowd)}
            if inst.score is not None:
                ann["score"] = inst.score
            if inst.attributes:
                ann["attributes"] = dict(inst.attributes)
            annotations.append(ann)
    issues.summarize()
    return {"info": dataset.meta.get("coco_info") or {"description": "written by cardamage"},
            "licenses": dataset.meta.get("coco_licenses") or [],
            "images": images, "annotations": annotations,
            "categories": [{"id": cat_ids[n], "name": n, "supercategory": supercats.get(n, "")} for n in names]}


def write_coco(dataset: Dataset, path: str | Path, start_id: int = 1) -> Path:
    """Write COCO JSON atomically (see :func:`to_coco`)."""
    return write_json(path, to_coco(dataset, start_id, source=str(path)), indent=None)


def _read(request: ReadRequest) -> Dataset:
    return parse_coco(request.data, request.source)


FORMATS = (Format("coco", "COCO JSON", detect=is_coco, read=_read, write=write_coco),)
