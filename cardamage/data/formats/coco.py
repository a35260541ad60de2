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

from cardamage.data.annotations import Dataset, ImageRecord, Instance, Polygon, safe_relative_path
from cardamage.fileio import write_json
from cardamage.data.masks import PolygonError, unflatten
from cardamage.data.formats import Issues, clean_polygon, finish_dataset, number, record_size
from cardamage.data.formats.registry import Format, ReadRequest

log = logging.getLogger(__name__)


# --- reading ---------------------------------------------------------------------------------


def is_coco(data: Any) -> bool:
    """A dict with an ``images`` list and an ``annotations`` list or a ``categories`` key."""
    return isinstance(data, dict) and isinstance(data.get("images"), list) \
        and isinstance(data.get("annotations", []), list) and ("annotations" in data or "categories" in data)


def _categories(items: list[Any], issues: Issues) -> tuple[dict[Any, str], list[str]]:
    """``{id: name}`` and the names in id order (categories without instances included)."""
    by_id: dict[Any, str] = {}
    for cat in items:
        if not isinstance(cat, dict) or "id" not in cat or not cat.get("name"):
            issues.warn(f"category {cat!r} has no id or name; ignored")
            continue
        by_id[cat["id"]] = str(cat["name"])
    ordered = sorted(by_id, key=lambda i: (0, i) if isinstance(i, (int, float)) else (1, str(i)))
    return by_id, list(dict.fromkeys(by_id[i] for i in ordered))


def _image(item: Any, source: str, issues: Issues) -> ImageRecord | None:
    if not isinstance(item, dict) or "id" not in item or not item.get("file_name"):
        issues.warn(f"image entry {item!r:.80} has no id or file_name; skipped")
        return None
    width, height = item.get("width"), item.get("height")
    attrs = item.get("attributes")
    return ImageRecord(path=safe_relative_path(str(item["file_name"]), source),
                       width=int(width) if width else None, height=int(height) if height else None,
                       source=Path(source).name, attributes=dict(attrs) if isinstance(attrs, dict) else {})


def _polygons(segmentation: list[Any], record: ImageRecord, where: str, issues: Issues) -> list[Polygon]:
    if segmentation and all(isinstance(c, (int, float)) for c in segmentation):
        segmentation = [segmentation]  # a single flat polygon, as some tools write it
    polygons = []
    for k, flat in enumerate(segmentation):
        try:
            points = unflatten(flat)
        except (PolygonError, TypeError) as exc:
            issues.warn(f"{where} polygon {k}: {exc}; polygon skipped")
            continue
        poly = clean_polygon(points, record.width, record.height, f"{where} polygon {k}", issues)
        if poly is not None:
            polygons.append(poly)
    return polygons


def _rle(segmentation: dict[str, Any], record: ImageRecord, where: str, issues: Issues) -> dict[str, Any] | None:
    size, counts = segmentation.get("size"), segmentation.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and isinstance(counts, (str, list))):
        issues.warn(f"{where}: RLE needs 'size' [h, w] and 'counts'; annotation skipped")
        return None
    if record.width and record.height and list(size) != [record.height, record.width]:
        issues.warn(f"{where}: RLE size {size} differs from the image size {record.height}x{record.width} (h x w)")
    return {"size": [int(size[0]), int(size[1])], "counts": counts}


def _instance(ann: dict[str, Any], category: str, record: ImageRecord, where: str,
              issues: Issues) -> Instance | None:
    seg = ann.get("segmentation")
    inst = Instance(category=category, iscrowd=bool(ann.get("iscrowd", 0)), score=ann.get("score"),
                    attributes=dict(ann["attributes"]) if isinstance(ann.get("attributes"), dict) else {})
    if isinstance(seg, dict):
        inst.rle = _rle(seg, record, where, issues)
        return inst if inst.rle is not None else None
    if seg:
        inst.polygons = _polygons(seg, record, where, issues) if isinstance(seg, list) else []
        if not inst.polygons:
            issues.warn(f"{where}: no usable polygon; annotation skipped")
        return inst if inst.polygons else None
    bbox = ann.get("bbox")
    if isinstance(bbox, list) and len(bbox) == 4:
        log.info("%s: %s: no segmentation; its bbox is used as a rectangle", issues.source, where)
        x, y, w, h = (float(v) for v in bbox)
        inst.polygons = [p for p in [clean_polygon([(x, y), (x + w, y), (x + w, y + h), (x, y + h)],
                                                   record.width, record.height, where, issues)] if p]
        return inst if inst.polygons else None
    issues.warn(f"{where}: no segmentation and no bbox; annotation skipped")
    return None


def parse_coco(data: dict[str, Any], source: str) -> Dataset:
    """Parse COCO JSON; ``meta`` keeps ``coco_info``, ``coco_licenses`` and ``coco_categories``."""
    issues = Issues(source, log)
    cat_names, categories = _categories(data.get("categories") or [], issues)
    images: list[ImageRecord] = []
    by_id: dict[Any, ImageRecord] = {}
    for item in data.get("images") or []:
        record = _image(item, source, issues)
        if record is not None:
            images.append(record)
            by_id[item["id"]] = record
    for n, ann in enumerate(data.get("annotations") or []):
        record = by_id.get(ann.get("image_id")) if isinstance(ann, dict) else None
        if record is None:
            issues.warn(f"annotation {n}: unknown image_id {ann.get('image_id') if isinstance(ann, dict) else ann!r}; "
                        "skipped")
            continue
        where = f"image {record.path!r} annotation {ann.get('id', n)}"
        if ann.get("category_id") not in cat_names:
            issues.warn(f"{where}: unknown category_id {ann.get('category_id')!r}; annotation skipped")
            continue
        inst = _instance(ann, cat_names[ann["category_id"]], record, where, issues)
        if inst is not None:
            record.instances.append(inst)
    meta = {"coco_info": data.get("info"), "coco_licenses": data.get("licenses"),
            "coco_categories": data.get("categories") or []}
    return finish_dataset(Dataset(images=images, categories=categories, meta=meta), issues)


# --- writing ---------------------------------------------------------------------------------


def _compressed(rle: dict[str, Any]) -> dict[str, Any]:
    """pycocotools RLE object (bytes counts) from a compressed or uncompressed RLE dict."""
    h, w = rle["size"]
    if isinstance(rle["counts"], list):
        return mask_utils.frPyObjects({"size": [h, w], "counts": rle["counts"]}, h, w)
    counts = rle["counts"]
    return {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def geometry(inst: Instance, height: int, width: int) -> tuple[Any, float, list[float]] | None:
    """``(segmentation, area, bbox)`` of an instance in pixels; ``None`` if it has no shape.

    Polygons: area of the merged polygon masks (pycocotools). RLE: the mask's pixel count.
    """
    if inst.polygons:
        flat = [[number(c) for point in poly for c in point] for poly in inst.polygons]
        merged = mask_utils.merge(mask_utils.frPyObjects([[float(c) for c in f] for f in flat], height, width))
        x, y, w, h = inst.bbox() or (0.0, 0.0, 0.0, 0.0)
        return flat, float(mask_utils.area(merged)), [number(x), number(y), number(w), number(h)]
    if inst.rle is not None:
        compressed = _compressed(inst.rle)
        bbox = [number(v) for v in mask_utils.toBbox(compressed).tolist()]
        return dict(inst.rle), float(mask_utils.area(compressed)), bbox
    return None


def _size(dataset: Dataset, record: ImageRecord) -> tuple[int, int]:
    """``(width, height)``: known, read from the file, or (with a warning) the shapes' extent."""
    size = record_size(dataset, record)
    if size is not None:
        return size
    for inst in record.instances:
        if inst.rle is not None:
            return int(inst.rle["size"][1]), int(inst.rle["size"][0])
    points = [p for inst in record.instances for poly in inst.polygons for p in poly]
    width = max([math.ceil(x) for x, _ in points], default=1)
    height = max([math.ceil(y) for _, y in points], default=1)
    log.warning("image %r: size unknown and file not found; COCO width/height set to the polygons' "
                "extent %dx%d", record.path, width, height)
    return width, height


def to_coco(dataset: Dataset, start_id: int = 1) -> dict[str, Any]:
    """COCO JSON for the labelled records; image, annotation and category ids from ``start_id``.

    ``Instance.attributes`` go under ``attributes``, ``Instance.score`` under ``score``.
    """
    names = list(dataset.categories) + [c for c in dict.fromkeys(i.category for _, i in dataset.instances())
                                        if c not in dataset.categories]
    cat_ids = {name: start_id + i for i, name in enumerate(names)}
    supercats = {c.get("name"): c.get("supercategory", "") for c in dataset.meta.get("coco_categories") or []
                 if isinstance(c, dict)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for record in (r for r in dataset.images if r.labelled):
        width, height = _size(dataset, record)
        image = {"id": start_id + len(images), "file_name": record.path, "width": width, "height": height}
        if record.attributes:
            image["attributes"] = dict(record.attributes)
        images.append(image)
        for inst in record.instances:
            geo = geometry(inst, height, width)
            if geo is None:
                log.warning("image %r: %r instance has no polygon or mask; not written", record.path, inst.category)
                continue
            ann = {"id": start_id + len(annotations), "image_id": image["id"], "category_id": cat_ids[inst.category],
                   "segmentation": geo[0], "area": geo[1], "bbox": geo[2], "iscrowd": int(inst.iscrowd)}
            if inst.score is not None:
                ann["score"] = inst.score
            if inst.attributes:
                ann["attributes"] = dict(inst.attributes)
            annotations.append(ann)
    return {"info": dataset.meta.get("coco_info") or {"description": "written by cardamage"},
            "licenses": dataset.meta.get("coco_licenses") or [],
            "images": images, "annotations": annotations,
            "categories": [{"id": cat_ids[n], "name": n, "supercategory": supercats.get(n, "")} for n in names]}


def write_coco(dataset: Dataset, path: str | Path, start_id: int = 1) -> Path:
    """Write COCO JSON atomically (see :func:`to_coco`)."""
    return write_json(path, to_coco(dataset, start_id), indent=None)


def _read(request: ReadRequest) -> Dataset:
    return parse_coco(request.data, request.source)


FORMATS = (Format("coco", "COCO JSON", detect=is_coco, read=_read, write=write_coco),)
