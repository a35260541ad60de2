"""A lean HTTP client for the service benchmarks: the multipart body is encoded once per photo, and each
request is one ``http.client`` call on a kept-alive connection.

Why not httpx: on a 2-core machine the load generator shares the cores with the server. httpx builds
the multipart body and parses the answer in Python for every request (a few ms of CPU under the GIL);
at 16 clients that CPU is taken from the server and its model, so the benchmark measured its own
client as much as the service. A real claim app sends from phones, not from the server's cores. This
client costs a fraction of a millisecond per request and still reads every answer whole.
"""

from __future__ import annotations

import http.client
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

BOUNDARY = "cardamage-bench-" + uuid.uuid4().hex


def multipart(name: str, data: bytes, field: str = "photos", content_type: str = "image/jpeg") -> bytes:
    """A ``multipart/form-data`` body with one file (``BOUNDARY`` separates the parts)."""
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


@dataclass
class Answer:
    """One answer: HTTP status (or the exception's name), its ``Retry-After`` in s, body length in bytes."""

    status: int | str
    retry_after: float | None
    size: int


class LeanClient:
    """One kept-alive connection to ``url`` (``http://host:port``); reconnects after an error."""

    def __init__(self, url: str, timeout_s: float = 120.0):
        parts = urlsplit(url)
        self.host, self.port, self.timeout = parts.hostname or "127.0.0.1", parts.port or 80, timeout_s
        self.conn: http.client.HTTPConnection | None = None

    def post(self, path: str, body: bytes) -> Answer:
        """``POST path`` with a :func:`multipart` ``body``; the answer read whole."""
        headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}", "Content-Length": str(len(body))}
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self.conn.request("POST", path, body=body, headers=headers)
            resp = self.conn.getresponse()
            data = resp.read()
            retry = resp.getheader("retry-after")
            if resp.getheader("connection", "").lower() == "close":
                self.close()
            return Answer(resp.status, float(retry) if retry else None, len(data))
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return Answer(type(exc).__name__, None, 0)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
