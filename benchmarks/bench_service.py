"""Benchmark the claim service on loopback: latency and throughput at 1, 4 and 16 clients, and memory.

In one run:

* the model alone: :func:`cardamage.model.predict.full_res_probs` on each photo, one at a time, in this
  process (network + letterbox undone), and the same plus :func:`cardamage.model.predict.assess`;
* the service: ``cardamage serve`` started as a subprocess on 127.0.0.1 (a free port, its own
  incoming pool and splash folder under a temporary folder), single-photo ``POST /v1/assess``
  requests from 1, 4 and 16 client threads: requests/s and latency p50 / p95 / p99, and the p50
  as a multiple of the model's own predict time;
* memory: the server's RSS after the warm-up and every 100 requests of a soak of ``--soak``
  requests (4 clients); no growth expected (photos repeat, so the pool does not grow either).

Bounded: ``--requests`` per level, ``--soak`` requests, ``--max-seconds`` for the soak.
The model is ``--model FILE`` or an untrained network built from ``params.yaml``'s ``model``
section at ``--size`` (weights do not change the cost).

Usage::

    .venv/bin/python benchmarks/bench_service.py [--photos data/sample/test] [--size 256] [--model FILE]
        [--requests 48] [--soak 1000] [--max-seconds 300] [--out reports/bench_service.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_model(tmp: Path, size: int) -> str:
    """An untrained model from params.yaml's model section at ``size`` px."""
    from cardamage.config import load_params
    from cardamage.model.heads import build_model as build
    from cardamage.model.io import ModelInfo, save_model

    params = load_params(REPO / "params.yaml")
    mp = dataclasses.replace(params.model, input_size=size)
    path = tmp / "model.keras"
    save_model(build(mp, len(params.data.classes) + 1), path,
               ModelInfo(classes=list(params.data.classes), input_size=size, backbone=mp.backbone))
    return str(path)


def model_times(model_path: str, files: list[Path]) -> dict[str, float]:
    """Median seconds per photo of the model alone, and of model + assessment, one photo at a time."""
    from cardamage.config import load_params
    from cardamage.data.images import load_image
    from cardamage.model.io import load_model
    from cardamage.model.predict import LoadedModel, assess, full_res_probs

    params = load_params(REPO / "params.yaml")
    loaded = LoadedModel(*load_model(model_path), model_path)
    images = [load_image(f) for f in files]
    full_res_probs(loaded, images[:1])  # warm-up
    predict, both = [], []
    for img in images * 2:
        t0 = time.perf_counter()
        probs = full_res_probs(loaded, [img])[0]
        t1 = time.perf_counter()
        assess(img, probs, loaded, params)
        predict.append(t1 - t0)
        both.append(time.perf_counter() - t0)
    return {"predict_s": float(np.median(predict)), "predict_assess_s": float(np.median(both))}


def start_server(model_path: str, tmp: Path, port: int) -> subprocess.Popen:
    """``cardamage serve`` in a subprocess; returns once /health answers."""
    import httpx

    cmd = [sys.executable, "-m", "cardamage.cli", "serve", "--port", str(port), "--model", model_path,
           "--params", str(REPO / "params.yaml"),
           "--set", f"serve.incoming_dir={tmp / 'incoming'}", "--set", f"serve.splash_dir={tmp / 'splash'}",
           "--set", "serve.reload_check_s=0", "--set", "serve.max_photos_per_request=1"]
    log = open(tmp / "server.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: see {tmp / 'server.log'}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("the server did not start in 300 s")


def load(url: str, payloads: list[tuple[str, bytes]], total: int, clients: int,
         max_seconds: float = 1e9, on_done: Any = None) -> dict[str, Any]:
    """``total`` single-photo requests from ``clients`` threads; latencies and throughput."""
    import httpx

    latencies: list[float] = []
    errors: list[int] = []
    counter = iter(range(total))
    lock = threading.Lock()
    stop_at = time.monotonic() + max_seconds

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            while time.monotonic() < stop_at:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                name, data = payloads[i % len(payloads)]
                t0 = time.perf_counter()
                r = c.post("/v1/assess", files=[("photos", (name, data, "image/jpeg"))])
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    if r.status_code != 200:
                        errors.append(r.status_code)
                    done = len(latencies)
                if on_done:
                    on_done(done)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.asarray(latencies) * 1000
    return {"clients": clients, "requests": len(latencies), "errors": len(errors), "seconds": round(wall, 2),
            "requests_per_s": round(len(latencies) / wall, 2),
            **{f"p{q}_ms": round(float(np.percentile(lat, q)), 1) for q in (50, 95, 99)}}


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / (1 << 20)


def soak(url: str, pid: int, payloads: list[tuple[str, bytes]], n: int, max_seconds: float) -> dict[str, Any]:
    """RSS after warm-up, then every 100 of ``n`` requests (4 clients)."""
    load(url, payloads, 20, 4)
    samples = [(0, rss_mb(pid))]
    marks = set(range(100, n + 1, 100))

    def sample(done: int) -> None:
        if done in marks:
            samples.append((done, rss_mb(pid)))

    run = load(url, payloads, n, 4, max_seconds, sample)
    if samples[-1][0] != run["requests"]:
        samples.append((run["requests"], rss_mb(pid)))
    return {"requests": run["requests"], "errors": run["errors"], "seconds": run["seconds"],
            "rss_after_warmup_mb": round(samples[0][1], 1), "rss_after_soak_mb": round(samples[-1][1], 1),
            "rss_growth_mb": round(samples[-1][1] - samples[0][1], 1),
            "rss_samples_mb": [[k, round(v, 1)] for k, v in samples]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", default=str(REPO / "data" / "sample" / "test"))
    ap.add_argument("--limit", type=int, default=8, help="photos used (cycled)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--size", type=int, default=256, help="input size of the untrained default model")
    ap.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    ap.add_argument("--levels", default="1,4,16")
    ap.add_argument("--soak", type=int, default=1000)
    ap.add_argument("--max-seconds", type=float, default=300.0, help="time bound of the soak")
    ap.add_argument("--out", default=None, help="also write the figures as JSON")
    args = ap.parse_args(argv)

    from cardamage.data.images import list_images

    tmp = Path(tempfile.mkdtemp(prefix="bench_service_"))
    files = list_images(args.photos)[:args.limit]
    payloads = [(f.name, f.read_bytes()) for f in files]
    model_path = str(Path(args.model).resolve()) if args.model else build_model(tmp, args.size)
    port = free_port()
    proc = start_server(model_path, tmp, port)
    url = f"http://127.0.0.1:{port}"
    try:
        model = model_times(model_path, files)
        load(url, payloads, 8, 2)  # warm-up
        levels = [load(url, payloads, max(args.requests, 3 * c), c) for c in map(int, args.levels.split(","))]
        for lv in levels:
            lv["p50_over_model_predict"] = round(lv["p50_ms"] / 1000 / model["predict_s"], 2)
        memory = soak(url, proc.pid, payloads, args.soak, args.max_seconds)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    shutil.rmtree(tmp, ignore_errors=True)  # kept (with server.log) only when the run failed
    result = {"photos": len(files), "photo_px": _sizes(files), "model_path": model_path,
              "model": {k: round(v * 1000, 1) for k, v in model.items()}, "levels": levels, "memory": memory,
              "cpus": os.cpu_count(), "load_avg": [round(x, 2) for x in os.getloadavg()]}
    _print(result)
    if args.out:
        from cardamage.fileio import write_json

        write_json(args.out, result)
    return result


def _sizes(files: list[Path]) -> list[str]:
    from cardamage.data.images import image_size

    return sorted({"x".join(map(str, image_size(f))) for f in files})


def _print(r: dict[str, Any]) -> None:
    m = r["model"]
    print(f"model alone: predict {m['predict_s']:.1f} ms/photo, predict + assess {m['predict_assess_s']:.1f} ms "
          f"({r['photos']} photos {', '.join(r['photo_px'])})")
    print(f"{'clients':>7} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'p50/model':>9} {'errors':>6}")
    for lv in r["levels"]:
        print(f"{lv['clients']:>7} {lv['requests_per_s']:>7} {lv['p50_ms']:>8} {lv['p95_ms']:>8} {lv['p99_ms']:>8} "
              f"{lv['p50_over_model_predict']:>9} {lv['errors']:>6}")
    mem = r["memory"]
    print(f"RSS after warm-up {mem['rss_after_warmup_mb']} MB, after {mem['requests']} requests "
          f"{mem['rss_after_soak_mb']} MB (growth {mem['rss_growth_mb']:+} MB, {mem['errors']} errors)")
    print(json.dumps(mem["rss_samples_mb"]))


if __name__ == "__main__":
    main()
