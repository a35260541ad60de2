"""VGG Image Annotator (VIA) JSON: 1.x files, 2.x exports and 2.x project files.

All VIA coordinates are pixels of the image as displayed. Shapes other than polygons are
converted: ``rect`` to a 4-point polygon, ``circle``/``ellipse`` to a
:data:`ELLIPSE_POINTS`-point approximation (logged), ``polyline`` to a closed polygon;
``point`` and unknown shapes are skipped with a warning.

Category detection (when no ``category_key`` is given), see :func:`detect_category_key`.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
from pathlib import Path
from typing import Any, Sequence

from cardamage.data.annotations import AnnotationError, Dataset, ImageRecord, Instance, Polygon, safe_relative_path
from cardamage.fileio import write_json
from cardamage.data.formats import Issues, clean_polygon, finish_dataset, number, record_file_size
from cardamage.data.formats.registry import Format, ReadRequest

log = logging.getLogger(__name__)

#: Region attribute names that commonly hold the class, in order of preference (case-insensitive).
CATEGORY_KEYS: tuple[str, ...] = ("name", "class", "label", "class name", "class_name", "category", "cls", "type")
ELLIPSE_POINTS = 32
DEFAULT_CATEGORY_KEY = "name"


# --- reading ---------------------------------------------------------------------------------


def is_via_project(data: Any) -> bool:
    """A VIA 2 project: a dict whose ``_via_img_metadata`` is a dict."""
    return isinstance(data, dict) and isinstance(data.get("_via_img_metadata"), dict)


def _via_entries(data: Any) -> list[Any] | None:
    """The entries of a VIA export (dict values or list items), if every one looks like a VIA entry."""
    entries = list(data.values()) if isinstance(data, dict) else data if isinstance(data, list) else None
    if entries is None or not all(isinstance(e, dict) and "filename" in e and ("regions" in e or "file_attributes" in e)
                                  for e in entries):
        return None
    return entries


def is_via1(data: Any) -> bool:
    """A VIA 1.x file: VIA entries, at least one with ``regions`` as a dict."""
    entries = _via_entries(data)
    return entries is not None and any(isinstance(e.get("regions"), dict) for e in entries)


def is_via2(data: Any) -> bool:
    """A VIA 2.x export: VIA entries with ``regions`` lists (``{}`` and ``[]`` included)."""
    return _via_entries(data) is not None and not is_via1(data)


def _usable_category(value: Any) -> str | None:
    """A class name from an attribute value: a non-empty string, a number, or a one-ticked checkbox."""
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, dict):
        ticked = [k for k, v in value.items() if v]
        return ticked[0] if len(ticked) == 1 else None
    return None


def detect_category_key(attributes: Sequence[dict[str, Any]], source: str) -> str | None:
    """Pick the region attribute holding the class.

    Rules: the candidates are the attribute names present in any region that match
    :data:`CATEGORY_KEYS` (case-insensitive). One candidate: it is used. None: if every region
    has the same single attribute, that one; no attributes at all: ``None`` (no regions). Several:
    the one whose value is usable (non-empty string) in every region, if exactly one is.

    Raises:
        AnnotationError: ambiguous or no candidate; the message names the candidates and
            tells the user to pass ``--category-key``.
    """
    present = list(dict.fromkeys(k for a in attributes for k in a))
    if not attributes:
        return None
    wanted = {k.lower() for k in CATEGORY_KEYS}
    candidates = sorted((k for k in present if k.lower() in wanted),
                        key=lambda k: CATEGORY_KEYS.index(k.lower()))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        if len(present) == 1:
            return present[0]
        raise AnnotationError(f"{source}: cannot tell which region attribute holds the category "
                              f"(attributes found: {present or 'none'}); pass --category-key")
    complete = [k for k in candidates if all(_usable_category(a.get(k)) for a in attributes)]
    if len(complete) == 1:
        return complete[0]
    raise AnnotationError(f"{source}: several region attributes could hold the category: {candidates}; "
                          "pass --category-key to choose one")


def _ellipse(cx: float, cy: float, rx: float, ry: float, theta: float = 0.0) -> Polygon:
    """Polygon approximation (pixels) of an ellipse rotated by ``theta`` radians."""
    ct, st = math.cos(theta), math.sin(theta)
    points = []
    for k in range(ELLIPSE_POINTS):
        t = 2 * math.pi * k / ELLIPSE_POINTS
        x, y = rx * math.cos(t), ry * math.sin(t)
        points.append((cx + x * ct - y * st, cy + x * st + y * ct))
    return points


def shape_to_points(shape: dict[str, Any], where: str, issues: Issues) -> list[tuple[float, float]] | None:
    """VIA ``shape_attributes`` -> polygon points in pixels, or ``None`` (warned) when unusable."""
    kind = str(shape.get("name", "")).lower()
    try:
        if kind in ("polygon", "polyline"):
            xs, ys = shape["all_points_x"], shape["all_points_y"]
            if len(xs) != len(ys):
                issues.warn(f"{where}: {len(xs)} x but {len(ys)} y coordinates; region skipped")
                return None
            if kind == "polyline":
                log.info("%s: %s: polyline read as a closed polygon", issues.source, where)
            return [(float(x), float(y)) for x, y in zip(xs, ys)]
        if kind == "rect":
            x, y, w, h = (float(shape[k]) for k in ("x", "y", "width", "height"))
            return [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
        if kind in ("circle", "ellipse"):
            rx = float(shape["r"] if kind == "circle" else shape["rx"])
            ry = float(shape["r"] if kind == "circle" else shape["ry"])
            log.info("%s: %s: %s approximated by a %d-point polygon", issues.source, where, kind, ELLIPSE_POINTS)
            return _ellipse(float(shape["cx"]), float(shape["cy"]), rx, ry, float(shape.get("theta", 0) or 0))
    except (KeyError, TypeError, ValueError) as exc:
        issues.warn(f"{where}: {kind} shape is missing or has bad field {exc}; region skipped")
        return None
    issues.warn(f"{where}: shape {kind or shape!r} is not supported; region skipped")
    return None


def _regions(entry: dict[str, Any], issues: Issues) -> list[dict[str, Any]]:
    """An entry's regions as a list (VIA 1 stores a dict keyed "0", "1", ...)."""
    regions = entry.get("regions") or []
    if isinstance(regions, dict):
        keys = sorted(regions, key=lambda k: (0, int(k)) if str(k).isdigit() else (1, str(k)))
        regions = [regions[k] for k in keys]
    if not isinstance(regions, list):
        issues.warn(f"image {entry.get('filename')!r}: 'regions' is a {type(regions).__name__}; ignored")
        return []
    out = []
    for i, region in enumerate(regions):
        if isinstance(region, dict) and isinstance(region.get("shape_attributes"), dict):
            region.setdefault("region_attributes", {})
            if not isinstance(region["region_attributes"], dict):
                region["region_attributes"] = {}
            out.append(region)
        else:
            issues.warn(f"image {entry.get('filename')!r} region {i}: no shape_attributes; region skipped")
    return out


def _instance(region: dict[str, Any], key: str, where: str, issues: Issues) -> Instance | None:
    attrs = region["region_attributes"]
    category = _usable_category(attrs.get(key))
    if category is None:
        issues.warn(f"{where}: no category in region attribute {key!r} (got {attrs.get(key)!r}); region skipped")
        return None
    points = shape_to_points(region["shape_attributes"], where, issues)
    polygon = None if points is None else clean_polygon(points, None, None, where, issues)
    if polygon is None:
        return None
    extras = {k: v for k, v in attrs.items() if k != key}
    return Instance(category=category, polygons=[polygon], attributes=extras)


def _record(entry: dict[str, Any], regions: list[dict[str, Any]], key: str | None, issues: Issues) -> ImageRecord:
    name = safe_relative_path(str(entry["filename"]), issues.source)
    size = entry.get("size")
    try:
        file_size = int(size) if size not in (None, "") and int(size) >= 0 else None
    except (TypeError, ValueError):
        file_size = None
    attrs = entry.get("file_attributes")
    record = ImageRecord(path=name, source=Path(issues.source).name, file_size=file_size,
                         attributes=dict(attrs) if isinstance(attrs, dict) else {})
    for i, region in enumerate(regions):
        inst = _instance(region, key or DEFAULT_CATEGORY_KEY, f"image {name!r} region {i}", issues)
        if inst is not None:
            record.instances.append(inst)
    return record


def _entries(data: Any, issues: Issues) -> list[dict[str, Any]]:
    values = list(data.values()) if isinstance(data, dict) else list(data)
    entries = []
    for i, entry in enumerate(values):
        if isinstance(entry, dict) and entry.get("filename") not in (None, ""):
            entries.append(entry)
        else:
            issues.warn(f"entry {i} has no filename; skipped")
    return entries


def parse_via(data: Any, source: str, category_key: str | None = None) -> Dataset:
    """Parse VIA JSON (1.x dict or list, 2.x export, or 2.x project) into a :class:`Dataset`.

    ``Dataset.meta`` gets ``via_category_key`` and, for project files, ``via_settings``,
    ``via_attributes`` and ``via_project_extra`` (other top-level keys) for lossless writing.
    """
    issues = Issues(source, log)
    meta: dict[str, Any] = {}
    if isinstance(data, dict) and "_via_img_metadata" in data:
        meta["via_settings"] = data.get("_via_settings")
        meta["via_attributes"] = data.get("_via_attributes")
        meta["via_project_extra"] = {k: v for k, v in data.items()
                                     if k not in ("_via_settings", "_via_attributes", "_via_img_metadata")}
        data = data["_via_img_metadata"]
    entries = _entries(copy.deepcopy(data), issues)
    regions = [_regions(e, issues) for e in entries]
    attributes = [r["region_attributes"] for regs in regions for r in regs]
    if category_key is not None and attributes and not any(category_key in a for a in attributes):
        found = sorted({k for a in attributes for k in a})
        raise AnnotationError(f"{source}: no region has the attribute {category_key!r} "
                              f"(attributes found: {found or 'none'})")
    key = category_key or detect_category_key(attributes, source)
    meta["via_category_key"] = key or DEFAULT_CATEGORY_KEY
    dataset = Dataset(images=[_record(e, regs, key, issues) for e, regs in zip(entries, regions)], meta=meta)
    return finish_dataset(dataset, issues)


# --- writing ---------------------------------------------------------------------------------


def _polygons_for(inst: Instance, where: str) -> list[Polygon]:
    """The instance's polygons; a mask-only instance is traced into polygons (with a warning)."""
    if inst.polygons or inst.rle is None:
        return inst.polygons
    from cardamage.data.masks import decode_rle, mask_to_polygons

    traced = mask_to_polygons(decode_rle(inst.rle), epsilon=1.0).outer
    log.warning("%s: %r mask written as %d traced polygon(s) (VIA stores no masks)", where, inst.category,
                len(traced))
    return traced


def via_regions(record: ImageRecord, key: str) -> list[dict[str, Any]]:
    """VIA 2 region list for one image; one region per polygon (pixels, integral values as ints)."""
    regions = []
    for inst in record.instances:
        for poly in _polygons_for(inst, f"image {record.path!r}"):
            shape = {"name": "polygon", "all_points_x": [number(x) for x, _ in poly],
                     "all_points_y": [number(y) for _, y in poly]}
            regions.append({"shape_attributes": shape,
                            "region_attributes": {key: inst.category, **{k: v for k, v in inst.attributes.items()
                                                                         if k != key}}})
    return regions


def to_via(dataset: Dataset, version: int = 2, category_key: str | None = None) -> dict[str, Any]:
    """VIA JSON as a dict keyed ``filename+size`` (size from the record, the file, or ``-1``).

    ``version=2``: ``regions`` is a list; ``version=1``: a dict keyed ``"0"``, ``"1"``, ... with the
    VIA 1 ``fileref``/``base64_img_data`` fields. Unlabelled records are left out.
    """
    key = category_key or dataset.meta.get("via_category_key") or DEFAULT_CATEGORY_KEY
    out: dict[str, Any] = {}
    for record in dataset.images:
        if not record.labelled:
            continue
        size = record_file_size(dataset, record)
        regions = via_regions(record, key)
        if version == 1:
            out[f"{record.path}{size}"] = {"fileref": "", "size": size, "filename": record.path,
                                           "base64_img_data": "", "file_attributes": dict(record.attributes),
                                           "regions": {str(i): r for i, r in enumerate(regions)}}
        else:
            out[f"{record.path}{size}"] = {"filename": record.path, "size": size, "regions": regions,
                                           "file_attributes": dict(record.attributes)}
    return out


def _default_settings(name: str) -> dict[str, Any]:
    return {"ui": {"annotation_editor_height": 25, "annotation_editor_fontsize": 0.8, "leftsidebar_width": 18,
                   "image_grid": {"img_height": 80, "rshape_fill": "none", "rshape_fill_opacity": 0.3,
                                  "rshape_stroke": "yellow", "rshape_stroke_width": 2,
                                  "show_region_shape": True, "show_image_policy": "all"},
                   "image": {"region_label": "__via_region_id__", "region_label_font": "10px Sans"}},
            "core": {"buffer_size": 18, "filepath": {}, "default_filepath": ""},
            "project": {"name": name}}


def _attributes(dataset: Dataset, key: str, existing: dict[str, Any] | None) -> dict[str, Any]:
    """``_via_attributes``: the kept one (with missing category options added) or a new one."""
    if existing:
        attrs = copy.deepcopy(existing)
        spec = attrs.get("region", {}).get(key)
        if isinstance(spec, dict) and isinstance(spec.get("options"), dict):
            for name in dataset.categories:
                spec["options"].setdefault(name, name)
        return attrs
    region: dict[str, Any] = {key: {"type": "dropdown", "description": "category",
                                    "options": {c: c for c in dataset.categories}, "default_options": {}}}
    for _, inst in dataset.instances():
        for name in inst.attributes:
            region.setdefault(name, {"type": "text", "description": "", "default_value": ""})
    return {"region": region, "file": {}}


def to_via_project(dataset: Dataset, category_key: str | None = None, name: str = "project") -> dict[str, Any]:
    """A full VIA 2 project; settings, attributes and extra keys kept in ``Dataset.meta`` are reused."""
    key = category_key or dataset.meta.get("via_category_key") or DEFAULT_CATEGORY_KEY
    dataset.ensure_categories()
    project: dict[str, Any] = {
        "_via_settings": copy.deepcopy(dataset.meta.get("via_settings")) or _default_settings(name),
        "_via_img_metadata": to_via(dataset, 2, key),
        "_via_attributes": _attributes(dataset, key, dataset.meta.get("via_attributes")),
    }
    project.update(copy.deepcopy(dataset.meta.get("via_project_extra") or {}))
    if "_via_image_id_list" in project:
        project["_via_image_id_list"] = list(project["_via_img_metadata"])
    return project


def write_via(dataset: Dataset, path: str | Path, version: int = 2, category_key: str | None = None) -> Path:
    """Write a VIA 2 export (``version=2``) or VIA 1 file (``version=1``) atomically."""
    return write_json(path, to_via(dataset, version, category_key), indent=None)


def write_via_project(dataset: Dataset, path: str | Path, category_key: str | None = None) -> Path:
    """Write a full VIA 2 project file atomically (project name: the file stem unless kept in meta)."""
    return write_json(path, to_via_project(dataset, category_key, Path(path).stem), indent=None)



def _read(request: ReadRequest) -> Dataset:
    return parse_via(request.data, request.source, category_key=request.category_key)


FORMATS = (
    Format("via-project", "VIA 2 project JSON", detect=is_via_project, read=_read, write=write_via_project),
    Format("via", "VIA 2.x JSON export", detect=is_via2, read=_read, write=functools.partial(write_via, version=2)),
    Format("via1", "VIA 1.x JSON", detect=is_via1, read=_read, write=functools.partial(write_via, version=1)),
)
