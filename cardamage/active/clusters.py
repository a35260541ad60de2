"""Clusters of the pool for Label Studio's task ordering: k-means on the model's embeddings.

Label Studio orders tasks by a prediction's ``score``; the cluster lets annotators spread their next
tasks over different kinds of photo. Each pushed task carries its cluster in its data
(``cardamage_cluster``: Label Studio 1.23's bulk import drops a prediction's own ``cluster``). The
clusters come from scikit-learn's ``KMeans`` on the L2-normalised pooled backbone embeddings of the
whole scored pool (not only of the batch pushed), so similar claim photos share a cluster.

Stable across runs for unchanged photos: the rows are clustered in sha256 order with a fixed seed,
and the clusters are numbered in the order in which they first occur in that order, so the same
embeddings give the same numbers, whatever order the pool was listed in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from cardamage.errors import BadParameterError


def cluster_labels(embeddings: np.ndarray, ids: Sequence[str], k: int, seed: int = 0) -> np.ndarray:
    """Cluster number (``int64 [N]``, ``0 .. min(k, N) - 1``) of each of ``N`` photos.

    Args:
        embeddings: ``float32 [N, D]`` pooled backbone features (their scale does not matter).
        ids: the photos' sha256, ``N`` of them: the order clustered and numbered in.
        k: clusters wanted (fewer when there are fewer photos or fewer distinct embeddings).
    """
    x = np.asarray(embeddings, np.float64)
    if x.ndim != 2 or x.shape[0] != len(ids):
        raise BadParameterError(f"clusters: expected embeddings [N, D] for {len(ids)} photos, got {x.shape}")
    if k < 1:
        raise BadParameterError(f"select.clusters: must be >= 1 here, got {k}")
    n = x.shape[0]
    if n == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(np.asarray(ids, dtype=object), kind="stable")
    x = x[order] / np.maximum(np.linalg.norm(x[order], axis=1, keepdims=True), 1e-12)
    distinct = len(np.unique(np.round(x, 6), axis=0))
    k = min(k, n, distinct)
    if k == 1:
        return np.zeros(n, np.int64)
    from sklearn.cluster import KMeans

    raw = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(x)
    first = {c: i for i, c in enumerate(dict.fromkeys(raw.tolist()))}  # numbered by first occurrence
    labels = np.empty(n, np.int64)
    labels[order] = [first[c] for c in raw.tolist()]
    return labels


def with_clusters(selection: pd.DataFrame, scores: pd.DataFrame, k: int, seed: int = 0) -> pd.DataFrame:
    """``selection`` with a ``cluster`` column: each photo's cluster among all of ``scores``' photos.

    ``scores`` needs ``id`` and ``embedding`` (one ``float32 [D]`` list per row); without them, or with
    ``k < 1``, ``selection`` comes back unchanged.
    """
    clusters = None if selection.empty else PoolClusters.from_scores(scores, k, seed)
    if clusters is None:
        return selection
    out = selection.copy()
    out["cluster"] = np.array([clusters.by_id[i] for i in out["id"]], np.int64)  # drawn from ``scores``
    return out


class PoolClusters:
    """The pool's clusters as a lookup for photos that arrive one by one (the ML backend's ``/predict``).

    A photo of the scored pool gets the very cluster :func:`with_clusters` gives it (so a task pushed
    by ``select --push`` and predicted again by the backend keeps its cluster); any other photo gets
    the cluster of the nearest centroid (cosine; a centroid is the mean of its cluster's normalised
    embeddings).

    Args:
        ids: the pool's sha256, ``N``; embeddings: ``float32 [N, D]``; k, seed: as :func:`cluster_labels`.
    """

    def __init__(self, ids: Sequence[str], embeddings: np.ndarray, k: int, seed: int = 0):
        x = np.asarray(embeddings, np.float64)
        labels = cluster_labels(x, ids, k, seed) if len(ids) else np.zeros(0, np.int64)
        self.by_id = dict(zip(ids, labels.tolist()))
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) if len(ids) else x
        count = int(labels.max()) + 1 if len(labels) else 0
        #: ``float64 [K, D]``: unit-length mean direction of each cluster.
        self.centroids = np.stack([x[labels == c].mean(0) for c in range(count)]) if count else np.zeros((0, 0))
        if count:
            self.centroids /= np.maximum(np.linalg.norm(self.centroids, axis=1, keepdims=True), 1e-12)

    @classmethod
    def from_scores(cls, scores: pd.DataFrame, k: int, seed: int = 0) -> PoolClusters | None:
        """From a scores table (``id``, ``embedding``); ``None`` when it has none or ``k < 1``."""
        if k < 1 or scores.empty or "embedding" not in scores.columns:
            return None
        table = scores.drop_duplicates("id")
        return cls(table["id"].tolist(), np.stack(table["embedding"].to_numpy()), k, seed)

    def assign(self, embeddings: np.ndarray, ids: Sequence[str | None]) -> list[int | None]:
        """Cluster of each of ``B`` photos (``embeddings float32 [B, D]``, ``ids`` sha256 or ``None``)."""
        out: list[int | None] = []
        for emb, sha in zip(np.asarray(embeddings, np.float64), ids):
            if sha is not None and sha in self.by_id:
                out.append(int(self.by_id[sha]))
            elif len(self.centroids) and emb.shape[-1] == self.centroids.shape[1]:
                out.append(int(np.argmax(self.centroids @ (emb / max(np.linalg.norm(emb), 1e-12)))))
            else:
                out.append(None)  # an embedding of another size: the pool was scored by another backbone
        return out
