"""Segmentation loss and metrics: Keras objects for training, NumPy functions for evaluation.

Label masks are integer class indices ``[N, H, W]`` (0 = background, ``i + 1`` = ``classes[i]``,
:data:`IGNORE_INDEX` = no label, e.g. letterbox padding); predictions are softmax probabilities
``[N, H, W, C]``. Pixels labelled :data:`IGNORE_INDEX` count nowhere.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from cardamage.data.reviewed import IGNORE_INDEX  # noqa: F401 (the label of "no label here")
from cardamage.errors import BadParameterError

log = logging.getLogger(__name__)

_EPS = 1e-6


# ----------------------------------------------------------------------------- class weights

def class_weights_from_counts(counts: Sequence[float], method: str = "inverse_sqrt",
                              max_weight: float = 10.0) -> np.ndarray:
    """Per-class loss weights ``float32 [C]`` from label pixel counts ``[C]``.

    ``inverse_sqrt``: ``w ~ 1/sqrt(freq)``; ``median_frequency``: ``w = median(freq)/freq``;
    ``none``: all ones. Weights are scaled so the pixel-weighted mean is 1, then capped at
    ``max_weight``; classes with no pixels get weight 1.
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1 or c.size < 2 or (c < 0).any():
        raise ValueError(f"counts: expected >= 2 non-negative pixel counts, got {c.tolist()}")
    if method == "none" or c.sum() == 0:
        return np.ones(c.size, dtype=np.float32)
    freq = c / c.sum()
    present = freq > 0
    w = np.ones_like(freq)
    if method == "inverse_sqrt":
        w[present] = 1.0 / np.sqrt(freq[present])
    elif method == "median_frequency":
        w[present] = np.median(freq[present]) / freq[present]
    else:
        raise BadParameterError(f"train.class_weighting: unknown method {method!r} "
                         "(inverse_sqrt, median_frequency or none)")
    w[present] /= float((freq[present] * w[present]).sum())
    return np.minimum(w, max_weight).astype(np.float32)


# ----------------------------------------------------------------------------- loss

@keras.saving.register_keras_serializable(package="cardamage")
class SegmentationLoss(keras.losses.Loss):
    """Class-weighted cross-entropy (focal when ``focal_gamma > 0``) plus soft Dice plus Lovasz-softmax.

    ``loss = sum(w[y] * ce) / sum(w[y]) + dice_weight * (1 - mean foreground Dice)
    + lovasz_weight * lovasz``, over the labelled pixels of the batch. Dice is averaged over the
    foreground classes 1..C-1; Lovasz-softmax (:func:`lovasz_softmax`) over the classes present in the
    batch's labels.

    Args:
        class_weights: ``[C]`` weights (``None`` = ones), or a ``keras.Variable [C]`` read at every
            call: assigning new weights to it then needs no retracing (the active-learning
            simulation retrains one compiled head on many labelled sets).
        dice_weight: weight of the Dice term (0 = cross-entropy only).
        focal_gamma: focusing parameter of the focal loss (0 = plain cross-entropy).
        lovasz_weight: weight of the Lovasz-softmax term (0 = none): a convex surrogate of 1 - IoU
            that follows the metric the model is judged by (Berman et al., CVPR 2018).
    """

    def __init__(self, num_classes: int, class_weights: Sequence[float] | keras.Variable | None = None,
                 dice_weight: float = 1.0, focal_gamma: float = 0.0, name: str = "segmentation_loss",
                 lovasz_weight: float = 0.0, **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self._weight_variable = class_weights if isinstance(class_weights, keras.Variable) else None
        if self._weight_variable is not None:
            class_weights = ops.convert_to_numpy(self._weight_variable).tolist()
        if num_classes < 2:
            raise ValueError(f"num_classes: need at least 2 (background + 1), got {num_classes}")
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(f"class_weights: expected {num_classes} values, got {len(class_weights)}")
        if dice_weight < 0 or focal_gamma < 0 or lovasz_weight < 0:
            raise ValueError(f"dice_weight / focal_gamma / lovasz_weight: must be >= 0, got {dice_weight} / "
                             f"{focal_gamma} / {lovasz_weight}")
        self.num_classes = int(num_classes)
        self.class_weights = [float(w) for w in class_weights] if class_weights is not None else None
        self.dice_weight = float(dice_weight)
        self.focal_gamma = float(focal_gamma)
        self.lovasz_weight = float(lovasz_weight)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        probs = ops.clip(ops.cast(y_pred, "float32"), _EPS, 1.0 - _EPS)
        labels = ops.cast(ops.reshape(y_true, ops.shape(probs)[:-1]), "int32")
        valid = ops.cast(ops.not_equal(labels, IGNORE_INDEX), "float32")
        onehot = ops.one_hot(ops.where(labels == IGNORE_INDEX, 0, labels), self.num_classes) * valid[..., None]
        loss = self._cross_entropy(probs, onehot)
        if self.dice_weight > 0:
            loss = loss + self.dice_weight * self._dice(probs * valid[..., None], onehot)
        if self.lovasz_weight > 0:
            loss = loss + self.lovasz_weight * lovasz_softmax(probs, onehot, valid)
        return loss

    def _cross_entropy(self, probs: Any, onehot: Any) -> Any:
        weights = self._weight_variable
        if weights is None:
            weights = ops.convert_to_tensor(self.class_weights or [1.0] * self.num_classes, "float32")
        pixel_w = ops.sum(onehot * weights, axis=-1)
        p_true = ops.sum(onehot * probs, axis=-1)
        ce = -ops.log(ops.maximum(p_true, _EPS))
        if self.focal_gamma > 0:
            ce = ce * ops.power(1.0 - p_true, self.focal_gamma)
        return ops.sum(pixel_w * ce) / ops.maximum(ops.sum(pixel_w), _EPS)

    def _dice(self, probs: Any, onehot: Any) -> Any:
        axes = tuple(range(len(probs.shape) - 1))
        inter = ops.sum(probs * onehot, axis=axes)[1:]
        total = ops.sum(probs, axis=axes)[1:] + ops.sum(onehot, axis=axes)[1:]
        dice = (2.0 * inter + 1.0) / (total + 1.0)
        return 1.0 - ops.mean(dice)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        weights = self.class_weights
        if self._weight_variable is not None:
            weights = [float(w) for w in ops.convert_to_numpy(self._weight_variable)]
        config.update({"num_classes": self.num_classes, "class_weights": weights,
                       "dice_weight": self.dice_weight, "focal_gamma": self.focal_gamma,
                       "lovasz_weight": self.lovasz_weight})
        return config


def _lovasz_grad(gt_sorted: Any) -> Any:
    """Gradient of the Lovasz extension of the Jaccard loss: ``[P]`` 0/1 labels sorted by error, descending."""
    gts = ops.sum(gt_sorted)
    intersection = gts - ops.cumsum(gt_sorted)
    union = gts + ops.cumsum(1.0 - gt_sorted)
    jaccard = 1.0 - intersection / ops.maximum(union, _EPS)
    return ops.concatenate([jaccard[:1], jaccard[1:] - jaccard[:-1]], axis=0)


def lovasz_softmax(probs: Any, onehot: Any, valid: Any) -> Any:
    """Lovasz-softmax loss (Berman et al., 2018) over all labelled pixels of a batch.

    Args:
        probs: ``float32 [..., C]`` probabilities; onehot: ``float32 [..., C]`` labels (zeros on
            ignored pixels); valid: ``float32 [...]`` 1 on labelled pixels.

    Returns:
        The mean over the classes present in the labels of the Lovasz extension of ``1 - IoU``: for
        hard (0/1) predictions it equals ``1 - IoU`` exactly. Ignored pixels get error 0, so they sort
        last and add nothing. A batch without labelled pixels gives 0.
    """
    c = probs.shape[-1]
    p = ops.reshape(probs, (-1, c))
    y = ops.reshape(onehot, (-1, c))
    errors = ops.abs(y - p) * ops.reshape(valid, (-1, 1))
    losses, present = [], []
    for k in range(c):  # C is small (2-9): one sort of the batch's pixels per class
        order = ops.flip(ops.argsort(errors[:, k]), axis=0)
        grad = ops.stop_gradient(_lovasz_grad(ops.take(y[:, k], order)))
        losses.append(ops.sum(ops.take(errors[:, k], order) * grad))
        present.append(ops.cast(ops.sum(y[:, k]) > 0, "float32"))
    present_t = ops.stack(present)
    return ops.sum(ops.stack(losses) * present_t) / ops.maximum(ops.sum(present_t), 1.0)


# ----------------------------------------------------------------------------- Keras metrics

@keras.saving.register_keras_serializable(package="cardamage")
class ConfusionIoU(keras.metrics.Metric):
    """Streaming IoU from a confusion matrix; predictions are ``argmax`` of the probabilities.

    ``mode="mean"``: mean IoU over the classes seen in labels or predictions (background included);
    ``mode="foreground"``: IoU of "any damage class" against background.
    """

    def __init__(self, num_classes: int, mode: str = "mean", name: str | None = None, **kwargs: Any):
        if mode not in ("mean", "foreground"):
            raise ValueError(f"mode: expected 'mean' or 'foreground', got {mode!r}")
        super().__init__(name=name or f"{mode}_iou", **kwargs)
        self.num_classes = int(num_classes)
        self.mode = mode
        self.cm = self.add_variable(shape=(self.num_classes, self.num_classes), initializer="zeros",
                                    dtype="float32", name="confusion")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        c = self.num_classes
        pred = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
        labels = ops.cast(ops.reshape(y_true, ops.shape(pred)), "int32")
        valid = ops.not_equal(labels, IGNORE_INDEX)
        index = ops.where(valid, labels * c + pred, 0)
        counts = ops.bincount(ops.reshape(index, (-1,)), weights=ops.reshape(ops.cast(valid, "float32"), (-1,)),
                              minlength=c * c)
        self.cm.assign_add(ops.reshape(ops.cast(counts, "float32")[: c * c], (c, c)))

    def result(self) -> Any:
        cm = self.cm
        if self.mode == "foreground":
            tp = ops.sum(cm[1:, 1:])
            denom = ops.sum(cm) - cm[0, 0]
            return ops.where(denom > 0, tp / ops.maximum(denom, 1.0), 0.0)
        tp = ops.diagonal(cm)
        denom = ops.sum(cm, axis=0) + ops.sum(cm, axis=1) - tp
        seen = ops.cast(denom > 0, "float32")
        iou = tp / ops.maximum(denom, 1.0)
        return ops.sum(iou * seen) / ops.maximum(ops.sum(seen), 1.0)

    def reset_state(self) -> None:
        self.cm.assign(ops.zeros((self.num_classes, self.num_classes), "float32"))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_classes": self.num_classes, "mode": self.mode}


# ----------------------------------------------------------------------------- NumPy evaluation

def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``int64 [C, C]`` counts, rows = truth, columns = prediction, ignoring :data:`IGNORE_INDEX`.

    Args:
        y_true, y_pred: integer class masks of the same shape.
    """
    t = np.asarray(y_true).ravel().astype(np.int64)
    p = np.asarray(y_pred).ravel().astype(np.int64)
    if t.shape != p.shape:
        raise ValueError(f"y_true / y_pred: shapes differ {np.shape(y_true)} vs {np.shape(y_pred)}")
    keep = t != IGNORE_INDEX
    t, p = t[keep], p[keep]
    if t.size and (t.max() >= num_classes or p.max() >= num_classes):
        raise ValueError(f"class index out of range for num_classes={num_classes}")
    return np.bincount(t * num_classes + p, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """IoU ``[C]`` per class from a confusion matrix; NaN for a class absent from truth and prediction."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    denom = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / denom, np.nan)


def dice_per_class(cm: np.ndarray) -> np.ndarray:
    """Dice (F1) ``[C]`` per class from a confusion matrix; NaN for an absent class."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    denom = cm.sum(0) + cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, np.nan)


def foreground_precision_recall(cm: np.ndarray) -> tuple[float, float]:
    """Pixel precision and recall of "any damage class" (classes >= 1) against background."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = cm[1:, 1:].sum()
    pred_pos, true_pos = cm[:, 1:].sum(), cm[1:, :].sum()
    return (float(tp / pred_pos) if pred_pos else 0.0, float(tp / true_pos) if true_pos else 0.0)


def binary_prf(scores: Sequence[float], labels: Sequence[bool], threshold: float) -> dict[str, float]:
    """Precision, recall, F1 and counts of ``score >= threshold`` against boolean ``labels``."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    pred = s >= threshold
    tp, fp, fn = int((pred & y).sum()), int((pred & ~y).sum()), int((~pred & y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn,
            "tn": int((~pred & ~y).sum()), "threshold": float(threshold)}


def precision_recall_curve(scores: Sequence[float],
                           labels: Sequence[bool]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision ``[K]``, recall ``[K]`` and thresholds ``[K]`` at every distinct score (descending)."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    thresholds = np.unique(s)[::-1]
    prec, rec = [], []
    positives = max(int(y.sum()), 1)
    for t in thresholds:
        pred = s >= t
        tp = int((pred & y).sum())
        prec.append(tp / max(int(pred.sum()), 1))
        rec.append(tp / positives)
    return np.asarray(prec), np.asarray(rec), thresholds
