"""The model side of scoring: a :class:`Scorer`, pool photos in batches, and the score columns of one batch.

:func:`iter_batches` decodes and letterboxes pool photos one batch at a time with the model's own
preprocessing (:func:`cardamage.model.inputs.prepare_image`), so memory stays flat however large the
pool. :func:`score_batch` turns one batch of probabilities into the columns of every registered
strategy (:mod:`cardamage.active.strategies`) plus the damage summaries. The scores table
(:mod:`cardamage.active.scoring`) and the engines (:mod:`cardamage.active.engines`) build on these;
the loop only sees a :class:`Scorer` (a ``predict`` callable and an optional MC ``sample`` callable),
never the network: :func:`load_scorer` wraps a saved model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cardamage.active.balance import CLASS_SHARES, class_shares
from cardamage.active.pool import PoolPhoto
from cardamage.active.strategies import ScoreBatch, scoring_strategies
from cardamage.config import ScoreParams
from cardamage.data.images import ImageLoadError, load_image
from cardamage.errors import BadParameterError
from cardamage.model.regions import instance_counts

log = logging.getLogger(__name__)

#: ``images float32 [B, S, S, 3] -> (probs [B, S, S, C], embeddings [B, D])``.
PredictFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
#: ``(images [B, S, S, 3], T) -> MC-dropout probs [T, B, S, S, C]``.
SampleFn = Callable[[np.ndarray, int], np.ndarray]


@dataclass
class Scorer:
    """What scoring needs from a model: callables, input geometry and the model version."""

    predict: PredictFn
    input_size: int
    resize: str = "letterbox"
    model_version: str = ""
    sample: SampleFn | None = None


def load_scorer(model_path: str | os.PathLike, batch_size: int = 8) -> Scorer:
    """Wrap a model saved by ``cardamage train`` (imports TensorFlow and KerasCV)."""
    from cardamage.model.inference import mc_predict, predict_with_embeddings
    from cardamage.model.io import load_model

    model, info = load_model(model_path)
    return Scorer(predict=lambda x: predict_with_embeddings(model, x, batch_size),
                  sample=lambda x, t: mc_predict(model, x, t, batch_size),
                  input_size=int(info.input_size), resize=info.resize, model_version=info.model_version)


def reduction_tag(params: ScoreParams) -> str:
    """How image scores were reduced (``mean``, ``damage`` or ``topk10``): part of score freshness."""
    return f"topk{params.topk_percent:g}" if params.reduction == "topk" else params.reduction


# ----------------------------------------------------------------------------- batches

def valid_mask(fit: Any, size: int) -> np.ndarray:
    """``bool [S, S]``: the input pixels that show the photo (``False`` on letterbox padding) of a
    :class:`~cardamage.model.inputs.Fit`."""
    valid = np.zeros((size, size), bool)
    valid[max(fit.oy, 0):fit.oy + fit.new_h, max(fit.ox, 0):fit.ox + fit.new_w] = True
    return valid


def iter_batches(photos: Sequence[PoolPhoto], size: int, resize: str = "letterbox", batch_size: int = 8,
                 unreadable: dict[str, str] | None = None) -> Iterator[tuple[list[PoolPhoto], np.ndarray, np.ndarray]]:
    """Yield ``(photos, images float32 [B, S, S, 3], valid bool [B, S, S])`` one batch at a time.

    ``valid`` is ``False`` on letterbox padding. Photos that fail to decode are logged, added to
    ``unreadable`` (name -> reason) and left out.
    """
    from cardamage.model.inputs import prepare_image

    if batch_size < 1:
        raise BadParameterError(f"score.batch_size: must be >= 1, got {batch_size}")
    kept: list[PoolPhoto] = []
    images, valids = [], []
    for photo in photos:
        try:
            image = load_image(photo.path)
        except ImageLoadError as exc:
            log.warning("skipping unreadable photo %s: %s", photo.name, exc)
            if unreadable is not None:
                unreadable[photo.name] = str(exc)
            continue
        arr, fit = prepare_image(image, size, resize)
        valid = valid_mask(fit, size)
        kept.append(photo)
        images.append(arr)
        valids.append(valid)
        if len(kept) == batch_size:
            yield kept, np.stack(images), np.stack(valids)
            kept, images, valids = [], [], []
    if kept:
        yield kept, np.stack(images), np.stack(valids)


# ----------------------------------------------------------------------------- one batch

def score_batch(probs: np.ndarray, valid: np.ndarray, params: ScoreParams, samples: np.ndarray | None = None,
                ids: Sequence[str] | None = None, only: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Score columns of every registered strategy, and damage summaries, for one batch.

    Args:
        probs: ``[B, S, S, C]``; valid: ``bool [B, S, S]``; samples: ``[T, B, S, S, C]`` or ``None``
            (strategies that need MC samples are then left out).
        ids: the photos' ids (sha256; default: their positions, for callers that only read the
            uncertainty columns).
        only: compute only the strategies that write one of these columns (``None``: all), for
            callers that read one score (the ML backend, drift); the damage summaries always come.

    Returns:
        ``{column: [B]}`` for the score columns, ``damaged_share``, ``instance_count`` and
        ``class_shares`` (``[B, C-1]``, :func:`cardamage.active.balance.class_shares`).
    """
    ids = list(ids) if ids is not None else [str(i) for i in range(len(probs))]
    batch = ScoreBatch(np.asarray(probs, np.float32), valid, samples, ids, params)
    cols: dict[str, np.ndarray] = {}
    for strategy in scoring_strategies(samples is not None):
        if only is None or set(strategy.columns) & set(only):
            cols.update(strategy.score(batch))
    damage = (np.asarray(probs).argmax(axis=-1) != 0) & valid
    cols["damaged_share"] = (damage.sum(axis=(1, 2)) / np.maximum(valid.sum(axis=(1, 2)), 1)).astype(np.float32)
    cols["instance_count"] = instance_counts(damage, params.min_instance_px)
    cols[CLASS_SHARES] = class_shares(probs, valid)
    return cols
