"""Label Studio tasks -> predictions: the work behind the ML backend's ``/predict``.

Each task's photo is fetched from Label Studio (the URL in ``task.data[<image key>]``, with the
backend's Label Studio connection), decoded to at most ``labelstudio.backend.max_side`` px, and
predicted with the photos of its batch in one model call (``labelstudio.backend.batch_size``). A
prediction holds the damage polygons in **percent** of the photo (the project's label names), the
acquisition ``score`` the pool's selection ranks by (``select.strategy``, or ``select.hybrid_score``
for strategies without their own uncertainty; ``bald`` needs MC passes and falls back to
``entropy``): sorting by prediction score in the Data Manager puts the most informative task first,
and the photo's ``cluster`` (:class:`~cardamage.active.clusters.PoolClusters`).

A task that cannot be predicted (no image field, an image the server does not serve, a corrupt
photo, the request's time limit reached) gets an entry without ``result``: Label Studio skips it,
keeps the other tasks' predictions and asks again on the next "Retrieve predictions". Each such
task is one log line naming the task and the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cardamage.active.clusters import PoolClusters
from cardamage.active.scorer import score_batch, valid_mask
from cardamage.active.strategies import uncertainty_names
from cardamage.config import Params
from cardamage.data.annotations import Instance
from cardamage.errors import BadInputError, CardamageError
from cardamage.labelling.label_config import LabelConfig
from cardamage.labelling.push import prediction_result
from cardamage.model.inference import predict_with_embeddings
from cardamage.model.inputs import prepare_image, unfit
from cardamage.model.predict import LoadedModel, damage_labels, find_instances
from cardamage.service.uploads import Photo, Upload, check_header, decode

log = logging.getLogger(__name__)

#: ``url -> bytes`` of a file Label Studio serves (raises a :class:`CardamageError` when it cannot).
Fetch = Callable[[str], bytes]


def score_name(params: Params) -> str:
    """The score column a prediction's ``score`` is (see the module doc)."""
    names = [n for n in uncertainty_names() if n != "bald"]
    strategy = params.select.strategy
    name = strategy if strategy in names else params.select.hybrid_score
    return name if name in names else "entropy"


def task_image_url(task: Any, data_key: str) -> str:
    """The image URL of a Label Studio task; :class:`BadInputError` naming the task when there is none."""
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise BadInputError(f"task {_task_id(task)}: no 'data' object")
    url = task["data"].get(data_key)
    if not isinstance(url, str) or not url.strip():
        raise BadInputError(f"task {_task_id(task)}: no image in data.{data_key} (the project's <Image "
                            f"value=\"${data_key}\"/>); keys: {sorted(task['data'])[:10]}")
    return url.strip()


def _task_id(task: Any) -> Any:
    return task.get("id", "?") if isinstance(task, dict) else "?"


def fetch_photo(task: Any, data_key: str, fetch: Fetch, max_side: int) -> Photo:
    """The task's photo, decoded to at most ``max_side`` px (``data.max_pixels`` holds).

    Raises:
        CardamageError: no image field, the server did not serve it, not a usable photo (named).
    """
    url = task_image_url(task, data_key)
    data = fetch(url)
    checked = check_header(Upload(url.rsplit("/", 1)[-1][:120] or "photo", None, data))
    photo = decode(checked, max_side) if not isinstance(checked, dict) else checked
    if isinstance(photo, dict):
        raise BadInputError(f"task {_task_id(task)}: {url}: {photo['message']}")
    return photo


@dataclass
class PhotoPrediction:
    """The model's answer for one photo: ``instances`` in the photo's own pixels (``score`` =
    confidence), the acquisition ``score``, and the ``embedding float32 [D]``."""

    instances: list[Instance]
    score: float
    embedding: np.ndarray


def predict_photos(photos: Sequence[Photo], loaded: LoadedModel, params: Params) -> list[PhotoPrediction]:
    """One model call for ``photos``: damage instances, acquisition score and embedding of each."""
    size, resize = loaded.info.input_size, loaded.info.resize
    prepared = [prepare_image(p.rgb, size, resize) for p in photos]
    probs, embs = predict_with_embeddings(loaded.model, np.stack([a for a, _ in prepared]), len(photos))
    valid = np.stack([valid_mask(fit, size) for _, fit in prepared])
    name = score_name(params)
    scores = score_batch(probs, valid, params.score, ids=[p.sha256 for p in photos], only=[name])[name]
    out = []
    for photo, (_, fit), p, score, emb in zip(photos, prepared, probs, scores, embs):
        full = unfit(p, fit)  # [h, w, C] on the decoded photo's grid
        h, w = full.shape[:2]
        pp = params.predict
        found = find_instances(damage_labels(full, pp.threshold), full, loaded.info.classes,
                               max(1.0, pp.min_area_share * h * w), pp.polygon_epsilon)
        sx, sy = photo.scale
        instances = [Instance(category=d["class"], score=d["confidence"],
                              polygons=[[(x * sx, y * sy) for x, y in poly] for poly in d["polygons"]])
                     for d in found]
        out.append(PhotoPrediction(instances, round(float(score), 6), np.asarray(emb, np.float32)))
    return out


def predict_tasks(tasks: Sequence[Any], loaded: LoadedModel, params: Params, config: LabelConfig, fetch: Fetch,
                  clusters: PoolClusters | None = None, deadline: float | None = None) -> list[dict[str, Any]]:
    """One entry per task, in order: a prediction (``result``, ``score``, ``cluster``, ``model_version``)
    or, for a task that cannot be predicted, ``{"error": reason, "model_version": ...}`` without ``result``.

    Args:
        config: the project's labelling configuration (label names, image key).
        fetch: downloads a task's image URL from Label Studio.
        deadline: ``time.monotonic()`` after which no new batch starts (``None``: no limit).
    """
    bp = params.labelstudio.backend
    version = loaded.info.model_version or "cardamage"
    out: list[dict[str, Any]] = [{} for _ in tasks]
    size = max(1, int(bp.batch_size))
    for at in range(0, len(tasks), size):
        if deadline is not None and time.monotonic() > deadline:
            left = len(tasks) - at
            log.warning("predict: time limit of %.0f s reached; %d task(s) get no prediction this time (Label "
                        "Studio asks again)", bp.time_limit_s, left)
            for i in range(at, len(tasks)):
                out[i] = {"error": "time limit reached", "model_version": version}
            break
        batch = _fetch_batch(tasks, range(at, min(at + size, len(tasks))), config, fetch, bp.max_side, out, version)
        if not batch:
            continue
        predicted = predict_photos([p for _, p in batch], loaded, params)
        cluster_ids = clusters.assign(np.stack([r.embedding for r in predicted]), [p.sha256 for _, p in batch]) \
            if clusters is not None else [None] * len(batch)
        dropped: dict[str, int] = {}
        for (i, photo), pred, cluster in zip(batch, predicted, cluster_ids):
            result = prediction_result(pred.instances, photo.width, photo.height, config, dropped)
            out[i] = {"result": result, "score": pred.score, "cluster": cluster, "model_version": version}
        if dropped:
            log.warning("predict: instances of labels not in the project's config left out: %s", dropped)
    return out


def _fetch_batch(tasks: Sequence[Any], positions: range, config: LabelConfig, fetch: Fetch, max_side: int,
                 out: list[dict[str, Any]], version: str) -> list[tuple[int, Photo]]:
    """``(position, photo)`` of the tasks whose photo could be fetched; the others' ``out`` entries get the error."""
    batch = []
    for i in positions:
        try:
            batch.append((i, fetch_photo(tasks[i], config.data_key, fetch, max_side)))
        except CardamageError as exc:
            log.warning("predict: task %s gets no prediction: %s", _task_id(tasks[i]), exc)
            out[i] = {"error": str(exc), "model_version": version}
    return batch
