"""Operations: Prometheus ``/metrics`` (:mod:`cardamage.service.metrics`) and the offline ``/docs``
(:mod:`cardamage.service.docs`), on a tiny FastAPI app of their own (no model)."""

from __future__ import annotations

import re
import uuid
from html.parser import HTMLParser
from types import SimpleNamespace
from urllib.parse import urljoin, urlsplit

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from cardamage.service.docs import DOCS_STATIC, add_offline_docs
from cardamage.service.metrics import MetricsMiddleware, ServiceMetrics, add_metrics_route, error_code
from cardamage.service.middleware import RequestContext, UploadLimits


def tiny_app(metrics: ServiceMetrics) -> FastAPI:
    """Routes shaped like the service's: a templated path, a refusal, an upload limit, a mount."""
    app = FastAPI(docs_url=None, redoc_url=None)

    @app.get("/v1/splash/{splash_id}.jpg")
    def splash(splash_id: str) -> dict[str, str]:
        return {"id": splash_id}

    @app.post("/v1/assess")
    def assess() -> JSONResponse:
        return JSONResponse({"error": {"code": "overloaded", "message": "busy"}}, status_code=503)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("boom")

    app.mount("/static", StaticFiles(directory=DOCS_STATIC), name="static")
    add_metrics_route(app, metrics)
    add_offline_docs(app)
    app.add_middleware(UploadLimits, max_bytes=1000, paths=("/v1/assess",))
    app.add_middleware(RequestContext)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def scrape(client: TestClient) -> dict[str, list]:
    """``/metrics`` parsed: family name -> samples."""
    res = client.get("/metrics")
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(res.text)}


def value(families: dict[str, list], sample: str, **labels: str) -> float:
    """The one sample called ``sample`` whose labels include ``labels`` (0 when none)."""
    family = re.sub(r"(_total|_count|_sum|_bucket)$", "", sample)
    found = [s.value for s in families.get(family, []) if s.name == sample and labels.items() <= s.labels.items()]
    assert len(found) <= 1, f"{sample} {labels}: {len(found)} samples"
    return found[0] if found else 0.0


@pytest.fixture
def client() -> TestClient:
    metrics = ServiceMetrics()
    with TestClient(tiny_app(metrics), raise_server_exceptions=False) as c:
        c.metrics = metrics
        yield c


def test_requests_are_timed_by_route_template_and_status(client):
    for _ in range(3):
        assert client.get(f"/v1/splash/{uuid.uuid4().hex}.jpg").status_code == 200
    assert client.get("/no/such/path").status_code == 404
    assert client.get(f"/static/{uuid.uuid4().hex}.js").status_code == 404
    assert client.get("/boom").status_code == 500
    families = scrape(client)
    routes = {s.labels["route"] for s in families["cardamage_request_seconds"]}
    assert routes == {"/v1/splash/{splash_id}.jpg", "other", "/static/{path}", "/boom"}
    splash = {"route": "/v1/splash/{splash_id}.jpg", "method": "GET", "status": "200"}
    assert value(families, "cardamage_request_seconds_count", **splash) == 3
    assert value(families, "cardamage_request_seconds_bucket", le="+Inf", **splash) == 3
    assert value(families, "cardamage_request_seconds_sum", **splash) > 0
    assert value(families, "cardamage_request_seconds_count", route="other", status="404") == 1
    assert value(families, "cardamage_request_seconds_count", route="/boom", status="500") == 1
    # the scrape itself is counted once it is over; nothing is left in flight
    assert value(scrape(client), "cardamage_request_seconds_count", route="/metrics") == 1
    assert value(families, "cardamage_http_requests_in_flight") == 1  # the scrape that read it


def test_refusals_are_counted_by_reason_from_any_layer(client):
    before = scrape(client)
    assert value(before, "cardamage_refused_total", reason="overloaded") == 0  # exported before the first
    files = {"photos": ("a.jpg", b"x", "image/jpeg")}
    assert client.post("/v1/assess", files=files).status_code == 503  # the route's own error body
    assert client.post("/v1/assess", files=files).status_code == 503
    assert client.post("/v1/assess", content=b"{}", headers={"content-type": "application/json"}).status_code == 415
    assert client.post("/v1/assess", files={"photos": ("a.jpg", b"x" * 5000, "image/jpeg")}).status_code == 413
    assert client.get("/v1/splash/nope").status_code == 404  # not a refusal
    client.metrics.refused("not_an_image")
    client.metrics.refused("Bad Reason!")  # not a label value we export as is
    families = scrape(client)
    assert value(families, "cardamage_refused_total", reason="overloaded") == 2
    assert value(families, "cardamage_refused_total", reason="unsupported_media_type") == 1
    assert value(families, "cardamage_refused_total", reason="request_too_large") == 1
    assert value(families, "cardamage_refused_total", reason="not_an_image") == 1
    assert value(families, "cardamage_refused_total", reason="other") == 1
    assert sum(s.value for s in families["cardamage_refused"] if s.name.endswith("_total")) == 6


def test_error_code_reads_full_and_truncated_bodies():
    assert error_code(b'{"error": {"code": "too_many_pixels", "files": [{"code": "x"}]}}') == "too_many_pixels"
    assert error_code(b'{"error": {"code": "overloaded", "message": "bus') == "overloaded"
    assert error_code(b'{"detail": "nope"}') is None and error_code(b"not json") is None


def test_batches_queue_and_model_version():
    m = ServiceMetrics()
    for size, seconds in ((1, 0.02), (3, 0.05), (8, 0.2)):
        m.observe_batch(size, seconds)
    m.observe_queue_wait(0.004)
    m.set_queue_depth(5)
    m.set_inflight(2)
    m.set_model_version("v1")
    m.set_model_version("v2")
    m.reloaded()
    body, ctype = m.render()
    assert ctype.startswith("text/plain")
    families = {f.name: f.samples for f in text_string_to_metric_families(body.decode())}
    assert value(families, "cardamage_batch_size_count") == 3 and value(families, "cardamage_batch_size_sum") == 12
    assert value(families, "cardamage_batch_size_bucket", le="2.0") == 1
    assert value(families, "cardamage_batch_size_bucket", le="4.0") == 2
    assert {s.labels["le"] for s in families["cardamage_batch_size"] if s.name.endswith("_bucket")} == {
        "1.0", "2.0", "4.0", "8.0", "16.0", "32.0", "64.0", "+Inf"}
    assert value(families, "cardamage_batch_seconds_sum") == pytest.approx(0.27)
    assert value(families, "cardamage_photos_assessed_total") == 12
    assert value(families, "cardamage_queue_wait_seconds_count") == 1
    assert value(families, "cardamage_queue_depth") == 5 and value(families, "cardamage_assess_in_flight") == 2
    versions = [(s.labels["version"], s.value) for s in families["cardamage_model_version"]]
    assert versions == [("v2", 1.0)]  # only the current version
    assert value(families, "cardamage_model_reloads_total") == 1
    om_body, om_type = m.render("application/openmetrics-text; version=1.0.0")
    assert om_type.startswith("application/openmetrics-text") and om_body.rstrip().endswith(b"# EOF")


def test_track_models_follows_a_holder_at_each_scrape():
    def models(version: str, part: str | None) -> SimpleNamespace:
        info = SimpleNamespace
        return SimpleNamespace(main=SimpleNamespace(info=info(model_version=version)),
                               part=SimpleNamespace(info=info(model_version=part)) if part else None)

    holder = SimpleNamespace(loaded=False, reloads=0, reload_state={"status": "ok"}, current=None)
    m = ServiceMetrics()
    m.track_models(holder)
    assert b"cardamage_model_version{" not in m.render()[0]  # nothing before the models load
    holder.loaded, holder.current = True, lambda: models("a1", "p1")
    holder.reloads, holder.reload_state = 2, {"status": "refused"}
    families = {f.name: f.samples for f in text_string_to_metric_families(m.render()[0].decode())}
    assert sorted((s.labels["model"], s.labels["version"]) for s in families["cardamage_model_version"]) == [
        ("damage", "a1"), ("part", "p1")]
    assert value(families, "cardamage_model_reloads_total") == 2
    assert value(families, "cardamage_model_reload_ok") == 0
    holder.current, holder.reloads, holder.reload_state = (lambda: models("a2", None)), 3, {"status": "ok"}
    families = {f.name: f.samples for f in text_string_to_metric_families(m.render()[0].decode())}
    assert [(s.labels["model"], s.labels["version"]) for s in families["cardamage_model_version"]] == [
        ("damage", "a2")]
    assert value(families, "cardamage_model_reloads_total") == 3 and value(families, "cardamage_model_reload_ok") == 1


def test_two_apps_keep_their_own_metrics():
    first, second = ServiceMetrics(), ServiceMetrics()  # no "Duplicated timeseries" error
    with TestClient(tiny_app(first)) as a, TestClient(tiny_app(second)) as b:
        a.get("/v1/splash/x.jpg")
        a.get("/v1/splash/y.jpg")
        b.get("/v1/splash/z.jpg")
        route = {"route": "/v1/splash/{splash_id}.jpg", "status": "200"}
        assert value(scrape(a), "cardamage_request_seconds_count", **route) == 2
        assert value(scrape(b), "cardamage_request_seconds_count", **route) == 1
    assert first.registry is not second.registry


def test_metrics_route_is_not_in_the_schema(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/assess" in paths and not {"/metrics", "/docs", "/docs/oauth2-redirect"} & set(paths)


class _Refs(HTMLParser):
    """Every URL the page loads or links to (``src`` and ``href`` attributes)."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]


def test_docs_page_loads_everything_from_the_app(client):
    res = client.get("/docs")
    assert res.status_code == 200 and "text/html" in res.headers["content-type"]
    html = res.text
    assert "SwaggerUIBundle" in html and "'/openapi.json'" in html and '"validatorUrl": null' in html
    assert not re.findall(r"(?:https?:)?//[^\s'\"<>]+", html), "the page names another host"
    assert "default-src 'self'" in res.headers["content-security-policy"]
    parser = _Refs()
    parser.feed(html)
    assert len(parser.refs) == 3  # the script, the style sheet, the favicon
    for ref in parser.refs:
        url = urljoin("http://testserver/docs", ref)
        assert urlsplit(url).netloc == "testserver", ref
        got = client.get(url)
        assert got.status_code == 200 and len(got.content) > 500, ref
    assert client.get("/docs/assets/swagger-ui-bundle.js").content.startswith(b"/*! For license information")
    redirect = client.get("/docs/oauth2-redirect")
    assert redirect.status_code == 200 and "oauth2" in redirect.text.lower()


def test_docs_honour_the_root_path_and_ship_their_licence():
    app = FastAPI(docs_url=None, redoc_url=None)
    add_offline_docs(app)
    with TestClient(app, root_path="/claims") as c:  # as behind a proxy that strips /claims
        html = c.get("/docs").text
    assert 'src="/claims/docs/assets/swagger-ui-bundle.js"' in html and "'/claims/openapi.json'" in html
    assert "Apache License" in (DOCS_STATIC / "LICENSE").read_text() and (DOCS_STATIC / "NOTICE").is_file()
    with pytest.raises(ValueError, match="openapi_url"):
        add_offline_docs(FastAPI(openapi_url=None, docs_url=None, redoc_url=None))
    with pytest.raises(ValueError, match="docs_url=None"):
        add_offline_docs(FastAPI())  # FastAPI's CDN /docs would be routed first
