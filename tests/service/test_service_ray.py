"""Model tier: ``cardamage serve --engine ray``, the same app as a Ray Serve deployment on a local Ray instance.

One deployment (one replica, the tiny damage model) serves the whole module; the uvicorn path of the
same app, in this process, gives the answers to compare with. Skipped without Ray Serve.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from test_service_support import SAMPLE_TEST, cached_model, running, service_params

pytest.importorskip("ray.serve", reason="Ray Serve is optional: pip install -e .[ray]")

from cardamage.cli import main  # noqa: E402
from cardamage.config import load_params  # noqa: E402
from cardamage.errors import BadParameterError  # noqa: E402
from cardamage.service import ray_serve  # noqa: E402

pytestmark = pytest.mark.slow
PHOTO = sorted(SAMPLE_TEST.glob("*.jpg"))[0]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ray_service(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """The app on Ray Serve (local instance: 2 CPUs, 80 MB object store, no dashboard), one replica."""
    import ray

    tmp = tmp_path_factory.mktemp("ray-service")
    params = service_params(tmp, cached_model(["damage"]))
    params.serve.ray.min_replicas = params.serve.ray.max_replicas = 1
    # small bounds, so that a dozen concurrent requests overload the replica (test_overload_...)
    params.serve.batch.max_inflight, params.serve.batch.max_queue, params.serve.ray.target_ongoing_requests = 2, 2, 2
    with pytest.MonkeyPatch.context() as env:
        env.delenv("RAY_ADDRESS", raising=False)  # never a developer's cluster
        assert ray_serve.connect(None, num_cpus=2, object_store_memory=80 * 2**20), "a local instance was started"
    assert ray.is_initialized()
    try:
        port = _free_port()
        ray_serve.start(params, "127.0.0.1", port)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            yield {"client": client, "params": params, "tmp": tmp}
    finally:
        ray_serve.stop(local=True)


@pytest.fixture(scope="module")
def local_service(tmp_path_factory) -> Iterator[httpx.Client]:
    """The same app on uvicorn in this process (its own folders), for the answers to compare with."""
    from cardamage.service.app import create_app

    params = service_params(tmp_path_factory.mktemp("local-service"), cached_model(["damage"]))
    with running(create_app(params)) as url, httpx.Client(base_url=url, timeout=120) as client:
        yield client


def _assess(client: httpx.Client, name: str, data: bytes, ctype: str = "image/jpeg") -> httpx.Response:
    return client.post("/v1/assess", files=[("photos", (name, data, ctype))], data={"claim_id": "CLM-RAY"})


def _shape(value: Any) -> Any:
    """The keys and value types of a JSON answer, without the values (ids and URLs differ per request)."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return "number" if isinstance(value, (int, float)) and not isinstance(value, bool) else type(value).__name__


def test_health_and_version_name_the_model(ray_service):
    c = ray_service["client"]
    health = c.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    version = c.get("/version").json()
    assert version["model"]["version"] == health.json()["model_version"]
    assert version["model"]["classes"] == ["damage"] and version["service"]


def test_assess_answers_as_the_uvicorn_path(ray_service, local_service):
    data = PHOTO.read_bytes()
    remote, local = _assess(ray_service["client"], PHOTO.name, data), _assess(local_service, PHOTO.name, data)
    assert remote.status_code == local.status_code == 200, remote.text
    a, b = remote.json(), local.json()
    assert _shape(a) == _shape(b)
    assert a["claim_id"] == "CLM-RAY" and remote.headers.get_list("x-request-id") == [a["request_id"]]
    (pa,), (pb,) = a["photos"], b["photos"]
    assert pa["sha256"] == pb["sha256"] and pa["instance_count"] == pb["instance_count"]
    assert pa["damaged_share"] == pytest.approx(pb["damaged_share"], abs=1e-3)
    assert a["settlement"]["decision"] == b["settlement"]["decision"]
    assert ray_service["client"].get(pa["splash_url"]).headers["content-type"] == "image/jpeg"
    assert (ray_service["tmp"] / "incoming" / f"{pa['sha256']}.jpg").read_bytes() == data  # the replica's folders


@pytest.mark.parametrize("name, data, ctype", [("empty.jpg", b"", "image/jpeg"),
                                               ("doc.pdf", b"%PDF-1.4 fake", "application/pdf")])
def test_bad_upload_gets_the_same_4xx(ray_service, local_service, name, data, ctype):
    remote, local = _assess(ray_service["client"], name, data, ctype), _assess(local_service, name, data, ctype)
    assert 400 <= remote.status_code < 500 and remote.status_code == local.status_code, remote.text
    assert remote.json()["error"]["code"] == local.json()["error"]["code"]


def test_overload_is_refused_at_once_by_the_replica_with_retry_after(ray_service):
    """12 requests at once on a replica admitting 2 (4 ongoing, 2 queued in the proxy): the replica's own
    admission control refuses the excess with 503 + Retry-After, the proxy's bounded queue the rest."""
    data = PHOTO.read_bytes()
    url = str(ray_service["client"].base_url)
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def one() -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            r = _assess(client, PHOTO.name, data)
        with lock:
            answers.append(r)

    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(r.status_code for r in answers)
    assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses, statuses
    app_refusals = [r for r in answers if r.status_code == 503 and r.headers.get("retry-after")]
    assert app_refusals and app_refusals[0].json()["error"]["code"] == "overloaded", statuses


def test_request_id_is_echoed_once(ray_service):
    resp = ray_service["client"].get("/health", headers={"X-Request-ID": "req-ray-1"})
    assert resp.status_code == 200 and resp.headers.get_list("x-request-id") == ["req-ray-1"]


def test_wait_for_interrupt_returns_on_sigterm():
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    started = time.monotonic()
    ray_serve.wait_for_interrupt(poll_s=0.05)
    assert time.monotonic() - started < 10
    assert signal.getsignal(signal.SIGTERM) is not ray_serve._interrupt, "the previous handler is back"


def test_deployment_options_follow_params():
    params = load_params()
    params.serve.ray.min_replicas, params.serve.ray.max_replicas, params.serve.ray.num_cpus = 0, 3, 0.5
    params.serve.batch.max_inflight, params.serve.batch.max_queue = 40, 24
    opts = ray_serve.deployment_options(params)
    assert opts["autoscaling_config"]["min_replicas"] == 0 and opts["autoscaling_config"]["max_replicas"] == 3
    assert opts["autoscaling_config"]["initial_replicas"] == 1
    assert opts["ray_actor_options"]["num_cpus"] == 0.5 and opts["max_ongoing_requests"] == 64
    assert opts["max_queued_requests"] == 24, "the proxy's queue is bounded too"
    params.serve.ray.max_replicas = 0
    with pytest.raises(BadParameterError, match="serve.ray.max_replicas"):
        ray_serve.deployment_options(params)


def test_cli_engine_ray_checks_the_model_before_starting_ray(tmp_path, monkeypatch):
    def no_ray(address):
        raise AssertionError("Ray was started for a model that does not fit")

    monkeypatch.setattr(ray_serve, "connect", no_ray)
    monkeypatch.setattr(logging.getLogger(), "handlers", logging.getLogger().handlers[:])
    model = cached_model(["damage"])  # 64 px: params.yaml's model.input_size differs
    result = CliRunner().invoke(main, ["serve", "--engine", "ray", "--model", str(model)])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error:") and len(result.output.strip().splitlines()) == 1
    assert "input" in result.output and str(model) in result.output


def test_cli_engine_ray_passes_host_port_and_model(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ray_serve, "run_ray_server", lambda params, **kw: calls.append((params, kw)))
    model = Path(cached_model(["damage"]))
    result = CliRunner().invoke(main, ["serve", "--engine", "ray", "--host", "0.0.0.0", "--port", "8123",
                                       "--model", str(model), "--set", "serve.ray.max_replicas=4"])
    assert result.exit_code == 0, result.output
    ((params, kw),) = calls
    assert kw == {"host": "0.0.0.0", "port": 8123, "model_path": str(model)}
    assert params.serve.ray.max_replicas == 4
