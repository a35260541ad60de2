"""Micro-batching and admission: the batcher with a stand-in model call (no TensorFlow), the admission
middleware on a stand-in ASGI app, and the real app on uvicorn (one batch for concurrent requests, a
client that goes away frees its place, /metrics and the offline /docs)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from test_service_support import cached_model, car_photo, jpeg_bytes, running, service_params

from cardamage.service.batcher import MicroBatcher, Overloaded
from cardamage.service.middleware import Admission


class FakeModels:
    def __init__(self, version: str):
        self.version = version


class Gate:
    """A stand-in model call that records its batches and can be held closed."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()

    def __call__(self, models: FakeModels, photos: list[np.ndarray]) -> list[tuple[str, int]]:
        self.entered.set()
        self.open.wait(10)
        self.calls.append([int(p[0, 0, 0]) for p in photos])
        return [(models.version, int(p[0, 0, 0])) for p in photos]


def photo(i: int) -> np.ndarray:
    return np.full((4, 4, 3), i, np.uint8)


@pytest.fixture
def gate_batcher():
    gate, state = Gate(), {"models": FakeModels("v1")}
    batcher = MicroBatcher(lambda: state["models"], gate, max_batch=4, max_wait_ms=200, max_queue=6)
    batcher.start()
    yield batcher, gate, state
    gate.open.set()
    batcher.stop()


def test_jobs_waiting_together_are_one_model_call_and_never_split(gate_batcher):
    batcher, gate, _ = gate_batcher
    gate.open.clear()
    first = batcher.submit([photo(0)])
    assert gate.entered.wait(5)  # the first job is in the model: the next ones queue up meanwhile
    jobs = [batcher.submit([photo(1), photo(2)]), batcher.submit([photo(3)]), batcher.submit([photo(4), photo(5)])]
    gate.open.set()
    outs = [f.result(10) for f in [first, *jobs]]
    assert gate.calls == [[0], [1, 2, 3], [4, 5]]  # 4 photos fit one call, but the 2-photo job is not split
    assert [o.results for o in outs[1:]] == [[("v1", 1), ("v1", 2)], [("v1", 3)], [("v1", 4), ("v1", 5)]]
    assert [o.batch_size for o in outs] == [1, 3, 3, 2]


def test_a_full_queue_refuses_at_once_and_a_cancelled_job_costs_no_model_time(gate_batcher):
    batcher, gate, _ = gate_batcher
    gate.open.clear()
    batcher.submit([photo(0)])
    assert gate.entered.wait(5)
    kept = batcher.submit([photo(1), photo(2), photo(3)])
    gone = batcher.submit([photo(7), photo(8), photo(9)])
    assert batcher.depth == 6
    with pytest.raises(Overloaded, match="max_queue"):
        batcher.submit([photo(10)])
    assert batcher.cancel(gone) and batcher.depth == 3  # its place is free at once
    batcher.submit([photo(10)])
    gate.open.set()
    assert kept.result(10).results[0] == ("v1", 1)
    batcher.stop()
    assert all(7 not in call for call in gate.calls) and any(10 in call for call in gate.calls)


def test_each_batch_keeps_the_models_it_started_with(gate_batcher):
    batcher, gate, state = gate_batcher
    gate.open.clear()
    running_job = batcher.submit([photo(1)])
    assert gate.entered.wait(5)
    state["models"] = FakeModels("v2")  # a reload while the batch runs
    gate.open.set()
    assert running_job.result(10).models.version == "v1"
    assert batcher.submit([photo(2)]).result(10).models.version == "v2"


def test_stop_finishes_the_queued_jobs_then_refuses_new_ones(gate_batcher):
    batcher, gate, _ = gate_batcher
    gate.open.clear()
    futures = [batcher.submit([photo(i)]) for i in range(3)]
    threading.Timer(0.2, gate.open.set).start()
    batcher.stop()
    assert [f.result(0).results[0][1] for f in futures] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="shutting down"):
        batcher.submit([photo(5)])


def test_a_failing_model_call_fails_every_request_of_its_batch_only():
    calls = []

    def predict(models, photos):
        calls.append(len(photos))
        if len(calls) == 1:
            raise RuntimeError("model broke")
        return [None] * len(photos)

    batcher = MicroBatcher(lambda: None, predict, max_batch=8, max_wait_ms=50)
    batcher.start()
    try:
        futures = [batcher.submit([photo(i)]) for i in range(3)]
        for f in futures:
            with pytest.raises(RuntimeError, match="model broke"):
                f.result(10)
        assert batcher.submit([photo(4)]).result(10).results == [None]
    finally:
        batcher.stop()


def test_admission_answers_503_with_retry_after_beyond_max_inflight():
    release = asyncio.Event()
    seen = []

    async def inner(scope, receive, send):
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    app = Admission(inner, max_inflight=2, retry_after_s=3, paths=("/v1/assess",), on_change=seen.append)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            held = [asyncio.create_task(client.post("/v1/assess", content=b"x")) for _ in range(2)]
            while app.inflight < 2:
                await asyncio.sleep(0.01)
            refused = await client.post("/v1/assess", content=b"x")
            other = asyncio.create_task(client.get("/health"))  # other paths are not counted
            release.set()
            return refused, [await t for t in held], await other

    refused, held, other = asyncio.run(scenario())
    assert refused.status_code == 503 and refused.headers["retry-after"] == "3"
    assert refused.json()["error"]["code"] == "overloaded"
    assert [r.status_code for r in held] == [200, 200] and other.status_code == 200
    assert app.inflight == 0 and seen[-1] == 0 and max(seen) == 2


# --------------------------------------------------------------------------- the real app


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app with batches of up to 4 photos, each waiting up to 3 s for the others (fewer when every
    admitted request is already queued)."""
    from cardamage.service.app import create_app

    tmp = tmp_path_factory.mktemp("batching")
    params = service_params(tmp, cached_model(["damage"]))
    params.serve.batch.max_batch, params.serve.batch.max_wait_ms = 4, 3000.0
    params.serve.reuse.enabled = False
    app = create_app(params)
    with running(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        yield {"client": client, "url": url, "tmp": tmp, "app": app}


def metric(client: httpx.Client, name: str) -> float:
    text = client.get("/metrics").text
    found = re.search(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? ([0-9.e+-]+)$", text, re.M)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


def photos(n: int) -> list[bytes]:
    return [jpeg_bytes(car_photo(name, (480, 360))) for name in ["11.jpg", "12.jpg", "28.jpg", "45.jpg"][:n]]


@contextlib.contextmanager
def held_model(batcher):
    """Hold the real model call of the next batch until the block ends; yields the event set on entry."""
    real, entered, release = batcher.predict, threading.Event(), threading.Event()

    def held(models, batch):
        entered.set()
        release.wait(60)
        return real(models, batch)

    batcher.predict = held
    try:
        yield entered
    finally:
        batcher.predict = real
        release.set()


def raw_upload(url: str, name: str, data: bytes) -> socket.socket:
    """A connected socket that has sent a complete one-photo ``POST /v1/assess``."""
    boundary = "xyzzy"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"photos\"; filename=\"{name}\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(f"POST /v1/assess HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary="
                 f"{boundary}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


def until(condition, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.slow
def test_a_client_that_goes_away_frees_its_place_and_costs_no_model_call(server):
    """While a first request holds the model, a second one queues, then its client disconnects: its place
    and its queue slot are free at once, it never reaches the model, and its photo is not stored."""
    client, batcher = server["client"], server["app"].state.service.batcher
    first, gone = photos(1)[0], jpeg_bytes(car_photo("60.jpg", (480, 360)))
    before = metric(client, "cardamage_batch_size_count")
    answer = {}
    with held_model(batcher) as entered:
        t = threading.Thread(target=lambda: answer.update(r=httpx.post(
            server["url"] + "/v1/assess", files=[("photos", ("first.jpg", first, "image/jpeg"))], timeout=120)))
        t.start()
        assert entered.wait(60)
        with raw_upload(server["url"], "gone.jpg", gone):
            until(lambda: batcher.depth == 1, "the second photo never reached the queue")
        until(lambda: batcher.depth == 0 and metric(client, "cardamage_assess_in_flight") == 1,
              "the request kept its place after its client left", 10)
    t.join(120)
    assert answer["r"].status_code == 200
    assert metric(client, "cardamage_batch_size_count") - before == 1  # only the first request's call
    assert metric(client, "cardamage_assess_in_flight") == 0
    assert not list((server["tmp"] / "incoming").glob(f"{hashlib.sha256(gone).hexdigest()}.*"))


@pytest.mark.slow
def test_requests_that_wait_together_are_predicted_in_one_model_call(server):
    """The first request's model call is held (the real call, behind an event) while 3 more arrive: those 3
    are then one model call, and each answer is about its own photo."""
    client, data = server["client"], photos(4)
    batcher = server["app"].state.service.batcher
    before = (metric(client, "cardamage_batch_size_count"), metric(client, "cardamage_batch_size_sum"))
    answers = [None] * 4

    def one(i: int) -> None:
        with httpx.Client(base_url=server["url"], timeout=120) as c:
            answers[i] = c.post("/v1/assess", files=[("photos", (f"p{i}.jpg", data[i], "image/jpeg"))])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    with held_model(batcher) as entered:
        threads[0].start()
        assert entered.wait(60)
        for t in threads[1:]:
            t.start()
        until(lambda: batcher.depth == 3, "the other requests never reached the queue", 30)
    for t in threads:
        t.join(120)
    assert [a.status_code for a in answers] == [200] * 4
    for i, a in enumerate(answers):
        (ph,) = a.json()["photos"]
        assert ph["filename"] == f"p{i}.jpg" and ph["sha256"] == hashlib.sha256(data[i]).hexdigest()
        assert ph["width"] == 480 and ph["assessed"]
    assert metric(client, "cardamage_batch_size_count") - before[0] == 2  # [p0], then [p1, p2, p3]
    assert metric(client, "cardamage_batch_size_sum") - before[1] == 4


@pytest.mark.slow
def test_metrics_and_offline_docs_of_the_real_app(server):
    client = server["client"]
    text = client.get("/metrics").text
    assert 'cardamage_model_version{' in text and "cardamage_request_seconds_bucket" in text
    page = client.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert urls and not [u for u in urls if u.startswith(("http://", "https://", "//"))]
    for u in urls:
        assert client.get(u).status_code == 200, u
