"""The API key never reaches the terminal: checked up front, scrubbed from errors and log records."""

from __future__ import annotations

import logging
import secrets
import string
import traceback

import httpx
import pytest
from ls_fakes import Stub

from cardamage.errors import BadParameterError, ServiceError
from cardamage.labelling.client import LabelStudioAuthError, connect
from cardamage.labelling.redact import check_api_key, scrub

KEY = "SECRETKEY" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(31))
OK_WHOAMI = [(200, {"id": 1, "email": "a@b.c"}, 0)]


def leaks(text: str, key: str = KEY) -> list[str]:
    """The parts of ``key`` (whole, first 8 characters, pieces between bad characters) found in ``text``."""
    pieces = {key, key[:8], *(p for p in "".join(c if c.isprintable() and c != " " else "\0" for c in key)
                              .split("\0") if len(p) >= 8)}
    return sorted(p for p in pieces if p in text)


def everything(exc: BaseException, caplog: pytest.LogCaptureFixture) -> str:
    """Exception text with its chain and traceback, and every captured log record."""
    records = [r.getMessage() + (r.exc_text or "") for r in caplog.records]
    return "".join(traceback.format_exception(exc)) + repr(exc) + caplog.text + "".join(records)


BAD_KEYS = {  # name -> (key, what the message must say)
    "embedded newline": (KEY[:20] + "\n" + KEY[20:], "character 21 of 41"),
    "embedded CRLF": (KEY[:20] + "\r\n" + KEY[20:], "carriage return"),
    "tab": (KEY[:5] + "\t" + KEY[5:], "tab"),
    "inner space": (KEY[:30] + " " + KEY[30:], "space"),
    "non-ASCII": (KEY[:10] + "é" + KEY[10:], "U+00E9"),
    "zero-width space": (KEY + "\u200b", "U+200B"),
    "control": (KEY[:3] + "\x07" + KEY[3:], "U+0007"),
}


@pytest.mark.parametrize("name", sorted(BAD_KEYS))
def test_a_bad_character_in_the_key_from_the_env_is_a_bad_key(name, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    bad, expected = BAD_KEYS[name]
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", bad)
    with Stub(OK_WHOAMI) as stub:
        with pytest.raises(BadParameterError) as info:
            connect(stub.url).whoami()
        assert stub.requests == []  # never sent
    message = str(info.value)
    assert message.startswith("LABEL_STUDIO_API_KEY: ") and expected in message
    assert "URL" not in message  # a bad key, not a wrong address
    assert leaks(everything(info.value, caplog), bad) == []


def test_a_nul_in_an_explicit_key_names_the_argument(caplog):
    caplog.set_level(logging.DEBUG)
    bad = KEY[:12] + "\x00" + KEY[12:]
    with pytest.raises(BadParameterError) as info:
        connect("http://127.0.0.1:9", bad)
    assert str(info.value).startswith("api_key: ") and "U+0000" in str(info.value)
    assert leaks(everything(info.value, caplog), bad) == []


@pytest.mark.parametrize("padded", [KEY + "  ", "  " + KEY + "\n", KEY + "\r\n"])
def test_surrounding_whitespace_is_stripped(padded, monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", padded)
    with Stub(OK_WHOAMI) as stub:
        assert connect(stub.url, max_retries=0).whoami() == "a@b.c"
        assert stub.requests[0][2]["Authorization"] == f"Token {KEY}"


def test_check_api_key_never_shows_the_key():
    assert check_api_key(f" {KEY}\n", "LABEL_STUDIO_API_KEY") == KEY
    with pytest.raises(BadParameterError) as info:
        check_api_key(KEY + "\x7f" + KEY, "labelstudio.api_key")
    assert "U+007F" in str(info.value) and leaks(str(info.value)) == []


@pytest.mark.parametrize("error", [
    RuntimeError(f"boom: Authorization: Token {KEY} rejected"),
    httpx.LocalProtocolError(f"Illegal header value b'Token {KEY}\\n'"),
    KeyError(f"Cookie: sessionid=abcdefgh12345; csrftoken=zyxwv98765 for {KEY}"),
    TypeError(f"{KEY[:9]}...truncated"),
])
def test_unknown_exceptions_become_scrubbed_service_errors(error, caplog):
    caplog.set_level(logging.DEBUG)
    with Stub(OK_WHOAMI) as stub:
        client = connect(stub.url, KEY, max_retries=0)

        def explode(*args, **kwargs):
            raise error

        client._sdk.users.whoami = explode
        with pytest.raises(ServiceError) as info:
            client.whoami()
    exc = info.value
    assert exc.__cause__ is None and exc.__suppress_context__
    text = everything(exc, caplog)
    assert leaks(text) == []
    assert "abcdefgh12345" not in text and "zyxwv98765" not in text
    assert stub.url in str(exc) and type(error).__name__ in str(exc)
    assert "\n" not in str(exc)


def test_log_records_are_scrubbed(caplog):
    import cardamage.labelling.push  # noqa: F401 - its logger exists before the client's first call

    caplog.set_level(logging.DEBUG)
    with Stub(OK_WHOAMI) as stub:
        connect(stub.url, KEY).whoami()
    for name in ("cardamage.labelling.client", "cardamage.labelling.push", "httpx", "httpcore.http11",
                 "label_studio_sdk"):
        logger = logging.getLogger(name)
        logger.warning("key %s and header Token %s", KEY, KEY)
        try:
            raise ValueError(f"inside {KEY}")
        except ValueError:
            logger.exception("failed with %r", KEY[:10])
    assert caplog.records
    assert leaks(caplog.text + "".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)) == []


@pytest.mark.parametrize("text, hidden", [
    (f"Authorization: Token {KEY}", KEY),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlLXNpZw", "c2lnbmF0dXJl"),
    ("{'authorization': 'Token 0123456789abcdef0123456789abcdef01234567'}", "0123456789abcdef"),
    ("Set-Cookie: sessionid=s3ss10n-v4lu3; Path=/", "s3ss10n-v4lu3"),
    ("cookies={'csrftoken': 'csrf-v4lu3-123'}", "csrf-v4lu3-123"),
    ("GET http://admin:hunter2pass@ls.example/api", "hunter2pass"),
    (f"cut at 300: ...{KEY[:14]}", KEY[:8]),
])
def test_scrub_hides_tokens_cookies_and_passwords(text, hidden):
    check_api_key(KEY, "LABEL_STUDIO_API_KEY")  # registers the key as a secret
    clean = scrub(text)
    assert hidden not in clean and "***" in clean


def test_scrub_keeps_ordinary_messages():
    text = "Label Studio token creation timed out at http://127.0.0.1:8080 after 3.0 s"
    assert scrub(text) == text


@pytest.mark.parametrize("stub", [[(401, {"detail": f"Invalid token {KEY}"}, 0)]], indirect=True)
def test_401_with_the_key_echoed_by_the_server(stub, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(LabelStudioAuthError) as info:
        connect(stub.url, KEY).find_project("x")
    assert leaks(everything(info.value, caplog)) == []


@pytest.fixture
def stub(request):
    with Stub(request.param) as server:
        yield server
