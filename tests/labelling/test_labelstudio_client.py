"""Client error handling without a Label Studio server: refused port, retries, timeouts, secrets."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from labelstudio_server import free_port
from ls_fakes import Stub

from cardamage.cli import main
from cardamage.labelling.client import (
    LabelStudioAuthError,
    LabelStudioError,
    LabelStudioTimeout,
    LabelStudioUnreachable,
    connect,
)

SECRET = "s3cr3t0123456789abcdef0123456789abcdef01"


@pytest.fixture
def stub(request) -> Iterator[Stub]:
    server = Stub(request.param)
    yield server
    server.close()


def _all_text(exc: BaseException, caplog: pytest.LogCaptureFixture) -> str:
    return "".join(traceback.format_exception(exc)) + caplog.text


def test_refused_connection_is_quick_and_clear(caplog):
    caplog.set_level(logging.DEBUG)
    url = f"http://127.0.0.1:{free_port()}"
    client = connect(url, SECRET, max_retries=3, backoff_s=1.0)
    with pytest.raises(LabelStudioUnreachable):
        client.find_project("warm-up")  # the SDK imports its sub-clients lazily
    start = time.monotonic()
    with pytest.raises(LabelStudioUnreachable) as info:
        client.whoami()
    assert time.monotonic() - start < 1.0  # no retries, no backoff (3 retries would sleep >= 7 s)
    assert str(info.value) == f"cannot reach Label Studio at {url}: connection refused — is the server running?"
    assert SECRET not in _all_text(info.value, caplog)


def test_cli_reports_a_down_server_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LABEL_STUDIO_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", SECRET)
    result = CliRunner().invoke(main, ["pull"])
    assert result.exit_code != 0
    assert "connection refused — is the server running?" in result.output
    assert "Traceback" not in result.output and SECRET not in result.output


def test_missing_key_is_explained(monkeypatch):
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    with pytest.raises(LabelStudioError, match="LABEL_STUDIO_API_KEY is not set"):
        connect("http://127.0.0.1:1")


@pytest.mark.parametrize("stub", [[(503, {"detail": "busy"}, 0), (502, {}, 0), (200, {"id": 1, "email": "a@b.c"}, 0)]],
                         indirect=True)
def test_5xx_is_retried_with_backoff(stub, caplog):
    client = connect(stub.url, SECRET, max_retries=3, backoff_s=0.05)
    start = time.monotonic()
    assert client.whoami() == "a@b.c"
    assert len(stub.requests) == 3
    assert time.monotonic() - start >= 0.05 + 0.1  # 0.05 s, then 0.1 s
    assert "retry 2 of 3" in caplog.text
    assert stub.requests[0][2].get("Authorization") == f"Token {SECRET}"
    assert SECRET not in caplog.text


@pytest.mark.parametrize("stub", [[(500, {"detail": "boom"}, 0)]], indirect=True)
def test_retries_give_up_with_one_line(stub):
    client = connect(stub.url, SECRET, max_retries=2, backoff_s=0.01)
    with pytest.raises(LabelStudioError) as info:
        client.whoami()
    assert len(stub.requests) == 3
    assert str(info.value) == "Label Studio whoami failed (500): boom"


@pytest.mark.parametrize("stub", [[(401, {"detail": "Invalid token."}, 0)]], indirect=True)
def test_401_message_without_key(stub, caplog):
    caplog.set_level(logging.DEBUG)
    client = connect(stub.url, SECRET, max_retries=3, backoff_s=0.01)
    with pytest.raises(LabelStudioAuthError) as info:
        client.whoami()
    assert len(stub.requests) == 1  # not retried
    assert str(info.value).startswith("Label Studio rejected the API key (401)")
    assert SECRET not in _all_text(info.value, caplog) and SECRET not in repr(client)


@pytest.mark.parametrize("stub", [[(200, {"task_ids": [1]}, 1.0), (200, {"id": 1, "email": "a@b.c"}, 0)]],
                         indirect=True)
def test_a_timed_out_import_is_not_repeated(stub):
    client = connect(stub.url, SECRET, timeout_s=0.3, max_retries=3, backoff_s=0.01)
    with pytest.raises(LabelStudioTimeout):
        client.import_tasks(1, [{"data": {"image": "x"}}])
    assert len(stub.requests) == 1


@pytest.mark.parametrize("stub", [[(200, {}, 1.0), (200, {"id": 1, "email": "a@b.c"}, 0)]], indirect=True)
def test_a_timed_out_read_is_retried(stub):
    client = connect(stub.url, SECRET, timeout_s=0.3, max_retries=3, backoff_s=0.01)
    assert client.whoami() == "a@b.c"
    assert len(stub.requests) == 2
