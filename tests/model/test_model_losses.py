"""Code tier: loss and metrics on hand-made arrays with values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cardamage.model.losses import (
    IGNORE_INDEX,
    ConfusionIoU,
    SegmentationLoss,
    binary_prf,
    class_weights_from_counts,
    confusion_matrix,
    dice_per_class,
    foreground_precision_recall,
    iou_per_class,
    precision_recall_curve,
)


def probs_of(p_damage: list[list[float]]) -> np.ndarray:
    """Binary probabilities ``[1, H, W, 2]`` from a damage-probability grid."""
    d = np.asarray(p_damage, np.float32)[None]
    return np.stack([1 - d, d], axis=-1)


def test_uniform_prediction_gives_ln2_plus_dice():
    labels = np.array([[[0, 1], [1, 0]]])
    loss = SegmentationLoss(2, dice_weight=1.0)(labels, probs_of([[0.5, 0.5], [0.5, 0.5]]))
    # CE = ln 2; Dice = (2 * 0.5 * 2 + 1) / (0.5 * 4 + 2 + 1) = 3 / 5
    assert float(loss) == pytest.approx(math.log(2) + 0.4, abs=1e-5)


def test_ignored_pixels_do_not_count():
    labels = np.array([[[0, 1, IGNORE_INDEX]]])
    probs = probs_of([[0.2, 0.7, 0.99]])
    loss = SegmentationLoss(2, dice_weight=0.0)(labels, probs)
    assert float(loss) == pytest.approx(-(math.log(0.8) + math.log(0.7)) / 2, abs=1e-5)


def test_class_weights_and_focal_term():
    labels = np.array([[[0, 1]]])
    probs = probs_of([[0.2, 0.4]])
    weighted = SegmentationLoss(2, class_weights=[1.0, 3.0], dice_weight=0.0)(labels, probs)
    assert float(weighted) == pytest.approx((-math.log(0.8) - 3 * math.log(0.4)) / 4, abs=1e-5)
    focal = SegmentationLoss(2, dice_weight=0.0, focal_gamma=2.0)(labels, probs)
    expected = (-(0.2 ** 2) * math.log(0.8) - (0.6 ** 2) * math.log(0.4)) / 2
    assert float(focal) == pytest.approx(expected, abs=1e-5)


def test_perfect_prediction_has_near_zero_loss():
    labels = np.array([[[0, 1], [1, 1]]])
    loss = SegmentationLoss(2)(labels, probs_of([[0.0, 1.0], [1.0, 1.0]]))
    assert float(loss) < 1e-3


def test_loss_argument_checks():
    with pytest.raises(ValueError, match="class_weights: expected 2 values, got 3"):
        SegmentationLoss(2, class_weights=[1, 1, 1])
    with pytest.raises(ValueError, match="num_classes"):
        SegmentationLoss(1)


def test_confusion_iou_metric():
    labels = np.array([[[0, 0, 1, 1, IGNORE_INDEX]]])
    probs = probs_of([[0.1, 0.9, 0.8, 0.7, 0.9]])  # argmax 0 1 1 1 (1)
    mean = ConfusionIoU(2, "mean")
    mean.update_state(labels, probs)
    assert float(mean.result()) == pytest.approx((1 / 2 + 2 / 3) / 2, abs=1e-6)
    fg = ConfusionIoU(2, "foreground")
    fg.update_state(labels, probs)
    assert float(fg.result()) == pytest.approx(2 / 3, abs=1e-6)
    fg.reset_state()
    assert float(fg.result()) == 0.0


def test_numpy_metrics_from_a_confusion_matrix():
    truth = np.array([0, 0, 1, 1, 2, IGNORE_INDEX])
    pred = np.array([0, 1, 1, 1, 0, 2])
    cm = confusion_matrix(truth, pred, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    np.testing.assert_allclose(iou_per_class(cm), [1 / 3, 2 / 3, 0.0])
    np.testing.assert_allclose(dice_per_class(cm), [0.5, 0.8, 0.0])
    assert foreground_precision_recall(cm) == pytest.approx((2 / 3, 2 / 3))
    assert np.isnan(iou_per_class(np.zeros((2, 2)))).all()


def test_class_weights_from_pixel_frequencies():
    np.testing.assert_allclose(class_weights_from_counts([90, 10]), [5 / 6, 2.5], rtol=1e-5)
    np.testing.assert_allclose(class_weights_from_counts([90, 10], "median_frequency", max_weight=4), [5 / 9, 4.0],
                               rtol=1e-5)
    np.testing.assert_allclose(class_weights_from_counts([90, 0]), [1.0, 1.0])
    np.testing.assert_allclose(class_weights_from_counts([90, 10], "none"), [1.0, 1.0])
    with pytest.raises(ValueError, match="unknown method 'magic'"):
        class_weights_from_counts([1, 1], "magic")


def test_image_level_precision_recall():
    scores, labels = [0.9, 0.8, 0.3, 0.1], [True, False, True, False]
    prf = binary_prf(scores, labels, 0.5)
    assert (prf["tp"], prf["fp"], prf["fn"], prf["tn"]) == (1, 1, 1, 1)
    assert prf["f1"] == pytest.approx(0.5)
    precision, recall, thresholds = precision_recall_curve(scores, labels)
    np.testing.assert_allclose(thresholds, [0.9, 0.8, 0.3, 0.1])
    np.testing.assert_allclose(precision, [1.0, 0.5, 2 / 3, 0.5])
    np.testing.assert_allclose(recall, [0.5, 0.5, 1.0, 1.0])


def _lovasz_only(labels: np.ndarray, probs: np.ndarray, num_classes: int) -> float:
    return float(SegmentationLoss(num_classes, dice_weight=0.0, lovasz_weight=1.0)(labels, probs)
                 - SegmentationLoss(num_classes, dice_weight=0.0)(labels, probs))


def test_lovasz_of_hard_predictions_is_one_minus_iou_over_present_classes():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(2, 6, 5))
    labels[labels == 2] = 1  # class 2 absent from the labels: it does not count ...
    pred = rng.integers(0, 3, size=(2, 6, 5))  # ... even where it is predicted
    labels[0, 0, :3] = IGNORE_INDEX
    probs = np.eye(3, dtype=np.float32)[pred]
    valid = labels != IGNORE_INDEX
    ious = [np.sum((pred == k) & (labels == k) & valid) / np.sum(((pred == k) | (labels == k)) & valid)
            for k in (0, 1)]
    assert _lovasz_only(labels, probs, 3) == pytest.approx(1 - np.mean(ious), abs=1e-4)


def test_lovasz_is_zero_when_right_and_grows_as_predictions_get_worse():
    labels = np.array([[[0, 1, 1, 0]]])
    assert _lovasz_only(labels, probs_of([[0.0, 1.0, 1.0, 0.0]]), 2) == pytest.approx(0.0, abs=1e-4)
    losses = [_lovasz_only(labels, probs_of([[p, 1 - p, 1 - p, p]]), 2) for p in (0.1, 0.3, 0.6)]
    assert 0 < losses[0] < losses[1] < losses[2]


def test_lovasz_gives_gradients_and_round_trips_in_the_config():
    import tensorflow as tf

    loss = SegmentationLoss(2, dice_weight=0.0, lovasz_weight=0.5)
    labels = np.array([[[0, 1], [1, IGNORE_INDEX]]])
    logits = tf.Variable(np.zeros((1, 2, 2, 2), np.float32))
    with tf.GradientTape() as tape:
        value = loss(labels, tf.nn.softmax(logits))
    grad = tape.gradient(value, logits).numpy()
    assert np.isfinite(grad).all() and np.abs(grad[0, :, :1]).sum() > 0 and np.abs(grad[0, 1, 1]).sum() == 0
    assert SegmentationLoss.from_config(loss.get_config()).lovasz_weight == 0.5
    with pytest.raises(ValueError, match="lovasz_weight"):
        SegmentationLoss(2, lovasz_weight=-1)
