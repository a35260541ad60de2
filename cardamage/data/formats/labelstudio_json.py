"""Label Studio JSON export (a list of tasks), converted without the Label Studio SDK.

Label Studio stores geometry in **percent** of ``original_width`` / ``original_height``; the
canonical model is in **pixels**, so every point is converted at this boundary. Supported
results: ``polygonlabels`` (and ``labels``/``polygon`` results with ``points``),
``rectanglelabels`` (to a 4-point polygon, rotation in degrees), ``brushlabels`` with Label
Studio's bit-stream RLE (decoded to a mask kept as COCO RLE in ``Instance.rle``), image-level
``choices`` (``ImageRecord.attributes["choices"]``), and per-region results sharing a region's
``id`` (``Instance.attributes[from_name]``). Predictions are read only when asked.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from cardamage.data.annotations import AnnotationError, Dataset, ImageRecord, Instance
from cardamage.data.formats import (
    MAX_SIDE,
    Issues,
    as_number,
    clean_polygon,
    describe,
    finish_dataset,
    fitted_instances,
    pixel_size,
    record_size,
    scalar_id,
)
from cardamage.data.formats.brush_rle import (
    RLE_SIZES,
    brush_rle_length,
    brush_rle_to_mask,
    decode_brush_rle,
    encode_brush_rle,
    mask_to_brush_rle,
)
from cardamage.data.formats.labelstudio_refs import image_name_from_url, image_url_of
from cardamage.data.formats.registry import Format, ReadRequest
from cardamage.data.masks import decode_rle, encode_rle
from cardamage.fileio import write_json

log = logging.getLogger(__name__)

_LABEL_KEYS = ("polygonlabels", "brushlabels", "rectanglelabels", "labels")
#: Result types that carry no geometry; read as attributes when they share a region's id.
_NON_REGION_TYPES = {"choices", "textarea", "rating", "number", "datetime", "taxonomy", "labels", "relation", ""}


# --- reading ---------------------------------------------------------------------------------


def _kind(result: dict[str, Any]) -> str | None:
    value = result.get("value")
    if not isinstance(value, dict):
        return None
    if "points" in value:
        return "polygon"
    if "rle" in value:
        return "brush"
    if all(k in value for k in ("x", "y", "width", "height")):
        return "rectangle"
    return None


def _label(value: dict[str, Any], rtype: str, where: str, issues: Issues) -> str | None:
    for key in (rtype, *_LABEL_KEYS):
        labels = value.get(key)
        if isinstance(labels, list) and labels:
            if len(labels) > 1:
                issues.warn(f"{where}: several labels {describe(labels)}; the first is used", kind="several labels")
            if scalar_id(labels[0]) is None or labels[0] == "":
                issues.warn(f"{where}: {key!r} holds {describe(labels[0])}, not a label; skipped", kind="bad label")
                return None
            return str(labels[0])
    issues.warn(f"{where}: region has no label; skipped", kind="bad label")
    return None


def _number(value: dict[str, Any], key: str) -> float:
    number_ = as_number(value.get(key))
    if number_ is None:
        raise ValueError(f"{key!r} is {describe(value.get(key))}, not a finite number")
    return number_


def _rectangle(value: dict[str, Any], width: int, height: int) -> list[tuple[float, float]]:
    """Rectangle in percent (top-left x, y, width, height, rotation degrees) -> 4 pixel points."""
    x, y = _number(value, "x") * width / 100, _number(value, "y") * height / 100
    w, h = _number(value, "width") * width / 100, _number(value, "height") * height / 100
    a = math.radians(_number(value, "rotation") if value.get("rotation") not in (None, "") else 0.0)
    return [(x + dx * math.cos(a) - dy * math.sin(a), y + dx * math.sin(a) + dy * math.cos(a))
            for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]


def _points(value: dict[str, Any], width: int, height: int) -> list[tuple[float, float]]:
    """Polygon ``points`` in percent -> pixel points."""
    points = value.get("points")
    if not isinstance(points, list):
        raise ValueError(f"'points' is {describe(points)}, not a list of [x, y] pairs")
    out = []
    for p in points:
        pair = [as_number(c) for c in p] if isinstance(p, list) and len(p) == 2 else [None]
        if None in pair:
            raise ValueError(f"'points' holds {describe(p)}, not an [x, y] pair of numbers")
        out.append((pair[0] * width / 100, pair[1] * height / 100))
    return out


def _image_size(result: dict[str, Any], where: str, issues: Issues) -> tuple[int, int] | None:
    """``(original_width, original_height)`` of a result; ``None`` (warned, naming the field) if unusable."""
    sizes = []
    for key in ("original_width", "original_height"):
        value = result.get(key)
        size = pixel_size(value)
        if size is None:
            found = "missing" if value is None else f"{describe(value)}, not a whole number of pixels (1..{MAX_SIDE})"
            issues.warn(f"{where}: {key!r} {found}; percent cannot be converted; skipped", kind="bad image size")
            return None
        sizes.append(size)
    return sizes[0], sizes[1]


def _shape(result: dict[str, Any], kind: str, inst: Instance, where: str, issues: Issues) -> bool:
    """Fill ``inst`` with the result's geometry in pixels; ``False`` (warned) when unusable."""
    size = _image_size(result, where, issues)
    if size is None:
        return False
    width, height = size
    value = result["value"]
    if kind == "brush":
        try:
            mask = brush_rle_to_mask(value["rle"], height, width)
        except ValueError as exc:
            issues.warn(f"{where}: brush 'rle' unusable ({exc}); skipped", kind="bad brush")
            return False
        if not mask.any():
            issues.warn(f"{where}: empty brush mask; skipped", kind="bad brush")
            return False
        inst.rle = encode_rle(mask)
        return True
    try:
        points = _points(value, width, height) if kind == "polygon" else _rectangle(value, width, height)
    except ValueError as exc:
        issues.warn(f"{where}: bad {kind} ({exc}); skipped", kind=f"bad {kind}")
        return False
    polygon = clean_polygon(points, width, height, where, issues)
    inst.polygons = [polygon] if polygon else []
    return polygon is not None


def _list(container: dict[str, Any], key: str, where: str, issues: Issues) -> list[Any]:
    """``container[key]`` if it is a list; ``[]`` if absent, or (warned) when of another type."""
    value = container.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        issues.warn(f"{where}: {key!r} is {describe(value)}, not a list; ignored", kind="bad task")
        return []
    return value


def _pick(items: list[Any]) -> dict[str, Any] | None:
    """The last annotation (or prediction) that was not cancelled."""
    usable = [a for a in items if isinstance(a, dict) and not a.get("was_cancelled")]
    return usable[-1] if usable else None


def _usable_results(results: list[Any], where: str, issues: Issues) -> list[dict[str, Any]]:
    """The usable results: objects with an object (or no) ``value`` and a scalar (or no) ``id``."""
    out = []
    for n, result in enumerate(results):
        if not isinstance(result, dict):
            issues.warn(f"{where} result {n}: {describe(result)} is not an object; skipped", kind="bad result")
            continue
        label = result.get("id") if scalar_id(result.get("id")) is not None else n
        if result.get("value") is not None and not isinstance(result.get("value"), dict):
            issues.warn(f"{where} result {label}: 'value' is {describe(result['value'])}, not an object; skipped",
                        kind="bad result")
            continue
        if result.get("id") is not None and scalar_id(result["id"]) is None:
            issues.warn(f"{where} result {n}: 'id' is {describe(result['id'])}, not a number or string; "
                        "read without it", kind="bad result")
            result = {k: v for k, v in result.items() if k != "id"}
        if result.get("score") is not None and as_number(result["score"]) is None:
            issues.warn(f"{where} result {label}: 'score' is {describe(result['score'])}, not a number; ignored",
                        kind="bad score")
            result = {k: v for k, v in result.items() if k != "score"}
        out.append(result)
    return out


def _fill(record: ImageRecord, results: list[dict[str, Any]], score: float | None, where: str,
          issues: Issues) -> None:
    """Add the instances, per-region attributes and image-level choices of one annotation."""
    regions = {id(r): r for r in results if _kind(r)}
    region_ids = {r.get("id") for r in regions.values() if r.get("id")}
    by_region: dict[Any, Instance] = {}
    for n, result in enumerate(regions.values()):
        at = f"{where} result {str(result.get('id', n))[:40]}"
        label = _label(result["value"], str(result.get("type", "")).lower(), at, issues)
        inst = Instance(category=label or "", score=as_number(result.get("score", score)))
        if label and _shape(result, _kind(result), inst, at, issues):
            record.instances.append(inst)
            by_region.setdefault(result.get("id"), inst)
            record.width = record.width or pixel_size(result["original_width"])
            record.height = record.height or pixel_size(result["original_height"])
    for result in (r for r in results if id(r) not in regions):
        rtype, value = str(result.get("type", "")).lower(), result.get("value") or {}
        if result.get("id") in region_ids:  # per-region attribute (kept only if the region was)
            if result["id"] in by_region:
                name = result.get("from_name", rtype)
                by_region[result["id"]].attributes[str(name)] = value.get(rtype, value)
        elif rtype == "choices":
            choices = value.get("choices")
            if isinstance(choices, list) and all(isinstance(c, str) for c in choices):
                record.attributes.setdefault("choices", []).extend(choices)
            elif choices is not None:
                issues.warn(f"{where}: 'choices' is {describe(choices)}, not a list of strings; ignored",
                            kind="bad result")
        elif rtype not in _NON_REGION_TYPES:
            issues.warn(f"{where}: result type {describe(rtype)} is not supported; skipped", kind="unsupported result")


def _task(task: dict[str, Any], n: int, root: Path | None, source: str, predictions: bool, data_key: str | None,
          issues: Issues) -> ImageRecord | None:
    task_id = task.get("id", n) if scalar_id(task.get("id", n)) is not None else n
    data = task.get("data")
    url = image_url_of(data if isinstance(data, dict) else {}, data_key)
    if not url:
        issues.warn(f"task {task_id}: no image in 'data'; skipped", kind="bad task")
        return None
    try:
        name = image_name_from_url(url, root, source)
    except ValueError as exc:
        if isinstance(exc, AnnotationError):
            raise
        issues.warn(f"task {task_id}: image URL {describe(url)} in 'data' cannot be parsed ({exc}); skipped",
                    kind="bad task")
        return None
    record = ImageRecord(path=name, source=Path(source).name)
    where = f"task {task_id} image {record.path!r}"
    annotation, score = _pick(_list(task, "annotations", f"task {task_id}", issues)), None
    if annotation is None and predictions:
        annotation = _pick(_list(task, "predictions", f"task {task_id}", issues))
        score = as_number(annotation.get("score")) if annotation else None
        record.labelled = False
    elif annotation is None:
        record.labelled = False
    if annotation is not None:
        _fill(record, _usable_results(_list(annotation, "result", where, issues), where, issues), score, where, issues)
    return record


def is_labelstudio(data: Any) -> bool:
    """One task (a dict with a ``data`` dict) or a list of them (``[]`` included)."""
    if isinstance(data, dict):
        return isinstance(data.get("data"), dict)
    return isinstance(data, list) and all(isinstance(t, dict) and isinstance(t.get("data"), dict) for t in data)


def parse_labelstudio(tasks: Sequence[Any], source: str, root: str | Path | None = None,
                      predictions: bool = False, data_key: str | None = None) -> Dataset:
    """Parse a Label Studio JSON export into a :class:`Dataset` (pixels).

    Tasks without a (non-cancelled) annotation become ``labelled=False`` records. With
    ``predictions=True`` such tasks take their last prediction instead: the record stays
    ``labelled=False`` and its instances carry ``score``. ``meta["labelstudio_task_ids"]`` maps
    image path to task id.
    """
    issues = Issues(source, log)
    base = Path(root) if root is not None else None
    images, task_ids = [], {}
    for n, task in enumerate(tasks):
        if not isinstance(task, dict):
            issues.warn(f"task {n} is not an object; skipped", kind="bad task")
            continue
        record = _task(task, n, base, source, predictions, data_key, issues)
        if record is not None:
            images.append(record)
            task_ids.setdefault(record.path, task.get("id"))
    return finish_dataset(Dataset(images=images, meta={"labelstudio_task_ids": task_ids}), issues)


# --- writing ---------------------------------------------------------------------------------


def _results(record: ImageRecord, instances: list[Instance], width: int, height: int, names: dict[str, str],
             scores: bool) -> list[dict]:
    results: list[dict[str, Any]] = []
    common = {"to_name": names["to_name"], "original_width": width, "original_height": height, "image_rotation": 0}
    for inst in instances:
        shapes: list[tuple[str, dict[str, Any]]] = [
            ("polygonlabels", {"points": [[x * 100 / width, y * 100 / height] for x, y in poly], "closed": True})
            for poly in inst.polygons]
        if not inst.polygons and inst.rle is not None:
            shapes = [("brushlabels", {"format": "rle", "rle": mask_to_brush_rle(decode_rle(inst.rle))})]
        for rtype, value in shapes:
            from_name = names["from_name"] if rtype == "polygonlabels" else names["brush_from_name"]
            result = {"id": f"r{len(results) + 1}", "type": rtype, "from_name": from_name, **common,
                      "value": {**value, rtype: [inst.category]}}
            if scores and inst.score is not None:
                result["score"] = inst.score
            results.append(result)
    choices = record.attributes.get("choices")
    if isinstance(choices, list) and choices:
        results.append({"id": f"r{len(results) + 1}", "type": "choices", "from_name": names["choices_from_name"],
                        "to_name": names["to_name"], "value": {"choices": [str(c) for c in choices]}})
    return results


def to_labelstudio(dataset: Dataset, from_name: str = "label", to_name: str = "image", predictions: bool = False,
                   model_version: str | None = None, image_url: str = "/data/local-files/?d={path}",
                   data_key: str = "image", brush_from_name: str = "brush",
                   choices_from_name: str = "choice", source: str = "Label Studio output") -> list[dict[str, Any]]:
    """Label Studio tasks, one per record, with polygons in percent of the image size.

    Each labelled record (or record with instances) gets one annotation, or with
    ``predictions=True`` one prediction with ``model_version`` and ``score`` (mean instance score).
    Mask-only instances become ``brushlabels``. ``image_url`` is formatted with the URL-quoted path.
    Polygon points outside the image are clipped and masks of another size than the image left out,
    each with a warning naming ``source`` and the image.

    Raises:
        AnnotationError: an image with instances whose size is unknown and not readable from disk.
    """
    names = {"from_name": from_name, "to_name": to_name, "brush_from_name": brush_from_name,
             "choices_from_name": choices_from_name}
    issues = Issues(source, log)
    tasks = []
    for record in dataset.images:
        task: dict[str, Any] = {"data": {data_key: image_url.format(path=quote(record.path))}}
        tasks.append(task)
        if not (record.labelled or record.instances):
            continue
        size = record_size(dataset, record, issues)
        if size is None and record.instances:
            raise AnnotationError(f"{source}: image {record.path!r}: width/height unknown and the file is not under "
                                  f"{dataset.root}; Label Studio percent coordinates need them")
        instances = fitted_instances(record, size, issues) if size else []
        results = _results(record, instances, *(size or (1, 1)), names, predictions)
        if predictions:
            scores = [i.score for i in instances if i.score is not None]
            task["predictions"] = [{"model_version": model_version or "cardamage", "result": results,
                                    "score": float(np.mean(scores)) if scores else None}]
        else:
            task["annotations"] = [{"result": results}]
    issues.summarize()
    return tasks


def write_labelstudio(dataset: Dataset, path: str | Path, **options: Any) -> Path:
    """Write Label Studio JSON atomically; ``options`` as for :func:`to_labelstudio`."""
    options.setdefault("source", str(path))
    return write_json(path, to_labelstudio(dataset, **options), indent=None)


def _read(request: ReadRequest) -> Dataset:
    tasks = [request.data] if isinstance(request.data, dict) else request.data
    return parse_labelstudio(tasks, request.source, root=request.root, predictions=request.predictions)


FORMATS = (Format("labelstudio", "Label Studio JSON export", detect=is_labelstudio, read=_read,
                  write=write_labelstudio),)

#: The brush RLE helpers live in :mod:`cardamage.data.formats.brush_rle`; re-exported here for callers.
__all__ = ["FORMATS", "RLE_SIZES", "brush_rle_length", "brush_rle_to_mask", "decode_brush_rle", "encode_brush_rle",
           "image_name_from_url", "is_labelstudio", "mask_to_brush_rle", "parse_labelstudio", "to_labelstudio",
           "write_labelstudio"]
