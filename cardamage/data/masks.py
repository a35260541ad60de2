"""Polygons to masks and back, and COCO RLE helpers (pycocotools).

Masks are ``uint8`` arrays of shape ``[height, width]``; a binary mask holds 0/1, a class
mask holds class indices (0 = background). Polygons are lists of ``(x, y)`` pixel points.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from cardamage.data.annotations import Instance, Polygon

from cardamage.errors import BadInputError

log = logging.getLogger(__name__)


class PolygonError(BadInputError):
    """A polygon that cannot be used (fewer than 3 points, zero area)."""


def flatten(polygon: Polygon) -> list[float]:
    """``[(x, y), ...]`` -> ``[x1, y1, x2, y2, ...]`` (COCO layout)."""
    return [float(c) for point in polygon for c in point]


def unflatten(coords: Sequence[float]) -> Polygon:
    """``[x1, y1, x2, y2, ...]`` -> ``[(x, y), ...]``; an odd length is an error."""
    if len(coords) % 2:
        raise PolygonError(f"odd number of coordinates ({len(coords)})")
    return [(float(coords[i]), float(coords[i + 1])) for i in range(0, len(coords), 2)]


def validate_polygon(polygon: Polygon, width: int | None = None, height: int | None = None,
                     where: str = "") -> Polygon:
    """Check a polygon and clip it to the image.

    Drops a repeated closing point, clips points outside ``[0, width] x [0, height]`` (with a
    warning), and warns about self-intersections (the mask is still drawn with even-odd fill).

    Raises:
        PolygonError: fewer than 3 distinct points, or non-finite coordinates.
    """
    pts = [(float(x), float(y)) for x, y in polygon]
    if len(pts) > 1 and pts[0] == pts[-1]:
        pts = pts[:-1]
    if not all(np.isfinite(c) for p in pts for c in p):
        raise PolygonError(f"{where}: polygon has non-finite coordinates")
    if len(set(pts)) < 3:
        raise PolygonError(f"{where}: polygon has {len(set(pts))} distinct points, at least 3 needed")
    if width is not None and height is not None:
        clipped = [(min(max(x, 0.0), float(width)), min(max(y, 0.0), float(height))) for x, y in pts]
        if clipped != pts:
            log.warning("%s: polygon points outside the %dx%d image were clipped", where, width, height)
            pts = clipped
    if is_self_intersecting(pts):
        log.warning("%s: polygon is self-intersecting; filled with the even-odd rule", where)
    return pts


def _segments_cross(p1, p2, p3, p4) -> bool:
    def orient(a, b, c):
        return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
    d1, d2 = orient(p3, p4, p1), orient(p3, p4, p2)
    d3, d4 = orient(p1, p2, p3), orient(p1, p2, p4)
    return (d1 * d2 < 0) and (d3 * d4 < 0)


def is_self_intersecting(polygon: Polygon) -> bool:
    """True when two non-adjacent edges of the closed polygon cross properly. O(n^2), fine for labels."""
    n = len(polygon)
    edges = [(polygon[i], polygon[(i + 1) % n]) for i in range(n)]
    for i in range(n):
        for j in range(i + 2, n):
            if i == 0 and j == n - 1:
                continue
            if _segments_cross(*edges[i], *edges[j]):
                return True
    return False


def polygon_area(polygon: Polygon) -> float:
    """Shoelace area in square pixels (absolute value)."""
    if len(polygon) < 3:
        return 0.0
    xy = np.asarray(polygon, dtype=np.float64)
    x, y = xy[:, 0], xy[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def rasterize_polygons(polygons: Sequence[Polygon], height: int, width: int) -> np.ndarray:
    """Fill polygons into a binary mask ``uint8 [height, width]`` (COCO's rasterisation rules)."""
    polys = [flatten(p) for p in polygons if len(p) >= 3]
    if not polys:
        return np.zeros((height, width), dtype=np.uint8)
    rles = mask_utils.frPyObjects(polys, height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(np.uint8)


def instance_mask(inst: Instance, height: int, width: int) -> np.ndarray:
    """Binary mask ``uint8 [height, width]`` of an instance (its RLE if any, else its polygons)."""
    if inst.rle is not None:
        return decode_rle(inst.rle)
    return rasterize_polygons(inst.polygons, height, width)


def class_mask(instances: Sequence[Instance], classes: Sequence[str], height: int, width: int,
               category_of=None) -> np.ndarray:
    """Class-index mask ``uint8 [height, width]``: 0 background, ``i + 1`` for ``classes[i]``.

    ``category_of(inst)`` maps an instance to a class name (default: ``inst.category``); instances
    whose class is not in ``classes`` are ignored. Later instances paint over earlier ones.
    """
    out = np.zeros((height, width), dtype=np.uint8)
    index = {name: i + 1 for i, name in enumerate(classes)}
    for inst in instances:
        name = category_of(inst) if category_of else inst.category
        if name in index:
            out[instance_mask(inst, height, width).astype(bool)] = index[name]
    return out


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Binary mask ``[H, W]`` -> compressed COCO RLE with ``counts`` as ``str``."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE (compressed ``str``/``bytes`` counts or uncompressed ``list[int]``) -> ``uint8 [H, W]``."""
    h, w = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, list):
        rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    elif isinstance(counts, str):
        rle = {"size": [h, w], "counts": counts.encode("ascii")}
    return mask_utils.decode(rle).astype(np.uint8)


def rle_area(rle: dict[str, Any]) -> float:
    """Foreground pixel count of a COCO RLE."""
    return float(decode_rle(rle).sum())


@dataclass
class ContourResult:
    """Polygons traced from a mask: ``outer`` regions and the ``holes`` inside them."""

    outer: list[Polygon] = field(default_factory=list)
    holes: list[Polygon] = field(default_factory=list)


def mask_to_polygons(mask: np.ndarray, min_area: float = 4.0, epsilon: float = 0.0) -> ContourResult:
    """Trace the connected regions of a binary mask ``[H, W]`` into polygons.

    Args:
        mask: binary mask (non-zero = foreground).
        min_area: drop contours smaller than this many square pixels.
        epsilon: Douglas-Peucker tolerance in pixels (0 keeps every contour point).

    Returns:
        Outer boundaries and holes (CCOMP hierarchy); holes are reported, not subtracted, since
        polygon formats such as VIA cannot store them.
    """
    m = (np.asarray(mask) > 0).astype(np.uint8)
    contours, hierarchy = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    result = ContourResult()
    if hierarchy is None:
        return result
    for contour, info in zip(contours, hierarchy[0]):
        if epsilon > 0:
            contour = cv2.approxPolyDP(contour, epsilon, True)
        pts = [(float(x), float(y)) for x, y in contour.reshape(-1, 2)]
        if len(pts) < 3 or polygon_area(pts) < min_area:
            continue
        (result.holes if info[3] >= 0 else result.outer).append(pts)
    return result


def mask_to_instances(mask: np.ndarray, category: str, min_area: float = 4.0,
                      epsilon: float = 1.0) -> list[Instance]:
    """One :class:`Instance` per connected region of a binary mask ``[H, W]``."""
    traced = mask_to_polygons(mask, min_area=min_area, epsilon=epsilon)
    if traced.holes:
        log.debug("mask for %r has %d hole(s); they are not subtracted from polygons",
                  category, len(traced.holes))
    return [Instance(category=category, polygons=[poly]) for poly in traced.outer]
