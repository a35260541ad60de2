"""``cardamage stats``: counts, distributions and defects of a labelled dataset."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from cardamage.config import DataParams
from cardamage.data.annotations import Dataset, is_file
from cardamage.data.dedup import find_duplicates, hash_files
from cardamage.data.masks import polygon_area

log = logging.getLogger(__name__)


def open_dataset(path: str | Path, data: DataParams) -> Dataset:
    """A dataset folder (split sub-folders with label files) or a single annotation file."""
    from cardamage.data.dataset import load_dataset
    from cardamage.data.formats import read_annotations

    p = Path(path)
    if p.is_file():
        dataset = read_annotations(p, category_key=data.category_key)
        dataset.root = dataset.root or p.parent
        return dataset
    return load_dataset(p, annotation_file=data.annotation_file, category_key=data.category_key)


def _describe(values: list[float]) -> dict[str, float]:
    """min / median / mean / max / p5 / p95 of a list (zeros for an empty list)."""
    if not values:
        return {"count": 0, "min": 0.0, "p5": 0.0, "median": 0.0, "mean": 0.0, "p95": 0.0, "max": 0.0}
    arr = np.asarray(values, dtype=np.float64)
    return {"count": int(arr.size), "min": float(arr.min()), "p5": float(np.percentile(arr, 5)),
            "median": float(np.median(arr)), "mean": float(arr.mean()),
            "p95": float(np.percentile(arr, 95)), "max": float(arr.max())}


def _geometry(dataset: Dataset) -> dict[str, Any]:
    points, areas, shares = [], [], []
    for image, inst in dataset.instances():
        for poly in inst.polygons:
            points.append(len(poly))
            area = polygon_area(poly)
            areas.append(area)
            if image.width and image.height:
                shares.append(100.0 * area / (image.width * image.height))
    return {"points_per_polygon": _describe(points), "polygon_area_px": _describe(areas),
            "polygon_area_percent_of_image": _describe(shares)}


def _duplicates(dataset: Dataset, max_distance: int) -> list[dict[str, Any]]:
    root = Path(dataset.root or ".")
    names = [img.path for img in dataset.images if is_file(root / img.path)]
    shas, hashes = hash_files(root / n for n in names)
    by_name = dataset.by_path()
    for name, sha in zip(names, shas):
        by_name[name].sha256 = sha
    pairs = find_duplicates(shas, hashes, names, max_distance)
    out = []
    for pair in pairs:
        a, b = by_name[pair.a], by_name[pair.b]
        note = ""
        if a.labelled and b.labelled and len(a.instances) != len(b.instances):
            note = f"annotated differently ({len(a.instances)} vs {len(b.instances)} instances)"
        if a.split != b.split:
            note = ("cross-split; " + note).strip("; ")
        out.append({"a": pair.a, "b": pair.b, "kind": pair.kind, "distance": pair.distance, "note": note})
    return out


def dataset_stats(path: str | Path, data: DataParams) -> dict[str, Any]:
    """Statistics of a dataset as a JSON-able dict (see :func:`format_stats` for the text view).

    Images listed by the annotations whose photo file does not exist are reported under
    ``missing_images`` (with ``missing_instances``, their instance count) and left out of every
    other count: ``images`` = labelled + unlabelled + missing.
    """
    listed = open_dataset(path, data)
    root = Path(listed.root or ".")
    missing = [img for img in listed.images if not is_file(root / img.path)]
    missing_paths = {img.path for img in missing}
    dataset = Dataset(images=[img for img in listed.images if img.path not in missing_paths],
                      categories=listed.categories, root=listed.root, meta=listed.meta)
    labelled = [img for img in dataset.images if img.labelled]
    per_category = Counter(inst.category for _, inst in dataset.instances())
    images_per_category = Counter(c for img in labelled for c in {i.category for i in img.instances})
    splits = Counter(img.split or "-" for img in dataset.images)
    return {
        "path": str(path),
        "images": len(listed.images),
        "labelled_images": len(labelled),
        "unlabelled_images": sorted(img.path for img in dataset.images if not img.labelled),
        "missing_images": sorted(missing_paths),
        "missing_instances": sum(len(img.instances) for img in missing),
        "images_without_instances": sorted(img.path for img in labelled if not img.instances),
        "images_per_split": dict(sorted(splits.items())),
        "instances": sum(per_category.values()),
        "instances_per_category": dict(per_category.most_common()),
        "images_per_category": dict(images_per_category.most_common()),
        "instances_per_image": _describe([len(img.instances) for img in labelled]),
        **_geometry(dataset),
        "duplicates": _duplicates(dataset, data.near_duplicate_distance),
    }


def format_stats(s: dict[str, Any]) -> str:
    """Human-readable multi-line summary of :func:`dataset_stats`."""
    lines = [f"dataset: {s['path']}",
             f"images: {s['images']} ({s['labelled_images']} labelled, "
             f"{len(s['unlabelled_images'])} without labels, {len(s.get('missing_images', []))} missing)  "
             f"splits: {s['images_per_split']}",
             f"instances: {s['instances']}"]
    for cat, n in s["instances_per_category"].items():
        lines.append(f"  {cat:<20} {n:>6} instances in {s['images_per_category'].get(cat, 0)} images")
    for key, unit in (("instances_per_image", ""), ("points_per_polygon", ""),
                      ("polygon_area_px", " px^2"), ("polygon_area_percent_of_image", " %")):
        d = s[key]
        lines.append(f"{key}: min {d['min']:.4g}  median {d['median']:.4g}  mean {d['mean']:.4g}  "
                     f"p95 {d['p95']:.4g}  max {d['max']:.4g}{unit}")
    missing = s.get("missing_images", [])
    if missing:
        lines.append(f"missing photos (annotated, file not found; not counted above): {len(missing)} "
                     f"with {s.get('missing_instances', 0)} instances ({', '.join(missing[:10])}"
                     f"{', ...' if len(missing) > 10 else ''})")
    empty = s["images_without_instances"]
    lines.append(f"labelled images with no instances: {len(empty)}" + (f" ({', '.join(empty[:10])})" if empty else ""))
    lines.append(f"duplicates: {len(s['duplicates'])}")
    for d in s["duplicates"]:
        lines.append(f"  {d['kind']:<5} d={d['distance']}  {d['a']}  ~  {d['b']}  {d['note']}")
    return "\n".join(lines)
