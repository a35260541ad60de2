"""Where the claim service's CPU goes under load: per-thread CPU (psutil, from ``/proc``), the machine's idle share
and the model's batch sizes, while lean clients (:mod:`lean_client`) keep ``--clients`` requests in flight.

Prints requests/s, the cores the server used, CPU ms per request of its busiest threads (on 2 cores the
two TensorFlow compute threads come first, then the decode / post-processing workers and the event loop),
and the batch-size histogram from ``/metrics``. Extra ``--set KEY=VALUE`` go to ``cardamage serve``, so a
setting's effect is measured in one command (each run starts its own server; compare runs made in the
same minutes: on this 2-core machine requests/s moved between 18.9 and 22.0 from run to run of one setting).

Usage (Linux)::

    .venv/bin/python benchmarks/service_cpu.py [--clients 16] [--seconds 25] [--set serve.batch.max_batch=8]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import bench_service as bench


def thread_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of ``pid``, by thread id (psutil reads ``/proc``)."""
    import psutil

    return {t.id: t.user_time + t.system_time for t in psutil.Process(pid).threads()}


def metrics_rows(url: str) -> list[str]:
    """The lines of the server's ``/metrics`` (Prometheus text format)."""
    import httpx

    return httpx.get(f"{url}/metrics", timeout=10).text.splitlines()


def batch_sizes(rows: list[str]) -> dict[str, float]:
    """``cardamage_batch_size`` bucket counts from ``/metrics`` rows (cumulative, by upper bound)."""
    return {r.split('le="')[1].split('"')[0]: float(r.rsplit(" ", 1)[1])
            for r in rows if r.startswith("cardamage_batch_size_bucket")}


def model_seconds(rows: list[str]) -> float:
    """``cardamage_batch_seconds_sum`` from ``/metrics`` rows: seconds the model has run batches so far."""
    return sum(float(r.rsplit(" ", 1)[1]) for r in rows if r.startswith("cardamage_batch_seconds_sum"))


def measure(clients: int, seconds: float, extra: list[str]) -> dict[str, Any]:
    """One server, a warm-up, then ``seconds`` of load from ``clients`` lean clients."""
    import psutil

    from cardamage.data.images import list_images

    tmp = Path(tempfile.mkdtemp(prefix="service_cpu_"))
    payloads = bench.photo_payloads(list_images(bench.REPO / "data" / "sample" / "test")[:8])
    port = bench.free_port()
    proc = bench.start_server(bench.build_model(tmp, 256), tmp, port,
                              extra=tuple(a for kv in extra for a in ("--set", kv)))
    url = f"http://127.0.0.1:{port}"
    try:
        bench.load(url, payloads, 32, 4)
        before, m0, c0, b0 = thread_cpu_s(proc.pid), psutil.cpu_times(), os.times(), model_seconds(metrics_rows(url))
        run = bench.load(url, payloads, 10 ** 9, clients, max_seconds=seconds)
        after, m1, c1, rows = thread_cpu_s(proc.pid), psutil.cpu_times(), os.times(), metrics_rows(url)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)
    per_thread = sorted(((after[t] - before.get(t, 0.0), t) for t in after), reverse=True)
    spent = {k: getattr(m1, k) - getattr(m0, k) for k in ("user", "nice", "system", "idle", "iowait", "irq", "softirq")}
    return {"run": run, "server_cpu_s": sum(s for s, _ in per_thread), "per_thread": per_thread,
            "main_thread": proc.pid, "idle_share": (spent["idle"] + spent["iowait"]) / max(1e-9, sum(spent.values())),
            "client_cpu_s": (c1.user - c0.user) + (c1.system - c0.system), "batches": batch_sizes(rows),
            "model_busy_s": model_seconds(rows) - b0}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=25.0)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="KEY=VALUE for cardamage serve")
    args = ap.parse_args(argv)
    r = measure(args.clients, args.seconds, args.sets)
    run, n = r["run"], max(1, r["run"]["accepted"])
    print(f"{args.clients} clients {' '.join(args.sets)}: {run['requests_per_s']} requests/s, p50 {run['p50_ms']} ms, "
          f"p99 {run['p99_ms']} ms over {run['seconds']} s")
    print(f"server CPU {r['server_cpu_s']:.1f} s = {r['server_cpu_s'] / run['seconds']:.2f} cores, "
          f"{1000 * r['server_cpu_s'] / n:.1f} ms a request; machine idle {100 * r['idle_share']:.1f} %; "
          f"load generator {r['client_cpu_s']:.2f} s of CPU")
    print(f"model busy {r['model_busy_s']:.1f} s = {100 * r['model_busy_s'] / run['seconds']:.1f} % of the time "
          f"(batch calls, wall clock)")
    for cpu, tid in r["per_thread"][:8]:
        label = " (main: event loop)" if tid == r["main_thread"] else ""
        print(f"  thread {tid}{label}: {cpu:6.2f} s, {1000 * cpu / n:5.1f} ms a request")
    print("batch sizes (cumulative count by upper bound):", r["batches"])


if __name__ == "__main__":
    main()
