"""One claim request: decode, quality gate, model, assessment, reuse check, pool, splash and settlement.

Photos are decoded to the working size (``serve.work_side`` px on the longer side, at most
``serve.max_side``, see :mod:`.uploads`); the quality gate, the probabilities, the regions and the
splash are computed on that grid, and only the answer's polygons, boxes and pixel areas are scaled
to the uploaded photo's own pixels.

A request goes through three steps: :meth:`ClaimService.decode` (a worker thread), the model
(:class:`~cardamage.service.batcher.MicroBatcher`: the photos of concurrent requests in one model
call), and :meth:`ClaimService.finish` (a worker thread: assessment, reuse check, pool, splash,
settlement). At most ``serve.batch.workers`` photos are decoded or post-processed at once, so the
CPU left over goes to the model. :meth:`ClaimService.assess_claim` runs the three in the calling
thread; the app awaits them (:meth:`ClaimService.assess_async`) and cancels a request whose client
went away.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import hashlib
import logging
import math
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from starlette.concurrency import run_in_threadpool

from cardamage.config import Params
from cardamage.model.inference import predict_probs, predict_with_embeddings
from cardamage.model.inputs import prepare_image, unfit
from cardamage.model.predict import assess
from cardamage.service.batcher import BatchOutput, MicroBatcher
from cardamage.service.models import ModelHolder, Models
from cardamage.service.quality import QualityVerdict, check_photo
from cardamage.service.reuse import check_reuse
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
        inst["polygons"] = [np.round(np.minimum(np.asarray(poly, np.float64) * (sx, sy), (width, height)), 1).tolist()
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


class ClientGone(Exception):
    """The client disconnected before its answer was ready (its photos were dropped from the queue)."""


@dataclass
class Prediction:
    """The model's output for one photo on its working grid.

    Attributes:
        probs: ``float32 [h, w, C]`` damage probabilities; part_probs: ``float32 [h, w, P]`` or ``None``;
        embedding: ``float32 [D]`` pooled backbone features (the reuse check's confirmation).
    """

    probs: np.ndarray
    part_probs: np.ndarray | None
    embedding: np.ndarray


def model_call(models: Models, photos: list[np.ndarray]) -> list[tuple[Any, ...]]:
    """The batcher's model call: each photo letterboxed to each model's input, one forward pass per model.

    Returns per photo ``(probs [S, S, C], fit, embedding [D], part_probs [S', S', P] | None, part_fit)``:
    network resolution; :func:`on_grid` undoes the letterbox in the request's own thread.
    """
    main = [prepare_image(p, models.main.info.input_size, models.main.info.resize) for p in photos]
    probs, embs = predict_with_embeddings(models.main.model, np.stack([a for a, _ in main]), batch_size=len(photos))
    parts: list[tuple[Any, Any]] = [(None, None)] * len(photos)
    if models.part is not None:
        prep = [prepare_image(p, models.part.info.input_size, models.part.info.resize) for p in photos]
        part_probs = predict_probs(models.part.model, np.stack([a for a, _ in prep]), batch_size=len(photos))
        parts = [(pp, fit) for pp, (_, fit) in zip(part_probs, prep)]
    return [(pr, fit, e, pp, pfit) for pr, (_, fit), e, (pp, pfit) in zip(probs, main, embs, parts)]


def on_grid(raw: tuple[Any, ...]) -> Prediction:
    """A :func:`model_call` result on the photo's working grid (letterbox undone)."""
    probs, fit, emb, part_probs, part_fit = raw
    return Prediction(unfit(probs, fit), unfit(part_probs, part_fit) if part_probs is not None else None,
                      np.asarray(emb, np.float32))


class ClaimService:
    """Assesses claims with the holder's current models and the project params.

    Args:
        params: the project params; holder: the served models;
        metrics: optional :class:`~cardamage.service.metrics.ServiceMetrics`;
        reuse: optional :class:`~cardamage.service.reuse.ReuseIndex` (``None``: no reuse check).
    """

    def __init__(self, params: Params, holder: ModelHolder, metrics: Any = None, reuse: Any = None):
        self.params, self.holder, self.metrics, self.reuse = params, holder, metrics, reuse
        self.incoming = IncomingStore(params.serve.incoming_dir)
        self.splashes = SplashStore(params.serve.splash_dir)
        b = params.serve.batch
        self.inflight = 0  #: requests admitted now (set by the app's Admission middleware)
        self.batcher = MicroBatcher(holder.current, model_call, b.max_batch, b.max_wait_ms, b.max_queue, metrics,
                                    inflight=lambda: self.inflight)
        self._cpu = threading.BoundedSemaphore(max(1, b.workers))

    @property
    def work_side(self) -> int:
        """Longer side of the working grid in px."""
        return min(self.params.serve.max_side, self.params.serve.work_side)

    def decode(self, uploads: Sequence[Upload]) -> tuple[list[Photo], list[QualityVerdict]]:
        """Decoded photos and their quality verdicts (raises :class:`~.uploads.UploadError` for bad uploads)."""
        serve = self.params.serve
        with self._cpu:
            photos = decode_all(uploads, serve.max_photos_per_request, serve.max_request_pixels, self.work_side)
            return photos, [check_photo(p.rgb, serve, self.params.drift.max_side, (p.width, p.height)) for p in photos]

    def submit(self, photos: Sequence[Photo], verdicts: Sequence[QualityVerdict]) -> Future | None:
        """Queue the photos that passed the gate (``None`` when none did); raises :class:`.Overloaded`."""
        ok = [p.rgb for p, v in zip(photos, verdicts) if v.ok]
        return self.batcher.submit(ok) if ok else None

    def assess_claim(self, uploads: Sequence[Upload], claim_id: str | None, request_id: str) -> dict[str, Any]:
        """The response of ``POST /v1/assess``, all in the calling thread (the batcher must be started)."""
        photos, verdicts = self.decode(uploads)
        future = self.submit(photos, verdicts)
        return self.finish(photos, verdicts, future.result() if future else None, claim_id, request_id)

    async def assess_async(self, uploads: Sequence[Upload], claim_id: str | None, request_id: str,
                           disconnected: Callable[[], Awaitable[Any]] | None = None) -> dict[str, Any]:
        """:meth:`assess_claim` off the event loop; raises :class:`ClientGone` when ``disconnected`` returns
        first (the photos still waiting are dropped from the queue)."""
        photos, verdicts = await run_in_threadpool(self.decode, uploads)
        future = self.submit(photos, verdicts)
        output = await _wait(future, disconnected, self.batcher) if future is not None else None
        return await run_in_threadpool(self.finish, photos, verdicts, output, claim_id, request_id)

    def finish(self, photos: Sequence[Photo], verdicts: Sequence[QualityVerdict], output: BatchOutput | None,
               claim_id: str | None, request_id: str) -> dict[str, Any]:
        """The answer from the decoded photos and the model's output for those that passed the gate."""
        models = output.models if output is not None else self.holder.current()
        raw = iter(output.results if output is not None else [])
        results = []
        for i, (photo, verdict) in enumerate(zip(photos, verdicts)):
            if not verdict.ok:
                results.append(self._refused(i, photo, verdict))
                continue
            with self._cpu:
                results.append(self._assessed(i, photo, verdict, models, on_grid(next(raw)), claim_id, request_id))
        damage = [PhotoDamage(r["filename"], r["assessed"], r.get("damaged_share", 0.0), r.get("instances", []),
                              r.get("reuse", [])) for r in results]
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

    def _assessed(self, i: int, photo: Photo, verdict: QualityVerdict, models: Models, pred: Prediction,
                  claim_id: str | None, request_id: str) -> dict[str, Any]:
        parts = models.part.info.classes if models.part else ()
        result, splash = assess(photo.rgb, pred.probs, models.main, self.params, pred.part_probs, parts)
        if pred.part_probs is not None:
            instance_parts(result["instances"], pred.part_probs, parts)
        to_photo_grid(result, photo.width, photo.height, *photo.scale)
        reuse = self._reuse(photo, pred, claim_id, models.main.info.model_version)
        sid = splash_id(photo.sha256, models.main.info.model_version)
        self.splashes.save(sid, encode_jpeg(splash))
        stored = self.incoming.save_photo(photo.data, photo.sha256, photo.suffix)
        self.incoming.save_prediction(photo.sha256, _record(photo, stored.path.name, verdict, result, sid,
                                                            claim_id, request_id, reuse))
        result.pop("model", None)  # the claim-level "model" says it once
        log.info("%s: %d region(s), %.1f%% damaged", photo.filename, result["instance_count"],
                 100 * result["damaged_share"])
        return {"index": i, "filename": photo.filename, "sha256": photo.sha256, "assessed": True,
                "quality": verdict.to_dict(), **result, "reuse": reuse, "splash_url": f"/v1/splash/{sid}.jpg"}

    def _reuse(self, photo: Photo, pred: Prediction, claim_id: str | None, version: str) -> list[dict[str, Any]]:
        """Earlier photos of other claims that this photo is (or nearly is); ``[]`` without a reuse index
        or when the check failed (logged: it must never fail the assessment)."""
        return check_reuse(self.reuse, photo.rgb, photo.sha256, claim_id, photo.filename, pred.embedding,
                           version) or []


async def _wait(future: Future, disconnected: Callable[[], Awaitable[Any]] | None,
                batcher: MicroBatcher) -> BatchOutput:
    """The batcher's output, or :class:`ClientGone` (and the job cancelled) when the client goes first."""
    result = asyncio.wrap_future(future)
    if disconnected is None:
        return await result
    watch = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({result, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if result in done:
        return result.result()
    batcher.cancel(future)  # still queued: dropped; already running: its answer is thrown away
    result.cancel()
    raise ClientGone("the client disconnected while its photos waited for the model")


def _record(photo: Photo, stored_name: str, verdict: QualityVerdict, result: dict[str, Any], sid: str,
            claim_id: str | None, request_id: str, reuse: list[dict[str, Any]]) -> dict[str, Any]:
    """The prediction JSON stored beside a pool photo."""
    return {"image": stored_name, "sha256": photo.sha256, "filename": photo.filename, "claim_id": claim_id,
            "request_id": request_id, "received": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "quality": verdict.to_dict(), "splash_id": sid, **result, "reuse": reuse}

