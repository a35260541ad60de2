"""Label Studio client errors, and how a failed SDK/HTTP call becomes one (:func:`classify`).

Every message is one line, scrubbed (:func:`cardamage.labelling.redact.scrub`): no API key, token,
cookie or URL password. :mod:`cardamage.labelling.client` raises them ``from None``, so the original
exception's text and traceback never reach the terminal.
"""

from __future__ import annotations

import json
from typing import Any

from cardamage.errors import ServiceError
from cardamage.labelling.redact import scrub

#: HTTP statuses after which the request was not processed, so even a create may be sent again.
NOT_PROCESSED = {429, 502, 503, 504}


class LabelStudioError(ServiceError):
    """A Label Studio call that failed; the message is one line and never contains the API key.

    An ``OSError`` (like ``requests``' errors), so the command line shows it as a one-line user error.
    ``timed_out`` is true when the server did not answer in time (the message says how long it waited).
    """

    timed_out: bool = False


class LabelStudioUnreachable(LabelStudioError):
    """No connection to the server (refused, unknown host)."""


class LabelStudioAuthError(LabelStudioError):
    """The server rejected the API key (401) or its user may not do this (403)."""


class LabelStudioTimeout(LabelStudioError):
    """A call that creates something timed out: the server may or may not have done it."""


def one_line(text: str, limit: int = 300) -> str:
    """``text`` scrubbed, on one line, at most ``limit`` characters (scrubbed before it is cut)."""
    text = " ".join(scrub(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def parse_export(data: bytes, what: str) -> list[dict[str, Any]]:
    """The tasks of a JSON export's bytes (``what`` names it in errors).

    Raises:
        LabelStudioError: the export is not UTF-8, not JSON or not a list of task objects.
    """
    try:
        tasks = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise LabelStudioError(f"{what} is not UTF-8 (byte {exc.start}: {exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise LabelStudioError(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise LabelStudioError(f"{what} is not a list of tasks")
    return tasks


def classify(what: str, exc: BaseException, creates: bool, url: str, elapsed: float,
             http_error: type[BaseException]) -> tuple[LabelStudioError, bool]:
    """``(error to raise, whether a retry is allowed)`` for any exception of an SDK/HTTP call.

    Args:
        what: the call, for the message ("whoami", "task import").
        exc: what the SDK or httpx raised.
        creates: the call creates something (not repeated once the request may have been processed).
        url: the server address, for the message.
        elapsed: seconds since the call (first attempt) started.
        http_error: the SDK's error for an HTTP error answer (``ApiError``, with ``status_code`` and
            ``body``), passed in by :mod:`cardamage.labelling.client`, the one module using the SDK.
    """
    import httpx

    if isinstance(exc, httpx.ConnectError):
        reason = "connection refused" if "refused" in str(exc).lower() else one_line(str(exc) or "no connection")
        return LabelStudioUnreachable(f"cannot reach Label Studio at {url}: {reason} — is the server running?"), False
    if isinstance(exc, httpx.TimeoutException):
        sent = not isinstance(exc, (httpx.ConnectTimeout, httpx.PoolTimeout))
        cls = LabelStudioTimeout if creates and sent else LabelStudioError
        error = cls(f"Label Studio {what} timed out at {url} after {elapsed:.1f} s")
        error.timed_out = True
        return error, not (creates and sent)
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        cls = LabelStudioTimeout if creates else LabelStudioError
        return cls(f"Label Studio {what}: connection to {url} dropped ({type(exc).__name__})"), not creates
    if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
        return LabelStudioError(f"{url} is not a usable Label Studio address ({one_line(str(exc))}): check "
                                "LABEL_STUDIO_URL / labelstudio.url"), False
    if isinstance(exc, http_error):
        return api_error(what, exc, creates, url)
    if isinstance(exc, (json.JSONDecodeError, ValueError)) and not isinstance(exc, UnicodeError):
        return LabelStudioError(f"{url} answered {what} with something that is not Label Studio's "
                                f"API ({type(exc).__name__}) — is LABEL_STUDIO_URL right?"), False
    return LabelStudioError(f"Label Studio {what} at {url} failed: {type(exc).__name__}: "
                            f"{one_line(str(exc) or 'no detail', 200)}"), False


def api_error(what: str, exc: Any, creates: bool, url: str) -> tuple[LabelStudioError, bool]:
    """The error for an HTTP error answer (``ApiError``: status and body)."""
    status = exc.status_code
    detail = _detail(exc.body)
    if status == 401:
        return LabelStudioAuthError(
            f"Label Studio rejected the API key (401) at {url}: check LABEL_STUDIO_API_KEY "
            "(a legacy token also needs LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true on the server; "
            "a personal access token must not be expired or revoked)"), False
    if status == 403:
        return LabelStudioAuthError(f"Label Studio refused {what} (403): the API key's user may not do "
                                    f"this ({detail})"), False
    if status == 404:
        return LabelStudioError(f"Label Studio {what}: not found (404) at {url} ({detail})"), False
    retry = status is not None and (status in NOT_PROCESSED or (status >= 500 and not creates))
    if status is not None and status >= 500 and creates and not retry:
        return LabelStudioTimeout(f"Label Studio {what} failed ({status}): {detail}"), False
    return LabelStudioError(f"Label Studio {what} failed ({status}): {detail}"), retry


def _detail(body: Any) -> str:
    """A short, scrubbed text from an error body (``detail`` and validation errors), at most 300 characters."""
    if isinstance(body, dict):
        parts = [str(body.get("detail") or "")]
        if body.get("validation_errors"):
            parts.append(json.dumps(body["validation_errors"], ensure_ascii=False))
        text = " ".join(p for p in parts if p) or json.dumps(body, ensure_ascii=False)
    elif isinstance(body, str) and body.lstrip().startswith("<"):
        text = "the answer is an HTML page, not Label Studio's JSON API"
    else:
        text = str(body or "no detail")
    return one_line(text)
