"""Model tier: the service refuses a model that does not fit the params, at start and on every reload.

A car-part model copied over the damage model was served as the damage model ("100% damaged") and
its answers went into the incoming pool. Now the classes and input size are checked against
``data.classes`` and ``model.input_size`` (the part model against the classes it served so far), a
corrupt file (bad CRC, cut short) is refused the same way, the old model keeps serving, and
``/health`` says why. At start, ``cardamage serve`` stops with one line naming the file.
"""

from __future__ import annotations

import json
import logging
import shutil

import httpx
import pytest
from click.testing import CliRunner
from test_service_support import (
    PARTS,
    REPO,
    cached_model,
    car_photo,
    corrupt_model,
    jpeg_bytes,
    running,
    service_params,
)

from cardamage.cli import main

pytestmark = pytest.mark.slow

OTHER = ["headlamp", "door"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A running server on copies of the damage and part models (no watcher: tests call check_once)."""
    from cardamage.service.app import create_app

    tmp = tmp_path_factory.mktemp("reload")
    model, part = tmp / "model.keras", tmp / "part.keras"
    shutil.copyfile(cached_model(["damage"]), model)
    shutil.copyfile(cached_model(PARTS), part)
    app = create_app(service_params(tmp, model, part))
    with running(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        yield {"client": client, "holder": app.state.holder, "model": model, "part": part, "tmp": tmp,
               "version": client.get("/health").json()["model_version"]}


@pytest.fixture
def server(served):
    """The module's server, with the good model files put back after each test."""
    yield served
    shutil.copyfile(cached_model(["damage"]), served["model"])
    shutil.copyfile(cached_model(PARTS), served["part"])
    served["holder"].check_once()
    assert served["client"].get("/health").json()["model_reload"]["status"] == "ok"


def assess(client: httpx.Client) -> dict:
    resp = client.post("/v1/assess", files=[("photos", ("p.jpg", jpeg_bytes(car_photo("45.jpg")), "image/jpeg"))])
    assert resp.status_code == 200, resp.text
    return resp.json()


def pool_versions(server) -> list[tuple[str, tuple[str, ...]]]:
    records = [json.loads(p.read_text()) for p in sorted((server["tmp"] / "incoming").glob("*.json"))]
    return [(r["model"]["version"], tuple(r["model"]["classes"])) for r in records]


def replace_with(src, target) -> None:
    tmp = target.with_suffix(".copying")
    shutil.copyfile(src, tmp)
    tmp.replace(target)


def test_reload_refuses_a_model_for_other_classes(server, caplog):
    c, old = server["client"], server["version"]
    assess(c)
    replace_with(cached_model(OTHER), server["model"])
    with caplog.at_level(logging.ERROR, logger="cardamage.service.models"):
        assert server["holder"].check_once() is False
    health = c.get("/health").json()
    assert health["model_version"] == old
    reload = health["model_reload"]
    assert reload["status"] == "refused" and reload["path"] == server["model"].as_posix()
    assert "headlamp" in reload["reason"] and "data.classes" in reload["reason"]
    assert any("refused" in r.getMessage() and "headlamp" in r.getMessage() for r in caplog.records)
    body = assess(c)
    assert body["model"] == {"version": old, "classes": ["damage"]}
    assert set(pool_versions(server)) == {(old, ("damage",))}  # nothing from the wrong model in the pool
    assert c.get("/version").json()["model"]["classes"] == ["damage"]


@pytest.mark.parametrize("version", ["new", "same"])
@pytest.mark.parametrize("how", ["bad_crc", "truncated"])
def test_reload_refuses_a_corrupt_model_and_keeps_serving(server, tiny_model_file, how, version):
    """A broken copy of a new model, or of the served one (its weights are in memory, but a restart
    would fail): refused either way, and the served version answers."""
    c, old = server["client"], server["version"]
    corrupt_model(tiny_model_file if version == "new" else cached_model(["damage"]), server["model"], how)
    assert server["holder"].check_once() is False
    reload = c.get("/health").json()["model_reload"]
    assert reload["status"] == "refused" and str(server["model"]) in reload["reason"], reload
    assert assess(c)["model"]["version"] == old
    assert server["holder"].check_once() is False  # the same broken file is not loaded again
    assert c.get("/health").json()["model_reload"]["status"] == "refused"


def test_reload_refuses_a_damage_model_over_the_part_model(server):
    c = server["client"]
    part_version = c.get("/version").json()["part_model"]["version"]
    replace_with(cached_model(["damage"]), server["part"])
    assert server["holder"].check_once() is False
    reload = c.get("/health").json()["model_reload"]
    assert reload["status"] == "refused" and reload["path"] == server["part"].as_posix()
    assert assess(c)["part_model"] == {"version": part_version, "classes": PARTS}


def test_a_fitting_new_model_still_takes_over(server, tiny_model_file):
    c, old = server["client"], server["version"]
    replace_with(cached_model(OTHER), server["model"])
    assert server["holder"].check_once() is False
    replace_with(tiny_model_file, server["model"])  # damage, 64 px, other weights: a new version
    assert server["holder"].check_once() is True
    health = c.get("/health").json()
    assert health["model_version"] != old and health["model_reload"]["status"] == "ok"
    assert "last_reload_error" not in c.get("/version").json()


@pytest.fixture
def fake_uvicorn(monkeypatch):
    """uvicorn.run recorded, not run; the root log handlers put back (``configure_logging`` replaces them)."""
    import uvicorn

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    calls: list = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(app))
    yield calls
    root.handlers[:], root.level = handlers, level


def serve(model, *more: str):
    return CliRunner().invoke(main, ["serve", "--params", str(REPO / "params.yaml"), "--model", str(model),
                                     "--set", "model.input_size=64", "--set", "serve.log_format=text", *more])


def error_lines(result) -> list[str]:
    assert "Traceback" not in result.output, result.output
    return [line for line in result.output.splitlines() if line.startswith("Error:")]


def test_serve_refuses_to_start_with_a_model_for_other_classes(fake_uvicorn):
    result = serve(cached_model(OTHER))
    assert result.exit_code != 0 and not fake_uvicorn
    (line,) = error_lines(result)
    assert str(cached_model(OTHER)) in line and "headlamp" in line and "data.classes" in line


def test_serve_refuses_to_start_with_another_input_size(fake_uvicorn):
    result = serve(cached_model(["damage"]), "--set", "model.input_size=256")
    assert result.exit_code != 0 and not fake_uvicorn
    (line,) = error_lines(result)
    assert "64x64" in line and "model.input_size" in line


@pytest.mark.parametrize("how", ["bad_crc", "truncated"])
def test_serve_refuses_to_start_with_a_corrupt_model(fake_uvicorn, tmp_path, how):
    model = corrupt_model(cached_model(["damage"]), tmp_path / "model.keras", how)
    result = serve(model)
    assert result.exit_code != 0 and not fake_uvicorn
    (line,) = error_lines(result)
    assert str(model) in line and "BadZipFile" not in line.split(":")[0]
