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
import re
from pathlib import Path, PurePosixPath
from typing import Any, Sequence
from urllib.parse import parse_qs, quote, unquote, urlparse

import numpy as np

from cardamage.data.annotations import AnnotationError, Dataset, ImageRecord, Instance, safe_relative_path
from cardamage.fileio import write_json
from cardamage.data.masks import decode_rle, encode_rle
from cardamage.data.formats import Issues, clean_polygon, finish_dataset, record_size
from cardamage.data.formats.registry import Format, ReadRequest

log = logging.getLogger(__name__)

_UPLOAD_PREFIX = re.compile(r"^[0-9a-fA-F]{8}-")
_LABEL_KEYS = ("polygonlabels", "brushlabels", "rectanglelabels", "labels")
#: Result types that carry no geometry; read as attributes when they share a region's id.
_NON_REGION_TYPES = {"choices", "textarea", "rating", "number", "datetime", "taxonomy", "labels", "relation", ""}


# --- image references ------------------------------------------------------------------------


def _under_root(d: str, root: Path | None) -> str:
    """A local-files ``d`` value as a path relative to ``root``: its longest tail that exists there."""
    parts = [p for p in d.replace("\\", "/").split("/") if p]
    if root is not None:
        for i in range(len(parts)):
            if (root / "/".join(parts[i:])).is_file():
                return "/".join(parts[i:])
    absolute = d.startswith(("/", "\\")) or (len(d) > 1 and d[1] == ":")
    return parts[-1] if absolute and parts else "/".join(parts)


def image_name_from_url(url: str, root: str | Path | None = None, source: str = "Label Studio file") -> str:
    """Map a task's image reference back to a file name relative to ``root``.

    ``/data/local-files/?d=a/b/17.jpg`` -> the longest tail of ``a/b/17.jpg`` found under ``root``
    (else ``a/b/17.jpg``); ``/data/upload/3/1a2b3c4d-17.jpg`` -> ``17.jpg`` (upload prefix removed);
    other URLs -> their last path part; plain relative names are kept.
    """
    parsed = urlparse(url)
    if "local-files" in parsed.path:
        name = _under_root(parse_qs(parsed.query).get("d", [""])[0], Path(root) if root is not None else None)
    elif parsed.scheme or url.startswith("/"):
        name = unquote(PurePosixPath(parsed.path).name)
        if "/data/upload/" in parsed.path:
            name = _UPLOAD_PREFIX.sub("", name)
    else:
        name = url
    return safe_relative_path(name, source)


def _image_url(data: dict[str, Any], data_key: str | None) -> str | None:
    if data_key:
        value = data.get(data_key)
        return value if isinstance(value, str) else None
    if isinstance(data.get("image"), str):
        return data["image"]
    return next((v for v in data.values() if isinstance(v, str) and v), None)


# --- brush RLE (label-studio-converter's brush.py format, in numpy) ---------------------------
#
# A bit stream, most significant bit first: 32 bits value count, 5 bits word size - 1, four 4-bit
# run-length field sizes - 1 (Label Studio: 3, 4, 8, 16). Then records until all values are out:
# 1 flag bit (1 = a run of one value, 0 = literal values), 2 bits choosing a length-field size,
# the length - 1, then one value (run) or length values (literal). The values are the image's
# RGBA bytes, row by row; the mask is the alpha channel.

RLE_SIZES = (3, 4, 8, 16)


class _BitReader:
    """Reads unsigned big-endian fields from a bit string."""

    def __init__(self, data: Sequence[int]) -> None:
        self.bits = np.unpackbits(np.asarray(data, dtype=np.uint8))
        self.text = (self.bits + ord("0")).tobytes().decode("ascii")
        self.pos = 0

    def read(self, size: int) -> int:
        if self.pos + size > len(self.text):
            raise ValueError("brush RLE ends early")
        value = int(self.text[self.pos:self.pos + size], 2)
        self.pos += size
        return value

    def read_many(self, count: int, size: int) -> np.ndarray:
        end = self.pos + count * size
        if end > len(self.bits):
            raise ValueError("brush RLE ends early")
        words = self.bits[self.pos:end].reshape(count, size).astype(np.int64)
        self.pos = end
        return words @ (1 << np.arange(size - 1, -1, -1, dtype=np.int64))


def decode_brush_rle(rle: Sequence[int]) -> np.ndarray:
    """Label Studio brush RLE (list of byte values) -> the flat decoded values (``uint8`` for 8-bit words)."""
    reader = _BitReader(rle)
    num, word = reader.read(32), reader.read(5) + 1
    sizes = [reader.read(4) + 1 for _ in range(4)]
    out = np.zeros(num, dtype=np.uint8 if word <= 8 else np.uint16 if word <= 16 else np.uint32)
    i = 0
    while i < num:
        is_run = reader.read(1)
        j = min(num, i + 1 + reader.read(sizes[reader.read(2)]))
        if is_run:
            out[i:j] = reader.read(word)
        else:
            out[i:j] = reader.read_many(j - i, word)
        i = j
    return out


def _records(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of equal values as ``(lengths, values, forced_long)``; runs over 2**16 split in chunks."""
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    lengths = np.diff(np.r_[starts, values.size])
    chunks = (lengths + 65535) // 65536
    last = np.cumsum(chunks) - 1
    out_len = np.full(int(chunks.sum()), 65536, dtype=np.int64)
    out_len[last] = lengths - (chunks - 1) * 65536
    forced = np.repeat(chunks > 1, chunks)
    return out_len, np.repeat(values[starts], chunks), forced


def encode_brush_rle(values: np.ndarray) -> list[int]:
    """Flat 8-bit values (e.g. RGBA bytes) -> Label Studio brush RLE (list of byte values).

    Same layout as label-studio-converter's ``encode_rle`` (word size 8, field sizes 3/4/8/16,
    single values as 1-value literals, zero padding to whole bytes plus one byte when aligned).
    """
    flat = np.asarray(values).ravel().astype(np.int64)
    if flat.size and (flat.min() < 0 or flat.max() > 255):
        raise ValueError("brush RLE values must be 0..255")
    header = f"{flat.size:032b}{7:05b}" + "".join(f"{s - 1:04b}" for s in RLE_SIZES)
    bits = [np.frombuffer(header.encode("ascii"), dtype=np.uint8) - ord("0")]
    if flat.size:
        lengths, vals, forced = _records(flat)
        index = np.where(forced, 3, np.searchsorted(np.array([8, 16, 256]), lengths))
        field = np.array(RLE_SIZES)[index]
        flag = ((lengths > 1) | forced).astype(np.int64)
        nbits = 3 + field + 8
        code = (flag << (2 + field + 8)) | (index << (field + 8)) | ((lengths - 1) << 8) | vals
        aligned = (code << (32 - nbits)).astype(">u4")
        table = np.unpackbits(aligned.view(np.uint8)).reshape(-1, 32)
        bits.append(table[np.arange(32)[None, :] < nbits[:, None]])
    stream = np.concatenate(bits)
    stream = np.r_[stream, np.zeros(8 - stream.size % 8, dtype=np.uint8)]
    return np.packbits(stream).tolist()


def brush_rle_to_mask(rle: Sequence[int], height: int, width: int) -> np.ndarray:
    """Brush RLE of an RGBA ``height x width`` image -> binary mask ``uint8 [height, width]`` (alpha > 0)."""
    flat = decode_brush_rle(rle)
    if flat.size != height * width * 4:
        raise ValueError(f"{flat.size} values, expected {height}x{width}x4 = {height * width * 4}")
    return (flat.reshape(height, width, 4)[:, :, 3] > 0).astype(np.uint8)


def mask_to_brush_rle(mask: np.ndarray) -> list[int]:
    """Binary mask ``[height, width]`` -> brush RLE (RGBA bytes, 255 where the mask is set)."""
    return encode_brush_rle(np.repeat((np.asarray(mask) > 0).astype(np.uint8).ravel() * 255, 4))


# --- reading ---------------------------------------------------------------------------------


def _kind(result: dict[str, Any]) -> str | None:
    value = result.get("value") or {}
    if "points" in value:
        return "polygon"
    if "rle" in value:
        return "brush"
    if all(k in value for k in ("x", "y", "width", "height")):
        return "rectangle"
    return None


def _label(result: dict[str, Any], where: str, issues: Issues) -> str | None:
    value = result.get("value") or {}
    for key in (str(result.get("type", "")).lower(), *_LABEL_KEYS):
        labels = value.get(key)
        if isinstance(labels, list) and labels:
            if len(labels) > 1:
                issues.warn(f"{where}: several labels {labels}; the first is used")
            return str(labels[0])
    issues.warn(f"{where}: region has no label; skipped")
    return None


def _rectangle(value: dict[str, Any], width: int, height: int) -> list[tuple[float, float]]:
    """Rectangle in percent (top-left x, y, width, height, rotation degrees) -> 4 pixel points."""
    x, y = value["x"] * width / 100, value["y"] * height / 100
    w, h = value["width"] * width / 100, value["height"] * height / 100
    a = math.radians(float(value.get("rotation", 0) or 0))
    return [(x + dx * math.cos(a) - dy * math.sin(a), y + dx * math.sin(a) + dy * math.cos(a))
            for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]


def _shape(result: dict[str, Any], kind: str, inst: Instance, where: str, issues: Issues) -> bool:
    """Fill ``inst`` with the result's geometry in pixels; ``False`` (warned) when unusable."""
    width, height = result.get("original_width"), result.get("original_height")
    if not width or not height:
        issues.warn(f"{where}: no original_width/original_height, percent cannot be converted; skipped")
        return False
    value = result["value"]
    if kind == "brush":
        try:
            mask = brush_rle_to_mask(value["rle"], int(height), int(width))
        except (ValueError, TypeError, IndexError) as exc:
            issues.warn(f"{where}: bad brush RLE ({exc}); skipped")
            return False
        if not mask.any():
            issues.warn(f"{where}: empty brush mask; skipped")
            return False
        inst.rle = encode_rle(mask)
        return True
    try:
        points = ([(float(x) * width / 100, float(y) * height / 100) for x, y in value["points"]]
                  if kind == "polygon" else _rectangle(value, width, height))
    except (TypeError, ValueError, KeyError) as exc:
        issues.warn(f"{where}: bad points ({exc}); skipped")
        return False
    polygon = clean_polygon(points, int(width), int(height), where, issues)
    inst.polygons = [polygon] if polygon else []
    return polygon is not None


def _pick(items: Any) -> dict[str, Any] | None:
    """The last annotation (or prediction) that was not cancelled."""
    usable = [a for a in (items or []) if isinstance(a, dict) and not a.get("was_cancelled")]
    return usable[-1] if usable else None


def _fill(record: ImageRecord, results: list[Any], score: float | None, issues: Issues) -> None:
    """Add the instances, per-region attributes and image-level choices of one annotation."""
    results = [r for r in results if isinstance(r, dict)]
    regions = {id(r): r for r in results if _kind(r)}
    region_ids = {r.get("id") for r in regions.values() if r.get("id")}
    by_region: dict[Any, Instance] = {}
    for n, result in enumerate(regions.values()):
        where = f"image {record.path!r} result {result.get('id', n)}"
        label = _label(result, where, issues)
        inst = Instance(category=label or "", score=result.get("score", score))
        if label and _shape(result, _kind(result), inst, where, issues):
            record.instances.append(inst)
            by_region.setdefault(result.get("id"), inst)
            record.width = record.width or int(result["original_width"])
            record.height = record.height or int(result["original_height"])
    for result in (r for r in results if id(r) not in regions):
        rtype, value = str(result.get("type", "")).lower(), result.get("value") or {}
        if result.get("id") in region_ids:  # per-region attribute (kept only if the region was)
            if result["id"] in by_region:
                by_region[result["id"]].attributes[result.get("from_name", rtype)] = value.get(rtype, value)
        elif rtype == "choices":
            record.attributes.setdefault("choices", []).extend(value.get("choices") or [])
        elif rtype not in _NON_REGION_TYPES:
            issues.warn(f"image {record.path!r}: result type {rtype!r} is not supported; skipped")


def _task(task: dict[str, Any], n: int, root: Path | None, source: str, predictions: bool, data_key: str | None,
          issues: Issues) -> ImageRecord | None:
    url = _image_url(task.get("data") or {}, data_key)
    if not url:
        issues.warn(f"task {task.get('id', n)}: no image in 'data'; skipped")
        return None
    record = ImageRecord(path=image_name_from_url(url, root, source), source=Path(source).name)
    annotation, score = _pick(task.get("annotations")), None
    if annotation is None and predictions:
        annotation = _pick(task.get("predictions"))
        score = annotation.get("score") if annotation else None
        record.labelled = False
    elif annotation is None:
        record.labelled = False
    if annotation is not None:
        _fill(record, annotation.get("result") or [], score, issues)
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
            issues.warn(f"task {n} is not an object; skipped")
            continue
        record = _task(task, n, base, source, predictions, data_key, issues)
        if record is not None:
            images.append(record)
            task_ids.setdefault(record.path, task.get("id"))
    return finish_dataset(Dataset(images=images, meta={"labelstudio_task_ids": task_ids}), issues)


# --- writing ---------------------------------------------------------------------------------


def _results(record: ImageRecord, width: int, height: int, names: dict[str, str], scores: bool) -> list[dict]:
    results: list[dict[str, Any]] = []
    common = {"to_name": names["to_name"], "original_width": width, "original_height": height, "image_rotation": 0}
    for inst in record.instances:
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
    if record.attributes.get("choices"):
        results.append({"id": f"r{len(results) + 1}", "type": "choices", "from_name": names["choices_from_name"],
                        "to_name": names["to_name"], "value": {"choices": list(record.attributes["choices"])}})
    return results


def to_labelstudio(dataset: Dataset, from_name: str = "label", to_name: str = "image", predictions: bool = False,
                   model_version: str | None = None, image_url: str = "/data/local-files/?d={path}",
                   data_key: str = "image", brush_from_name: str = "brush",
                   choices_from_name: str = "choice") -> list[dict[str, Any]]:
    """Label Studio tasks, one per record, with polygons in percent of the image size.

    Each labelled record (or record with instances) gets one annotation, or with
    ``predictions=True`` one prediction with ``model_version`` and ``score`` (mean instance score).
    Mask-only instances become ``brushlabels``. ``image_url`` is formatted with the URL-quoted path.

    Raises:
        AnnotationError: an image with instances whose size is unknown and not readable from disk.
    """
    names = {"from_name": from_name, "to_name": to_name, "brush_from_name": brush_from_name,
             "choices_from_name": choices_from_name}
    tasks = []
    for record in dataset.images:
        task: dict[str, Any] = {"data": {data_key: image_url.format(path=quote(record.path))}}
        tasks.append(task)
        if not (record.labelled or record.instances):
            continue
        size = record_size(dataset, record)
        if size is None and record.instances:
            raise AnnotationError(f"image {record.path!r}: width/height unknown and the file is not under "
                                  f"{dataset.root}; Label Studio percent coordinates need them")
        results = _results(record, *(size or (1, 1)), names, predictions)
        if predictions:
            scores = [i.score for i in record.instances if i.score is not None]
            task["predictions"] = [{"model_version": model_version or "cardamage", "result": results,
                                    "score": float(np.mean(scores)) if scores else None}]
        else:
            task["annotations"] = [{"result": results}]
    return tasks


def write_labelstudio(dataset: Dataset, path: str | Path, **options: Any) -> Path:
    """Write Label Studio JSON atomically; ``options`` as for :func:`to_labelstudio`."""
    return write_json(path, to_labelstudio(dataset, **options), indent=None)


def _read(request: ReadRequest) -> Dataset:
    tasks = [request.data] if isinstance(request.data, dict) else request.data
    return parse_labelstudio(tasks, request.source, root=request.root, predictions=request.predictions)


FORMATS = (Format("labelstudio", "Label Studio JSON export", detect=is_labelstudio, read=_read,
                  write=write_labelstudio),)
