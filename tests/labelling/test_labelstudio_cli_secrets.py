"""Every Label Studio command, in success and failure, never shows the API key: not on stdout, stderr,
in an exception or in a log record (captured at DEBUG).

Commands: ``labelstudio init``, ``push``, ``pull`` and ``select --push``. Failures: an unreachable port, a
tar pit, a 401 (from a stub that even echoes the key, and from the real server), a 500 whose body
echoes the Authorization header, and keys with bad characters. Successes run against the session's
real Label Studio server (``ls_server``).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import shutil
import string
import traceback
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner, Result
from labelstudio_server import free_port
from ls_fakes import Stub, TarPit

import cardamage.cli as cli
from cardamage.cli import main

KEY = "SECRETKEY" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(31))
SAMPLE_TEST = Path(__file__).resolve().parents[2] / "data" / "sample" / "test"
COMMANDS = {"labelstudio init": ["labelstudio", "init"], "push": ["push", "selection.csv"], "pull": ["pull"],
            "select --push": ["select", "--push"]}
GOOD_VARIANTS = {"plain": "{k}", "trailing spaces": "{k}   ", "trailing newline": "{k}\n", "padded": "  {k}\r\n"}
BAD_VARIANTS = {"embedded newline": KEY[:20] + "\n" + KEY[20:], "tab": KEY[:9] + "\t" + KEY[9:],
                "non-ASCII": KEY[:15] + "é" + KEY[15:]}
NOISY = ("PIL", "matplotlib", "urllib3", "httpx", "absl", "h5py")


def key_pieces(key: str) -> set[str]:
    """What must never be shown: the key, its first 8 characters, and its pieces between bad characters."""
    pieces = "".join(c if c.isascii() and c.isprintable() and c != " " else "\0" for c in key).split("\0")
    return {key, key.strip(), key.strip()[:8], *(p for p in pieces if len(p) >= 8)}


def assert_no_leak(result: Result, caplog: pytest.LogCaptureFixture, key: str) -> None:
    texts = {"stdout": result.stdout, "stderr": result.stderr, "output": result.output}
    if result.exc_info is not None:
        texts["exception"] = "".join(traceback.format_exception(*result.exc_info)) + repr(result.exception)
    records = []
    for record in caplog.records:
        records.append(record.getMessage() + (record.exc_text or "") + (record.stack_info or ""))
        if record.exc_info:
            records.append("".join(traceback.format_exception(*record.exc_info)))
    texts["log records"] = caplog.text + "\n".join(records)
    for where, text in texts.items():
        found = sorted(p for p in key_pieces(key) if p in text)
        assert not found, f"{where} shows part of the API key"


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.LogCaptureFixture]:
    """caplog at DEBUG that survives the CLI's own logging set-up (``basicConfig(force=True)``)."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    real = cli.setup_logging

    def setup(verbose: int) -> None:
        for name in NOISY:
            logging.getLogger(name).setLevel(logging.NOTSET)
        real(verbose)
        root.addHandler(caplog.handler)

    monkeypatch.setattr(cli, "setup_logging", setup)
    caplog.set_level(logging.DEBUG)
    yield caplog
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.NOTSET)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder with three photos, a selection.csv, and ``select`` stubbed to return that selection."""
    monkeypatch.chdir(tmp_path)
    return make_selection(tmp_path, [Path(shutil.copy(SAMPLE_TEST / n, tmp_path / n)) for n in ("11.jpg", "12.jpg")],
                          monkeypatch)


def make_selection(folder: Path, photos: list[Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    from cardamage.data.dedup import file_sha256

    frame = pd.DataFrame([{"id": file_sha256(p), "path": str(p), "score": 0.9 - i / 10, "rank": i + 1,
                           "strategy": "entropy", "reason": "test"} for i, p in enumerate(photos)])
    frame.to_csv(folder / "selection.csv", index=False)
    monkeypatch.setattr("cardamage.active.selection.run_select",
                        lambda params, *args, **kwargs: (frame, "selection.csv"))
    return folder


def invoke(command: str, verbose: list[str], url: str, key: str, monkeypatch: pytest.MonkeyPatch,
           title: str = "secret test", extra: tuple[str, ...] = ()) -> Result:
    monkeypatch.setenv("LABEL_STUDIO_URL", url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", key)
    sets = ["--set", f"labelstudio.project_title={title}", "--set", "predict.model_path=models/absent.keras",
            *extra]
    return CliRunner().invoke(main, [*verbose, *COMMANDS[command], *sets])


@contextlib.contextmanager
def failing_server(kind: str, key: str) -> Iterator[tuple[str, tuple[str, ...]]]:
    """``(url, extra --set options)`` of a server that makes every command fail."""
    fast = ("--set", "labelstudio.max_retries=1", "--set", "labelstudio.timeout_s=0.5")
    if kind == "unreachable":
        yield f"http://127.0.0.1:{free_port()}", fast
    elif kind == "tar pit":
        with TarPit("silent") as pit:
            yield pit.url, fast
    elif kind == "401 echoing the key":
        with Stub([(401, {"detail": f"Invalid token {key}", "headers": {"Authorization": f"Token {key}"}}, 0)]) as s:
            yield s.url, fast
    elif kind == "500 echoing the header":
        body = {"detail": f"Server error page: Authorization: Token {key.strip()} Cookie: sessionid=abc123def456"}
        with Stub([(500, body, 0)]) as s:
            yield s.url, ("--set", "labelstudio.max_retries=0")
    else:
        raise AssertionError(kind)


FAILURES = ["unreachable", "tar pit", "401 echoing the key", "500 echoing the header"]


@pytest.mark.parametrize("verbose", [[], ["-vv"]], ids=["quiet", "debug"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("kind", FAILURES)
def test_failures_never_show_the_key(kind, command, verbose, workdir, logs, monkeypatch):
    for variant in (GOOD_VARIANTS if kind != "tar pit" else ["plain"]):
        key = GOOD_VARIANTS[variant].format(k=KEY)
        logs.clear()
        with failing_server(kind, key) as (url, extra):
            result = invoke(command, verbose, url, key, monkeypatch, extra=extra)
        assert result.exit_code != 0, (variant, result.output)
        assert "this is a bug in cardamage" not in result.output, result.output
        assert result.stderr.strip().splitlines()[-1].startswith("Error: "), result.stderr
        if not verbose:
            assert "Traceback" not in result.output
        assert_no_leak(result, logs, key)
        assert "abc123def456" not in result.output + logs.text  # the session cookie


@pytest.mark.parametrize("verbose", [[], ["-vv"]], ids=["quiet", "debug"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("variant", sorted(BAD_VARIANTS))
def test_bad_key_characters_never_show_the_key(variant, command, verbose, workdir, logs, monkeypatch):
    key = BAD_VARIANTS[variant]
    with Stub([(200, {"id": 1, "email": "a@b.c"}, 0)]) as stub:
        result = invoke(command, verbose, stub.url, key, monkeypatch)
        assert stub.requests == []  # refused before anything is sent
    assert result.exit_code != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: LABEL_STUDIO_API_KEY: the API key has "), result.stderr
    assert "URL" not in last
    assert_no_leak(result, logs, key)


# --- against the real server ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("verbose", [[], ["-vv"]], ids=["quiet", "debug"])
def test_every_command_succeeds_without_showing_the_key(verbose, ls_server, tmp_path, logs, monkeypatch):
    title = f"cli secrets {tmp_path.name}"
    for variant, template in GOOD_VARIANTS.items():
        folder = tmp_path / variant.replace(" ", "_")
        folder.mkdir()
        monkeypatch.chdir(folder)
        photos = [Path(shutil.copy(SAMPLE_TEST / n, folder / n)) for n in ("11.jpg", "12.jpg", "28.jpg")]
        make_selection(folder, photos, monkeypatch)
        key = template.format(k=ls_server.api_key)
        for command in ("labelstudio init", "push", "pull", "select --push"):
            logs.clear()
            result = invoke(command, verbose, ls_server.url, key, monkeypatch, title=title)
            assert result.exit_code == 0, (variant, command, result.output)
            assert_no_leak(result, logs, key)


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_wrong_key_against_the_real_server(command, ls_server, workdir, logs, monkeypatch):
    for template in ("{k}", "{k}  \n"):
        key = template.format(k=KEY)
        logs.clear()
        result = invoke(command, ["-vv"], ls_server.url, key, monkeypatch, extra=("--set", "labelstudio.max_retries=0"))
        assert result.exit_code != 0
        assert "rejected the API key (401)" in result.stderr.strip().splitlines()[-1]
        assert_no_leak(result, logs, key)
