"""Fake Label Studio servers for the client tests: a scripted HTTP stub and a tar pit.

Not a test module (no ``test_`` prefix); imported by the tests in this folder.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Stub:
    """A tiny HTTP server answering from a script: a list of ``(status, body, delay_s)``, last one repeated."""

    def __init__(self, script: list[tuple[int, dict, float]]) -> None:
        self.script, self.requests = script, []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                stub.requests.append((self.command, self.path, dict(self.headers)))
                status, body, delay = stub.script[min(len(stub.requests), len(stub.script)) - 1]
                time.sleep(delay)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout tests)
                    pass

            do_GET = do_POST = do_PATCH = do_DELETE = _answer

            def log_message(self, *args) -> None:  # keep test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Stub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TarPit:
    """Accepts TCP connections and then never answers (``mode="silent"``) or answers one byte every
    ``drip_s`` seconds (``mode="drip"``), for at most ``give_up_s`` seconds per connection."""

    RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n"
                b'{"id": 1, "email": "tar@pit.example"}   ')

    def __init__(self, mode: str = "silent", drip_s: float = 0.3, give_up_s: float = 20.0) -> None:
        self.mode, self.drip_s, self.give_up_s = mode, drip_s, give_up_s
        self.connections = 0
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        end = time.monotonic() + self.give_up_s
        with conn:
            if self.mode == "silent":
                self._stop.wait(self.give_up_s)
                return
            for byte in self.RESPONSE:
                if self._stop.wait(self.drip_s) or time.monotonic() > end:
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    def close(self) -> None:
        self._stop.set()
        self._sock.close()

    def __enter__(self) -> TarPit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
