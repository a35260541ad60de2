"""The goals of issue 15, the printed table of :mod:`bench_service`'s figures, and its memory and 503 readings."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


def goals(r: dict[str, Any]) -> dict[str, bool | None]:
    """Issue 15's goals on one engine's figures (``None``: not measured in this run)."""
    by = {lv["clients"]: lv for lv in r["levels"]}
    out = {}
    if 1 in by:
        out["1 client p95 <= 1.2x model.predict"] = by[1]["p95_over_model_predict"] <= 1.2
    if 16 in by:
        out["16 clients >= 0.8x best batched throughput"] = by[16]["throughput_over_best_batched"] >= 0.8
        out["16 clients p99 <= 2x p50"] = by[16]["p99_over_p50"] <= 2.0
    if 64 in by:
        lv = by[64]
        server = r.get("server_503") or {}
        out["64 clients: no timeout or error"] = lv["errors"] == 0
        # None: not measured (no refusal, or the engine's access log is elsewhere: Ray replicas)
        out["64 clients: 503 within 50 ms (server side p99)"] = (
            server["p99_ms"] <= 50 if server.get("p99_ms") is not None else None)
        out["64 clients: 503 within 50 ms as the clients saw it (p99)"] = (
            lv["refusal_p99_ms"] <= 50 if lv["refusal_p99_ms"] is not None else None)
        refused = ((lv.get("probe") or {}).get("refused") or {}).get("p99_ms")
        out["64 clients: 503 within 50 ms as a lone client in its own process saw it (p99)"] = (
            refused <= 50 if refused is not None else None)
        out["64 clients accepted p99 <= 2x p50"] = lv["p99_over_p50"] <= 2.0
    if r.get("memory"):
        slope = r["memory"]["rss_slope_mb_per_1000"]
        out["RSS flat over the soak (trend < 5 MB per 1,000 requests)"] = slope is not None and abs(slope) < 5
    return out


def print_report(r: dict[str, Any]) -> None:
    m = r["model"]
    print(f"peer, raw Keras ({r['photos']} photos {', '.join(r['photo_px'])}): model.predict "
          f"{1000 * m['predict_s']:.1f} ms/photo (p95 {1000 * m['predict_p95_s']:.1f}), predict_on_batch(1) "
          f"{1000 * m['predict_on_batch_1_s']:.1f} ms; batched photos/s {m['batched_photos_per_s']} "
          f"(best {m['best_batched_photos_per_s']})")
    print(f"peer, decode + letterbox + predict_on_batch(16), no gate and no regions: "
          f"{m['decode_and_predict_batch16_photos_per_s']} photos/s")
    for e in r["engines"]:
        print(f"\nengine {e['engine']}:")
        print(f"{'clients':>7} {'req/s':>7} {'xbatch':>6} {'xdiy':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
              f"{'p95/pred':>8} {'p99/p50':>7} {'503s':>5} {'503 p99':>8} {'errors':>6}")
        for lv in e["levels"]:
            print(f"{lv['clients']:>7} {lv['requests_per_s']:>7} {lv['throughput_over_best_batched']:>6} "
                  f"{lv['throughput_over_decode_and_predict']:>5} "
                  f"{lv['p50_ms']:>8} {lv['p95_ms']:>8} {lv['p99_ms']:>8} {lv['p95_over_model_predict']:>8} "
                  f"{lv['p99_over_p50']:>7} {lv['refused_503']:>5} {str(lv['refusal_p99_ms']):>8} {lv['errors']:>6}")
        for lv in e["levels"]:
            if lv.get("probe"):
                pa, pr = lv["probe"]["accepted"], lv["probe"]["refused"]
                print(f"  a lone client beside the {lv['clients']}: {pa['count']} accepted (p50 {pa['p50_ms']} ms), "
                      f"{pr['count']} refused in p50 {pr['p50_ms']} ms, p99 {pr['p99_ms']} ms, max {pr['max_ms']} ms")
        mem = e["memory"]
        if mem:
            print(f"RSS after warm-up {mem['rss_after_warmup_mb']} MB, after {mem['requests']} requests "
                  f"{mem['rss_after_soak_mb']} MB (growth {mem['rss_growth_mb']:+} MB, peak {mem['rss_peak_mb']} MB, "
                  f"{mem['errors']} errors); trend {mem['rss_slope_mb_per_1000']} MB per 1,000 requests")
        sr = e["server_503"]
        print(f"503s answered by the server in p50 {sr['p50_ms']} ms, p99 {sr['p99_ms']} ms, max {sr['max_ms']} ms "
              f"({sr['count']} refusals, access log)")
        for goal, ok in e["goals"].items():
            print(f"  {'n/a ' if ok is None else 'MET ' if ok else 'MISS'} {goal}")
    sys.path.insert(0, str(Path(__file__).parent))
    from service_equivalence import print_summary

    print()
    print_summary(r["equivalence"])


def rss_mb(pid: int) -> float:
    """RSS of the process and its children (Ray's replicas and workers) in MiB."""
    import psutil

    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total / (1 << 20)


def rss_slope(samples: list[tuple[int, float]]) -> float | None:
    """Least-squares RSS trend in MB per 1,000 requests, the first fifth of the soak left out (warm-up)."""
    tail = samples[len(samples) // 5:]
    if len(tail) < 3:
        return None
    x, y = np.array([k for k, _ in tail], float), np.array([v for _, v in tail], float)
    return round(float(np.polyfit(x, y, 1)[0] * 1000), 2)


def server_refusals(log: Path) -> dict[str, Any]:
    """Server-side time to answer the ``503`` s (the access log's ``duration_ms``), from the JSON log lines."""
    took = []
    for line in log.read_text(errors="replace").splitlines():
        if '"status": 503' not in line:
            continue
        try:
            took.append(float(json.loads(line)["duration_ms"]))
        except (ValueError, KeyError):
            continue
    return {"count": len(took), "p50_ms": round(float(np.percentile(took, 50)), 2) if took else None,
            "p99_ms": round(float(np.percentile(took, 99)), 2) if took else None,
            "max_ms": round(max(took), 2) if took else None}
