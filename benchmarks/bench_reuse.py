"""Benchmark the reused-photo index (:mod:`cardamage.service.reuse`) at claim-service scale.

Builds a :class:`~cardamage.service.reuse.ReuseIndex` of ``--n`` photos the way the service does
(one ``check_and_add`` a photo: random 64-bit hashes, random 256-d embeddings, 4 photos a claim),
plants ``--planted`` near duplicates of stored photos at known Hamming distances 0..12, and measures
in the same run:

* insert rate: ``check_and_add`` calls a second (check, then record, one SQLite transaction each);
* lookup p50 / p99 (ms) of the multi-index hash (``HammingIndex.search``) against the baseline, a
  numpy linear scan of all hashes (``popcount(hashes ^ q) <= r``), timed query by query, interleaved;
  and of the full check (SQLite exact lookup + index + the candidates' rows and embeddings);
* recall of the planted near duplicates within ``max_hamming`` (embedding close: confirmed), none
  beyond it, and denial when the embedding is unrelated;
* open time (reloading the file), index memory, peak resident memory, SQLite file size;
* with ``--scale N``: the index against the scan again on N hashes in memory (no SQLite).

Usage::

    .venv/bin/python benchmarks/bench_reuse.py [--n 100000] [--planted 2000] [--queries 2000] [--dim 256]
        [--scale 1000000] [--out [reports/bench_reuse.json]]
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from cardamage.fileio import write_json
from cardamage.service.hamming import HammingIndex, popcount64
from cardamage.service.reuse import ReuseIndex

MAX_HAMMING, MAX_DIST = 8, 0.05


def sha(i: int) -> str:
    return hashlib.sha256(i.to_bytes(8, "little")).hexdigest()


def flip(h: int, bits: int, rng: np.random.Generator) -> int:
    """``h`` with ``bits`` distinct random bits flipped (Hamming distance exactly ``bits``)."""
    for b in rng.choice(64, size=bits, replace=False):
        h ^= 1 << int(b)
    return h


def build(path: Path, n: int, dim: int, keep: set[int], seed: int) -> tuple[np.ndarray, dict[int, np.ndarray], float]:
    """Fill the index; ``(hashes uint64 [n], embeddings of the kept photos, seconds)``."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True)
    kept: dict[int, np.ndarray] = {}
    start = time.perf_counter()
    with ReuseIndex(path, MAX_HAMMING, MAX_DIST) as ix:
        for i in range(n):
            vec = rng.standard_normal(dim).astype(np.float32)
            if i in keep:
                kept[i] = vec
            ix.check_and_add(sha(i), int(hashes[i]), vec, f"claim-{i // 4}", f"{i}.jpg", "bench")
    return hashes, kept, time.perf_counter() - start


def time_lookups(index: HammingIndex, hashes: np.ndarray, queries: list[int]) -> dict[str, Any]:
    """p50 / p99 ms of the index and of the scan on the same queries, and whether they agree."""
    t_index, t_scan, agree = [], [], True
    for q in queries:
        t0 = time.perf_counter()
        ids, _ = index.search(q, MAX_HAMMING)
        t1 = time.perf_counter()
        found = np.flatnonzero(popcount64(hashes ^ np.uint64(q)) <= MAX_HAMMING)
        t2 = time.perf_counter()
        t_index.append(t1 - t0)
        t_scan.append(t2 - t1)
        agree &= ids.size == found.size
    ms = {k: np.percentile(np.array(v) * 1e3, [50, 99]) for k, v in (("index", t_index), ("scan", t_scan))}
    return {"index_p50_ms": ms["index"][0], "index_p99_ms": ms["index"][1], "scan_p50_ms": ms["scan"][0],
            "scan_p99_ms": ms["scan"][1], "scan_over_index_p50": ms["scan"][0] / ms["index"][0],
            "same_hit_counts": agree}


def planted(ix: ReuseIndex, hashes: np.ndarray, kept: dict[int, np.ndarray], rng: np.random.Generator,
            ) -> tuple[dict[str, float], list[float], list[int]]:
    """Check the planted copies (not recorded); ``(rates, check seconds, query hashes)``."""
    hits = {"within": 0, "within_found": 0, "beyond": 0, "beyond_found": 0, "denied_of": 0, "denied": 0,
            "unconfirmed": 0}
    seconds, queries = [], []
    for k, (i, vec) in enumerate(sorted(kept.items())):
        d, unrelated = k % 13, k % 26 >= 13  # distances 0..12; every other round an unrelated embedding
        q = flip(int(hashes[i]), d, rng)
        emb = rng.standard_normal(vec.size).astype(np.float32) if unrelated else vec + 0.02 * rng.standard_normal(
            vec.size).astype(np.float32)
        t0 = time.perf_counter()
        matches = ix.check_and_add(sha(10**9 + k), q, emb, None, f"planted-{k}.jpg", "bench")
        seconds.append(time.perf_counter() - t0)
        queries.append(q)
        found = any(m["claim_id"] == f"claim-{i // 4}" for m in matches)
        hits["unconfirmed"] += sum(not m["confirmed"] for m in matches)
        if unrelated and d <= MAX_HAMMING:
            hits["denied_of"] += 1
            hits["denied"] += not found
        elif d <= MAX_HAMMING:
            hits["within"] += 1
            hits["within_found"] += found
        else:
            hits["beyond"] += 1
            hits["beyond_found"] += found
    rates = {"recall": hits["within_found"] / max(1, hits["within"]),
             "found_beyond_max_hamming": hits["beyond_found"] / max(1, hits["beyond"]),
             "denied_by_embedding": hits["denied"] / max(1, hits["denied_of"]),
             "unconfirmed_matches": hits["unconfirmed"], "planted_within": hits["within"]}
    return rates, seconds, queries


def scale_run(n: int, n_queries: int, seed: int) -> dict[str, Any]:
    """Index against scan on ``n`` hashes in memory."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True)
    index = HammingIndex()
    t0 = time.perf_counter()
    index.add(hashes, np.arange(n))
    build_s = time.perf_counter() - t0
    queries = [flip(int(hashes[j]), int(j % 9), rng) for j in rng.integers(0, n, n_queries)]
    return {"n": n, "build_s": build_s, "index_mib": index.nbytes / 2**20, **time_lookups(index, hashes, queries)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="photos in the index")
    ap.add_argument("--planted", type=int, default=2000, help="near duplicates planted at distances 0..12")
    ap.add_argument("--queries", type=int, default=2000, help="random queries for the index / scan timing")
    ap.add_argument("--dim", type=int, default=256, help="embedding size")
    ap.add_argument("--scale", type=int, default=1_000_000, help="also time index vs scan on this many hashes (0: off)")
    ap.add_argument("--dir", default=None, help="folder for the SQLite file (default: a temporary one)")
    ap.add_argument("--out", nargs="?", const="reports/bench_reuse.json", default=None,
                    help="write the figures as JSON (default file: reports/bench_reuse.json)")
    args = ap.parse_args()

    rng = np.random.default_rng(1)
    keep = set(rng.choice(args.n, size=min(args.planted, args.n), replace=False).tolist())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.dir or tmp) / "reuse.sqlite"
        hashes, kept, build_s = build(path, args.n, args.dim, keep, seed=0)
        t0 = time.perf_counter()
        ix = ReuseIndex(path, MAX_HAMMING, MAX_DIST)
        open_s = time.perf_counter() - t0
        rates, check_s, planted_q = planted(ix, hashes, kept, rng)
        randoms = [int(x) for x in rng.integers(0, 2**64 - 1, size=args.queries, dtype=np.uint64, endpoint=True)]
        lookups = time_lookups(ix._memory, hashes, planted_q + randoms)
        index_mib = ix._memory.nbytes / 2**20
        ix.close()
        file_mib = sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 2**20
    rss_at_n = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the in-memory scale run
    scaled = scale_run(args.scale, args.queries, seed=2) if args.scale else None
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    check_ms = np.percentile(np.array(check_s) * 1e3, [50, 99])
    out = {"n": args.n, "dim": args.dim, "max_hamming": MAX_HAMMING, "max_embedding_distance": MAX_DIST,
           "insert_per_s": args.n / build_s, "build_s": build_s, "open_s": open_s, **lookups,
           "check_p50_ms": check_ms[0], "check_p99_ms": check_ms[1], **rates, "index_mib": index_mib,
           "sqlite_mib": file_mib, "max_rss_mib_at_n": rss_at_n, "max_rss_mib": max_rss, "scale": scaled}
    report(out)
    if args.out:
        write_json(args.out, rounded(out))


def rounded(obj: Any) -> Any:
    """Floats (in nested dicts too) to 4 decimals, numpy scalars as Python numbers, for the JSON."""
    if isinstance(obj, dict):
        return {k: rounded(v) for k, v in obj.items()}
    if isinstance(obj, (float, np.floating)):
        return round(float(obj), 4)
    return obj.item() if isinstance(obj, np.generic) else obj


def report(out: dict[str, Any]) -> None:
    print(f"reuse index: {out['n']} photos, 256-d float32 embeddings in SQLite, r = {out['max_hamming']} bits")
    print(f"insert (check_and_add)  {out['insert_per_s']:>9.0f} /s   ({out['build_s']:.1f} s)")
    print(f"open (reload the file)  {out['open_s'] * 1e3:>9.1f} ms")
    rows = [("", out)] + ([(f" at {out['scale']['n']}", out["scale"])] if out["scale"] else [])
    print(f"{'lookup':<24} {'p50 ms':>8} {'p99 ms':>8}")
    for tag, r in rows:
        print(f"{'multi-index hash' + tag:<24} {r['index_p50_ms']:>8.3f} {r['index_p99_ms']:>8.3f}")
        print(f"{'numpy scan' + tag:<24} {r['scan_p50_ms']:>8.3f} {r['scan_p99_ms']:>8.3f}   "
              f"scan / index x{r['scan_over_index_p50']:.1f}, same hit counts: {r['same_hit_counts']}")
    print(f"{'full check (SQLite)':<24} {out['check_p50_ms']:>8.3f} {out['check_p99_ms']:>8.3f}")
    print(f"planted near duplicates: recall {out['recall']:.3f} ({out['planted_within']} within r), "
          f"found beyond r {out['found_beyond_max_hamming']:.3f}, denied by embedding "
          f"{out['denied_by_embedding']:.3f}")
    print(f"memory: index {out['index_mib']:.1f} MiB, process peak RSS {out['max_rss_mib_at_n']:.0f} MiB "
          f"({out['max_rss_mib']:.0f} MiB after the scale run); SQLite file {out['sqlite_mib']:.1f} MiB")


if __name__ == "__main__":
    main()
