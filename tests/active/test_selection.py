"""Selection strategies and the vectorised k-center greedy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import cdist

from cardamage.active import selection as sel
from cardamage.active.strategies import strategy_names


def _table(n: int = 20, dim: int = 4, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "id": [f"{i:064x}" for i in range(n)],
        "path": [f"pool/{i}.jpg" for i in range(n)],
        "entropy": rng.random(n), "margin": rng.random(n), "least_confidence": rng.random(n),
        "bald": rng.random(n), "random": rng.random(n),
        "embedding": list(rng.normal(size=(n, dim)).astype(np.float32)),
        "phash": [f"{(i * 0x9E3779B97F4A7C15) % (1 << 64):016x}" for i in range(n)],
    })


def _naive_k_center(x: np.ndarray, budget: int, centres: np.ndarray) -> list[int]:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    c = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    picks: list[int] = []
    for _ in range(budget):
        d = cdist(x, np.concatenate([c, x[picks]])).min(axis=1)
        d[picks] = -1
        picks.append(int(np.argmax(d)))
    return picks


def test_k_center_matches_naive_cdist_version():
    rng = np.random.default_rng(1)
    x, labelled = rng.normal(size=(300, 8)), rng.normal(size=(10, 8))
    picks, dists = sel.k_center_greedy(x, 15, labelled)
    assert picks.tolist() == _naive_k_center(x, 15, labelled)
    assert np.all(np.diff(dists) <= 1e-5)  # farthest-first distances never increase


def test_k_center_covers_clusters_before_repeating():
    centres = np.eye(3, dtype=np.float32) * 10
    x = np.repeat(centres, 5, axis=0) + np.random.default_rng(0).normal(scale=0.01, size=(15, 3))
    picks, _ = sel.k_center_greedy(x, 3, seed=0)
    assert sorted(set(p // 5 for p in picks.tolist())) == [0, 1, 2]
    # starting from a labelled point of cluster 0, the two others come first
    picks, _ = sel.k_center_greedy(x, 2, centres=centres[:1])
    assert sorted(p // 5 for p in picks.tolist()) == [1, 2]


def test_k_center_exact_duplicates_never_picked_twice():
    x = np.ones((4, 3), np.float32)
    picks, _ = sel.k_center_greedy(x, 4)
    assert sorted(picks.tolist()) == [0, 1, 2, 3]


@pytest.mark.parametrize("strategy", strategy_names())
def test_every_strategy_is_deterministic_and_unique(strategy):
    table = _table()
    labelled = np.random.default_rng(5).normal(size=(3, 4))
    a = sel.select_batch(table, strategy, 5, seed=7, labelled_embeddings=labelled, hybrid_factor=2)
    b = sel.select_batch(table.sample(frac=1, random_state=3), strategy, 5, seed=7,
                         labelled_embeddings=labelled, hybrid_factor=2)
    assert list(a.columns) == sel.SELECTION_COLUMNS
    assert a["id"].tolist() == b["id"].tolist()  # same for a seed, whatever the row order
    assert a["id"].is_unique and a["rank"].tolist() == [1, 2, 3, 4, 5]
    assert (a["strategy"] == strategy).all() and a["reason"].str.len().min() > 0


def test_uncertainty_strategy_takes_the_top_scores():
    table = _table()
    out = sel.select_batch(table, "entropy", 3)
    assert out["id"].tolist() == table.nlargest(3, "entropy")["id"].tolist()


def test_random_changes_with_seed():
    table = _table(50)
    assert (sel.select_batch(table, "random", 5, seed=1)["id"].tolist()
            != sel.select_batch(table, "random", 5, seed=2)["id"].tolist())


def test_hybrid_stays_inside_the_uncertain_top():
    table = _table(40)
    out = sel.select_batch(table, "hybrid", 4, hybrid_factor=2.5)
    top10 = set(table.nlargest(10, "entropy")["id"])
    assert set(out["id"]) <= top10


def test_near_duplicates_skipped_within_a_batch():
    table = _table(6)
    table["entropy"] = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    table.loc[1, "phash"] = table.loc[0, "phash"]  # photo 1 looks like photo 0
    out = sel.select_batch(table, "entropy", 2, near_duplicate_distance=4)
    assert out["path"].tolist() == ["pool/0.jpg", "pool/2.jpg"]


def test_budget_larger_than_pool_selects_all(caplog):
    out = sel.select_batch(_table(4), "coreset", 10)
    assert len(out) == 4 and "larger than the pool" in caplog.text


def test_empty_pool_and_bad_arguments():
    with pytest.raises(sel.EmptyPoolError, match="no photo"):
        sel.select_batch(_table(0), "entropy", 3)
    with pytest.raises(ValueError, match="strategy"):
        sel.select_batch(_table(), "best", 3)
    with pytest.raises(ValueError, match="budget"):
        sel.select_batch(_table(), "random", 0)
    with pytest.raises(ValueError, match="bald"):
        sel.select_batch(_table().drop(columns="bald"), "bald", 3)


def test_write_selection_and_table(tmp_path):
    out = sel.select_batch(_table(), "margin", 3)
    path = tmp_path / "reports" / "selection.csv"
    sel.write_selection(out, str(path))
    back = pd.read_csv(path)
    assert back.columns.tolist() == sel.SELECTION_COLUMNS and len(back) == 3
    assert "pool/" in sel.format_table(out)
