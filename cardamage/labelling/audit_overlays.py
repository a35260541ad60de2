"""Pictures of the audit's doubtful labels for the report page: the photo with the label's outline
(green) over the model's damage (red tint), one JPEG per photo in ``<audit.csv without suffix>/``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cardamage.data.annotations import Instance

log = logging.getLogger(__name__)


def overlay(image: np.ndarray, damage: np.ndarray, instances: Sequence[Instance], width: int,
            height: int) -> np.ndarray:
    """``uint8 [h, w, 3]``: ``image`` with ``damage`` (``bool [h, w]``) tinted red and the polygons (pixels of
    a ``width x height`` photo) outlined in green."""
    import cv2

    out = image.copy()
    out[damage] = (0.5 * out[damage] + 0.5 * np.array([230, 40, 40])).astype(np.uint8)
    h, w = image.shape[:2]
    sx, sy = w / max(width, 1), h / max(height, 1)
    for inst in instances:
        for poly in inst.polygons:
            pts = np.round(np.array([[x * sx, y * sy] for x, y in poly], np.float64)).astype(np.int32)
            if len(pts) >= 2:
                cv2.polylines(out, [pts], True, (40, 220, 60), max(1, w // 200), cv2.LINE_AA)
    return out


def write_overlays(items: Sequence[Any], loaded: Any, threshold: float, folder: Path, px: int = 320) -> dict[str, str]:
    """One overlay per :class:`~cardamage.labelling.audit.AuditItem` (photos that do not load are left out);
    ``{sha256: file}``. Old pictures in ``folder`` are removed first."""
    import cv2

    from cardamage.data.images import ImageLoadError, load_image
    from cardamage.fileio import write_bytes
    from cardamage.model.predict import damage_labels, full_res_probs

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.jpg"):
        old.unlink(missing_ok=True)
    out = {}
    for item in items:
        try:
            image = load_image(item.image, max_side=px)
        except ImageLoadError as exc:
            log.warning("no audit picture: %s", exc)
            continue
        damage = damage_labels(full_res_probs(loaded, [image])[0], threshold) != 0
        ok, jpeg = cv2.imencode(".jpg", overlay(image, damage, item.instances, item.width, item.height)[..., ::-1])
        if ok:
            path = folder / f"{item.sha256[:16]}.jpg"
            write_bytes(path, jpeg.tobytes())
            out[item.sha256] = path.as_posix()
    return out
