"""One claim request: decode, quality gate, model, assessment, pool, splash and settlement.

Photos are decoded to the working size (``serve.max_side`` px on the longer side, see :mod:`.uploads`);
the model, the assessment and the splash run on that grid, and the answer's coordinates and pixel
areas are scaled back to the uploaded photo's own pixels.

Photos that fail the quality gate are not assessed; the others are predicted in one batch (one
model call per request, under a lock: the 2-core CPU is better used by one TensorFlow call at a
time than by several fighting for it), assessed with :func:`cardamage.model.predict.assess`, stored in
the incoming pool with their prediction, and their splash is written for ``/v1/splash/<id>.jpg``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import math
import threading
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from cardamage.config import Params
from cardamage.model.predict import assess, full_res_probs
from cardamage.service.models import ModelHolder, Models
from cardamage.service.quality import QualityVerdict, check_photo
from cardamage.service.settlement import PhotoDamage, propose
from cardamage.service.store import IncomingStore, SplashStore
from cardamage.service.uploads import Photo, Upload, decode_all

log = logging.getLogger(__name__)

JPEG_QUALITY = 85


def instance_parts(instances: Sequence[dict[str, Any]], part_probs: np.ndarray, parts: Sequence[str]) -> None:
    """Set ``inst["part"]`` to the car part covering most of each region's polygons (``None`` on no part).

    ``part_probs``: ``float32 [H, W, P]`` on the photo grid, channel 0 background.
    """
    part_labels = part_probs.argmax(-1)
    for inst in instances:
        mask = np.zeros(part_labels.shape, np.uint8)
        polys = [np.round(np.asarray(p)).astype(np.int32).reshape(-1, 1, 2) for p in inst["polygons"] if len(p)]
        if polys:
            cv2.fillPoly(mask, polys, 1)
        counts = np.bincount(part_labels[mask > 0].ravel(), minlength=len(parts) + 1)[1:]
        inst["part"] = parts[int(counts.argmax())] if counts.size and counts.max() > 0 else None


def splash_id(sha256: str, model_version: str) -> str:
    """Stable id of a photo's splash under one model version (32 hex characters)."""
    return hashlib.sha256(f"{sha256}:{model_version}".encode()).hexdigest()[:32]


def to_photo_grid(result: dict[str, Any], width: int, height: int, sx: float, sy: float) -> None:
    """Scale an assessment made on the working grid to the uploaded photo's grid (``width x height`` px), in place.

    ``sx, sy``: photo px per working px. Polygons and boxes are scaled, pixel areas multiplied by
    ``sx * sy``; shares and scores do not change.
    """
    result["width"], result["height"] = int(width), int(height)
    if sx == 1.0 and sy == 1.0:
        return
    for inst in result.get("instances", []):
        inst["area_px"] = int(round(inst["area_px"] * sx * sy))
        x, y, w, h = inst["bbox"]
        x0, y0 = math.floor(x * sx), math.floor(y * sy)
        x1, y1 = min(int(width), math.ceil((x + w) * sx)), min(int(height), math.ceil((y + h) * sy))
        inst["bbox"] = [x0, y0, x1 - x0, y1 - y0]
        inst["polygons"] = [[[round(min(px * sx, width), 1), round(min(py * sy, height), 1)] for px, py in poly]
                            for poly in inst["polygons"]]
    for part in result.get("parts", []):
        part["visible_px"] = int(round(part["visible_px"] * sx * sy))
        part["damaged_px"] = int(round(part["damaged_px"] * sx * sy))


def encode_jpeg(rgb: np.ndarray) -> bytes:
    """JPEG bytes of an RGB ``uint8 [H, W, 3]`` picture."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise OSError("could not encode the splash as JPEG")
    return buf.tobytes()


class ClaimService:
    """Assesses claims with the holder's current models and the project params."""

    def __init__(self, params: Params, holder: ModelHolder):
        self.params, self.holder = params, holder
        self.incoming = IncomingStore(params.serve.incoming_dir)
        self.splashes = SplashStore(params.serve.splash_dir)
        self._infer_lock = threading.Lock()

    def predict(self, models: Models, images: list[np.ndarray]) -> tuple[list[np.ndarray], list[Any]]:
        """Damage (and part) probabilities ``float32 [h, w, C]`` on each image's own grid, one model call at a time."""
        if not images:
            return [], []
        with self._infer_lock:
            probs = full_res_probs(models.main, images)
            parts = full_res_probs(models.part, images) if models.part else [None] * len(images)
        return probs, parts

    def assess_claim(self, uploads: Sequence[Upload], claim_id: str | None, request_id: str) -> dict[str, Any]:
        """The response of ``POST /v1/assess`` (raises :class:`~.uploads.UploadError` for bad uploads)."""
        serve = self.params.serve
        photos = decode_all(uploads, serve.max_photos_per_request, serve.max_request_pixels, serve.max_side)
        verdicts = [check_photo(p.rgb, serve, self.params.drift.max_side, (p.width, p.height)) for p in photos]
        models = self.holder.current()
        ok = [i for i, v in enumerate(verdicts) if v.ok]
        probs, part_probs = self.predict(models, [photos[i].rgb for i in ok])
        results: list[dict[str, Any]] = [self._refused(i, p, v) for i, (p, v) in enumerate(zip(photos, verdicts))]
        for i, pr, pp in zip(ok, probs, part_probs):
            results[i] = self._assessed(i, photos[i], verdicts[i], models, pr, pp, claim_id, request_id)
        damage = [PhotoDamage(r["filename"], r["assessed"], r.get("damaged_share", 0.0), r.get("instances", []))
                  for r in results]
        main = models.main.info
        return {"request_id": request_id, "claim_id": claim_id,
                "model": {"version": main.model_version, "classes": list(main.classes)},
                "part_model": ({"version": models.part.info.model_version, "classes": list(models.part.info.classes)}
                               if models.part else None),
                "photos": results, "settlement": propose(damage, self.params.settlement)}

    @staticmethod
    def _refused(i: int, photo: Photo, verdict: QualityVerdict) -> dict[str, Any]:
        return {"index": i, "filename": photo.filename, "sha256": photo.sha256, "assessed": False,
                "width": photo.width, "height": photo.height, "quality": verdict.to_dict()}

    def _assessed(self, i: int, photo: Photo, verdict: QualityVerdict, models: Models, probs: np.ndarray,
                  part_probs: np.ndarray | None, claim_id: str | None, request_id: str) -> dict[str, Any]:
        parts = models.part.info.classes if models.part else ()
        result, splash = assess(photo.rgb, probs, models.main, self.params, part_probs, parts)
        if part_probs is not None:
            instance_parts(result["instances"], part_probs, parts)
        to_photo_grid(result, photo.width, photo.height, *photo.scale)
        sid = splash_id(photo.sha256, models.main.info.model_version)
        self.splashes.save(sid, encode_jpeg(splash))
        stored = self.incoming.save_photo(photo.data, photo.sha256, photo.suffix)
        self.incoming.save_prediction(photo.sha256, _record(photo, stored.path.name, verdict, result, sid,
                                                            claim_id, request_id))
        result.pop("model", None)  # the claim-level "model" says it once
        log.info("%s: %d region(s), %.1f%% damaged", photo.filename, result["instance_count"],
                 100 * result["damaged_share"])
        return {"index": i, "filename": photo.filename, "sha256": photo.sha256, "assessed": True,
                "quality": verdict.to_dict(), **result, "splash_url": f"/v1/splash/{sid}.jpg"}


def _record(photo: Photo, stored_name: str, verdict: QualityVerdict, result: dict[str, Any], sid: str,
            claim_id: str | None, request_id: str) -> dict[str, Any]:
    """The prediction JSON stored beside a pool photo."""
    return {"image": stored_name, "sha256": photo.sha256, "filename": photo.filename, "claim_id": claim_id,
            "request_id": request_id, "received": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "quality": verdict.to_dict(), "splash_id": sid, **result}

