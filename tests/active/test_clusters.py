"""k-means clusters of the pool (Label Studio's ``cluster``): deterministic, stable numbering, bounded k."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cardamage.active.clusters import cluster_labels, with_clusters
from cardamage.active.selection import write_selection
from cardamage.data.dedup import file_sha256
from cardamage.errors import BadInputError, BadParameterError
from cardamage.labelling.photos import read_selection


def _blobs(seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Three well-separated groups of 10 embeddings in 16 dimensions, ids shuffled against the groups."""
    rng = np.random.default_rng(seed)
    centres = np.eye(16)[:3] * 10
    x = np.concatenate([c + rng.normal(0, 0.1, (10, 16)) for c in centres]).astype(np.float32)
    ids = [f"{h:064x}" for h in rng.permutation(30) * 7919]
    return x, ids


def test_groups_become_clusters_numbered_in_id_order():
    x, ids = _blobs()
    labels = cluster_labels(x, ids, 3)
    for g in range(3):
        assert len(set(labels[g * 10:(g + 1) * 10].tolist())) == 1, "one group, one cluster"
    assert sorted(set(labels.tolist())) == [0, 1, 2]
    assert labels[int(np.argmin(ids))] == 0, "the photo with the smallest id is in cluster 0"


def test_the_same_photos_in_another_order_keep_their_clusters():
    x, ids = _blobs()
    labels = dict(zip(ids, cluster_labels(x, ids, 5).tolist()))
    perm = np.random.default_rng(1).permutation(len(ids))
    again = cluster_labels(x[perm], [ids[i] for i in perm], 5)
    assert {ids[i]: c for i, c in zip(perm, again.tolist())} == labels


def test_k_is_bounded_by_the_photos_and_their_distinct_embeddings():
    x, ids = _blobs()
    assert cluster_labels(x[:2], ids[:2], 8).tolist() in ([0, 1], [1, 0])
    assert set(cluster_labels(np.ones((6, 4)), ids[:6], 8).tolist()) == {0}, "identical embeddings"
    assert cluster_labels(np.zeros((0, 4)), [], 8).shape == (0,)
    with pytest.raises(BadParameterError, match="embeddings"):
        cluster_labels(x, ids[:3], 3)
    with pytest.raises(BadParameterError, match="select.clusters"):
        cluster_labels(x, ids, 0)


def test_selection_carries_the_cluster_to_the_push(tmp_path):
    x, ids = _blobs()
    photos = []
    for i in range(3):
        f = tmp_path / f"{i}.jpg"
        f.write_bytes(bytes([i]) * 10)
        photos.append(f)
    scores = pd.DataFrame({"id": ids, "embedding": list(x)})
    shas = [file_sha256(p) for p in photos]
    scores.loc[[0, 10, 20], "id"] = shas  # one photo of each group
    selection = pd.DataFrame({"id": shas, "path": [str(p) for p in photos], "score": [0.9, 0.8, 0.7],
                              "rank": [1, 2, 3], "strategy": "entropy", "reason": "test"})
    picked = with_clusters(selection, scores, 3)
    assert sorted(picked["cluster"].tolist()) == [0, 1, 2], "the three groups"
    assert with_clusters(selection, scores, 0) is selection and "cluster" not in selection
    write_selection(picked, str(tmp_path / "selection.csv"))
    assert [p.cluster for p in read_selection(tmp_path / "selection.csv")] == picked["cluster"].tolist()
    (tmp_path / "bad.csv").write_text(f"id,path,score,cluster\n{shas[0]},{photos[0]},0.5,many\n")
    with pytest.raises(BadInputError, match="row 2: cluster 'many' is not an integer"):
        read_selection(tmp_path / "bad.csv")
