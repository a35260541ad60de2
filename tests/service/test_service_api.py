"""Model tier: the claim service on a real uvicorn server (thread, 127.0.0.1, free port).

Every endpoint, every refused upload, the generic 500, request ids, the incoming pool, and a model
reload under concurrent requests. The models are random 64 px networks (see test_service_support).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from test_service_support import PARTS, cached_model, car_photo, jpeg_bytes, running, service_params, tiny_model

from cardamage.monitoring.features import measure_folder
from cardamage.service.logs import JsonFormatter, RequestIdFilter

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server with a damage and a part model, 1 MB upload limit, 3 photos per request, and a /boom route."""
    from cardamage.service.app import create_app

    tmp = tmp_path_factory.mktemp("service")
    params = service_params(tmp, cached_model(["damage"]), cached_model(PARTS), max_upload_mb=1.0,
                            max_photos_per_request=3)
    app = create_app(params)

    @app.get("/boom", include_in_schema=False)
    def boom() -> None:
        raise RuntimeError("secret internal detail")

    logs = io.StringIO()
    handler = logging.StreamHandler(logs)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    service_log = logging.getLogger("cardamage.service")
    level = service_log.level
    service_log.addHandler(handler)
    service_log.setLevel(logging.INFO)
    try:
        with running(app) as url, httpx.Client(base_url=url, timeout=120) as client:
            yield {"client": client, "url": url, "tmp": tmp, "params": params, "logs": logs}
    finally:
        service_log.removeHandler(handler)
        service_log.setLevel(level)


def post(client: httpx.Client, *files: tuple[str, bytes, str], claim_id: str | None = None, **kw) -> httpx.Response:
    data = {"claim_id": claim_id} if claim_id else None
    return client.post("/v1/assess", files=[("photos", f) for f in files], data=data, **kw)


def error_code(resp: httpx.Response) -> str:
    body = resp.json()
    assert body["request_id"] == resp.headers["x-request-id"]
    return body["error"]["code"]


def test_health_and_version(server):
    c = server["client"]
    health = c.get("/health").json()
    assert health["status"] == "ok" and health["model_version"]
    version = c.get("/version").json()
    assert version["model"]["classes"] == ["damage"] and version["model"]["version"] == health["model_version"]
    assert version["part_model"]["classes"] == PARTS
    assert version["service"] and "data" in version


def test_assess_one_photo_end_to_end(server):
    c, tmp = server["client"], server["tmp"]
    data = jpeg_bytes(car_photo("11.jpg"))
    resp = post(c, ("front.jpg", data, "image/jpeg"), claim_id="CLM-42", headers={"X-Request-ID": "req-123"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-request-id"] == "req-123"
    body = resp.json()
    assert body["claim_id"] == "CLM-42" and body["request_id"] == "req-123"
    (photo,) = body["photos"]
    assert photo["assessed"] and photo["quality"]["ok"] and (photo["width"], photo["height"]) == (480, 360)
    assert photo["instance_count"] == len(photo["instances"]) and 0 <= photo["damaged_share"] <= 1
    for inst in photo["instances"]:
        assert {"class", "confidence", "area_px", "area_share", "bbox", "polygons", "part"} <= set(inst)
        assert inst["part"] in PARTS + [None]
    assert all(p["part"] in PARTS for p in photo["parts"])
    s = body["settlement"]
    assert s["decision"] in ("estimate", "no_damage", "refer_to_handler") and s["rule"] and s["reason"]
    splash = c.get(photo["splash_url"])
    assert splash.status_code == 200 and splash.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(splash.content)).size == (480, 360)
    sha = hashlib.sha256(data).hexdigest()
    assert photo["sha256"] == sha
    incoming = tmp / "incoming"
    assert (incoming / f"{sha}.jpg").read_bytes() == data
    record = json.loads((incoming / f"{sha}.json").read_text())
    assert record["claim_id"] == "CLM-42" and record["model"]["version"] == body["model"]["version"]
    assert record["instances"] == photo["instances"]
    assert sha in set(measure_folder(incoming)["sha256"])  # the drift / score pool reads it


def test_failed_quality_photo_is_not_assessed_and_refers_the_claim(server):
    c, tmp = server["client"], server["tmp"]
    good = jpeg_bytes(car_photo("12.jpg"))
    dark_rgb = (np.asarray(car_photo("28.jpg")) * 0.2).astype(np.uint8)
    dark = jpeg_bytes(dark_rgb)
    resp = post(c, ("good.jpg", good, "image/jpeg"), ("dark.jpg", dark, "image/jpeg"))
    assert resp.status_code == 200, resp.text
    good_out, dark_out = resp.json()["photos"]
    assert good_out["assessed"] and not dark_out["assessed"]
    assert dark_out["quality"]["problems"][0]["code"] == "too_dark"
    assert "splash_url" not in dark_out and "instances" not in dark_out
    s = resp.json()["settlement"]
    assert (s["decision"], s["rule"]) == ("refer_to_handler", "quality_gate") and "dark.jpg" in s["reason"]
    assert not list((tmp / "incoming").glob(hashlib.sha256(dark).hexdigest() + "*"))


def _gif() -> bytes:
    buf = io.BytesIO()
    car_photo().save(buf, "GIF")
    return buf.getvalue()


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (9500, 9500)).save(buf, "PNG")  # 90 Mpx, a few kB: over images.MAX_PIXELS
    return buf.getvalue()


@pytest.mark.parametrize("name, data, ctype, status, code", [
    ("empty.jpg", b"", "image/jpeg", 400, "empty_file"),
    ("notes.jpg", b"these are not pixels" * 50, "image/jpeg", 415, "not_an_image"),
    ("doc.pdf", b"%PDF-1.4 fake", "application/pdf", 415, "unsupported_media_type"),
    ("cut.jpg", None, "image/jpeg", 400, "truncated"),
    ("anim.gif", None, "image/gif", 415, "unsupported_format"),
    ("bomb.png", None, "image/png", 413, "too_many_pixels"),
])
def test_bad_uploads_get_a_clear_4xx(server, name, data, ctype, status, code):
    if data is None:
        data = {"cut.jpg": lambda: jpeg_bytes(car_photo())[:3000], "anim.gif": _gif, "bomb.png": _bomb}[name]()
    resp = post(server["client"], ("ok.jpg", jpeg_bytes(car_photo()), "image/jpeg"), (name, data, ctype))
    assert resp.status_code == status, resp.text
    assert error_code(resp) == code
    (problem,) = resp.json()["error"]["files"]
    assert problem["filename"] == name and problem["message"]


def test_request_shape_errors(server):
    c = server["client"]
    resp = c.post("/v1/assess", json={"photos": []})
    assert resp.status_code == 415 and error_code(resp) == "unsupported_media_type"
    resp = c.post("/v1/assess", data={"claim_id": "x"}, files={"other": ("a.txt", b"x", "text/plain")})
    assert resp.status_code == 422 and error_code(resp) == "invalid_request" and "photos" in resp.text
    photo = ("a.jpg", jpeg_bytes(car_photo()), "image/jpeg")
    resp = post(c, photo, photo, photo, photo)
    assert resp.status_code == 413 and error_code(resp) == "too_many_photos"
    resp = post(c, photo, claim_id="x" * 200)
    assert resp.status_code == 422


def test_too_large_by_content_length(server):
    big = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    data = jpeg_bytes(big, quality=95)  # about 2.3 MB of noise, over the 1 MB limit
    assert len(data) > (1 << 20)
    resp = post(server["client"], ("big.jpg", data, "image/jpeg"))
    assert resp.status_code == 413 and error_code(resp) == "request_too_large"


def test_too_large_when_streamed_without_length(server):
    boundary = "cardamageboundary"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"photos\"; filename=\"big.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode()

    def chunks():
        yield part
        for _ in range(24):  # 1.5 MB in 64 kB chunks, no Content-Length (chunked transfer)
            yield b"\xff" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    resp = server["client"].post("/v1/assess", content=chunks(),
                                 headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert resp.status_code == 413 and error_code(resp) == "request_too_large"


def test_internal_errors_show_no_details(server):
    resp = server["client"].get("/boom", headers={"X-Request-ID": "boom-1"})
    assert resp.status_code == 500
    assert resp.json() == {"error": {"code": "internal_error", "message": resp.json()["error"]["message"]},
                           "request_id": "boom-1"}
    assert "secret" not in resp.text and "Traceback" not in resp.text
    assert resp.headers["x-request-id"] == "boom-1"


def test_logs_are_json_lines_with_the_request_id(server):
    resp = post(server["client"], ("a.jpg", jpeg_bytes(car_photo("60.jpg")), "image/jpeg"),
                headers={"X-Request-ID": "log-check-7"})
    assert resp.status_code == 200
    records = [json.loads(line) for line in server["logs"].getvalue().splitlines()]
    mine = [r for r in records if r["request_id"] == "log-check-7"]
    access = [r for r in mine if r["logger"] == "cardamage.service.access"]
    assert access and access[0]["status"] == 200 and access[0]["path"] == "/v1/assess"
    assert access[0]["duration_ms"] > 0 and access[0]["method"] == "POST"
    assert any(r["logger"] == "cardamage.service.claims" for r in mine)  # logged in a worker thread


def test_request_ids_are_made_when_missing_or_unsafe(server):
    c = server["client"]
    made = c.get("/health").headers["x-request-id"]
    assert len(made) == 32
    replaced = c.get("/health", headers={"X-Request-ID": "bad id\twith spaces"}).headers["x-request-id"]
    assert replaced != "bad id\twith spaces" and len(replaced) == 32


def test_splash_not_found(server):
    c = server["client"]
    assert c.get("/v1/splash/" + "0" * 32 + ".jpg").status_code == 404
    resp = c.get("/v1/splash/..%2F..%2Fparams.jpg")
    assert resp.status_code == 404 and error_code(resp) == "not_found"


def test_page_and_openapi(server):
    c = server["client"]
    page = c.get("/")
    assert page.status_code == 200 and 'id="claim-form"' in page.text
    assert c.get("/static/app.js").status_code == 200
    spec = c.get("/openapi.json").json()
    assert {"/v1/assess", "/health", "/version"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/v1/assess"]["post"]["requestBody"]["content"]
    assert c.get("/docs").status_code == 200


def test_model_reload_without_dropping_requests(tmp_path):
    """Clients keep posting while the model file is replaced: every request succeeds, the new version
    takes over, and a broken file afterwards leaves the service on its last good model."""
    from cardamage.service.app import create_app

    model = tmp_path / "model.keras"
    shutil.copyfile(cached_model(["damage"]), model)
    app = create_app(service_params(tmp_path, model, reload_check_s=0.2))
    photo = ("p.jpg", jpeg_bytes(car_photo("45.jpg", (400, 320))), "image/jpeg")
    results: list[tuple[int, str]] = []
    stop = threading.Event()
    with running(app) as url:
        old = httpx.get(f"{url}/version").json()["model"]["version"]

        def client_loop() -> None:
            with httpx.Client(base_url=url, timeout=120) as c:
                while not stop.is_set():
                    r = post(c, photo)
                    results.append((r.status_code, r.json().get("model", {}).get("version", "")))

        threads = [threading.Thread(target=client_loop) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            _wait(lambda: len(results) >= 2, "first requests")
            tiny_model(model, ["damage"])  # atomic replace with new random weights: a new version
            _wait(lambda: httpx.get(f"{url}/version").json()["model"]["version"] != old, "the new version")
            n = len(results)  # each client has at most one request in flight from before the swap
            _wait(lambda: len(results) >= n + 4, "requests on the new model")
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=120)
        new = httpx.get(f"{url}/version").json()
        assert all(status == 200 for status, _ in results), results
        assert {v for _, v in results} == {old, new["model"]["version"]}
        assert new["reloads"] == 1
        model.write_bytes(b"not a model")
        _wait(lambda: "last_reload_error" in httpx.get(f"{url}/version").json(), "the reload error")
        assert httpx.get(f"{url}/version").json()["model"]["version"] == new["model"]["version"]
        assert post(httpx.Client(base_url=url, timeout=120), photo).status_code == 200


def _wait(condition, what: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_instance_part_is_the_part_under_most_of_the_region():
    from cardamage.service.claims import instance_parts

    part_probs = np.zeros((40, 60, 3), np.float32)
    part_probs[..., 0] = 1.0                       # background everywhere ...
    part_probs[:, :30, 1] = 2.0                    # ... "door" on the left half
    part_probs[:, 30:, 2] = 2.0                    # ... "hood" on the right half
    part_probs[:, 50:, 0] = 3.0                    # ... background again at the far right
    regions = [{"polygons": [[[25, 5], [45, 5], [45, 20], [25, 20]]]},   # mostly over the hood
               {"polygons": [[[52, 5], [58, 5], [58, 20]]]},             # off the car
               {"polygons": []}]
    instance_parts(regions, part_probs, ["door", "hood"])
    assert [r["part"] for r in regions] == ["hood", None, None]
