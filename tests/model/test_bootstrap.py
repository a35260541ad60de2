"""Code tier: figures and bootstrap intervals over test photos from per-photo confusion matrices."""

from __future__ import annotations

import numpy as np
import pytest

from cardamage.model.bootstrap import class_iou, damage_iou, mean_iou, paired_difference, resample_weights, summarize
from cardamage.model.losses import iou_per_class


def _photos(rng: np.random.Generator, n: int, hit: float) -> np.ndarray:
    """``[n, 2, 2]`` matrices: 1000 px per photo, ~20 % damage, a share ``hit`` of it found."""
    cms = []
    for _ in range(n):
        damage = int(rng.integers(100, 300))
        found = int(damage * hit)
        false_pos = int(rng.integers(0, 50))
        cms.append([[1000 - damage - false_pos, false_pos], [damage - found, found]])
    return np.asarray(cms)


def test_figures_match_the_evaluation_formulas():
    cm = np.array([[50, 10, 0], [5, 20, 5], [0, 5, 5]])
    assert damage_iou(cm) == pytest.approx(35 / (100 - 50))
    np.testing.assert_allclose(class_iou(cm), iou_per_class(cm))
    assert mean_iou(cm) == pytest.approx(np.nanmean(iou_per_class(cm)))
    absent = np.array([[10, 0, 0], [0, 5, 0], [0, 0, 0]])
    assert np.isnan(class_iou(absent)[2]) and mean_iou(absent) == pytest.approx(1.0)


def test_weights_draw_each_resample_n_times_and_are_seeded():
    w = resample_weights(7, 50, seed=3)
    assert w.shape == (50, 7) and (w.sum(axis=1) == 7).all()
    np.testing.assert_array_equal(w, resample_weights(7, 50, seed=3))
    assert not np.array_equal(w, resample_weights(7, 50, seed=4))


def test_interval_holds_the_value_and_narrows_with_more_photos():
    rng = np.random.default_rng(0)
    small = summarize(_photos(rng, 8, 0.5), ["background", "damage"], 500, 0.9)
    large = summarize(_photos(rng, 200, 0.5), ["background", "damage"], 500, 0.9)
    for s in (small, large):
        lo, hi = s["damage_iou"]["ci"]
        assert lo <= s["damage_iou"]["value"] <= hi
        assert s["iou"]["damage"]["value"] == pytest.approx(s["damage_iou"]["value"])
    width = [s["damage_iou"]["ci"][1] - s["damage_iou"]["ci"][0] for s in (small, large)]
    assert width[1] < width[0] / 2
    assert summarize(_photos(rng, 3, 0.5), ["background", "damage"], 0, 0.9)["damage_iou"]["ci"] is None


def test_paired_difference_sees_a_small_consistent_gain_separate_intervals_miss():
    rng = np.random.default_rng(1)
    base = _photos(rng, 30, 0.5)
    better = base.copy()
    better[:, 1, 1] += 3  # 3 more damage pixels found on every photo
    better[:, 1, 0] -= 3
    diff = paired_difference(better, base, 1000, 0.9)
    assert diff["value"] > 0 and diff["ci"][0] > 0, "paired: every resample shows the gain"
    a = summarize(better, ["background", "damage"], 1000, 0.9)["damage_iou"]["ci"]
    b = summarize(base, ["background", "damage"], 1000, 0.9)["damage_iou"]["ci"]
    assert a[0] < b[1], "unpaired intervals overlap"
    same = paired_difference(base, base, 200, 0.9)
    assert same == {"value": 0.0, "ci": [0.0, 0.0]}
    with pytest.raises(ValueError, match="shapes differ"):
        paired_difference(base, base[:3], 10, 0.9)
