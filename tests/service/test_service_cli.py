"""Code tier: ``cardamage serve`` wiring, the app factory for process managers, and the JSON log format.

The server itself runs for real in test_service_api.py; here uvicorn.run is replaced so the command's
options can be checked without loading TensorFlow.
"""

from __future__ import annotations

import io
import json
import logging

import pytest
from click.testing import CliRunner
from test_service_support import REPO

from cardamage.cli import main


@pytest.fixture
def restore_logging():
    """``configure_logging`` replaces the root handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


@pytest.fixture
def fake_uvicorn(monkeypatch, restore_logging):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    return calls


def test_serve_passes_host_port_and_model(fake_uvicorn, tmp_path):
    model = tmp_path / "m.keras"
    model.write_bytes(b"only its existence is checked here")
    result = CliRunner().invoke(main, ["serve", "--port", "8123", "--model", str(model),
                                       "--set", "serve.host=0.0.0.0", "--set", "serve.log_format=text"])
    assert result.exit_code == 0, result.output
    (app, kw), = fake_uvicorn
    assert (kw["host"], kw["port"]) == ("0.0.0.0", 8123)
    assert app.state.holder.path == str(model) and app.title == "cardamage claim service"


def test_serve_rejects_a_bad_price_table(fake_uvicorn):
    result = CliRunner().invoke(main, ["serve", "--set", "settlement.band_edges=[0.5, 0.1]"])
    assert result.exit_code != 0 and "settlement.band_edges" in result.output and not fake_uvicorn


def test_serve_help_lists_the_options():
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0 and all(opt in result.output for opt in ("--host", "--port", "--model"))


def test_factory_reads_the_environment(monkeypatch, tmp_path, restore_logging):
    from cardamage.service.app import app_from_env

    monkeypatch.setenv("CARDAMAGE_PARAMS", str(REPO / "params.yaml"))
    monkeypatch.setenv("CARDAMAGE_MODEL", str(tmp_path / "served.keras"))
    app = app_from_env()
    assert app.state.holder.path == str(tmp_path / "served.keras")


def test_json_log_lines_carry_the_request_id_and_extra_fields():
    from cardamage.service.logs import REQUEST_ID, JsonFormatter, RequestIdFilter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("cardamage.test.json")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    token = REQUEST_ID.set("abc")
    try:
        logger.info("hello %s", "there", extra={"status": 201})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        REQUEST_ID.reset(token)
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["msg"] == "hello there" and first["request_id"] == "abc" and first["status"] == 201
    assert first["level"] == "INFO" and first["logger"] == "cardamage.test.json" and first["ts"].endswith("+00:00")
    assert "ValueError: boom" in second["exc"]
