"""Benchmark the claim service on loopback beside raw ``model.predict``: latency, throughput, overload, memory.

In one run, on the same photos (``--photos``, 1024 px sample photos):

* the peer, raw Keras: the photo decoded and letterboxed, then ``model.predict`` on one photo (what a
  user's script does) and ``model.predict_on_batch`` on batches of 1, 4, 8 and 16 (the model's best
  batched throughput, network only: the strictest baseline), and a do-it-yourself pipeline that
  decodes each JPEG, letterboxes it and predicts 16 at a time (no gate, no regions, no storage:
  column ``xdiy``);
* the service: ``cardamage serve`` (``--engines local,ray``: uvicorn, and Ray Serve when installed)
  as a subprocess on 127.0.0.1 with its own pool and splash folders, single-photo ``POST /v1/assess``
  from 1, 4, 16 and 64 client threads: accepted requests/s and latency p50 / p95 / p99, refusals
  (``503``) and how fast they came, each as a ratio to the peer; a refused client waits the
  answer's ``Retry-After`` times a random 1-1.5 before its next request (``--storm``: it retries at
  once); the clients are :mod:`lean_client` (each body encoded once, ~0.5 ms of CPU a request) or,
  with ``--client httpx``, httpx clients that encode and parse in Python per request (what stop 24
  and before measured; their CPU is taken from the server's cores);
* from 64 clients on, a lone well-behaved client in its own process (:mod:`service_probe`) beside
  the load: what one customer sees, without the load threads' own scheduling delays;
* memory: the server's RSS (with its children: Ray replicas) after the warm-up and every 100
  requests of a ``--soak`` of requests (16 clients), and the peak;
* the answer: :mod:`service_equivalence` (work grid vs full resolution on the sample photos).

The goal of issue 15 is checked and printed: 1 client p95 <= 1.2x one ``model.predict``; 16 clients
>= 0.8x the best batched throughput with p99 <= 2x p50; 64 clients: refusals within 50 ms, no
timeout, accepted p99 <= 2x p50; RSS flat over the soak.
The model is ``--model FILE`` or an untrained network built from ``params.yaml``'s ``model``
section at ``--size`` (weights do not change the cost). The client threads share the 2 cores with
the server.

Usage::

    .venv/bin/python benchmarks/bench_service.py [--size 256] [--model FILE] [--engines local,ray] [--client lean|httpx]
        [--requests 96] [--soak 10000] [--max-seconds 600] [--out reports/bench_service.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
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
from service_report import goals, print_report, rss_mb, rss_slope, server_refusals

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
    """The peer: seconds per photo of raw ``model.predict`` (one decoded, letterboxed photo), and the best
    batched throughput of ``predict_on_batch`` (photos/s over batches of 1, 4, 8, 16)."""
    from cardamage.data.images import load_image
    from cardamage.model.inputs import prepare_image
    from cardamage.model.io import load_model

    model, info = load_model(model_path)
    images = [load_image(f, max_side=1024) for f in files]
    x = np.stack([prepare_image(img, info.input_size, info.resize)[0] for img in images])
    model.predict(x[:1], verbose=0)  # warm-up
    single, raw = [], []
    for img in images * 3:
        t0 = time.perf_counter()
        a, _ = prepare_image(img, info.input_size, info.resize)
        model.predict(a[None], verbose=0)
        single.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        model.predict_on_batch(a[None])
        raw.append(time.perf_counter() - t0)
    best = {}
    for bs in (1, 4, 8, 16):
        batch = np.concatenate([x] * (bs // len(x) + 1))[:bs]
        model.predict_on_batch(batch)
        t0 = time.perf_counter()
        for _ in range(max(2, 32 // bs)):
            model.predict_on_batch(batch)
        best[bs] = bs * max(2, 32 // bs) / (time.perf_counter() - t0)
    # a do-it-yourself pipeline: decode each JPEG, letterbox, predict 16 at a time (no gate, no regions)
    t0 = time.perf_counter()
    for _ in range(2):
        batch = [prepare_image(load_image(f, max_side=1024), info.input_size, info.resize)[0] for f in (files * 2)[:16]]
        model.predict_on_batch(np.stack(batch))
    diy = 32 / (time.perf_counter() - t0)
    return {"predict_s": float(np.median(single)), "predict_p95_s": float(np.percentile(single, 95)),
            "decode_and_predict_batch16_photos_per_s": round(diy, 1),
            "predict_on_batch_1_s": float(np.median(raw)),
            "batched_photos_per_s": {k: round(v, 1) for k, v in best.items()},
            "best_batched_photos_per_s": round(max(best.values()), 1)}


def start_server(model_path: str, tmp: Path, port: int, engine: str = "local",
                 extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """``cardamage serve`` in a subprocess; returns once /health answers."""
    import httpx

    cmd = [sys.executable, "-m", "cardamage.cli", "serve", "--port", str(port), "--model", model_path,
           "--engine", engine, "--set", f"model.input_size={_input_size(model_path)}", *extra,
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
         max_seconds: float = 1e9, on_done: Any = None, honour_retry_after: bool = True,
         client: str = "lean") -> dict[str, Any]:
    """``total`` single-photo requests from ``clients`` threads: accepted latencies, refusals, throughput.

    A refused client waits the answer's ``Retry-After`` before its next request, as a well-behaved
    client does (``honour_retry_after=False``: at once, a retry storm). ``client``: ``lean``
    (:mod:`lean_client`, the body encoded once, a fraction of a ms of CPU per request) or ``httpx``
    (the body encoded and the answer parsed in Python per request: its CPU is taken from the server's
    2 cores, as the earlier figures were measured)."""
    accepted: list[float] = []
    refused: list[float] = []
    errors: list[str] = []
    counter = iter(range(total))
    lock = threading.Lock()
    stop_at = time.monotonic() + max_seconds
    send = _sender(url, payloads, client)

    def worker() -> None:
        post, close = send()
        try:
            while time.monotonic() < stop_at:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                status, retry_after = post(i % len(payloads))
                took = time.perf_counter() - t0
                if status == 503 and honour_retry_after:
                    # with jitter, as well-behaved clients retry (no synchronised herd of retries)
                    time.sleep(min(10.0, retry_after or 1.0) * random.uniform(1.0, 1.5))
                with lock:
                    if status == 200:
                        accepted.append(took)
                    elif status == 503:
                        refused.append(took)
                    else:
                        errors.append(str(status))
                    done = len(accepted) + len(refused) + len(errors)
                if on_done:
                    on_done(done)
        finally:
            close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.asarray(accepted or [np.nan]) * 1000
    ref = np.asarray(refused or [np.nan]) * 1000
    return {"clients": clients, "client": client, "requests": len(accepted) + len(refused) + len(errors),
            "accepted": len(accepted), "refused_503": len(refused), "errors": len(errors),
            "error_kinds": sorted(set(errors)),
            "seconds": round(wall, 2), "requests_per_s": round(len(accepted) / wall, 2),
            **{f"p{q}_ms": round(float(np.percentile(lat, q)), 1) for q in (50, 95, 99)},
            "refusal_p99_ms": round(float(np.percentile(ref, 99)), 1) if refused else None}


def _sender(url: str, payloads: list[tuple[str, bytes]], client: str) -> Any:
    """A factory of per-thread ``(post(i) -> (status, retry_after_s), close())`` for ``client``."""
    if client == "lean":
        from lean_client import LeanClient, multipart

        bodies = [multipart(name, data) for name, data in payloads]

        def lean() -> tuple[Any, Any]:
            c = LeanClient(url)

            def post(i: int) -> tuple[Any, float | None]:
                answer = c.post("/v1/assess", bodies[i])
                return answer.status, answer.retry_after
            return post, c.close
        return lean
    if client != "httpx":
        raise ValueError(f"--client: lean or httpx, not {client!r}")
    import httpx

    def make() -> tuple[Any, Any]:
        c = httpx.Client(base_url=url, timeout=120)

        def post(i: int) -> tuple[Any, float | None]:
            name, data = payloads[i]
            try:
                r = c.post("/v1/assess", files=[("photos", (name, data, "image/jpeg"))])
            except httpx.HTTPError as exc:
                return type(exc).__name__, None
            return r.status_code, float(r.headers.get("retry-after") or 1)
        return post, c.close
    return make


def photo_payloads(files: list[Path]) -> list[tuple[str, bytes]]:
    """``(file name, file bytes)`` of each photo: what one request uploads."""
    return [(f.name, f.read_bytes()) for f in files]


def soak(url: str, pid: int, payloads: list[tuple[str, bytes]], n: int, max_seconds: float,
         client: str = "lean") -> dict[str, Any]:
    """RSS after warm-up, then every 100 of ``n`` requests (16 clients)."""
    load(url, payloads, 32, 16, client=client)
    samples = [(0, rss_mb(pid))]
    marks = set(range(100, n + 1, 100))

    def sample(done: int) -> None:
        if done in marks:
            samples.append((done, rss_mb(pid)))

    run = load(url, payloads, n, 16, max_seconds, sample, client=client)
    if samples[-1][0] != run["requests"]:
        samples.append((run["requests"], rss_mb(pid)))
    return {"requests": run["requests"], "errors": run["errors"], "seconds": run["seconds"],
            "rss_after_warmup_mb": round(samples[0][1], 1), "rss_after_soak_mb": round(samples[-1][1], 1),
            "rss_growth_mb": round(samples[-1][1] - samples[0][1], 1),
            "rss_slope_mb_per_1000": rss_slope(samples),
            "rss_peak_mb": round(max(v for _, v in samples), 1),
            "rss_samples_mb": [[k, round(v, 1)] for k, v in samples]}


def _level(url: str, payloads: list[tuple[str, bytes]], total: int, clients: int, args: argparse.Namespace,
           tmp: Path) -> dict[str, Any]:
    """One concurrency level; from 64 clients on, a lone client in its own process (:mod:`service_probe`)
    sends requests one at a time meanwhile, and its latencies are the level's ``probe``."""
    if clients < 64:
        return load(url, payloads, total, clients, honour_retry_after=not args.storm, client=args.client)
    photo = tmp / payloads[0][0]
    photo.write_bytes(payloads[0][1])
    probe = subprocess.Popen([sys.executable, str(Path(__file__).parent / "service_probe.py"), url, str(photo)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        level = load(url, payloads, total, clients, honour_retry_after=not args.storm, client=args.client)
    finally:
        out, _ = probe.communicate(input="", timeout=300)
    level["probe"] = json.loads(out) if out.strip() else None
    return level


def run_engine(engine: str, model_path: str, payloads: list[tuple[str, bytes]], args: argparse.Namespace,
               model: dict[str, Any]) -> dict[str, Any]:
    """One engine: its levels and its soak, with the ratios to the peer."""
    tmp = Path(tempfile.mkdtemp(prefix=f"bench_service_{engine}_"))
    port = free_port()
    proc = start_server(model_path, tmp, port, engine)
    url = f"http://127.0.0.1:{port}"
    try:
        load(url, payloads, 16, 4, client=args.client)  # warm-up
        levels = [_level(url, payloads, max(args.requests, 3 * c), c, args, tmp)
                  for c in map(int, args.levels.split(","))]
        for lv in levels:
            lv["p95_over_model_predict"] = round(lv["p95_ms"] / 1000 / model["predict_s"], 2)
            lv["throughput_over_best_batched"] = round(lv["requests_per_s"] / model["best_batched_photos_per_s"], 2)
            lv["throughput_over_decode_and_predict"] = round(
                lv["requests_per_s"] / model["decode_and_predict_batch16_photos_per_s"], 2)
            lv["p99_over_p50"] = round(lv["p99_ms"] / lv["p50_ms"], 2)
        memory = soak(url, proc.pid, payloads, args.soak, args.max_seconds, args.client) if args.soak else None
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    refusals = server_refusals(tmp / "server.log")
    shutil.rmtree(tmp, ignore_errors=True)
    return {"engine": engine, "levels": levels, "memory": memory, "server_503": refusals}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", default=str(REPO / "data" / "sample" / "test"))
    ap.add_argument("--limit", type=int, default=8, help="photos used (cycled)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--size", type=int, default=256, help="input size of the untrained default model")
    ap.add_argument("--requests", type=int, default=96, help="requests per concurrency level (at least 3 per client)")
    ap.add_argument("--levels", default="1,4,16,64")
    ap.add_argument("--engines", default="local", help="comma-separated: local, ray")
    ap.add_argument("--soak", type=int, default=10000, help="requests of the memory soak (0: none)")
    ap.add_argument("--max-seconds", type=float, default=600.0, help="time bound of the soak")
    ap.add_argument("--storm", action="store_true",
                    help="refused clients retry at once instead of after Retry-After (a retry storm)")
    ap.add_argument("--client", default="lean", choices=("lean", "httpx"),
                    help="load generator: lean (body encoded once, http.client) or httpx (per-request encoding)")
    ap.add_argument("--out", default=None, help="also write the figures as JSON")
    args = ap.parse_args(argv)

    from cardamage.data.images import list_images

    tmp = Path(tempfile.mkdtemp(prefix="bench_service_"))
    files = list_images(args.photos)[:args.limit]
    payloads = photo_payloads(files)
    model_path = str(Path(args.model).resolve()) if args.model else build_model(tmp, args.size)
    model = model_times(model_path, files)
    engines = [run_engine(e, model_path, payloads, args, model) for e in args.engines.split(",")]
    for e in engines:
        e["goals"] = goals(e)
    sys.path.insert(0, str(Path(__file__).parent))
    from service_equivalence import compare

    same = compare(argparse.Namespace(model=None, size=args.size, limit=40, tolerance=0.05))
    same.pop("rows")
    result = {"photos": len(files), "photo_px": _sizes(files), "model_path": model_path,
              "model": model, "engines": engines, "equivalence": same,
              "cpus": os.cpu_count(), "load_avg": [round(x, 2) for x in os.getloadavg()]}
    print_report(result)
    if args.out:
        from cardamage.fileio import write_json

        write_json(args.out, result)
    return result


def _input_size(model_path: str) -> int:
    from cardamage.model.io import read_model_info

    return int(read_model_info(model_path).input_size)


def _sizes(files: list[Path]) -> list[str]:
    from cardamage.data.images import image_size

    return sorted({"x".join(map(str, image_size(f))) for f in files})


if __name__ == "__main__":
    main()
