"""Repeat-factor sampling (class-balanced photos): factors, rounding, the repeated dataset, bad thresholds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from cardamage.data.annotations import ImageRecord, Instance
from cardamage.errors import BadParameterError
from cardamage.model.sampling import plan_repeats, repeat_dataset, repeat_factors, stochastic_round

SQUARE = [[(0, 0), (4, 0), (4, 4)]]


def _record(path: str, *categories: str) -> ImageRecord:
    return ImageRecord(path=path, instances=[Instance(c, SQUARE) for c in categories])


def test_a_rare_class_gets_sqrt_of_threshold_over_its_share():
    present = [{"bonnet"}] + [{"scratch"}] * 4 + [{"scratch", "bonnet"}] + [set()] * 4  # bonnet 2/10, scratch 5/10
    factors, share, factor = repeat_factors(present, ["scratch", "bonnet"], threshold=0.8)
    assert share == {"scratch": 0.5, "bonnet": 0.2}
    assert factor["bonnet"] == pytest.approx(2.0) and factor["scratch"] == pytest.approx(math.sqrt(1.6))
    assert factors[0] == pytest.approx(2.0) and factors[5] == pytest.approx(2.0), "a photo takes its rarest class"
    assert factors[1] == pytest.approx(math.sqrt(1.6)) and list(factors[6:]) == [1.0] * 4


def test_a_class_above_the_threshold_and_a_threshold_of_zero_repeat_nothing():
    present = [{"a"}, {"a"}, {"b"}, set()]
    assert list(repeat_factors(present, ["a", "b"], threshold=0.25)[0]) == [1.0, 1.0, 1.0, 1.0]
    assert list(repeat_factors(present, ["a", "b"], threshold=0.0)[0]) == [1.0, 1.0, 1.0, 1.0]


def test_unreadable_photos_count_nowhere():
    present = [{"a"}, {"b"}, {"b"}, {"b"}]
    factors, share, _ = repeat_factors(present, ["a", "b"], 0.5, readable=np.array([True, False, True, True]))
    assert share == {"a": pytest.approx(1 / 3), "b": pytest.approx(2 / 3)}
    assert factors[1] == 0.0 and factors[0] == pytest.approx(math.sqrt(1.5))


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.3"])
def test_a_threshold_outside_0_1_is_refused(bad):
    with pytest.raises(BadParameterError, match="train.repeat_threshold"):
        repeat_factors([{"a"}], ["a"], bad)


def test_stochastic_rounding_keeps_the_expected_count_and_is_seeded():
    factors = np.array([1.0, 2.0, 1.5, 2.25] * 5000)
    counts = stochastic_round(factors, seed=3)
    assert counts.dtype == np.int64 and set(counts[0::4]) == {1} and set(counts[1::4]) == {2}
    assert set(counts[2::4]) == {1, 2} and set(counts[3::4]) == {2, 3}
    assert counts.mean() == pytest.approx(factors.mean(), rel=0.01)
    assert np.array_equal(counts, stochastic_round(factors, seed=3))
    assert not np.array_equal(counts, stochastic_round(factors, seed=4))


def test_plan_repeats_maps_categories_and_leaves_skipped_photos_out():
    records = [_record("a.jpg", "gocuk"), _record("b.jpg", "cizik"), _record("c.jpg", "cizik"),
               _record("d.jpg", "cizik"), _record("e.jpg", "other"), _record("broken.jpg", "gocuk")]
    plan = plan_repeats(records, ["dent", "scratch"], {"gocuk": "dent", "cizik": "scratch"}, 1.0, seed=0,
                        skipped=["broken.jpg"])
    assert plan.class_photo_share == {"dent": 0.2, "scratch": 0.6}
    assert plan.counts[-1] == 0 and plan.counts[4] == 1, "unreadable: never shown; no model class: once"
    assert plan.counts[0] in (2, 3) and plan.counts[1] in (1, 2)  # sqrt(5) = 2.24, sqrt(1 / 0.6) = 1.29
    assert plan.card()["photos_per_epoch"] == plan.total == int(plan.counts.sum())


def test_repeat_dataset_repeats_each_element_and_knows_its_length():
    base = tf.data.Dataset.range(4).map(lambda i: (tf.fill([2, 2, 3], tf.cast(i, tf.uint8)),
                                                     tf.zeros([2, 2], tf.uint8), i))
    ds = repeat_dataset(base, np.array([0, 2, 1, 3]))
    assert int(ds.cardinality()) == 6
    seen = [(int(i), int(img[0, 0, 0])) for img, _, i in ds]
    assert seen == [(1, 1), (1, 1), (2, 2), (3, 3), (3, 3), (3, 3)]
