"""Polygons to masks and back, and COCO RLE helpers (pycocotools).

Masks are ``uint8`` arrays of shape ``[height, width]``; a binary mask holds 0/1, a class
mask holds class indices (0 = background). Polygons are lists of ``(x, y)`` pixel points.

pycocotools trusts its input: a polygon with coordinates far outside the image (or NaN) makes
it allocate without bound or crash, and RLE counts that do not add up to ``height x width``
make it write past its buffer. So polygons are clipped to the image (and non-finite ones
dropped) before any pycocotools call, and every RLE is checked by :func:`check_rle` first.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from cardamage.data.annotations import Instance, Polygon
from cardamage.data.rle import RLEError, check_rle, pycoco_rle
from cardamage.errors import BadInputError

log = logging.getLogger(__name__)

#: Most boundary samples pycocotools may draw for one polygon (about 32 bytes each: 128 MB).
MAX_BOUNDARY_SAMPLES = 4_000_000
#: Most edge pairs tested per polygon by :func:`validate_polygon`'s self-intersection check.
MAX_INTERSECTION_PAIRS = 2_000_000

#: ``warn(message, kind)``: where :func:`validate_polygon` sends its warnings.
Warn = Callable[[str, str], None]

__all__ = ["MAX_BOUNDARY_SAMPLES", "PolygonError", "RLEError", "check_rle", "clamp_polygon", "clip_polygon",
           "class_mask", "decode_rle", "encode_rle", "flatten", "instance_mask", "is_self_intersecting",
           "mask_to_instances", "mask_to_polygons", "polygon_area", "polygons_to_rle", "rasterize_polygons",
           "rle_area", "self_intersection", "unflatten", "validate_polygon"]


class PolygonError(BadInputError):
    """A polygon that cannot be used (fewer than 3 points, zero area, non-numeric or non-finite points)."""


def flatten(polygon: Polygon) -> list[float]:
    """``[(x, y), ...]`` -> ``[x1, y1, x2, y2, ...]`` (COCO layout)."""
    return [float(c) for point in polygon for c in point]


def _coordinate(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise PolygonError(f"coordinate {value!r:.40} is a {type(value).__name__}, not a number")
    try:
        return float(value)
    except (ValueError, OverflowError) as exc:
        raise PolygonError(f"coordinate {value!r:.40} is not a number") from exc


def unflatten(coords: Sequence[float]) -> Polygon:
    """``[x1, y1, x2, y2, ...]`` -> ``[(x, y), ...]``.

    Raises:
        PolygonError: not a list, an odd length, or a coordinate that is not a number.
    """
    if not isinstance(coords, (list, tuple)):
        raise PolygonError(f"a {type(coords).__name__}, not a list of coordinates")
    if len(coords) % 2:
        raise PolygonError(f"odd number of coordinates ({len(coords)})")
    values = [_coordinate(c) for c in coords]
    return [(values[i], values[i + 1]) for i in range(0, len(values), 2)]


def clamp_polygon(polygon: Polygon, width: float, height: float) -> Polygon:
    """Each point moved into ``[0, width] x [0, height]`` (pixels); the dataset's clipping rule."""
    w, h = float(width), float(height)
    return [(min(max(x, 0.0), w), min(max(y, 0.0), h)) for x, y in polygon]


def _log_warning(message: str, kind: str) -> None:
    log.warning("%s", message)


def validate_polygon(polygon: Polygon, width: int | None = None, height: int | None = None,
                     where: str = "", warn: Warn | None = None) -> Polygon:
    """Check a polygon and clip it to the image.

    Drops a repeated closing point, clips points outside ``[0, width] x [0, height]`` (with a
    warning), and warns about self-intersections (the mask is still drawn with even-odd fill).
    ``warn(message, kind)`` receives the warnings (default: this module's logger).

    Raises:
        PolygonError: fewer than 3 distinct points, non-numeric or non-finite coordinates.
    """
    warn = warn or _log_warning
    try:
        pts = [(float(x), float(y)) for x, y in polygon]
    except (TypeError, ValueError, OverflowError) as exc:
        raise PolygonError(f"{where}: polygon points are not (x, y) numbers ({exc})") from exc
    if len(pts) > 1 and pts[0] == pts[-1]:
        pts = pts[:-1]
    if not all(math.isfinite(c) for p in pts for c in p):
        raise PolygonError(f"{where}: polygon has non-finite coordinates")
    if len(set(pts)) < 3:
        raise PolygonError(f"{where}: polygon has {len(set(pts))} distinct points, at least 3 needed")
    if width is not None and height is not None:
        clipped = clamp_polygon(pts, width, height)
        if clipped != pts:
            warn(f"{where}: polygon points outside the {width}x{height} image were clipped", "clipped polygon")
            pts = clipped
            if len(set(pts)) < 3:
                raise PolygonError(f"{where}: polygon lies outside the {width}x{height} image")
    crossing = self_intersection(pts)
    if crossing is None:
        log.debug("%s: %d points; too many edge pairs to check for self-intersection", where, len(pts))
    elif crossing:
        warn(f"{where}: polygon is self-intersecting; filled with the even-odd rule", "self-intersecting polygon")
    return pts


def _orient(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    return (b[..., 0] - a[..., 0]) * (c[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (c[..., 0] - a[..., 0])


def is_self_intersecting(polygon: Polygon) -> bool:
    """True when two non-adjacent edges of the closed polygon cross properly (every pair checked)."""
    return bool(self_intersection(polygon, max_pairs=None))


def self_intersection(polygon: Polygon, max_pairs: int | None = MAX_INTERSECTION_PAIRS) -> bool | None:
    """Whether two non-adjacent edges cross properly; ``None`` if that needs more than ``max_pairs`` tests.

    A sweep along x: edges sorted by their left end, each tested only against the edges whose
    x-range overlaps its own (then y-ranges, then the orientation test), in chunks of 1M pairs.
    Ordinary polygons need O(n) tests; a zig-zag spanning the image needs O(n^2), hence the cap.
    """
    n = len(polygon)
    if n < 4:
        return False
    p = np.asarray(polygon, dtype=np.float64).reshape(n, 2)
    q = np.roll(p, -1, axis=0)
    lo, hi = np.minimum(p, q), np.maximum(p, q)
    order = np.argsort(lo[:, 0], kind="stable")
    ends = np.searchsorted(lo[order, 0], hi[order, 0], side="right")
    counts = np.maximum(ends - np.arange(1, n + 1), 0)
    if max_pairs is not None and counts.sum() > max_pairs:
        return None
    with np.errstate(over="ignore", invalid="ignore"):  # far-out points: inf/nan products never "cross"
        for first, last in _chunks(counts, 1 << 20):
            cnt = counts[first:last]
            rank = np.repeat(np.arange(first, last), cnt)
            offset = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
            e, f = order[rank], order[rank + 1 + offset]
            e, f = np.minimum(e, f), np.maximum(e, f)
            keep = (lo[e, 1] <= hi[f, 1]) & (hi[e, 1] >= lo[f, 1]) & (f - e >= 2) & ~((e == 0) & (f == n - 1))
            a, b, c, d = p[e[keep]], q[e[keep]], p[f[keep]], q[f[keep]]
            if ((_orient(c, d, a) * _orient(c, d, b) < 0) & (_orient(a, b, c) * _orient(a, b, d) < 0)).any():
                return True
    return False


def _chunks(counts: np.ndarray, size: int) -> list[tuple[int, int]]:
    """``[first, last)`` index ranges of ``counts`` whose sums stay near ``size`` (one row may exceed it)."""
    bounds = np.searchsorted(np.cumsum(counts), np.arange(size, int(counts.sum()) + size, size), side="left") + 1
    edges = np.unique(np.r_[0, np.minimum(bounds, len(counts))])
    return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


def polygon_area(polygon: Polygon) -> float:
    """Shoelace area in square pixels (absolute value)."""
    if len(polygon) < 3:
        return 0.0
    xy = np.asarray(polygon, dtype=np.float64)
    x, y = xy[:, 0], xy[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def clip_polygon(polygon: Polygon, x0: float, y0: float, x1: float, y1: float) -> Polygon:
    """The part of ``polygon`` inside the box ``[x0, x1] x [y0, y1]`` (Sutherland-Hodgman).

    Unlike :func:`clamp_polygon` the shape inside the box is kept exactly (also for concave and
    self-intersecting polygons under even-odd fill); the result may be empty.
    """
    pts = [(float(x), float(y)) for x, y in polygon]
    for axis, bound, upper in ((0, x0, False), (0, x1, True), (1, y0, False), (1, y1, True)):
        if not pts:
            break
        out: list[tuple[float, float]] = []
        prev = pts[-1]
        prev_in = prev[axis] <= bound if upper else prev[axis] >= bound
        for cur in pts:
            cur_in = cur[axis] <= bound if upper else cur[axis] >= bound
            if cur_in != prev_in:
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                other = prev[1 - axis] + t * (cur[1 - axis] - prev[1 - axis])
                out.append((bound, other) if axis == 0 else (other, bound))
            if cur_in:
                out.append(cur)
            prev, prev_in = cur, cur_in
        pts = out
    return pts


def _drawable(polygon: Polygon, height: int, width: int) -> list[float] | None:
    """The flat polygon as pycocotools may draw it: finite, inside the image's 3x3 neighbourhood
    ``[-width, 2 width] x [-height, 2 height]`` (clipped there, Sutherland-Hodgman), with a bounded
    boundary length.

    pycocotools itself discards what lies outside the image, so a polygon inside that
    neighbourhood (any real label) is passed unchanged and drawn exactly as before; only far-out
    points (which overflow pycocotools' ``int`` arithmetic) are clipped, which moves the
    boundary pixels of the clipped edges by at most pycocotools' own 1/5-pixel rounding.

    Returns ``None`` (warned) for a non-finite or empty polygon.

    Raises:
        PolygonError: a boundary longer than :data:`MAX_BOUNDARY_SAMPLES` samples.
    """
    xy = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    if len(xy) < 3:
        return None
    if not np.isfinite(xy).all():
        log.warning("polygon with non-finite coordinates not drawn")
        return None
    x0, y0, x1, y1 = -float(width), -float(height), 2.0 * width, 2.0 * height
    if (xy[:, 0] < x0).any() or (xy[:, 1] < y0).any() or (xy[:, 0] > x1).any() or (xy[:, 1] > y1).any():
        xy = np.asarray(clip_polygon(xy.tolist(), x0, y0, x1, y1), dtype=np.float64)
        if len(xy) < 3:
            return None
    step = np.abs(np.diff(np.vstack([xy, xy[:1]]) * 5.0, axis=0)).max(axis=1)
    samples = float(step.sum()) + len(xy)
    if samples > MAX_BOUNDARY_SAMPLES:
        raise PolygonError(f"polygon with {len(xy)} points has a boundary of {samples:.0f} samples at "
                           f"pycocotools' 5x resolution (limit {MAX_BOUNDARY_SAMPLES}); too long to draw")
    return xy.ravel().tolist()


def polygons_to_rle(polygons: Sequence[Polygon], height: int, width: int) -> dict[str, Any] | None:
    """Merged pycocotools RLE (``bytes`` counts) of the polygons on a ``height x width`` image, or
    ``None`` when none is drawable. Far-out points are clipped first (see :func:`_drawable`).

    Raises:
        PolygonError: a polygon whose boundary is too long to draw, or a bad image size.
    """
    if int(height) < 1 or int(width) < 1:
        raise PolygonError(f"image size {width}x{height} cannot hold a mask")
    flat = [f for f in (_drawable(p, int(height), int(width)) for p in polygons if len(p) >= 3) if f]
    if not flat:
        return None
    return mask_utils.merge(mask_utils.frPyObjects(flat, int(height), int(width)))


def rasterize_polygons(polygons: Sequence[Polygon], height: int, width: int) -> np.ndarray:
    """Fill polygons into a binary mask ``uint8 [height, width]`` (COCO's rasterisation rules).

    Points far outside the image are clipped first; non-finite polygons are left out (warned).
    """
    rle = polygons_to_rle(polygons, height, width)
    if rle is None:
        return np.zeros((height, width), dtype=np.uint8)
    return mask_utils.decode(rle).astype(np.uint8)


def instance_mask(inst: Instance, height: int, width: int) -> np.ndarray:
    """Binary mask ``uint8 [height, width]`` of an instance (its RLE if any, else its polygons).

    Raises:
        RLEError: an RLE that is malformed or not ``height x width``.
    """
    if inst.rle is not None:
        return decode_rle(check_rle(inst.rle, f"{inst.category!r} mask", height=height, width=width))
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
    """COCO RLE (compressed ``str``/``bytes`` counts or uncompressed ``list[int]``) -> ``uint8 [H, W]``.

    Raises:
        RLEError: a malformed RLE (see :func:`cardamage.data.rle.check_rle`).
    """
    return mask_utils.decode(pycoco_rle(rle)).astype(np.uint8)


def rle_area(rle: dict[str, Any]) -> float:
    """Foreground pixel count of a COCO RLE (checked, not decoded)."""
    return float(mask_utils.area(pycoco_rle(rle)))


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
        # the shoelace area of polygon_area, in C: most traced contours of a noisy mask are dropped here
        if len(contour) < 3 or cv2.contourArea(contour) < min_area:
            continue
        pts = list(map(tuple, contour.reshape(-1, 2).astype(np.float64).tolist()))
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
