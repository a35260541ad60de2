"""ASGI middleware of the service: request ids and access logs, a catch-all 500, upload limits.

Pure ASGI (no ``BaseHTTPMiddleware``) so request bodies stream through unbuffered.

* :class:`RequestContext` (outermost): takes ``X-Request-ID`` from the request (1-128 characters of
  ``[A-Za-z0-9._-]``, else a new one), sends it back on every response, logs one access line, and
  turns any unhandled exception into a generic JSON 500: no stack trace reaches the client.
* :class:`Admission`: at most ``max_inflight`` requests to the assess path at once; one more gets
  ``503`` with ``Retry-After`` at once, before its body is read (a client that goes away, mid-upload
  or while its photos wait for the model, frees its place when its request ends).
* :class:`UploadLimits`: for ``POST`` to the upload paths, 415 unless the body is
  ``multipart/form-data``, and 413 when ``Content-Length`` or the bytes actually received exceed
  the limit (chunked uploads are counted as they arrive).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException

from cardamage.service.logs import REQUEST_ID

log = logging.getLogger(__name__)
access = logging.getLogger("cardamage.service.access")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


async def send_json(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:
    """Send a complete JSON response."""
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


class RequestContext:
    """Request id in and out, one access log line per request, and the generic 500."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = _header(scope, b"x-request-id")
        rid = given if given and _ID_RE.match(given) else uuid.uuid4().hex
        REQUEST_ID.set(rid)
        state = {"status": 500, "started": False}
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"], state["started"] = message["status"], True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error in %s %s", scope["method"], scope["path"])
            if not state["started"]:
                await send_json(send_with_id, 500, {"error": {"code": "internal_error", "message":
                                "Something went wrong on our side; try again later or contact us with "
                                "the request id."}, "request_id": rid})
        finally:
            access.info("%s %s %s", scope["method"], scope["path"], state["status"],
                        extra={"method": scope["method"], "path": scope["path"], "status": state["status"],
                               "duration_ms": round(1000 * (time.perf_counter() - start), 1),
                               "client": (scope.get("client") or ("", 0))[0]})


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` once more bytes than allowed arrived (Starlette answers it as a 413)."""


class UploadLimits:
    """415 for non-multipart uploads and 413 for bodies over ``max_bytes`` on ``paths``."""

    def __init__(self, app: ASGIApp, max_bytes: int, paths: tuple[str, ...]):
        self.app, self.max_bytes, self.paths = app, int(max_bytes), paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        rid = REQUEST_ID.get()
        ctype = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
        if ctype != "multipart/form-data":
            return await send_json(send, 415, {"error": {"code": "unsupported_media_type", "message":
                                   f"Send the photos as multipart/form-data (got {ctype or 'no content type'})."},
                                   "request_id": rid})
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await send_json(send, 413, self._too_large(rid), [(b"connection", b"close")])
        await self.app(scope, self._counting(receive), send)

    def _too_large(self, rid: str | None) -> dict[str, Any]:
        mb = self.max_bytes / (1 << 20)
        return {"error": {"code": "request_too_large", "message": f"The upload is larger than {mb:g} MB: "
                          "send fewer or smaller photos."}, "request_id": rid}

    def _counting(self, receive: Receive) -> Receive:
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge(413, self._too_large(REQUEST_ID.get())["error"]["message"])
            return message

        return counted


class Admission:
    """Bounded admission to the upload paths: ``503 overloaded`` + ``Retry-After`` beyond ``max_inflight``.

    Args:
        max_inflight: requests admitted at once; retry_after_s: the ``Retry-After`` header (s);
        on_change: optional ``f(inflight)`` after every change (metrics); on_refuse: optional ``f()``.
    """

    def __init__(self, app: ASGIApp, max_inflight: int, retry_after_s: int = 1, paths: tuple[str, ...] = (),
                 on_change: Callable[[int], None] | None = None, on_refuse: Callable[[], None] | None = None):
        self.app, self.max_inflight, self.retry_after = app, max(1, int(max_inflight)), str(int(retry_after_s))
        self.paths, self.on_change, self.on_refuse = paths, on_change, on_refuse
        self.inflight = 0  # only touched on the event loop: no lock needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.max_inflight:
            if self.on_refuse is not None:
                self.on_refuse()
            log.info("refused: %d requests in flight (serve.batch.max_inflight)", self.inflight)
            await send_json(send, 503, overloaded_body(f"{self.inflight} requests are being assessed (the limit)"),
                            [(b"retry-after", self.retry_after.encode()), (b"connection", b"close")])
            return
        self._change(+1)
        try:
            await self.app(scope, receive, send)
        finally:
            self._change(-1)

    def _change(self, delta: int) -> None:
        self.inflight += delta
        if self.on_change is not None:
            self.on_change(self.inflight)


def overloaded_body(why: str) -> dict[str, Any]:
    """The JSON body of a ``503 overloaded`` answer."""
    return {"error": {"code": "overloaded", "message": f"The service is busy: {why}. Try again shortly "
                      "(see Retry-After)."}, "request_id": REQUEST_ID.get()}
