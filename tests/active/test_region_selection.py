"""Region units: per-cell scores and the selection of cells (synthetic tables, no model)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from cardamage.active.regions import cell_box, cell_scores, select_regions
from cardamage.active.strategies import SelectContext
from cardamage.errors import BadInputError, BadParameterError


def test_cells_split_the_photo_not_the_letterbox_padding():
    pixel = np.zeros((1, 8, 8), np.float32)
    valid = np.zeros((1, 8, 8), bool)
    valid[0, 2:6, :] = True  # a wide photo letterboxed: rows 2-5
    pixel[0, 2:4, 4:8] = 1.0  # uncertain: top-right quarter of the photo
    cells = cell_scores(pixel, valid, 2)
    np.testing.assert_allclose(cells, [[0.0, 1.0, 0.0, 0.0]])
    assert cell_scores(pixel, None, 1).shape == (1, 1)
    with pytest.raises(BadParameterError, match="region_grid"):
        cell_scores(pixel, valid, 0)


def test_cell_boxes_tile_the_photo():
    boxes = [cell_box(k, 3, 100, 50) for k in range(9)]
    assert boxes[0] == (0, 0, 33, 17) and boxes[8] == (67, 33, 33, 17)
    assert sum(w * h for _, _, w, h in boxes) == 100 * 50


def _table(n: int = 3, grid: int = 2) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"id": [f"{i:064d}" for i in range(n)], "path": [f"p{i}.jpg" for i in range(n)],
                         "entropy": rng.random(n), "entropy_cells": [rng.random(grid * grid) for _ in range(n)],
                         "phash": [f"{i:016x}" for i in range(n)]})


def test_best_cells_first_under_the_per_photo_cap():
    table = _table()
    table["entropy_cells"] = [np.array([0.99, 0.98, 0.97, 0.96])] + list(table["entropy_cells"][1:])
    picked = select_regions(table, "entropy", 3, SelectContext(3), max_per_photo=2)
    assert list(picked["id"][:2]) == [table["id"][0]] * 2 and list(picked["cell"][:2]) == [0, 1]
    assert picked["id"][2] != table["id"][0]
    assert "cell (0, 0) of 2x2" in picked["reason"][0]


def test_near_duplicate_photos_and_claims_do_not_fill_a_batch():
    table = _table()
    table["phash"] = ["0" * 16, "0" * 15 + "1", "f" * 16]  # photos 0 and 1 are near-duplicates
    cells = list(table["entropy_cells"])
    cells[1] = np.array([2.0, 2.0, 2.0, 2.0])
    table["entropy_cells"] = cells
    picked = select_regions(table, "entropy", 3, SelectContext(3, near_duplicate_distance=4), max_per_photo=2)
    photos = picked["id"].tolist()
    assert photos[:2] == [table["id"][1]] * 2 and table["id"][0] not in photos, "the near-duplicate waits"
    table["claim"] = ["c1", "c1", "c2"]
    picked = select_regions(table, "entropy", 4, SelectContext(4, max_per_claim=1), max_per_photo=2)
    assert set(picked["id"]) == {table["id"][1], table["id"][2]}


def test_stochastic_and_random_draws_are_seeded():
    table = _table(6)
    a = select_regions(table, "entropy", 4, SelectContext(4, seed=1, stochastic="power"), 2)
    b = select_regions(table, "entropy", 4, SelectContext(4, seed=1, stochastic="power"), 2)
    assert a.equals(b)
    r = select_regions(table, "random", 4, SelectContext(4, seed=3), 2)
    assert len(r) == 4 and r.equals(select_regions(table.iloc[::-1], "random", 4, SelectContext(4, seed=3), 2))


def test_a_budget_beyond_the_pool_regions_says_so(caplog):
    with caplog.at_level(logging.WARNING):
        picked = select_regions(_table(), "entropy", 50, SelectContext(50), max_per_photo=2)
    assert len(picked) == 6 and "larger than the pool's regions (3 photos x 4 cells, at most 2" in caplog.text


def test_strategies_without_cells_and_old_scores_are_refused():
    with pytest.raises(BadParameterError, match="picks whole photos"):
        select_regions(_table(), "hybrid", 2, SelectContext(2), 2)
    with pytest.raises(BadInputError, match="rescore"):
        select_regions(_table().drop(columns="entropy_cells"), "entropy", 2, SelectContext(2), 2)
