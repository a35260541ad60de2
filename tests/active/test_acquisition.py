"""Acquisition functions on hand-made probability arrays with known rankings."""

from __future__ import annotations

import numpy as np
import pytest

from cardamage.active import acquisition as acq


def _probs(*pixels: tuple[float, ...], h: int = 2, w: int = 2) -> np.ndarray:
    """One image per tuple, every pixel holding those class probabilities: ``[N, h, w, C]``."""
    return np.stack([np.broadcast_to(np.array(p, np.float32), (h, w, len(p))) for p in pixels])


def test_uniform_ranks_above_confident_for_every_score():
    probs = _probs((0.5, 0.5), (0.99, 0.01), (0.7, 0.3))
    for name, fn in (("entropy", acq.entropy_map), ("margin", acq.margin_map),
                     ("least_confidence", acq.least_confidence_map)):
        scores = acq.reduce_pixels(fn(probs), "mean")
        assert list(np.argsort(-scores)) == [0, 2, 1], name


def test_known_values():
    probs = _probs((0.5, 0.5), (1.0, 0.0))
    np.testing.assert_allclose(acq.entropy_map(probs)[:, 0, 0], [np.log(2), 0.0], atol=1e-6)
    np.testing.assert_allclose(acq.margin_map(probs)[:, 0, 0], [1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(acq.least_confidence_map(probs)[:, 0, 0], [0.5, 0.0], atol=1e-6)


def test_margin_uses_the_two_largest_of_three_classes():
    probs = _probs((0.1, 0.45, 0.45), (0.8, 0.1, 0.1), (0.5, 0.3, 0.2))
    np.testing.assert_allclose(acq.margin_map(probs)[:, 0, 0], [1.0, 0.3, 0.8], atol=1e-6)
    assert acq.entropy_map(probs).shape == (3, 2, 2)


def test_bald_zero_when_samples_agree_even_if_uncertain():
    uncertain = _probs((0.5, 0.5), (0.6, 0.4))
    samples = np.stack([uncertain] * 5)  # [T=5, N=2, 2, 2, 2]
    np.testing.assert_allclose(acq.bald_map(samples), 0.0, atol=1e-6)


def test_bald_ranks_disagreement_highest():
    agree = _probs((0.5, 0.5))
    disagree_a, disagree_b = _probs((0.99, 0.01)), _probs((0.01, 0.99))
    t0 = np.concatenate([agree, disagree_a])
    t1 = np.concatenate([agree, disagree_b])
    mi = acq.reduce_pixels(acq.bald_map(np.stack([t0, t1])), "mean")
    assert mi[1] > 0.5 and mi[0] == pytest.approx(0.0, abs=1e-6)


def test_topk_reduction_finds_a_small_uncertain_region():
    pixel = np.zeros((2, 10, 10), np.float32)
    pixel[0, :2, :5] = 1.0  # 10 % of image 0 very uncertain
    pixel[1] = 0.2  # image 1 mildly uncertain everywhere
    assert np.argmax(acq.reduce_pixels(pixel, "mean")) == 1
    top = acq.reduce_pixels(pixel, "topk", topk_percent=10)
    np.testing.assert_allclose(top, [1.0, 0.2], atol=1e-6)
    # at least one pixel, even for a tiny k
    np.testing.assert_allclose(acq.reduce_pixels(pixel, "topk", topk_percent=0.001), [1.0, 0.2])


def test_damage_reduction_on_crafted_masks():
    pixel = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    damage = np.array([[[True, False], [False, True]], [[False, False], [False, False]]])
    np.testing.assert_allclose(acq.reduce_pixels(pixel, "damage", damage=damage), [(0 + 3) / 2, 0.0])
    with pytest.raises(ValueError, match="damage"):
        acq.reduce_pixels(pixel, "damage")


def test_valid_mask_ignores_padding():
    pixel = np.array([[[1.0, 0.0], [0.0, 0.0]]], np.float32)
    valid = np.array([[[False, True], [True, True]]])
    assert acq.reduce_pixels(pixel, "mean", valid=valid)[0] == 0.0
    assert acq.reduce_pixels(pixel, "topk", topk_percent=50, valid=valid)[0] == 0.0


def test_damage_reduction_uses_argmax():
    from cardamage.active.scorer import score_batch
    from cardamage.config import ScoreParams

    probs = _probs((0.4, 0.6), (0.9, 0.1))
    valid = np.ones(probs.shape[:-1], bool)
    out = score_batch(probs, valid, ScoreParams(reduction="damage"), samples=np.stack([probs, probs]))
    assert out["entropy"][0] > 0 and out["entropy"][1] == 0.0  # image 1 has no predicted damage
    np.testing.assert_allclose(out["bald"], 0.0, atol=1e-6)


def test_random_scores_seeded_and_order_independent():
    np.testing.assert_array_equal(acq.random_scores(5, seed=3), acq.random_scores(5, seed=3))
    assert not np.array_equal(acq.random_scores(5, seed=3), acq.random_scores(5, seed=4))
    a = acq.random_scores(["x", "y", "z"], seed=1)
    b = acq.random_scores(["z", "x"], seed=1)
    assert b[0] == a[2] and b[1] == a[0] and ((a >= 0) & (a < 1)).all()


@pytest.mark.parametrize("bad", [np.zeros((2, 2, 2)), np.zeros((1, 2, 2, 1))])
def test_shape_errors_name_the_argument(bad):
    with pytest.raises(ValueError, match="probs"):
        acq.entropy_map(bad)


def test_unknown_reduction_and_method():
    with pytest.raises(ValueError, match="reduction"):
        acq.reduce_pixels(np.zeros((1, 2, 2)), "max")
    from cardamage.active.strategies import ScoreBatch, get_strategy
    from cardamage.config import ScoreParams

    with pytest.raises(ValueError, match="bald"):
        get_strategy("bald").score(ScoreBatch(_probs((0.5, 0.5)), None, None, ["a"], ScoreParams()))
    with pytest.raises(ValueError, match="topk_percent"):
        acq.reduce_pixels(np.zeros((1, 2, 2)), "topk", topk_percent=0)
