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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cardamage.data.annotations import AnnotationError, Dataset, ImageRecord, Instance, Polygon, safe_relative_path
from cardamage.data.formats import (
    Issues,
    as_number,
    clean_polygon,
    describe,
    finish_dataset,
    fitted_instances,
    number,
    read_reviewed,
    record_file_size,
    record_size,
)
from cardamage.data.formats.registry import Format, ReadRequest
from cardamage.data.formats.via_shapes import ELLIPSE_POINTS, shape_to_points  # noqa: F401 (re-exported)
from cardamage.data.reviewed import FIELD as REVIEWED_FIELD
from cardamage.data.reviewed import boxes_json
from cardamage.fileio import write_json

log = logging.getLogger(__name__)

#: Region attribute names that commonly hold the class, in order of preference (case-insensitive).
CATEGORY_KEYS: tuple[str, ...] = ("name", "class", "label", "class name", "class_name", "category", "cls", "type")
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


def _region_order(key: str) -> tuple[int, int, str]:
    """VIA 1 region keys ``"0"``, ``"1"``, ... in numeric order (other keys after them)."""
    digits = key.isascii() and key.isdigit()
    return (0, len(key.lstrip("0")), key) if digits else (1, 0, key)


def _regions(entry: dict[str, Any], issues: Issues) -> list[dict[str, Any]]:
    """An entry's regions as a list (VIA 1 stores a dict keyed "0", "1", ...)."""
    name = entry.get("filename")
    regions = entry.get("regions")
    if regions is None:
        return []
    if isinstance(regions, dict):
        regions = [regions[k] for k in sorted(regions, key=_region_order)]
    if not isinstance(regions, list):
        issues.warn(f"image {name!r}: 'regions' is {describe(regions)}, not a list; ignored", kind="bad regions")
        return []
    out = []
    for i, region in enumerate(regions):
        shape = region.get("shape_attributes") if isinstance(region, dict) else None
        if isinstance(shape, dict):
            if not isinstance(region.get("region_attributes"), dict):
                region["region_attributes"] = {}
            out.append(region)
        elif not isinstance(region, dict):
            issues.warn(f"image {name!r} region {i}: is {describe(region)}, not an object; region skipped",
                        kind="bad region")
        else:
            found = "missing" if shape is None else f"{describe(shape)}, not an object"
            issues.warn(f"image {name!r} region {i}: 'shape_attributes' {found}; region skipped", kind="bad region")
    return out


def _instance(region: dict[str, Any], key: str, where: str, issues: Issues) -> Instance | None:
    attrs = region["region_attributes"]
    category = _usable_category(attrs.get(key))
    if category is None:
        issues.warn(f"{where}: no category in region attribute {key!r} (got {describe(attrs.get(key))}); "
                    "region skipped", kind="missing category")
        return None
    points = shape_to_points(region["shape_attributes"], where, issues)
    polygon = None if points is None else clean_polygon(points, None, None, where, issues)
    if polygon is None:
        return None
    extras = {k: v for k, v in attrs.items() if k != key}
    return Instance(category=category, polygons=[polygon], attributes=extras)


def _file_size(entry: dict[str, Any], name: str, issues: Issues) -> int | None:
    """VIA's ``size`` (file size in bytes): ``None`` when absent, -1 (unknown) or unusable (warned)."""
    size = entry.get("size")
    if size in (None, "", -1, "-1"):
        return None
    value = as_number(size)
    if value is None or not value.is_integer() or value < 0 or value > 2 ** 53:
        issues.warn(f"image {name!r}: 'size' {describe(size)} is not a file size in bytes; ignored",
                    kind="bad file size")
        return None
    return int(value)


def _record(entry: dict[str, Any], regions: list[dict[str, Any]], key: str | None, issues: Issues) -> ImageRecord:
    name = safe_relative_path(entry["filename"], issues.source)
    attrs = dict(entry["file_attributes"]) if isinstance(entry.get("file_attributes"), dict) else {}
    reviewed = read_reviewed(attrs.pop(REVIEWED_FIELD, None), f"image {name!r}", issues)
    record = ImageRecord(path=name, source=Path(issues.source).name, file_size=_file_size(entry, name, issues),
                         attributes=attrs, reviewed=reviewed)
    for i, region in enumerate(regions):
        inst = _instance(region, key or DEFAULT_CATEGORY_KEY, f"image {name!r} region {i}", issues)
        if inst is not None:
            record.instances.append(inst)
    return record


def _entries(data: Any, issues: Issues) -> list[dict[str, Any]]:
    items = list(data.items()) if isinstance(data, dict) else list(enumerate(data))
    entries = []
    for key, entry in items:
        name = entry.get("filename") if isinstance(entry, dict) else None
        if isinstance(name, str) and name:
            entries.append(entry)
        elif isinstance(entry, dict) and name not in (None, ""):
            issues.warn(f"entry {describe(key)}: 'filename' is {describe(name)}, not a string; skipped",
                        kind="bad entry")
        else:
            issues.warn(f"entry {describe(key)} has no filename; skipped", kind="bad entry")
    return entries


def parse_via(data: Any, source: str, category_key: str | None = None) -> Dataset:
    """Parse VIA JSON (1.x dict or list, 2.x export, or 2.x project) into a :class:`Dataset`.

    ``Dataset.meta`` gets ``via_category_key`` and, for project files, ``via_settings``,
    ``via_attributes`` and ``via_project_extra`` (other top-level keys) for lossless writing.
    """
    issues = Issues(source, log)
    meta: dict[str, Any] = {}
    if isinstance(data, dict) and "_via_img_metadata" in data:
        for key in ("_via_settings", "_via_attributes"):
            value = data.get(key)
            if value is not None and not isinstance(value, dict):
                issues.warn(f"{key!r} is {describe(value)}, not an object; a default one is written instead",
                            kind="bad project")
                value = None
            meta[key[1:]] = value
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


def _polygons_for(inst: Instance, where: str, issues: Issues | None = None) -> list[Polygon]:
    """The instance's polygons; a mask-only instance is traced into polygons (with a warning)."""
    if inst.polygons or inst.rle is None:
        return inst.polygons
    from cardamage.data.masks import decode_rle, mask_to_polygons

    traced = mask_to_polygons(decode_rle(inst.rle), epsilon=1.0).outer
    message = f"{where}: {inst.category!r} mask written as {len(traced)} traced polygon(s) (VIA stores no masks)"
    if issues is None:
        log.warning("%s", message)
    else:
        issues.warn(message, kind="traced mask")
    return traced


def via_regions(record: ImageRecord, key: str, instances: Sequence[Instance] | None = None,
                issues: Issues | None = None) -> list[dict[str, Any]]:
    """VIA 2 region list for one image; one region per polygon (pixels, integral values as ints).

    ``instances``: what to write (default: the record's), e.g. :func:`fitted_instances` of the record;
    ``issues``: where the warnings go (default: this module's logger).
    """
    regions = []
    for inst in record.instances if instances is None else instances:
        for poly in _polygons_for(inst, f"image {record.path!r}", issues):
            shape = {"name": "polygon", "all_points_x": [number(x) for x, _ in poly],
                     "all_points_y": [number(y) for _, y in poly]}
            regions.append({"shape_attributes": shape,
                            "region_attributes": {key: inst.category, **{k: v for k, v in inst.attributes.items()
                                                                         if k != key}}})
    return regions


def file_attributes(record: ImageRecord) -> dict[str, Any]:
    """VIA ``file_attributes`` of a record: its attributes plus the reviewed boxes as JSON text."""
    attrs = dict(record.attributes)
    if record.reviewed is not None:
        attrs[REVIEWED_FIELD] = boxes_json(record.reviewed)
    return attrs


def to_via(dataset: Dataset, version: int = 2, category_key: str | None = None,
           source: str = "VIA output") -> dict[str, Any]:
    """VIA JSON as a dict keyed ``filename+size`` (size from the record, the file, or ``-1``).

    Where the image size is known (record or file header), polygon points outside the image are
    clipped with a warning naming ``source`` and the image.

    ``version=2``: ``regions`` is a list; ``version=1``: a dict keyed ``"0"``, ``"1"``, ... with the
    VIA 1 ``fileref``/``base64_img_data`` fields. Unlabelled records are left out.
    """
    key = category_key or dataset.meta.get("via_category_key") or DEFAULT_CATEGORY_KEY
    issues = Issues(source, log)
    out: dict[str, Any] = {}
    for record in dataset.images:
        if not record.labelled:
            continue
        size = record_file_size(dataset, record)
        shape = record_size(dataset, record, issues)
        regions = via_regions(record, key, fitted_instances(record, shape, issues), issues)
        attrs = file_attributes(record)
        if version == 1:
            out[f"{record.path}{size}"] = {"fileref": "", "size": size, "filename": record.path,
                                           "base64_img_data": "", "file_attributes": attrs,
                                           "regions": {str(i): r for i, r in enumerate(regions)}}
        else:
            out[f"{record.path}{size}"] = {"filename": record.path, "size": size, "regions": regions,
                                           "file_attributes": attrs}
    issues.summarize()
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
        region = attrs.get("region")
        spec = region.get(key) if isinstance(region, dict) else None
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


def to_via_project(dataset: Dataset, category_key: str | None = None, name: str = "project",
                   source: str = "VIA output") -> dict[str, Any]:
    """A full VIA 2 project; settings, attributes and extra keys kept in ``Dataset.meta`` are reused."""
    key = category_key or dataset.meta.get("via_category_key") or DEFAULT_CATEGORY_KEY
    dataset.ensure_categories()
    project: dict[str, Any] = {
        "_via_settings": copy.deepcopy(dataset.meta.get("via_settings")) or _default_settings(name),
        "_via_img_metadata": to_via(dataset, 2, key, source=source),
        "_via_attributes": _attributes(dataset, key, dataset.meta.get("via_attributes")),
    }
    project.update(copy.deepcopy(dataset.meta.get("via_project_extra") or {}))
    if "_via_image_id_list" in project:
        project["_via_image_id_list"] = list(project["_via_img_metadata"])
    return project


def write_via(dataset: Dataset, path: str | Path, version: int = 2, category_key: str | None = None) -> Path:
    """Write a VIA 2 export (``version=2``) or VIA 1 file (``version=1``) atomically."""
    return write_json(path, to_via(dataset, version, category_key, source=str(path)), indent=None)


def write_via_project(dataset: Dataset, path: str | Path, category_key: str | None = None) -> Path:
    """Write a full VIA 2 project file atomically (project name: the file stem unless kept in meta)."""
    return write_json(path, to_via_project(dataset, category_key, Path(path).stem, source=str(path)), indent=None)



def _read(request: ReadRequest) -> Dataset:
    return parse_via(request.data, request.source, category_key=request.category_key)


FORMATS = (
    Format("via-project", "VIA 2 project JSON", detect=is_via_project, read=_read, write=write_via_project),
    Format("via", "VIA 2.x JSON export", detect=is_via2, read=_read, write=functools.partial(write_via, version=2)),
    Format("via1", "VIA 1.x JSON", detect=is_via1, read=_read, write=functools.partial(write_via, version=1)),
)
