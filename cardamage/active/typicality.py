"""Typicality-based cold start (TypiClust, Hacohen et al. 2022): while few photos are labelled, the
most informative ones are the most *typical* photos of the kinds of photo nobody labelled yet.

The labelled and the unlabelled embeddings (L2-normalised) are clustered together into
``labelled + budget`` clusters (scikit-learn ``KMeans``, at most ``max_clusters``). Each pick takes
the cluster with the fewest labelled or picked photos (the largest first among equals; clusters of
fewer than ``min_cluster_size`` photos, outliers, only when nothing else is left) and in it
the photo of highest typicality: the inverse of its mean distance to its ``k`` nearest neighbours
in that cluster. Claim photos are very redundant, so this spends the first labels on the common
cases of each kind instead of on outliers (which uncertainty sampling favours).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cardamage.active.selection import embedding_matrix, l2_normalise


def typicality(x: np.ndarray, k: int = 20) -> np.ndarray:
    """``float64 [N]``: ``1 / mean distance`` to the ``k`` nearest other rows of ``x [N, D]`` (unit rows)."""
    n = len(x)
    if n <= 1:
        return np.ones(n)
    k = min(k, n - 1)
    d2 = np.maximum(2.0 - 2.0 * (x @ x.T), 0.0)
    np.fill_diagonal(d2, np.inf)
    nearest = np.sqrt(np.partition(d2, k - 1, axis=1)[:, :k])
    return 1.0 / np.maximum(nearest.mean(1), 1e-12)


def typiclust(pool: np.ndarray, labelled: np.ndarray | None, budget: int, seed: int = 0, k: int = 20,
              max_clusters: int = 500, max_cluster_rows: int = 4000,
              min_cluster_size: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pick ``budget`` rows of ``pool [N, D]``.

    Returns:
        ``(picks int64 [B], typicality [B], cluster int64 [B])`` in pick order.
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans

    x = l2_normalise(pool).astype(np.float64)
    has_labels = labelled is not None and len(labelled) > 0
    lab = l2_normalise(labelled).astype(np.float64) if has_labels else np.zeros((0, x.shape[1]))
    budget = min(int(budget), len(x))
    n_clusters = int(min(len(lab) + budget, max_clusters, len(x) + len(lab)))
    both = np.concatenate([lab, x])
    algo = KMeans(n_clusters, n_init=3, random_state=seed) if len(both) <= 20000 else \
        MiniBatchKMeans(n_clusters, n_init=3, random_state=seed, batch_size=4096)
    assign = algo.fit_predict(both)
    covered = np.bincount(assign[:len(lab)], minlength=n_clusters)
    members = [np.flatnonzero(assign[len(lab):] == c) for c in range(n_clusters)]
    taken = np.zeros(len(x), bool)
    picks, typ, clusters = [], [], []
    for _ in range(budget):
        open_ = [c for c in range(n_clusters) if (~taken[members[c]]).any()]
        c = min(open_, key=lambda c: (len(members[c]) < min_cluster_size, covered[c], -len(members[c]), c))
        rows = members[c]
        if len(rows) > max_cluster_rows:  # bounded memory: typicality among a seeded sample of the cluster
            rows = np.sort(np.random.default_rng(seed + c).choice(rows, max_cluster_rows, replace=False))
        t = typicality(x[rows], k)
        t[taken[rows]] = -np.inf
        best = int(rows[int(np.argmax(t))])
        picks.append(best)
        typ.append(float(t.max()))
        clusters.append(c)
        taken[best] = True
        covered[c] += 1
    return np.array(picks, np.int64), np.array(typ), np.array(clusters, np.int64)


def typiclust_select(table: pd.DataFrame, budget: int, labelled: np.ndarray | None, seed: int) -> pd.DataFrame:
    """The ``typiclust`` strategy's pick from a scores table (``id``, ``path``, ``embedding``)."""
    picks, typ, clusters = typiclust(embedding_matrix(table), labelled, budget, seed)
    out = table.iloc[picks][["id", "path"]].copy()
    out["score"] = typ
    n_lab = 0 if labelled is None else len(labelled)
    out["reason"] = [f"typiclust: most typical photo (typicality {t:.3g}) of cluster {c} "
                     f"({n_lab} labelled photo(s) before)" for t, c in zip(typ, clusters)]
    return out
