"""The service benchmark's lean load generator (benchmarks/lean_client.py) sends what a browser form sends
and reads answers whole, including a 503's Retry-After and a dropped connection."""

from __future__ import annotations

import email.parser
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from lean_client import LeanClient, multipart  # noqa: E402

PHOTO = bytes(range(256)) * 40 + b"\r\n--not-the-boundary\r\n"  # binary, with CRLFs and dashes inside


class Handler(BaseHTTPRequestHandler):
    received: list[tuple[str, str, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        msg = email.parser.BytesParser().parsebytes(
            f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body)
        for part in msg.get_payload():
            Handler.received.append((part.get_param("name", header="content-disposition"), part.get_filename(),
                                     part.get_payload(decode=True)))
        if self.path == "/busy":
            self.send_response(503)
            self.send_header("Retry-After", "2")
        else:
            self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_the_body_is_a_form_upload_and_the_answers_are_read(server):
    Handler.received.clear()
    client = LeanClient(server)
    ok = client.post("/v1/assess", multipart("car 1.jpg", PHOTO))
    busy = client.post("/busy", multipart("b.jpg", b"x"))
    client.close()
    assert (ok.status, ok.retry_after, ok.size) == (200, None, 2)
    assert (busy.status, busy.retry_after) == (503, 2.0)
    assert Handler.received == [("photos", "car 1.jpg", PHOTO), ("photos", "b.jpg", b"x")]


def test_a_server_that_is_gone_is_an_error_not_a_crash(server):
    with ThreadingHTTPServer(("127.0.0.1", 0), Handler) as gone:
        port = gone.server_address[1]
    answer = LeanClient(f"http://127.0.0.1:{port}", timeout_s=2).post("/v1/assess", multipart("a.jpg", b"x"))
    assert answer.status == "ConnectionRefusedError" and answer.size == 0
