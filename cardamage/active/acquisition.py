"""Acquisition functions: per-pixel uncertainty from class probabilities, reduced to one score per image.

Pure NumPy, in the style of Baal / modAL: every function takes probability arrays and returns
arrays, never a model. Shapes:

* ``probs``: ``float [N, H, W, C]`` softmax output of one deterministic pass (channel 0 is
  background);
* ``samples``: ``float [T, N, H, W, C]``, ``T`` MC-dropout passes over the same ``N`` images;
* a pixel map: ``float32 [N, H, W]``, higher = more uncertain;
* a ``valid`` mask: ``bool [N, H, W]``, ``False`` on pixels that are not photo (letterbox padding);
* an image score: ``float32 [N]``, higher = more worth labelling.

Pixel-to-image reductions (:func:`reduce_pixels`):

* ``mean``: mean over the valid pixels;
* ``topk``: mean over the ``k`` % most uncertain valid pixels (at least one pixel), so that a small
  uncertain damaged region is not drowned by confident background;
* ``damage``: mean over the pixels predicted as damage (``argmax != 0``); 0 when there are none.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import numpy as np

from cardamage.errors import BadParameterError

log = logging.getLogger(__name__)

REDUCTIONS = ("mean", "topk", "damage")
_EPS = 1e-12


def _check(probs: np.ndarray, ndim: int, name: str) -> np.ndarray:
    arr = np.asarray(probs, dtype=np.float32)
    if arr.ndim != ndim or arr.shape[-1] < 2:
        raise ValueError(f"{name}: expected {ndim} dimensions with >= 2 classes last, got shape {list(arr.shape)}")
    return arr


def _entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) over the last axis, ``0 log 0 = 0``."""
    p = np.clip(probs, _EPS, 1.0)
    return -(probs * np.log(p)).sum(axis=-1, dtype=np.float32)


def entropy_map(probs: np.ndarray) -> np.ndarray:
    """Predictive entropy per pixel.

    Args:
        probs: ``[N, H, W, C]`` probabilities.

    Returns:
        ``float32 [N, H, W]`` in nats, 0 (one-hot) to ``log C`` (uniform).
    """
    return _entropy(_check(probs, 4, "probs")).astype(np.float32)


def margin_map(probs: np.ndarray) -> np.ndarray:
    """Margin uncertainty ``1 - (p_first - p_second)`` per pixel.

    Args:
        probs: ``[N, H, W, C]`` probabilities.

    Returns:
        ``float32 [N, H, W]`` in ``[0, 1]``: 0 when one class has all the mass, 1 on a tie.
    """
    p = _check(probs, 4, "probs")
    top2 = np.partition(p, p.shape[-1] - 2, axis=-1)[..., -2:]
    return (1.0 - (top2[..., 1] - top2[..., 0])).astype(np.float32)


def least_confidence_map(probs: np.ndarray) -> np.ndarray:
    """Least confidence ``1 - max_c p_c`` per pixel.

    Args:
        probs: ``[N, H, W, C]`` probabilities.

    Returns:
        ``float32 [N, H, W]`` in ``[0, 1 - 1/C]``.
    """
    return (1.0 - _check(probs, 4, "probs").max(axis=-1)).astype(np.float32)


def bald_map(samples: np.ndarray) -> np.ndarray:
    """BALD mutual information per pixel from ``T`` MC-dropout samples.

    ``I = H(mean_t p_t) - mean_t H(p_t)``: high where the samples disagree, 0 where they all agree
    (however uncertain each one is).

    Args:
        samples: ``[T, N, H, W, C]`` probabilities.

    Returns:
        ``float32 [N, H, W]`` in nats, >= 0.
    """
    s = _check(samples, 5, "samples")
    mean = s.mean(axis=0)
    expected = np.zeros(mean.shape[:-1], np.float32)
    for t in range(s.shape[0]):  # one sample at a time keeps the peak memory at one [N,H,W,C] array
        expected += _entropy(s[t])
    mi = _entropy(mean) - expected / s.shape[0]
    return np.maximum(mi, 0.0).astype(np.float32)


def damage_mask(probs: np.ndarray) -> np.ndarray:
    """Pixels predicted as damage: ``bool [N, H, W]`` where ``argmax(probs) != 0``."""
    return _check(probs, 4, "probs").argmax(axis=-1) != 0


def reduce_pixels(pixel_map: np.ndarray, reduction: str = "mean", topk_percent: float = 10.0,
                  damage: np.ndarray | None = None, valid: np.ndarray | None = None) -> np.ndarray:
    """Reduce a pixel uncertainty map to one score per image.

    Args:
        pixel_map: ``[N, H, W]`` per-pixel uncertainty.
        reduction: ``mean``, ``topk`` or ``damage`` (see the module docstring).
        topk_percent: share of pixels, in percent (0, 100], that ``topk`` averages.
        damage: ``bool [N, H, W]`` predicted-damage pixels (needed for ``damage``).
        valid: ``bool [N, H, W]`` pixels that belong to the photo (default: all).

    Returns:
        ``float32 [N]``.
    """
    m = np.asarray(pixel_map, dtype=np.float32)
    if m.ndim != 3:
        raise ValueError(f"pixel_map: expected [N, H, W], got shape {list(m.shape)}")
    keep = np.ones(m.shape, bool) if valid is None else np.asarray(valid, bool)
    if keep.shape != m.shape:
        raise ValueError(f"valid: expected shape {list(m.shape)}, got {list(keep.shape)}")
    if reduction == "mean":
        return _masked_mean(m, keep)
    if reduction == "topk":
        if not 0 < topk_percent <= 100:
            raise BadParameterError(f"topk_percent: must be in (0, 100], got {topk_percent}")
        return np.array([_topk_mean(m[i][keep[i]], topk_percent) for i in range(len(m))], np.float32)
    if reduction == "damage":
        if damage is None:
            raise ValueError("reduction 'damage' needs the predicted damage mask")
        return _masked_mean(m, keep & np.asarray(damage, bool))
    raise BadParameterError(f"reduction: {reduction!r} is not one of {REDUCTIONS}")


def _masked_mean(m: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Mean of ``m [N,H,W]`` over ``keep`` per image; 0 for an image with no kept pixel."""
    total = np.where(keep, m, 0.0).sum(axis=(1, 2), dtype=np.float64)
    count = keep.sum(axis=(1, 2))
    return np.where(count > 0, total / np.maximum(count, 1), 0.0).astype(np.float32)


def _topk_mean(values: np.ndarray, percent: float) -> float:
    if values.size == 0:
        return 0.0
    k = max(1, int(np.ceil(values.size * percent / 100.0)))
    return float(np.partition(values, values.size - k)[values.size - k:].mean())


def random_scores(n_or_keys: int | Sequence[str], seed: int = 0) -> np.ndarray:
    """Seeded uniform scores in ``[0, 1)``: ``float64 [N]``.

    Given an int ``N``, draws from ``numpy.random.default_rng(seed)``. Given keys (e.g. sha256 ids),
    each score is a hash of ``(seed, key)``, so a photo keeps its score whatever the order or
    batching of the pool.
    """
    if isinstance(n_or_keys, (int, np.integer)):
        return np.random.default_rng(seed).random(int(n_or_keys))
    out = np.empty(len(n_or_keys), np.float64)
    for i, key in enumerate(n_or_keys):
        digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
        out[i] = int.from_bytes(digest[:7], "big") / float(1 << 56)
    return out
