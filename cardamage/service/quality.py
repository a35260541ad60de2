"""Photo quality gate of the claim service: is this a usable photo of a car, before the model sees it?

The measures are :mod:`cardamage.monitoring.features`' own (brightness, contrast, sharpness on the photo
downsized to ``drift.max_side`` pixels, width and height of the original from its header), so a
photo refused here is refused for the same reason the drift report would flag it. The service
decodes photos to ``serve.max_side`` px, never below ``drift.max_side``, so the measures match.
Two colour measures tell a camera photo from a screenshot or a drawing: the number of distinct RGB
colours (a photo has thousands, sensor noise alone gives them) and the share of pixels in the 16
commonest colours (flat UI areas).

Calibration (the 8 + 78 sample photos and 150 bilgi-car-damage photos, at 512 px): brightness
42-194, contrast >= 22, sharpness >= 19, >= 3,894 colours, 16-colour share <= 0.58; a Gaussian blur
of sigma 3 px on the 1024 px originals brings the sharpness to 5-35 (median 13 / 5); a rendered
form (text on a flat background) has about 150 colours and a 16-colour share of 0.95.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

from cardamage.config import ServeParams
from cardamage.monitoring.features import downsize, grey_stats

log = logging.getLogger(__name__)

#: What to tell the customer for each problem code.
ADVICE = {
    "too_small": "The picture is only {width}x{height} pixels: send the original photo from the camera "
                 "(at least {min_side_px} pixels on the shorter side), not a thumbnail.",
    "not_a_photo_uniform": "The picture is almost uniform, no car can be seen: take a photo of the damaged "
                           "part of the car.",
    "not_a_photo_screenshot": "This looks like a screenshot or a drawing, not a camera photo: upload the "
                              "original photo of the damage.",
    "too_dark": "The photo is too dark: retake it in daylight or with the damaged area well lit.",
    "too_bright": "The photo is overexposed: retake it out of direct sunlight and without flash glare "
                  "on the damage.",
    "too_blurred": "The photo is blurred: hold the phone still, tap the damage to focus and retake it.",
}


@dataclass
class QualityVerdict:
    """Outcome of the gate: ``ok`` and, when not, one problem per failed check (code, message, value, limit)."""

    ok: bool
    problems: list[dict[str, Any]] = field(default_factory=list)
    measures: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (measures rounded to 3 decimals)."""
        out = asdict(self)
        out["measures"] = {k: round(float(v), 3) for k, v in self.measures.items()}
        return out


def colour_measures(rgb: np.ndarray, top: int = 16) -> dict[str, float]:
    """Distinct colours and the pixel share of the ``top`` commonest colours of ``uint8 [H, W, 3]``.

    Each pixel becomes one ``uint32`` key (its RGBA bytes, by ``cv2.cvtColor``), the keys are sorted
    (numpy's SIMD sort, which releases the GIL) and the runs of equal keys counted: 1.6 ms for
    512 x 512 px. Hash counting (pandas ``value_counts``, 2.9 ms) holds the GIL the whole time and
    serialised the service's worker threads; ``np.unique`` takes 9 ms.
    """
    if rgb.size == 0:
        return {"colours": 0.0, "flat_share": 0.0}
    keys = np.sort(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2RGBA).view(np.uint32).ravel())
    bounds = np.concatenate(([0], np.flatnonzero(keys[1:] != keys[:-1]) + 1, [keys.size]))
    counts = np.diff(bounds)
    distinct = counts.size
    if distinct > top:
        counts = np.partition(counts, distinct - top)[-top:]
    return {"colours": float(distinct), "flat_share": float(counts.sum() / keys.size)}


def measure(rgb: np.ndarray, max_side: int = 512, size: tuple[int, int] | None = None) -> dict[str, float]:
    """Quality measures of an RGB photo ``uint8 [h, w, 3]``: width/height of the original (px), and
    brightness, contrast (0-255), sharpness (grey levels squared), colours, flat_share on the photo
    downsized to ``max_side`` px (as :func:`cardamage.monitoring.features.photo_features` does).

    Args:
        size: ``(width, height)`` of the original photo in px when ``rgb`` was decoded smaller (the
            service's working size, at least ``max_side``); ``None``: ``rgb`` is the original.
    """
    small = downsize(rgb, max_side)
    width, height = size if size is not None else (rgb.shape[1], rgb.shape[0])
    out = {"width": float(width), "height": float(height)}
    out.update(grey_stats(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)))  # what pixel_stats gives, without edges/HSV
    out.update(colour_measures(small))
    return out


def _problem(code: str, value: float, limit: float, **fmt: Any) -> dict[str, Any]:
    return {"code": code, "message": ADVICE[code].format(**fmt), "value": round(float(value), 3),
            "limit": float(limit)}


def judge(m: dict[str, float], p: ServeParams) -> list[dict[str, Any]]:
    """Problems of measures ``m`` (from :func:`measure`) against the thresholds of ``p``: the first failed
    check only, in this order: size, exposure, uniform, screenshot, focus. A dark or overexposed photo
    also has little contrast, few colours and no sharp edges, so the later checks would only add noise."""
    short = min(m["width"], m["height"])
    if short < p.min_side_px:
        return [_problem("too_small", short, p.min_side_px, width=int(m["width"]), height=int(m["height"]),
                         min_side_px=p.min_side_px)]
    checks = [
        ("too_dark", m["brightness"], p.min_brightness, m["brightness"] < p.min_brightness),
        ("too_bright", m["brightness"], p.max_brightness, m["brightness"] > p.max_brightness),
        ("not_a_photo_uniform", m["contrast"], p.min_contrast, m["contrast"] < p.min_contrast),
        ("not_a_photo_screenshot", m["colours"], p.min_colours, m["colours"] < p.min_colours),
        ("not_a_photo_screenshot", m["flat_share"], p.max_flat_share, m["flat_share"] > p.max_flat_share),
        ("too_blurred", m["sharpness"], p.min_sharpness, m["sharpness"] < p.min_sharpness),
    ]
    return next(([_problem(code, value, limit)] for code, value, limit, failed in checks if failed), [])


def check_photo(rgb: np.ndarray, p: ServeParams, max_side: int = 512,
                size: tuple[int, int] | None = None) -> QualityVerdict:
    """The gate for one decoded photo ``uint8 [h, w, 3]`` RGB; ``size``: the original ``(width, height)`` in px
    when ``rgb`` is a reduced decode (see :func:`measure`)."""
    m = measure(rgb, max_side, size)
    problems = judge(m, p)
    return QualityVerdict(ok=not problems, problems=problems, measures=m)
