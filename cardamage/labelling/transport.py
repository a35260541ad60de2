"""The HTTP client under the Label Studio SDK: per-request timeouts plus a deadline for a whole call.

httpx's timeouts bound each socket operation, so a server that accepts the connection and then
sends one byte a second never times out. Here every connect, read and write of the SDK's httpx
client is cut short at the current :class:`Deadline` (set by the caller for one call with all its
retries), raising httpx's own timeout errors, so the usual error handling applies.

Imported by :mod:`cardamage.labelling.client` only when a client is made (httpx is an SDK dependency).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx

log = logging.getLogger(__name__)

#: A connection that is not made within this many seconds will not be made (unless timeout_s is smaller).
CONNECT_TIMEOUT_S = 10.0


class Deadline:
    """The monotonic time by which the current call (in this thread) must be done, or ``None``."""

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def at(self) -> float | None:
        """The deadline of the calling thread's current call (``time.monotonic()`` seconds)."""
        return getattr(self._local, "at", None)

    def remaining(self) -> float | None:
        """Seconds left, ``None`` without a deadline; never negative."""
        at = self.at
        return None if at is None else max(0.0, at - time.monotonic())

    @contextmanager
    def until(self, at: float) -> Iterator[None]:
        """Set the deadline for the duration of the block (an outer, earlier deadline is kept)."""
        outer = self.at
        self._local.at = at if outer is None else min(outer, at)
        try:
            yield
        finally:
            self._local.at = outer


def _clip(timeout: float | None, deadline: Deadline, error: type[Exception]) -> float | None:
    remaining = deadline.remaining()
    if remaining is None:
        return timeout
    if remaining <= 0:
        raise error("the call's deadline has passed")
    return remaining if timeout is None else min(timeout, remaining)


class DeadlineStream(httpcore.NetworkStream):
    """A network stream whose reads and writes end at the deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: Deadline) -> None:
        self._inner, self._deadline = inner, deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _clip(timeout, self._deadline, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _clip(timeout, self._deadline, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname,
                                      _clip(timeout, self._deadline, httpcore.ConnectTimeout))
        return DeadlineStream(inner, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """Connections (TCP or Unix socket) that are made, read and written only until the deadline."""

    def __init__(self, inner: httpcore.NetworkBackend, deadline: Deadline) -> None:
        self._inner, self._deadline = inner, deadline

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:
        timeout = _clip(timeout, self._deadline, httpcore.ConnectTimeout)
        return DeadlineStream(self._inner.connect_tcp(host, port, timeout, local_address, socket_options),
                              self._deadline)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Any = None) -> httpcore.NetworkStream:
        timeout = _clip(timeout, self._deadline, httpcore.ConnectTimeout)
        return DeadlineStream(self._inner.connect_unix_socket(path, timeout, socket_options), self._deadline)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _apply(transport: Any, deadline: Deadline) -> bool:
    """Wrap the network backend of an httpx transport's connection pool; ``False`` if it has none."""
    pool = getattr(transport, "_pool", None)
    inner = getattr(pool, "_network_backend", None)
    if inner is None:
        return False
    if not isinstance(inner, DeadlineBackend):
        pool._network_backend = DeadlineBackend(inner, deadline)
    return True


def make_http_client(timeout_s: float, deadline: Deadline) -> httpx.Client:
    """An ``httpx.Client`` for the SDK: ``timeout_s`` per read/write, at most
    :data:`CONNECT_TIMEOUT_S` to connect, every socket operation ending at ``deadline``."""
    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, CONNECT_TIMEOUT_S))
    client = httpx.Client(timeout=timeout, follow_redirects=True)
    wrapped = [_apply(t, deadline) for t in [client._transport, *client._mounts.values()] if t is not None]
    if not all(wrapped):
        log.debug("httpx transport without a network backend: the deadline is checked between attempts only")
    return client
