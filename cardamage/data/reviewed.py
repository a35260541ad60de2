"""The reviewed area of a photo: which pixels an annotator actually looked at.

A photo labelled as a whole has ``ImageRecord.reviewed = None``: every pixel is labelled (damage
or background). A photo labelled through region tasks has a list of boxes ``(x, y, width, height)``
in the photo's pixels; only pixels inside one of them are labelled, the rest are unknown and
training ignores them (:data:`IGNORE_INDEX` in the class mask). A photo whose boxes cover every
pixel is an ordinary labelled photo again (:func:`normalize`).

Formats carry the boxes as ``reviewed_boxes``: a JSON string in VIA ``file_attributes`` (VIA keeps
attribute values as text) and a list of ``[x, y, width, height]`` in a COCO image entry.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Label of "no label here" in class masks: letterbox padding and unreviewed pixels.
#: ``cardamage.model.losses.IGNORE_INDEX`` is this value.
IGNORE_INDEX = 255
#: Attribute / field name of the boxes in VIA ``file_attributes`` and COCO image entries.
FIELD = "reviewed_boxes"
#: At most this many boxes per photo (a file cannot make a record hold millions).
MAX_BOXES = 4096

Box = tuple[float, float, float, float]
Polygon = list[tuple[float, float]]


def parse_boxes(value: Any, where: str) -> list[Box]:
    """``[[x, y, w, h], ...]`` (or its JSON text) -> boxes; ``ValueError`` naming ``where`` and the reason.

    Every number must be finite, width and height positive, ``x, y >= 0``; at most :data:`MAX_BOXES`.
    """
    if isinstance(value, str):
        if len(value) > MAX_BOXES * 100:
            raise ValueError(f"{where}: {FIELD!r} text is {len(value)} characters, more than {MAX_BOXES} boxes")
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: {FIELD!r} is not JSON ({err.msg})") from None
    if not isinstance(value, list):
        raise ValueError(f"{where}: {FIELD!r} is {type(value).__name__}, not a list of [x, y, width, height]")
    if len(value) > MAX_BOXES:
        raise ValueError(f"{where}: {FIELD!r} holds {len(value)} boxes, more than {MAX_BOXES}")
    return [_box(item, f"{where}: {FIELD!r} box {i}") for i, item in enumerate(value)]


def _box(item: Any, where: str) -> Box:
    ok = isinstance(item, (list, tuple)) and len(item) == 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in item)
    if not ok:
        raise ValueError(f"{where}: {item!r:.80} is not four finite numbers [x, y, width, height]")
    x, y, w, h = (float(v) for v in item)
    if w <= 0 or h <= 0 or x < 0 or y < 0:
        raise ValueError(f"{where}: [{x:g}, {y:g}, {w:g}, {h:g}] needs x, y >= 0 and width, height > 0")
    return x, y, w, h


def boxes_json(boxes: Sequence[Box]) -> str:
    """The VIA attribute text of ``boxes``: compact JSON, numbers rounded to 0.01 px."""
    return json.dumps([[round(v, 2) for v in box] for box in boxes], separators=(",", ":"))


def reviewed_mask(boxes: Sequence[Box] | None, height: int, width: int,
                  sx: float = 1.0, sy: float = 1.0) -> np.ndarray:
    """``bool [height, width]``: True where a pixel lies in a reviewed box (all True for ``None``).

    ``sx``, ``sy`` scale the boxes from photo pixels to the mask's pixels (a resized mask). A pixel
    counts when its centre lies inside a box.
    """
    if boxes is None:
        return np.ones((height, width), dtype=bool)
    out = np.zeros((height, width), dtype=bool)
    for x, y, w, h in boxes:
        x0, x1 = _span(x * sx, (x + w) * sx, width)
        y0, y1 = _span(y * sy, (y + h) * sy, height)
        out[y0:y1, x0:x1] = True
    return out


def _span(lo: float, hi: float, size: int) -> tuple[int, int]:
    """Pixel indices ``[a, b)`` whose centres ``i + 0.5`` lie in ``[lo, hi)``, clipped to ``[0, size]``."""
    a = min(max(math.ceil(lo - 0.5), 0), size)
    b = min(max(math.ceil(hi - 0.5), 0), size)
    return a, max(a, b)


def mask_unreviewed(mask: np.ndarray, boxes: Sequence[Box] | None, sx: float = 1.0, sy: float = 1.0) -> np.ndarray:
    """``mask`` (``uint8 [H, W]`` class indices) with unreviewed pixels set to :data:`IGNORE_INDEX`, in place."""
    if boxes is not None:
        mask[~reviewed_mask(boxes, mask.shape[0], mask.shape[1], sx, sy)] = IGNORE_INDEX
    return mask


def reviewed_share(boxes: Sequence[Box] | None, height: int, width: int) -> float:
    """Share of the photo's pixels inside the reviewed area, in [0, 1] (1.0 for ``None``).

    Overlapping boxes count once. Computed on a grid of at most 512 px a side (memory stays bounded
    whatever size a file claims), so the share is exact to about 0.4 %.
    """
    if boxes is None:
        return 1.0
    return float(_grid_mask(boxes, height, width, 512).mean())


def merge(a: Sequence[Box] | None, b: Sequence[Box] | None) -> list[Box] | None:
    """The union of two reviewed areas: ``None`` (the whole photo) if either is; boxes kept once."""
    if a is None or b is None:
        return None
    return list(dict.fromkeys([*a, *b]))


def normalize(boxes: Sequence[Box] | None, height: int | None, width: int | None) -> list[Box] | None:
    """``None`` when the boxes cover every pixel of a ``height x width`` photo, else the boxes.

    Checked on a grid of at most 2048 px a side (bounded memory); an unknown size keeps the boxes.
    """
    if boxes is None:
        return None
    if not height or not width:
        return list(boxes)
    return None if _grid_mask(boxes, height, width, 2048).all() else list(boxes)


def _grid_mask(boxes: Sequence[Box], height: int, width: int, side: int) -> np.ndarray:
    """:func:`reviewed_mask` of a ``height x width`` photo on a grid of at most ``side`` px a side."""
    scale = min(1.0, side / max(height, width, 1))
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    return reviewed_mask(boxes, h, w, w / width, h / height)


def clip_polygon(polygon: Polygon, box: Box) -> Polygon:
    """The part of ``polygon`` inside the axis-aligned ``box`` (Sutherland-Hodgman), ``[]`` if none.

    The clip window is convex, so the result is one polygon (for a concave polygon it may run
    along the box edge between two of its parts, which rasterises the same as the true pieces).
    """
    x0, y0, w, h = box
    x1, y1 = x0 + w, y0 + h
    points = list(polygon)
    for inside, cut in ((lambda p: p[0] >= x0, lambda p, q: _at_x(p, q, x0)),
                        (lambda p: p[0] <= x1, lambda p, q: _at_x(p, q, x1)),
                        (lambda p: p[1] >= y0, lambda p, q: _at_y(p, q, y0)),
                        (lambda p: p[1] <= y1, lambda p, q: _at_y(p, q, y1))):
        points = _clip_edge(points, inside, cut)
        if not points:
            return []
    return points if len(points) >= 3 else []


def _clip_edge(points: Polygon, inside, cut) -> Polygon:
    out: Polygon = []
    for i, cur in enumerate(points):
        prev = points[i - 1]
        if inside(cur):
            if not inside(prev):
                out.append(cut(prev, cur))
            out.append(cur)
        elif inside(prev):
            out.append(cut(prev, cur))
    return out


def _at_x(p: tuple[float, float], q: tuple[float, float], x: float) -> tuple[float, float]:
    t = (x - p[0]) / (q[0] - p[0])
    return x, p[1] + t * (q[1] - p[1])


def _at_y(p: tuple[float, float], q: tuple[float, float], y: float) -> tuple[float, float]:
    t = (y - p[1]) / (q[1] - p[1])
    return p[0] + t * (q[0] - p[0]), y
