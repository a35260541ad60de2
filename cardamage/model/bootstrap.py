"""Confidence intervals over test photos, from each photo's confusion matrix.

Every figure here (damage IoU, mean IoU, IoU per class) is a ratio of pixel counts summed over
photos, so one bootstrap resample of ``N`` photos is a weighted sum of their confusion matrices:
``W [B, N] @ cms [N, C*C]`` with ``W`` the draw counts. The same draws for two models (paired
resampling) give the interval of a difference, which is much narrower than two separate intervals
because both models face the same hard and easy photos. Seeded: the same inputs give the same
intervals, run after run.

Definitions (as in :mod:`cardamage.model.evaluate`): damage IoU is "any damage class" against
background, ``cm[1:, 1:].sum() / max(cm.sum() - cm[0, 0], 1)``; IoU per class is
``tp / (row + column - tp)`` (NaN for a class absent from truth and prediction); mean IoU is the
mean over the classes that are present, background included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

SEED = 0


def damage_iou(cm: np.ndarray) -> np.ndarray:
    """Damage IoU of confusion matrices ``[..., C, C]`` -> ``[...]``."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = cm[..., 1:, 1:].sum(axis=(-1, -2))
    return tp / np.maximum(cm.sum(axis=(-1, -2)) - cm[..., 0, 0], 1.0)


def class_iou(cm: np.ndarray) -> np.ndarray:
    """IoU per class of confusion matrices ``[..., C, C]`` -> ``[..., C]`` (NaN where a class is absent)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    denom = cm.sum(axis=-1) + cm.sum(axis=-2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / np.where(denom > 0, denom, 1.0), np.nan)


def mean_iou(cm: np.ndarray) -> np.ndarray:
    """Mean IoU over present classes of confusion matrices ``[..., C, C]`` -> ``[...]``."""
    iou = class_iou(cm)
    present = ~np.isnan(iou)
    return np.where(present.any(-1), np.nansum(iou, -1) / np.maximum(present.sum(-1), 1), np.nan)


def resample_weights(n: int, resamples: int, seed: int = SEED) -> np.ndarray:
    """Draw counts ``float64 [resamples, n]``: row ``b`` says how often each photo is in resample ``b``."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))
    weights = np.zeros((resamples, n))
    np.add.at(weights, (np.repeat(np.arange(resamples), n), draws.ravel()), 1.0)
    return weights


def resampled(cms: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Summed confusion matrices of each resample: ``cms [N, C, C]``, ``weights [B, N]`` -> ``[B, C, C]``."""
    cms = np.asarray(cms, dtype=np.float64)
    n, c = cms.shape[0], cms.shape[-1]
    return (weights @ cms.reshape(n, c * c)).reshape(-1, c, c)


def interval(values: np.ndarray, confidence: float) -> list[float] | None:
    """``[low, high]`` quantiles of a bootstrap distribution at the two-sided ``confidence``; ``None`` if empty."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not values.size:
        return None
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(values, [tail, 1.0 - tail])
    return [float(lo), float(hi)]


def _value(x: Any) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def summarize(cms: np.ndarray, names: Sequence[str], resamples: int, confidence: float,
              seed: int = SEED) -> dict[str, Any]:
    """Figures of one model with intervals: ``{"damage_iou": {"value", "ci"}, "mean_iou": ..., "iou": {name: ...}}``.

    Args:
        cms: ``int [N, C, C]`` confusion matrices of the N test photos (rows truth, columns prediction).
        names: the ``C`` class names, background first.
        resamples: bootstrap resamples (0: no intervals, ``ci`` is ``None``).
    """
    cms = np.asarray(cms, dtype=np.float64)
    total = cms.sum(axis=0)
    boot = resampled(cms, resample_weights(len(cms), resamples, seed)) if resamples and len(cms) else None

    def figure(fn, index: int | None = None) -> dict[str, Any]:
        pick = (lambda v: v) if index is None else (lambda v: v[..., index])
        ci = interval(pick(fn(boot)), confidence) if boot is not None else None
        return {"value": _value(pick(fn(total))), "ci": ci}

    return {"damage_iou": figure(damage_iou), "mean_iou": figure(mean_iou),
            "iou": {name: figure(class_iou, i) for i, name in enumerate(names)},
            "n_photos": int(len(cms)), "resamples": int(resamples), "confidence": float(confidence)}


def paired_difference(candidate: np.ndarray, production: np.ndarray, resamples: int, confidence: float,
                      seed: int = SEED) -> dict[str, Any]:
    """Damage IoU of ``candidate - production`` on the same photos (paired draws): ``{"value", "ci"}``.

    Args:
        candidate, production: ``[N, C, C]`` confusion matrices, photo ``i`` the same in both.
    """
    a, b = np.asarray(candidate, np.float64), np.asarray(production, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired photos: shapes differ {list(a.shape)} vs {list(b.shape)}")
    value = _value(damage_iou(a.sum(0)) - damage_iou(b.sum(0)))
    if not resamples or not len(a):
        return {"value": value, "ci": None}
    weights = resample_weights(len(a), resamples, seed)
    diff = damage_iou(resampled(a, weights)) - damage_iou(resampled(b, weights))
    return {"value": value, "ci": interval(diff, confidence)}
