"""Self-training for ``cardamage train``: a teacher model's confident pixels on unlabelled pool photos.

With ``train.pseudo_teacher`` set (or ``cardamage train --pseudo-teacher MODEL``), training adds up
to ``train.pseudo_ratio`` x the labelled photos (at most ``train.pseudo_max_photos``) drawn, seeded,
from the unlabelled pool (``data.pool``, labelled, pending and duplicate photos excluded). For
each one:

* **weak view**: the teacher predicts on the clean photo (no augmentation), with the same letterbox
  the predict command uses;
* **pseudo-label**: the teacher's class where its probability is >= ``train.pseudo_threshold``,
  :data:`~cardamage.data.reviewed.IGNORE_INDEX` elsewhere and on the letterbox padding, so the loss
  never learns from pixels the teacher is unsure about;
* **strong view**: the student trains on the photo with the training augmentation (flip, zoom,
  rotation, colour jitter), mask and photo transformed together;
* **ramp-up**: in epoch ``e`` (from 0) each pseudo-labelled photo takes part with probability
  ``min(1, (e + 1) / train.pseudo_ramp_epochs)`` (otherwise its whole mask is ignored), so early
  epochs lean on the human labels. Batches prefetched before an epoch starts use the previous value.

Class weights come from the human labels only. Unreadable pool photos are reported by name and
skipped. The model card records the teacher, the number of photos and the share of their pixels
that were confident enough to be kept.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import keras
import numpy as np
import tensorflow as tf

from cardamage.config import Params
from cardamage.data.images import ImageLoadError, load_image
from cardamage.data.reviewed import IGNORE_INDEX
from cardamage.errors import BadParameterError
from cardamage.model.inputs import fit_geometry, fit_image, place
from cardamage.model.io import load_model
from cardamage.model.predict import LoadedModel, full_res_probs

log = logging.getLogger(__name__)


@dataclass
class PseudoSet:
    """Pseudo-labelled photos at the student's input size.

    ``images``: ``uint8 [n, S, S, 3]``; ``masks``: ``uint8 [n, S, S]`` (class index, or
    :data:`IGNORE_INDEX` where the teacher was unsure and on padding); ``kept_share``: confident share
    of the photos' own pixels (0-1).
    """

    images: np.ndarray
    masks: np.ndarray
    paths: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    kept_share: float = 0.0

    def card(self, teacher: str, threshold: float) -> dict[str, Any]:
        """What the model card records about the pseudo-labels."""
        return {"teacher": teacher, "photos": len(self.paths), "threshold": threshold,
                "kept_share": round(self.kept_share, 4), "skipped": [p for p, _ in self.skipped]}


def draw_photos(photos: Sequence[Any], n_labelled: int, ratio: float, limit: int, seed: int) -> list[Any]:
    """A seeded draw of ``min(ratio x n_labelled, limit, len(photos))`` pool photos, in pool order."""
    n = min(len(photos), limit, int(round(ratio * n_labelled)))
    chosen = np.random.default_rng(seed).choice(len(photos), size=n, replace=False) if n else []
    return [photos[i] for i in sorted(chosen)]


def confident_labels(probs: np.ndarray, threshold: float) -> np.ndarray:
    """``uint8 [...]``: the argmax class of ``probs [..., C]`` where its probability >= ``threshold``,
    :data:`IGNORE_INDEX` elsewhere."""
    return np.where(probs.max(-1) >= threshold, probs.argmax(-1), IGNORE_INDEX).astype(np.uint8)


def ramp_value(epoch: int, ramp_epochs: int) -> float:
    """Share of pseudo-labelled photos used in ``epoch`` (from 0): ``min(1, (epoch + 1) / ramp_epochs)``."""
    return min(1.0, (epoch + 1) / max(1, ramp_epochs))


def pseudo_label(teacher: LoadedModel, photos: Sequence[Path], size: int, resize: str,
                 threshold: float) -> PseudoSet:
    """Teacher pseudo-labels for ``photos`` at the student's ``size`` x ``size`` input (see the module)."""
    images, masks, paths, skipped = [], [], [], []
    kept = total = 0
    for path in photos:
        try:
            image = load_image(path)
        except ImageLoadError as exc:
            log.warning("pseudo-labels: skipping unreadable pool photo %s: %s", path, exc)
            skipped.append((str(path), str(exc)))
            continue
        probs = full_res_probs(teacher, [image])[0]
        labels = confident_labels(probs, threshold)
        kept, total = kept + int((labels != IGNORE_INDEX).sum()), total + labels.size
        fit = fit_geometry(image.shape[1], image.shape[0], size, resize)
        resized = cv2.resize(labels, (fit.new_w, fit.new_h), interpolation=cv2.INTER_NEAREST)
        images.append(fit_image(image, fit))
        masks.append(place(resized, fit, IGNORE_INDEX))
        paths.append(str(path))
    shape = (0, size, size)
    return PseudoSet(np.stack(images) if images else np.zeros(shape + (3,), np.uint8),
                     np.stack(masks) if masks else np.zeros(shape, np.uint8), paths, skipped,
                     kept / total if total else 0.0)


def pseudo_dataset(pseudo: PseudoSet) -> tf.data.Dataset:
    """``(image uint8 [S,S,3], mask uint8 [S,S], index int64)`` like ``base_dataset``; index < 0 marks pseudo."""
    index = -1 - np.arange(len(pseudo.paths), dtype=np.int64)
    return tf.data.Dataset.from_tensor_slices((pseudo.images, pseudo.masks, index))


def ramped(image: tf.Tensor, mask: tf.Tensor, index: tf.Tensor, ramp: tf.Variable) -> tuple:
    """Ignore a pseudo-labelled photo's whole mask with probability ``1 - ramp`` (human labels untouched)."""
    drop = tf.logical_and(index < 0, tf.random.uniform([]) >= ramp)
    return image, tf.where(drop, tf.constant(IGNORE_INDEX, mask.dtype), mask), index


class RampUp(keras.callbacks.Callback):
    """Sets ``ramp`` to :func:`ramp_value` at the start of each epoch."""

    def __init__(self, ramp: tf.Variable, epochs: int):
        super().__init__()
        self.ramp, self.epochs = ramp, epochs

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.ramp.assign(ramp_value(epoch, self.epochs))


@dataclass
class SelfTraining:
    """Pseudo-labelled photos joined to the training set: the dataset to batch, its ramp and card."""

    dataset: tf.data.Dataset
    count: int
    ramp: tf.Variable
    card: dict[str, Any]

    def example_map(self, image: tf.Tensor, mask: tf.Tensor, index: tf.Tensor) -> tuple:
        """:func:`ramped` with this run's ramp (for :func:`cardamage.model.inputs.batched`)."""
        return ramped(image, mask, index, self.ramp)

    def callback(self, epochs: int) -> RampUp:
        return RampUp(self.ramp, epochs)


def add_pseudo_labels(params: Params, labelled: tf.data.Dataset, n_labelled: int,
                      photos: Sequence[Path], per_epoch: int | None = None) -> SelfTraining:
    """``labelled`` followed by pseudo-labelled pool photos (``train.pseudo_*``; see the module docstring).

    ``n_labelled``: distinct labelled photos (the pseudo-label count follows it); ``per_epoch``: the
    elements of ``labelled`` when it repeats photos (:mod:`cardamage.model.sampling`; ``None``: ``n_labelled``).

    Raises:
        BadParameterError: no teacher file, or a teacher trained on other classes.
    """
    t, data = params.train, params.data
    if not 0.0 <= t.pseudo_threshold <= 1.0 or t.pseudo_ratio < 0 or t.pseudo_max_photos < 0:
        raise BadParameterError("train.pseudo_threshold must be in [0, 1] and pseudo_ratio / pseudo_max_photos "
                                f">= 0, got {t.pseudo_threshold} / {t.pseudo_ratio} / {t.pseudo_max_photos}")
    if not Path(str(t.pseudo_teacher)).is_file():
        raise BadParameterError(f"train.pseudo_teacher: {t.pseudo_teacher}: no such model file")
    teacher = LoadedModel(*load_model(str(t.pseudo_teacher), expect_classes=data.classes), str(t.pseudo_teacher))
    chosen = draw_photos(list(photos), n_labelled, t.pseudo_ratio, t.pseudo_max_photos, t.seed)
    pseudo = pseudo_label(teacher, chosen, params.model.input_size, params.model.resize, t.pseudo_threshold)
    log.info("pseudo-labels: %d pool photo(s) from %s (%d unreadable), %.1f %% of their pixels confident",
             len(pseudo.paths), t.pseudo_teacher, len(pseudo.skipped), 100 * pseudo.kept_share)
    ramp = tf.Variable(ramp_value(0, t.pseudo_ramp_epochs), trainable=False, dtype=tf.float32)
    n_first = n_labelled if per_epoch is None else per_epoch
    return SelfTraining(labelled.concatenate(pseudo_dataset(pseudo)), n_first + len(pseudo.paths), ramp,
                        pseudo.card(str(t.pseudo_teacher), t.pseudo_threshold))
