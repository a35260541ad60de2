"""Prometheus metrics of the claim service: :class:`ServiceMetrics`, its ASGI middleware and ``GET /metrics``.

Every metric is named ``cardamage_*`` and lives in the :class:`ServiceMetrics`' own
:class:`~prometheus_client.CollectorRegistry`, so several apps in one process (tests) never clash.

* :class:`MetricsMiddleware` (pure ASGI, outermost) times every HTTP request by route *template*
  (``/v1/splash/{splash_id}.jpg``, a mount as ``/static/{path}``, anything else ``other``): label
  values stay bounded whatever paths clients send. It also counts refusals: a response whose status is
  in :data:`REFUSAL_STATUSES` and whose JSON body is the service's ``{"error": {"code": ...}}`` adds
  one to ``cardamage_refused_total{reason=<code>}``, whichever layer answered (handlers, upload
  limits, admission control).
* The micro-batcher and the admission control report through :meth:`ServiceMetrics.observe_batch`,
  :meth:`~ServiceMetrics.observe_queue_wait`, :meth:`~ServiceMetrics.set_queue_depth`,
  :meth:`~ServiceMetrics.set_inflight` and :meth:`~ServiceMetrics.photos_assessed`.
* :meth:`ServiceMetrics.track_models` reads the model version and reload count from a
  :class:`~cardamage.service.models.ModelHolder` at each scrape (no hook in the holder needed).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from starlette.routing import Match, Mount

from cardamage.service.middleware import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
BATCH_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
QUEUE_WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: refusal reasons exported (as 0) before the first one happens, so ``rate()`` has a series to work on
KNOWN_REASONS = ("overloaded", "too_many_pixels", "too_many_photos", "request_too_large", "not_an_image",
                 "unsupported_media_type", "unsupported_format", "empty_file", "truncated", "no_photo",
                 "invalid_request")
#: statuses whose JSON error body counts as a refusal (404, 405 and 5xx other than 503 are not refusals)
REFUSAL_STATUSES = frozenset({400, 413, 415, 422, 429, 503})
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
MAX_REASONS = 64  # distinct reason label values; past that, "other"
_REASON_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
_CODE_RE = re.compile(rb'"code"\s*:\s*"([^"]{1,64})"')
_ERROR_BODY_MAX = 64 * 1024


class ServiceMetrics:
    """The service's metrics in a registry of their own; every method is thread-safe (prometheus_client)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._build_traffic()
        self._build_batching()
        self._build_models()
        self._reasons: set[str] = set()
        self._reason_lock = threading.Lock()
        self._refreshers: list[Callable[[], None]] = []
        for reason in KNOWN_REASONS:
            self.refused_total.labels(reason=self._reason(reason))

    def _build_traffic(self) -> None:
        r = self.registry
        self.request_seconds = Histogram("cardamage_request_seconds", "HTTP request latency by route template",
                                         ["route", "method", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.http_in_flight = Gauge("cardamage_http_requests_in_flight", "HTTP requests being handled now",
                                    registry=r)
        self.inflight = Gauge("cardamage_assess_in_flight", "Assessment requests admitted and not finished "
                              "(admission control)", registry=r)
        self.refused_total = Counter("cardamage_refused", "Requests refused, by reason (the error code)",
                                     ["reason"], registry=r)
        self.photos_total = Counter("cardamage_photos_assessed", "Photos assessed by the model", registry=r)

    def _build_batching(self) -> None:
        r = self.registry
        self.batch_size = Histogram("cardamage_batch_size", "Photos per model batch (micro-batching)",
                                    buckets=BATCH_SIZE_BUCKETS, registry=r)
        self.batch_seconds = Histogram("cardamage_batch_seconds", "Model time of one batch",
                                       buckets=BATCH_SECONDS_BUCKETS, registry=r)
        self.queue_wait_seconds = Histogram("cardamage_queue_wait_seconds", "Time a photo waited for its batch",
                                            buckets=QUEUE_WAIT_BUCKETS, registry=r)
        self.queue_depth = Gauge("cardamage_queue_depth", "Photos waiting in the batch queue", registry=r)

    def _build_models(self) -> None:
        r = self.registry
        self.model_version = Gauge("cardamage_model_version", "The model version being served (1; one series "
                                   "per model)", ["model", "version"], registry=r)
        self.reloads_total = Counter("cardamage_model_reloads", "Model swaps after a new file version",
                                     registry=r)
        self.reload_ok = Gauge("cardamage_model_reload_ok", "0 while the last model reload was refused, else 1",
                               registry=r)
        self.reload_ok.set(1)
        self._versions: dict[str, str] = {}
        self._version_lock = threading.Lock()

    # --- requests -------------------------------------------------------------------------------------------
    def observe_request(self, route: str, status: int, seconds: float, method: str = "GET") -> None:
        """One finished HTTP request (:class:`MetricsMiddleware` calls this)."""
        method = method.upper() if method.upper() in METHODS else "other"
        self.request_seconds.labels(route=route, method=method, status=str(int(status))).observe(seconds)

    def refused(self, reason: str, n: int = 1) -> None:
        """Count a refusal. Responses through :class:`MetricsMiddleware` are counted already: call this only
        for refusals that send no such response."""
        self.refused_total.labels(reason=self._reason(reason)).inc(n)

    def _reason(self, reason: str) -> str:
        reason = reason if isinstance(reason, str) and _REASON_RE.match(reason) else "other"
        with self._reason_lock:
            if reason not in self._reasons and len(self._reasons) >= MAX_REASONS:
                return "other"
            self._reasons.add(reason)
        return reason

    def set_inflight(self, n: int) -> None:
        """Assessment requests admitted and not finished (admission control, after each change)."""
        self.inflight.set(n)

    def photos_assessed(self, n: int = 1) -> None:
        """``n`` more photos went through the model, on a path that does not call :meth:`observe_batch`."""
        self.photos_total.inc(n)

    # --- micro-batching -------------------------------------------------------------------------------------
    def observe_batch(self, size: int, seconds: float) -> None:
        """One model batch of ``size`` photos that took ``seconds`` of model time (also counts the photos)."""
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
        self.photos_total.inc(size)

    def observe_queue_wait(self, seconds: float) -> None:
        """How long one photo waited in the queue before its batch started."""
        self.queue_wait_seconds.observe(seconds)

    def set_queue_depth(self, n: int) -> None:
        """Photos waiting in the batch queue now."""
        self.queue_depth.set(n)

    # --- models ---------------------------------------------------------------------------------------------
    def set_model_version(self, version: str | None, model: str = "damage") -> None:
        """Expose ``version`` as the one series of ``model`` (the previous version's series goes away)."""
        with self._version_lock:
            old = self._versions.pop(model, None)
            if old is not None:
                self.model_version.remove(model, old)
            if version is not None:
                self._versions[model] = str(version)
                self.model_version.labels(model=model, version=str(version)).set(1)

    def reloaded(self, n: int = 1) -> None:
        """``n`` more model swaps."""
        self.reloads_total.inc(n)

    def set_reload_ok(self, ok: bool) -> None:
        """Whether the last reload check ended well (``False`` while a new file is refused)."""
        self.reload_ok.set(1 if ok else 0)

    def track_models(self, holder: Any) -> None:
        """At each scrape, read versions, reloads and reload state from ``holder`` (a ``ModelHolder``)."""
        seen = {"reloads": int(getattr(holder, "reloads", 0))}

        def refresh() -> None:
            if not holder.loaded:
                return
            m = holder.current()
            self.set_model_version(m.main.info.model_version, "damage")
            self.set_model_version(m.part.info.model_version if m.part else None, "part")
            delta, seen["reloads"] = holder.reloads - seen["reloads"], holder.reloads
            if delta > 0:
                self.reloaded(delta)
            self.set_reload_ok(holder.reload_state.get("status") != "refused")

        self._refreshers.append(refresh)

    # --- exposition -----------------------------------------------------------------------------------------
    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The metrics as ``(body, content type)``: Prometheus text, or OpenMetrics if ``accept`` asks for it."""
        for refresh in self._refreshers:
            refresh()
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def route_template(app: Any, scope: Scope) -> str:
    """The path template of the route that ``scope`` goes to (``other`` when none): bounded label values."""
    partial = None
    for route in getattr(getattr(app, "router", None), "routes", ()):
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return _template(route)
        if match is Match.PARTIAL and partial is None:
            partial = route
    return _template(partial) if partial is not None else "other"


def _template(route: Any) -> str:
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return "other"
    if isinstance(route, Mount):  # one label for everything under it
        return f"{path}/{{path}}"
    return path or "/"


def error_code(body: bytes) -> str | None:
    """``error.code`` of the service's JSON error body, else ``None`` (a truncated body: the first code)."""
    try:
        data = json.loads(body)
    except ValueError:
        found = _CODE_RE.search(body)
        return found.group(1).decode("latin-1") if found else None
    err = data.get("error") if isinstance(data, dict) else None
    code = err.get("code") if isinstance(err, dict) else None
    return code if isinstance(code, str) else None


class MetricsMiddleware:
    """Times each HTTP request by route template and status, tracks in-flight requests, counts refusals."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics,
                 refusal_statuses: Iterable[int] = REFUSAL_STATUSES):
        self.app, self.metrics, self.refusal_statuses = app, metrics, frozenset(refusal_statuses)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = route_template(scope.get("app") or self.app, scope)
        state: dict[str, Any] = {"status": 500, "body": None}
        start = time.perf_counter()
        self.metrics.http_in_flight.inc()
        try:
            await self.app(scope, receive, self._watching(send, state))
        finally:
            self.metrics.http_in_flight.dec()
            self.metrics.observe_request(route, state["status"], time.perf_counter() - start, scope["method"])

    def _watching(self, send: Send, state: dict[str, Any]) -> Send:
        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                if message["status"] in self.refusal_statuses and _is_json(message):
                    state["body"] = bytearray()
            elif message["type"] == "http.response.body" and state["body"] is not None:
                self._collect(state, message)
            await send(message)

        return watched

    def _collect(self, state: dict[str, Any], message: Message) -> None:
        body: bytearray = state["body"]
        room = _ERROR_BODY_MAX - len(body)
        body.extend(message.get("body", b"")[:max(room, 0)])
        if not message.get("more_body", False):
            state["body"] = None
            self.metrics.refused(error_code(bytes(body)) or f"http_{state['status']}")


def _is_json(message: Message) -> bool:
    for key, value in message.get("headers", []):
        if key.lower() == b"content-type":
            return value.split(b";")[0].strip().lower() == b"application/json"
    return False


def add_metrics_route(app: FastAPI, metrics: ServiceMetrics, path: str = "/metrics") -> None:
    """``GET /metrics`` (not in the OpenAPI schema); ``async`` so a busy thread pool does not delay a scrape."""

    @app.get(path, include_in_schema=False)
    async def metrics_endpoint(request: Request) -> Response:
        body, content_type = metrics.render(request.headers.get("accept"))
        return Response(body, media_type=content_type, headers={"Cache-Control": "no-store"})
