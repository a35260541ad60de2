"""Class-aware batches (select.class_balance): predicted damage types take turns in a ranked batch."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from cardamage.active.balance import class_shares, dominant_class, round_robin
from cardamage.active.regions import select_regions
from cardamage.active.scorer import score_batch
from cardamage.active.selection import select_batch
from cardamage.active.strategies import SelectContext
from cardamage.config import ScoreParams


def _table(types: list[int], n_classes: int = 3) -> pd.DataFrame:
    """Photos ranked by entropy (first = most uncertain); ``types[i]``: the damage class photo i shows, -1 none."""
    n = len(types)
    shares = np.zeros((n, n_classes), np.float32)
    for i, t in enumerate(types):
        if t >= 0:
            shares[i, t] = 0.2
    return pd.DataFrame({"id": [f"{i:064x}" for i in range(n)], "path": [f"p{i}.jpg" for i in range(n)],
                         "entropy": np.linspace(1.0, 0.1, n), "class_shares": list(shares),
                         "entropy_cells": [np.full(4, 1.0 - i / n) for i in range(n)]})


def test_class_shares_are_per_damage_class_over_the_photo_pixels():
    probs = np.zeros((1, 4, 4, 3), np.float32)
    probs[..., 0] = 1.0
    probs[0, :2, :, :] = [0.0, 1.0, 0.0]  # top half: class 1
    probs[0, 3, :, :] = [0.0, 0.0, 1.0]  # bottom row: class 2, but letterbox padding
    valid = np.ones((1, 4, 4), bool)
    valid[0, 3] = False
    np.testing.assert_allclose(class_shares(probs, valid), [[8 / 12, 0.0]])
    cols = score_batch(probs, valid, ScoreParams())
    assert cols["class_shares"].shape == (1, 2)
    assert dominant_class(np.array([[0.0, 0.0], [0.1, 0.3], [0.2, 0.1]])).tolist() == [-1, 1, 0]


def test_round_robin_keeps_each_group_in_order_and_the_best_first():
    order = np.array([4, 0, 1, 2, 3, 5])
    groups = np.array([0, 0, 1, 1, 0, 2])
    assert round_robin(order, groups).tolist() == [4, 2, 5, 0, 3, 1]  # groups 0, 1, 2, 0, 1, 0


def test_a_balanced_batch_gives_rare_types_their_turn(caplog):
    # the seven most uncertain photos all show type 0; type 1 and 2 come later
    types = [0] * 7 + [1, 2, 1, -1]
    table = _table(types)
    plain = select_batch(table, "entropy", 4)
    assert [types[int(i, 16)] for i in plain["id"]] == [0, 0, 0, 0]
    with caplog.at_level(logging.INFO):
        balanced = select_batch(table, "entropy", 4, class_balance=True)
    assert [types[int(i, 16)] for i in balanced["id"]] == [0, 1, 2, -1]
    assert balanced["id"].iloc[0] == plain["id"].iloc[0], "the best photo stays first"
    assert "class balance" in caplog.text
    # region units too: cells of type-0 photos do not fill the batch
    cells = select_regions(table, "entropy", 3, SelectContext(3, class_balance=True), max_per_photo=1)
    assert sorted(types[int(i, 16)] for i in cells["id"]) == [0, 1, 2]


def test_binary_models_and_old_scores_rank_as_before(caplog):
    table = _table([0] * 4 + [-1] * 2, n_classes=1)
    expected = select_batch(table, "entropy", 3)["id"].tolist()
    assert select_batch(table, "entropy", 3, class_balance=True)["id"].tolist() == expected
    with caplog.at_level(logging.WARNING):
        old = select_batch(table.drop(columns=["class_shares"]), "entropy", 3, class_balance=True)
    assert old["id"].tolist() == expected and "no 'class_shares' column" in caplog.text
