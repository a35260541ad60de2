"""Benchmark the selection strategies on a large synthetic pool.

Times coreset (k-center greedy from a labelled set) and hybrid at budgets 50 and 500 on
100,000 random 256-d embeddings, with peak traced memory (tracemalloc) and the process's peak
resident memory, against baselines measured in the same run:

* random selection (hash of seed and id) on the same pool;
* a naive k-center (``scipy.spatial.distance.cdist`` to every centre at every step) against the
  vectorised one on a 10,000-row subset.

Usage::

    .venv/bin/python benchmarks/bench_select.py [--n 100000] [--dim 256] [--labelled 1000] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial.distance import cdist

from cardamage.active.selection import k_center_greedy, l2_normalise, select_batch


def measure(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """``(seconds, peak traced MiB, result)`` of one call."""
    tracemalloc.start()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, peak, result


def naive_k_center(x: np.ndarray, budget: int, centres: np.ndarray) -> list[int]:
    """Textbook k-center: recompute distances to all centres at every step (O(N * b^2) overall)."""
    x, c = l2_normalise(x), l2_normalise(centres)
    picks: list[int] = []
    for _ in range(budget):
        d = cdist(x, np.concatenate([c, x[picks]])).min(axis=1)
        d[picks] = -1
        picks.append(int(np.argmax(d)))
    return picks


def pool_table(n: int, dim: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    return pd.DataFrame({"id": [f"{i:064x}" for i in range(n)], "path": [f"pool/{i}.jpg" for i in range(n)],
                         "entropy": rng.random(n), "embedding": list(emb)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--labelled", type=int, default=1000, help="initial centres (the labelled set)")
    ap.add_argument("--subset", type=int, default=10_000, help="rows for the naive cdist comparison")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    table = pool_table(args.n, args.dim, 0)
    emb = np.stack(table["embedding"].to_numpy())
    labelled = rng.normal(size=(args.labelled, args.dim)).astype(np.float32)
    rows = []
    t_random, m_random, _ = measure(lambda: select_batch(table, "random", 500, seed=1))
    rows.append(("random (baseline)", 500, t_random, m_random, 1.0))
    for budget in (50, 500):
        t, m, _ = measure(lambda: k_center_greedy(emb, budget, labelled))
        rows.append(("coreset k-center", budget, t, m, t / t_random))
        t, m, _ = measure(lambda: select_batch(table, "hybrid", budget, labelled_embeddings=labelled, hybrid_factor=5))
        rows.append(("hybrid (5x budget)", budget, t, m, t / t_random))
    print(f"pool {args.n} x {args.dim} float32, {args.labelled} labelled centres")
    print(f"{'strategy':<20} {'budget':>6} {'seconds':>9} {'peak MiB':>9} {'x random':>9}")
    for name, budget, t, m, ratio in rows:
        print(f"{name:<20} {budget:>6} {t:>9.3f} {m:>9.1f} {ratio:>9.1f}")

    sub, cen = emb[:args.subset], labelled[:100]
    t_naive, _, naive = measure(lambda: naive_k_center(sub, 50, cen))
    t_vec, _, (vec, _) = measure(lambda: k_center_greedy(sub, 50, cen))
    assert naive == vec.tolist(), "vectorised k-center differs from the naive one"
    print(f"k-center on {args.subset} x {args.dim}, budget 50, 100 centres: naive cdist {t_naive:.3f} s, "
          f"vectorised {t_vec:.3f} s, speed-up x{t_naive / t_vec:.1f} (same picks)")
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"process peak resident memory: {max_rss:.0f} MiB (the pool table alone: "
          f"{emb.nbytes / 2**20:.0f} MiB of embeddings)")
    if args.json:
        out = {"n": args.n, "dim": args.dim, "labelled": args.labelled, "max_rss_mib": round(max_rss, 1),
               "rows": [dict(zip(("strategy", "budget", "seconds", "peak_mib", "x_random"), r)) for r in rows],
               "naive_vs_vectorised": {"subset": args.subset, "naive_s": t_naive, "vectorised_s": t_vec}}
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
