"""COCO mask AP from connected regions (pycocotools) on hand-made masks, where the answer is known."""

from __future__ import annotations

import numpy as np

from cardamage.model.mask_ap import MaskInstances, mask_ap


def squares(size: int = 64, shift: int = 0, classes=(1, 2)) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[5 + shift:20 + shift, 5:20] = classes[0]
    m[35:55, 35 + shift:55 + shift] = classes[1]
    return m


def probs_of(pred: np.ndarray, k: int = 3, p: float = 0.9) -> np.ndarray:
    out = np.full(pred.shape + (k,), (1 - p) / (k - 1), np.float32)
    np.put_along_axis(out, np.minimum(pred, k - 1)[..., None].astype(int), p, axis=-1)
    return out


def test_a_perfect_prediction_has_ap_one_for_every_class():
    found = MaskInstances()
    for _ in range(3):
        truth = squares()
        found.add(truth, truth, probs_of(truth), 3)
    result = mask_ap(found, ["dent", "scratch"])
    assert result["mask_ap"] == 1.0 and result["mask_ap50"] == 1.0
    assert result["per_class"] == {"dent": 1.0, "scratch": 1.0}
    assert result["gt_instances"] == 6 and result["detections"] == 6


def test_shifted_swapped_and_missed_regions_lower_the_ap():
    truth = squares()
    shifted, swapped, missed = MaskInstances(), MaskInstances(), MaskInstances()
    shifted.add(truth, squares(shift=4), probs_of(squares(shift=4)), 3)
    swapped.add(truth, squares(classes=(2, 1)), probs_of(squares(classes=(2, 1))), 3)
    empty = np.zeros_like(truth)
    missed.add(truth, empty, probs_of(empty), 3)
    s, w, m = (mask_ap(f, ["dent", "scratch"]) for f in (shifted, swapped, missed))
    assert 0 < s["mask_ap"] < 1 and s["mask_ap50"] == 1.0  # IoU ~0.6-0.7: found at 0.5, not at 0.75+
    assert w["mask_ap"] == 0.0 and m["mask_ap"] == 0.0 and m["detections"] == 0


def test_a_class_without_ground_truth_has_no_ap_and_ignored_pixels_make_no_detection():
    truth = squares(classes=(1, 1))
    truth[:, 60:] = 255
    pred = truth.copy()
    pred[pred == 255] = 2  # "scratch" predicted only on ignored pixels
    found = MaskInstances()
    found.add(truth, pred, probs_of(pred), 3)
    result = mask_ap(found, ["dent", "scratch"])
    assert result["per_class"]["scratch"] is None and result["per_class"]["dent"] == 1.0
    assert result["detections"] == 2
