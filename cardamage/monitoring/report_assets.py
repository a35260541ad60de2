"""What the report page draws itself, into ``report.assets_dir``: thumbnails and the history plots.

* :func:`thumbnail`: a JPEG of at most ``px`` pixels on the longer side (EXIF orientation applied),
  so the page shows the photos to label and the drifted photos without linking outside ``reports/``;
* :func:`plot_history`: test damage IoU (with its interval) of every evaluated model, in order,
  promoted models filled, refused ones hollow, and the production model's figure as a step line;
* :func:`plot_photos`: labelled photos (train + val) by source at each evaluation;
* :func:`drift_movers`: the current photos whose features are furthest from the training photos.

A plot that would show nothing (fewer than two evaluations) is not drawn; the caller says why.
Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from cardamage.fileio import atomic_path, write_bytes

log = logging.getLogger(__name__)

#: Fewest evaluations a history plot needs.
MIN_POINTS = 2


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    plt = _pyplot()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def thumbnail(src: str | os.PathLike, out: Path, px: int = 200) -> Path | None:
    """A JPEG thumbnail of the photo ``src`` at ``out`` (longer side ``px``); ``None`` if unreadable."""
    from PIL import Image

    from cardamage.data.images import ImageLoadError, load_image

    try:
        image = Image.fromarray(load_image(src, max_side=px * 2))
    except (ImageLoadError, OSError, ValueError) as exc:
        log.warning("report: no thumbnail of %s (%s)", src, exc)
        return None
    image.thumbnail((px, px))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return write_bytes(out, buf.getvalue())


def _metric(entry: dict[str, Any], key: str = "damage_iou") -> tuple[float, list[float] | None]:
    fig = ((entry.get("metrics") or {}).get(key)) or {}
    value = fig.get("value")
    return (float(value) if isinstance(value, (int, float)) else math.nan), fig.get("ci")


def _labels(entries: list[dict[str, Any]]) -> list[str]:
    return [f"{str(e.get('time', ''))[:10]}\n{str(e.get('model_version', '?'))[-6:]}" for e in entries]


def plot_history(entries: list[dict[str, Any]], out: Path) -> Path | None:
    """Test damage IoU per evaluation (see the module docstring); ``None`` with fewer than :data:`MIN_POINTS`."""
    points = [e for e in entries if not math.isnan(_metric(e)[0])]
    if len(points) < MIN_POINTS:
        return None
    plt = _pyplot()
    x = np.arange(len(points))
    values = np.array([_metric(e)[0] for e in points])
    cis = [_metric(e)[1] or [v, v] for e, v in zip(points, values)]
    err = np.array([[v - c[0] for v, c in zip(values, cis)], [c[1] - v for v, c in zip(values, cis)]])
    promoted = np.array([bool(e.get("promoted")) for e in points])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(points)), 3.6))
    ax.errorbar(x, values, yerr=np.maximum(err, 0), fmt="none", ecolor="#8a94a6", capsize=3)
    ax.plot(x[promoted], values[promoted], "o", color="#1a7f37", label="promoted")
    ax.plot(x[~promoted], values[~promoted], "o", mfc="white", color="#c0362c", label="not promoted")
    prod, line = math.nan, []
    for e, v in zip(points, values):
        prod = v if e.get("promoted") else prod
        line.append(prod)
    ax.step(x, line, where="post", color="#1a7f37", alpha=0.5, label="in production")
    ax.set_xticks(x, _labels(points), fontsize=7)
    ax.set(ylabel="test damage IoU", ylim=(0, max(1e-3, float(np.nanmax([c[1] for c in cis]))) * 1.15),
           title="test damage IoU of each evaluated model (bars: interval)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out)


def labelled_by_source(entry: dict[str, Any]) -> dict[str, int]:
    """Labelled photos used for training (train + val splits) by source, from a history entry."""
    out: dict[str, int] = {}
    for split, by_source in (entry.get("photos") or {}).items():
        if split != "test" and isinstance(by_source, dict):
            for source, n in by_source.items():
                out[source] = out.get(source, 0) + int(n)
    return out


def plot_photos(entries: list[dict[str, Any]], out: Path) -> Path | None:
    """Stacked bars of labelled photos by source per evaluation; ``None`` with fewer than :data:`MIN_POINTS`."""
    points = [e for e in entries if labelled_by_source(e)]
    if len(points) < MIN_POINTS:
        return None
    plt = _pyplot()
    counts = [labelled_by_source(e) for e in points]
    sources = sorted({s for c in counts for s in c})
    x = np.arange(len(points))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(points)), 3.2))
    bottom = np.zeros(len(points))
    for source in sources:
        heights = np.array([c.get(source, 0) for c in counts], float)
        ax.bar(x, heights, bottom=bottom, label=source)
        bottom += heights
    ax.set_xticks(x, _labels(points), fontsize=7)
    ax.set(ylabel="labelled photos", title="labelled photos (train + val) by source at each evaluation")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, out)


def read_rows(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a CSV file; ``[]`` when missing or unreadable (with a warning)."""
    p = Path(path)
    if not p.is_file():
        return []
    try:
        with open(p, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        log.warning("%s: unreadable (%s); left out of the report", p, exc)
        return []


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def drift_movers(rows: list[dict[str, str]], features: list[str], k: int) -> list[dict[str, Any]]:
    """The ``k`` current photos furthest from the reference photos.

    Distance of a photo on a feature: ``|x - median| / scale`` of the reference side (scale: the
    interquartile range / 1.349, else the standard deviation); a photo's distance is its largest over
    ``features`` (the drifted ones; every numeric feature when none drifted).

    Returns:
        ``{"path", "feature", "value", "reference", "distance"}`` per photo, furthest first.
    """
    ref = [r for r in rows if r.get("side") == "reference"]
    cur = [r for r in rows if r.get("side") == "current"]
    if not ref or not cur or k < 1:
        return []
    stats = {}
    for name in features:
        values = np.array([_number(r.get(name)) for r in ref])
        values = values[np.isfinite(values)]
        if len(values) < 2:
            continue
        q1, med, q3 = np.percentile(values, [25, 50, 75])
        scale = (q3 - q1) / 1.349 or float(values.std())
        if scale > 0:
            stats[name] = (float(med), float(scale))
    movers = []
    for row in cur:
        best = max(((abs(_number(row.get(n)) - m) / s, n) for n, (m, s) in stats.items()
                    if math.isfinite(_number(row.get(n)))), default=None)
        if best:
            movers.append({"path": row.get("path", ""), "feature": best[1], "value": _number(row.get(best[1])),
                           "reference": stats[best[1]][0], "distance": float(best[0])})
    return sorted(movers, key=lambda m: (-m["distance"], m["path"]))[:k]
