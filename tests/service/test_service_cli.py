"""Code tier: ``cardamage serve`` wiring, the app factory for process managers, and the JSON log format.

The server itself runs for real in test_service_api.py; here uvicorn.run and the model loading are
replaced so the command's options can be checked without loading TensorFlow (the model file holds only
its cardamage info, which the service checks before loading).
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from pathlib import Path

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

    from cardamage.service.models import ModelHolder

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    monkeypatch.setattr(ModelHolder, "load", lambda self: None)
    return calls


def info_only_model(path: Path, classes: list[str] | None = None, input_size: int | None = None) -> Path:
    """A ``.keras`` zip with only the cardamage info in its config (what the service reads before loading).

    ``input_size`` defaults to the params' ``model.input_size``.
    """
    from cardamage.config import ModelParams

    size = ModelParams().input_size if input_size is None else input_size
    info = {"classes": classes or ["damage"], "input_size": size, "model_version": "test"}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", json.dumps({"config": {"cardamage_info": info}}))
    return path


def test_serve_passes_host_port_and_model(fake_uvicorn, tmp_path):
    model = info_only_model(tmp_path / "m.keras")
    result = CliRunner().invoke(main, ["serve", "--port", "8123", "--model", str(model),
                                       "--set", "serve.host=0.0.0.0", "--set", "serve.log_format=text"])
    assert result.exit_code == 0, result.output
    (app, kw), = fake_uvicorn
    assert (kw["host"], kw["port"]) == ("0.0.0.0", 8123)
    assert app.state.holder.path == str(model) and app.title == "cardamage claim service"


def test_serve_rejects_a_bad_price_table(fake_uvicorn):
    result = CliRunner().invoke(main, ["serve", "--set", "settlement.band_edges=[0.5, 0.1]"])
    assert result.exit_code != 0 and "settlement.band_edges" in result.output and not fake_uvicorn


def test_serve_refuses_a_working_size_below_the_drift_size(fake_uvicorn, tmp_path):
    result = CliRunner().invoke(main, ["serve", "--model", str(info_only_model(tmp_path / "m.keras")),
                                       "--set", "serve.max_side=300"])
    assert result.exit_code != 0 and not fake_uvicorn
    assert "serve.max_side" in result.output and "drift.max_side (512)" in result.output


def test_serve_help_lists_the_options():
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0 and all(opt in result.output for opt in ("--host", "--port", "--model"))


def test_factory_reads_the_environment(monkeypatch, tmp_path, restore_logging):
    from cardamage.service.app import app_from_env

    monkeypatch.setenv("CARDAMAGE_PARAMS", str(REPO / "params.yaml"))
    monkeypatch.setenv("CARDAMAGE_MODEL", str(info_only_model(tmp_path / "served.keras")))
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
