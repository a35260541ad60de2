"""VIA ``shape_attributes`` to polygon points in pixels.

``polygon`` and ``polyline`` (read as closed) keep their points, ``rect`` becomes 4 points,
``circle``/``ellipse`` an :data:`ELLIPSE_POINTS`-point approximation (logged); ``point`` and
unknown shapes are skipped with a warning. A missing or non-numeric field is warned about by name.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from cardamage.data.annotations import Polygon
from cardamage.data.formats import Issues, as_number, describe

log = logging.getLogger("cardamage.data.formats.via")

ELLIPSE_POINTS = 32


def _ellipse(cx: float, cy: float, rx: float, ry: float, theta: float = 0.0) -> Polygon:
    """Polygon approximation (pixels) of an ellipse rotated by ``theta`` radians."""
    ct, st = math.cos(theta), math.sin(theta)
    points = []
    for k in range(ELLIPSE_POINTS):
        t = 2 * math.pi * k / ELLIPSE_POINTS
        x, y = rx * math.cos(t), ry * math.sin(t)
        points.append((cx + x * ct - y * st, cy + x * st + y * ct))
    return points


class _ShapeError(ValueError):
    """A shape field that is missing or not a number (the message names the field)."""


def _number(shape: dict[str, Any], key: str) -> float:
    if key not in shape:
        raise _ShapeError(f"no {key!r}")
    value = as_number(shape[key])
    if value is None:
        raise _ShapeError(f"{key!r} is {describe(shape[key])}, not a finite number")
    return value


def _numbers(shape: dict[str, Any], key: str) -> list[float]:
    values = shape.get(key)
    if not isinstance(values, list):
        raise _ShapeError(f"{key!r} is {describe(values)}, not a list of numbers")
    out = []
    for value in values:
        number = as_number(value)
        if number is None:
            raise _ShapeError(f"{key!r} holds {describe(value)}, not a finite number")
        out.append(number)
    return out


def shape_to_points(shape: dict[str, Any], where: str, issues: Issues) -> list[tuple[float, float]] | None:
    """VIA ``shape_attributes`` -> polygon points in pixels, or ``None`` (warned, naming the field) when unusable."""
    kind = str(shape.get("name", "")).lower()
    try:
        if kind in ("polygon", "polyline"):
            xs, ys = _numbers(shape, "all_points_x"), _numbers(shape, "all_points_y")
            if len(xs) != len(ys):
                issues.warn(f"{where}: {len(xs)} x but {len(ys)} y coordinates; region skipped", kind="bad shape")
                return None
            if kind == "polyline":
                log.info("%s: %s: polyline read as a closed polygon", issues.source, where)
            return list(zip(xs, ys))
        if kind == "rect":
            x, y, w, h = (_number(shape, k) for k in ("x", "y", "width", "height"))
            return [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
        if kind in ("circle", "ellipse"):
            rx = _number(shape, "r" if kind == "circle" else "rx")
            ry = _number(shape, "r" if kind == "circle" else "ry")
            theta = _number(shape, "theta") if shape.get("theta") not in (None, "") else 0.0
            log.info("%s: %s: %s approximated by a %d-point polygon", issues.source, where, kind, ELLIPSE_POINTS)
            return _ellipse(_number(shape, "cx"), _number(shape, "cy"), rx, ry, theta)
    except _ShapeError as exc:
        issues.warn(f"{where}: {kind} shape: {exc}; region skipped", kind="bad shape")
        return None
    issues.warn(f"{where}: shape {describe(shape.get('name', shape))} is not supported; region skipped",
                kind="unsupported shape")
    return None
