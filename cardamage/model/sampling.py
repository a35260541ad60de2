"""Class-balanced photo sampling for ``cardamage train``: repeat-factor sampling (Gupta et al., LVIS, 2019).

Rare damage types (a bonnet, an airbag) appear on few photos, so an epoch shows them rarely and the
model learns the common ones (scratches, dents). With ``train.repeat_threshold`` ``t`` > 0, each
training photo is shown ``r`` times an epoch on average, where

* ``f(c)``: the share of training photos with at least one region of class ``c``;
* ``r(c) = max(1, sqrt(t / f(c)))``: a class on fewer than a share ``t`` of the photos is repeated;
* ``r(photo) = max(r(c))`` over the photo's classes (1.0 for a photo without damage).

``r`` is rounded stochastically once per training run (``floor(r)`` plus one more with probability
``r - floor(r)``, seeded by ``train.seed``), so the epoch length is known in advance and the learning
rate schedule stays exact. The repeated copies are shuffled among the others and each copy gets its
own augmentation. Detectron2's ``RepeatFactorTrainingSampler`` draws the rounding anew each epoch;
here it is drawn once, which for a few thousand photos changes an epoch by a handful of photos.

Works on any number of classes; with one class (binary damage) only photos without damage stay at
1.0, so it oversamples damaged photos when ``f(damage) < t``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from cardamage.data.annotations import ImageRecord, category_mapper
from cardamage.errors import BadParameterError

log = logging.getLogger(__name__)


@dataclass
class Repeats:
    """Per photo repeat counts for one training run.

    Attributes:
        counts: ``int64 [N]`` times each record is shown per epoch (0 for unreadable photos).
        class_photo_share: ``f(c)`` per class name (share of readable photos, 0-1).
        class_factor: ``r(c)`` per class name.
    """

    counts: np.ndarray
    class_photo_share: dict[str, float] = field(default_factory=dict)
    class_factor: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Photos per epoch."""
        return int(self.counts.sum())

    def card(self) -> dict[str, object]:
        """What the model card records."""
        return {"method": "repeat_factor", "photos_per_epoch": self.total,
                "class_photo_share": {k: round(v, 4) for k, v in self.class_photo_share.items()},
                "class_factor": {k: round(v, 3) for k, v in self.class_factor.items()}}


def check_threshold(threshold: float) -> None:
    """Raise :class:`BadParameterError` unless ``0 <= threshold <= 1``."""
    if not (isinstance(threshold, (int, float)) and 0.0 <= threshold <= 1.0) or math.isnan(threshold):
        raise BadParameterError(f"train.repeat_threshold: expected a share of photos in [0, 1] (0: off), "
                                f"got {threshold!r}")


def photo_classes(records: Sequence[ImageRecord], classes: Sequence[str],
                  class_map: dict[str, str]) -> list[set[str]]:
    """The model classes present on each record (after ``data.class_map``)."""
    category_of = category_mapper(classes, class_map)
    return [{c for c in (category_of(i) for i in r.instances) if c is not None} for r in records]


def repeat_factors(present: Sequence[set[str]], classes: Sequence[str], threshold: float,
                   readable: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, float], dict[str, float]]:
    """``r(photo)`` ``float64 [N]`` and ``f(c)``, ``r(c)`` per class (see module doc).

    ``readable``: ``bool [N]``; unreadable photos get factor 0 and do not count in ``f(c)``.
    """
    check_threshold(threshold)
    n = len(present)
    readable = np.ones(n, bool) if readable is None else np.asarray(readable, bool)
    n_ok = max(int(readable.sum()), 1)
    share = {c: sum(1 for p, ok in zip(present, readable) if ok and c in p) / n_ok for c in classes}
    factor = {c: (max(1.0, math.sqrt(threshold / f)) if f > 0 and threshold > 0 else 1.0) for c, f in share.items()}
    r = np.array([max((factor[c] for c in p), default=1.0) for p in present], np.float64)
    return np.where(readable, r, 0.0), share, factor


def stochastic_round(factors: np.ndarray, seed: int) -> np.ndarray:
    """``int64 [N]``: ``floor(r)`` plus 1 with probability ``r - floor(r)`` (expected value ``r``)."""
    base = np.floor(factors)
    extra = np.random.default_rng(seed).random(len(factors)) < (factors - base)
    return (base + extra).astype(np.int64)


def plan_repeats(records: Sequence[ImageRecord], classes: Sequence[str], class_map: dict[str, str],
                 threshold: float, seed: int, skipped: Sequence[str] = ()) -> Repeats:
    """The repeat counts of ``records`` (photos whose path is in ``skipped`` are left out)."""
    bad = set(skipped)
    readable = np.array([r.path not in bad for r in records], bool)
    factors, share, factor = repeat_factors(photo_classes(records, classes, class_map), classes, threshold, readable)
    counts = stochastic_round(factors, seed)
    out = Repeats(counts, share, factor)
    log.info("repeat-factor sampling (train.repeat_threshold %.3g): %d photos -> %d per epoch; photo share "
             "per class %s; factor per class %s", threshold, int(readable.sum()), out.total,
             {k: round(v, 3) for k, v in share.items()}, {k: round(v, 2) for k, v in factor.items()})
    return out


def repeat_dataset(base: tf.data.Dataset, counts: np.ndarray) -> tf.data.Dataset:
    """Each ``(image, mask, index)`` element of ``base`` repeated ``counts[index]`` times, in order.

    Cardinality is set to ``counts`` summed over the indices present in ``base`` (the caller's
    :func:`plan_repeats` already gave unreadable photos 0).
    """
    table = tf.constant(np.asarray(counts, np.int64))

    def repeat(image: tf.Tensor, mask: tf.Tensor, i: tf.Tensor) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensors((image, mask, i)).repeat(tf.gather(table, i))

    ds = base.flat_map(repeat)
    return ds.apply(tf.data.experimental.assert_cardinality(int(np.sum(counts))))
