"""Typicality cold start (typiclust) and stochastic batch acquisition (select.stochastic)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cardamage.active.selection import ranking_keys, select_batch
from cardamage.active.strategies import SelectContext, strategy_names
from cardamage.active.typicality import typicality, typiclust
from cardamage.errors import BadParameterError


def blobs(sizes=(50, 30, 10), outliers: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points ``[N, 16]`` around ``len(sizes)`` centres plus far outliers; the blob of each (-1: outlier), centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), 16)) * 4
    x = [c + rng.normal(size=(n, 16)) * 0.3 for c, n in zip(centres, sizes)]
    x.append(rng.normal(size=(outliers, 16)) * 12)
    which = np.concatenate([np.full(n, i) for i, n in enumerate(sizes)] + [np.full(outliers, -1)])
    return np.concatenate(x).astype(np.float32), which, centres


def table_of(x: np.ndarray, scores: np.ndarray | None = None) -> pd.DataFrame:
    ids = [f"{i:064x}" for i in range(len(x))]
    return pd.DataFrame({"id": ids, "path": [f"p{i}.jpg" for i in range(len(x))],
                         "embedding": list(x), "entropy": scores if scores is not None else np.zeros(len(x))})


def test_typiclust_takes_the_most_typical_photo_of_each_blob_and_no_outlier():
    x, which, centres = blobs()
    picks, typ, _ = typiclust(x, None, 3, seed=0)
    assert sorted(which[picks]) == [0, 1, 2]
    for p in picks:  # the most typical member of its blob is close to the blob's centre
        members = x[which == which[p]]
        dist = np.linalg.norm(members - centres[which[p]], axis=1)
        assert np.linalg.norm(x[p] - centres[which[p]]) <= np.percentile(dist, 50)
    assert (typ > 0).all()


def test_typiclust_skips_kinds_already_labelled():
    x, which, _ = blobs()
    labelled = x[which == 0][:5]
    picks, _, _ = typiclust(x, labelled, 2, seed=0)
    assert sorted(which[picks]) == [1, 2]


def test_typicality_is_highest_in_the_dense_middle():
    x, which, _ = blobs(sizes=(40,), outliers=2)
    t = typicality(x / np.linalg.norm(x, axis=1, keepdims=True))
    assert t[which == -1].max() < np.median(t[which == 0])


def test_cold_start_uses_typiclust_until_enough_labels_exist():
    x, which, _ = blobs()
    table = table_of(x, scores=np.where(which == -1, 1.0, 0.0))  # entropy would pick the outliers
    few = select_batch(table, "entropy", 3, labelled_embeddings=x[:2], cold_start_below=10)
    assert set(few["strategy"]) == {"typiclust"}
    assert all(which[int(i, 16)] != -1 for i in few["id"])
    enough = select_batch(table, "entropy", 3, labelled_embeddings=x[:12], cold_start_below=10)
    assert set(enough["strategy"]) == {"entropy"} and all(which[int(i, 16)] == -1 for i in enough["id"])
    assert "typiclust" in strategy_names()


def test_stochastic_keys_follow_the_scores_and_the_seed():
    ids = [f"{i:064x}" for i in range(10)]
    values = np.linspace(0.1, 1.0, 10)
    assert np.array_equal(ranking_keys(values, ids, SelectContext(1)), values)
    sharp = SelectContext(3, seed=5, stochastic="power", temperature=200.0)
    assert set(np.argsort(-ranking_keys(values, ids, sharp))[:3]) == {7, 8, 9}  # a large temperature: the top
    one = ranking_keys(values, ids, SelectContext(3, seed=1, stochastic="softmax"))
    again = ranking_keys(values[::-1], ids[::-1], SelectContext(3, seed=1, stochastic="softmax"))[::-1]
    assert np.allclose(one, again)  # the same draw whatever the order
    other = ranking_keys(values, ids, SelectContext(3, seed=2, stochastic="softmax"))
    assert not np.allclose(one, other)


def test_power_sampling_draws_in_proportion_to_the_score():
    ids = [f"{i:064x}" for i in range(4)]
    values = np.array([0.1, 0.2, 0.3, 0.4])
    firsts = [int(np.argmax(ranking_keys(values, ids, SelectContext(1, seed=s, stochastic="power"))))
              for s in range(4000)]
    share = np.bincount(firsts, minlength=4) / len(firsts)
    assert np.allclose(share, values / values.sum(), atol=0.03), share


def test_a_stochastic_batch_spreads_over_near_ties_and_keeps_reasons(tmp_path):
    x, _, _ = blobs(sizes=(20,), outliers=0)
    table = table_of(x, scores=np.full(len(x), 0.5) + np.arange(len(x)) * 1e-4)
    top = select_batch(table, "entropy", 5)
    drawn = [set(select_batch(table, "entropy", 5, seed=s, stochastic="softmax")["id"]) for s in range(3)]
    assert set(top["id"]) == {f"{i:064x}" for i in range(15, 20)}
    assert len(set.union(*drawn)) > 5 and any(d != set(top["id"]) for d in drawn)
    picked = select_batch(table, "entropy", 2, stochastic="power", temperature=2.0)
    assert picked["reason"].str.contains("drawn \\(power, temperature 2\\)").all()
    with pytest.raises(BadParameterError, match="temperature"):
        select_batch(table, "entropy", 2, stochastic="power", temperature=0.0)


def test_a_batch_takes_at_most_max_per_claim_photos_of_one_claim(tmp_path):
    import json

    from cardamage.active.claims import with_claims

    x, _, _ = blobs(sizes=(12,), outliers=0)
    table = table_of(x, scores=np.linspace(1.0, 0.0, 12))
    table["path"] = [str(tmp_path / f"{i:02d}.jpg") for i in range(12)]
    for i in range(12):  # the six most uncertain photos are one claim
        claim = "claim-A" if i < 6 else f"claim-{i}"
        (tmp_path / f"{i:02d}.json").write_text(json.dumps({"claim_id": claim}))
    (tmp_path / "11.json").write_text("not json")  # no claim: not grouped, no error
    table = with_claims(table)
    assert table["claim"].tolist()[:7] == ["claim-A"] * 6 + ["claim-6"] and table["claim"].iloc[11] == ""
    picked = select_batch(table, "entropy", 5, max_per_claim=2)
    claims = table.set_index("id").loc[picked["id"], "claim"].tolist()
    assert claims.count("claim-A") == 2 and len(picked) == 5
    assert claims == ["claim-A", "claim-A", "claim-6", "claim-7", "claim-8"]
    everything = select_batch(table, "entropy", 11, max_per_claim=2)  # too few claims: fill up
    assert len(everything) == 11
    assert select_batch(table, "entropy", 5)["id"].tolist() == table["id"].tolist()[:5]  # 0: no limit
