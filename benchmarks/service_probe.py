"""A lone, well-behaved client of the claim service in its own process: what one customer sees under load.

The benchmark's load comes from many client threads in one Python process; on a small machine their
own scheduling (the GIL, the cores the server also uses) adds to every latency they measure. This
probe sends one single-photo ``POST /v1/assess`` at a time (50 ms apart) from its own process until
its standard input closes, then prints the latencies of its ``200`` and ``503`` answers as JSON.

Usage (the benchmark starts it)::

    python benchmarks/service_probe.py URL PHOTO < /dev/stdin
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np


def summary(took_ms: list[float]) -> dict[str, float | int | None]:
    """Count and p50 / p99 / max of latencies in ms (``None`` without any)."""
    if not took_ms:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    a = np.asarray(took_ms)
    return {"count": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 1),
            "p99_ms": round(float(np.percentile(a, 99)), 1), "max_ms": round(float(a.max()), 1)}


def probe(url: str, photo: Path, stop: threading.Event, gap_s: float = 0.05) -> dict[str, object]:
    """Requests one at a time until ``stop`` is set: latencies by answer (``200``, ``503``, other)."""
    from lean_client import LeanClient, multipart

    body = multipart(photo.name, photo.read_bytes())
    seen: dict[str, list[float]] = {"200": [], "503": [], "other": []}
    client = LeanClient(url)
    try:
        while not stop.is_set():
            t0 = time.perf_counter()
            status = str(client.post("/v1/assess", body).status)
            seen[status if status in seen else "other"].append((time.perf_counter() - t0) * 1000)
            stop.wait(gap_s)
    finally:
        client.close()
    return {"accepted": summary(seen["200"]), "refused": summary(seen["503"]), "other": len(seen["other"])}


def main() -> None:
    url, photo = sys.argv[1], Path(sys.argv[2])
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    print(json.dumps(probe(url, photo, stop)))


if __name__ == "__main__":
    main()
