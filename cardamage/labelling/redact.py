"""Keeping the Label Studio API key (and other credentials) out of messages and log records.

* :func:`check_api_key` strips the key and refuses characters no token has (control characters,
  spaces, non-ASCII: copy-paste accidents) with a message naming where the key came from and the
  position and kind of the bad character, never the key;
* :func:`scrub` replaces every registered secret (the keys checked here), authorisation header
  values (``Token ...``, ``Bearer ...``), JWTs, session/CSRF cookies and URL passwords by ``***``;
* :class:`SecretFilter` scrubs log records (message, arguments, traceback) of the cardamage,
  httpx/httpcore and Label Studio SDK loggers; :func:`install_log_filter` attaches it.
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
import unicodedata
from collections.abc import Sequence

from cardamage.errors import BadParameterError

MASK = "***"
#: Loggers (and their existing children) whose records are scrubbed.
#: (The Label Studio SDK's own loggers are named by :mod:`cardamage.labelling.client`, the one module that knows it.)
SCRUBBED_LOGGERS = ("cardamage", "httpx", "httpcore", "fern", "urllib3", "requests")

_secrets: set[str] = set()
_lock = threading.Lock()
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Authorization / X-API-Key header values, in header, dict-repr or bytes-repr form.
    (re.compile(r"(?i)\b(authorization|x-api-key)(['\"]?\s*[:=]\s*b?['\"]?)(?:(?:token|bearer|basic)\s+)?"
                r"[^'\"\s,;}\\]+"), r"\1\2" + MASK),
    (re.compile(r"\b(Token|Bearer|Basic|token|bearer)(\s+)[A-Za-z0-9._~+/=\-]{12,}"), r"\1\2" + MASK),
    (re.compile(r"\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]*)?"), MASK),  # JWTs
    (re.compile(r"(?i)\b(sessionid|csrftoken|csrfmiddlewaretoken|session|refresh|access_token)"
                r"(['\"]?\s*[:=]\s*['\"]?)[^'\"\s,;}&]+"), r"\1\2" + MASK),
    (re.compile(r"(?i)\b(set-cookie|cookie)(['\"]?\s*:\s*['\"]?)[^'\"\n]+"), r"\1\2" + MASK),
    (re.compile(r"(://[^/@:\s]+:)[^/@\s]+@"), r"\1" + MASK + "@"),  # http://user:password@host
    (re.compile(r"(?i)([?&](?:token|api_key|key|access_token)=)[^&\s'\"]+"), r"\1" + MASK),
]


def register_secret(value: str) -> None:
    """Remember ``value`` (and its pieces between bad characters) so that :func:`scrub` hides it."""
    forms = {value, value.strip(), repr(value)[1:-1]}
    forms |= {p for p in re.split(r"[^\x21-\x7e]+", value) if len(p) >= 8}
    with _lock:
        _secrets.update(f for f in forms if len(f) >= 4)


def scrub(text: str) -> str:
    """``text`` with every known secret, token, cookie value and URL password replaced by ``***``.

    A known secret's first 8 characters are hidden wherever they appear (a message cut short
    must not show the start of the key).
    """
    if not text:
        return text
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        text = text.replace(secret, MASK)
    for secret in known:
        if len(secret) >= 12:
            text = re.sub(re.escape(secret[:8]) + r"[^\s'\"]*", MASK, text)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _kind(ch: str) -> str:
    named = {"\n": "a line break (\\n)", "\r": "a carriage return (\\r)", "\t": "a tab", " ": "a space"}
    if ch in named:
        return named[ch]
    code = f"U+{ord(ch):04X}"
    if ord(ch) < 32 or ord(ch) == 127:
        return f"a control character ({code})"
    return f"a non-ASCII character ({code} {unicodedata.name(ch, 'unnamed')})"


def check_api_key(key: str, source: str) -> str:
    """``key`` without surrounding whitespace, registered as a secret.

    Args:
        key: the API key as given.
        source: where it came from, for the message (``LABEL_STUDIO_API_KEY``, ``api_key``).

    Raises:
        BadParameterError: the key contains a control character, a space or a non-ASCII
            character; the message says which and where, never the key.
    """
    register_secret(key)
    stripped = key.strip()
    for position, ch in enumerate(stripped, 1):
        if not "\x21" <= ch <= "\x7e":
            raise BadParameterError(
                f"{source}: the API key has {_kind(ch)} at character {position} of {len(stripped)} (after removing "
                "surrounding spaces); a Label Studio key is printable ASCII without spaces: copy it again from "
                "Account & Settings")
    return stripped


class SecretFilter(logging.Filter):
    """Scrubs a record's message, traceback and stack text in place; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string: keep the raw parts, scrubbed
            message = f"{record.msg} {record.args}"
        clean = scrub(message)
        if clean != message or not isinstance(record.msg, str):
            record.msg, record.args = clean, ()
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = scrub("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


_FILTER = SecretFilter()


_seen_loggers: tuple[int, tuple[str, ...]] = (-1, ())


def install_log_filter(extra: Sequence[str] = ()) -> None:
    """Attach the scrubbing filter to :data:`SCRUBBED_LOGGERS`, the ``extra`` logger names and their
    children created so far.

    Logger filters only see records logged on that logger itself, hence the children. Idempotent
    and cheap when no logger was created since the last call (the client calls it before each call).
    """
    global _seen_loggers
    registry = logging.Logger.manager.loggerDict
    prefixes = (*SCRUBBED_LOGGERS, *extra)
    if (len(registry), prefixes) == _seen_loggers:
        return
    _seen_loggers = (len(registry), prefixes)
    names = [n for n in list(registry) if any(n == p or n.startswith(p + ".") for p in prefixes)]
    for name in {*prefixes, *names}:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
