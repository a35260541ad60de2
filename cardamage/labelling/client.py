"""The one place that talks to a Label Studio server (SDK 2.x, plus two multipart/file requests).

Connection: ``LABEL_STUDIO_URL`` (default ``http://localhost:8080``) and ``LABEL_STUDIO_API_KEY``:
a legacy token (40 hex characters; the server needs ``LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true``
from 1.23 on) or a personal access token (a JWT refresh token, exchanged by the SDK for short-lived
access tokens). The key is never logged and never part of an error message.

Errors reach the caller as :class:`LabelStudioError` with a one-line message. Timeouts, dropped
connections, 429 and 5xx answers are retried with exponential backoff; a refused connection fails
at once. Calls that create something (imports, uploads, annotations) are not retried after a
timeout, since the server may have done the work: :class:`LabelStudioTimeout` tells the caller to
reconcile first (see :mod:`cardamage.labelling.push`).

Coordinates never appear here: results are passed through as Label Studio JSON (percent).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from cardamage.errors import ServiceError

log = logging.getLogger(__name__)

DEFAULT_URL = "http://localhost:8080"
T = TypeVar("T")
_MAX_BACKOFF_S = 30.0
#: HTTP statuses after which the request was not processed, so even a create may be sent again.
_NOT_PROCESSED = {429, 502, 503, 504}


class LabelStudioError(ServiceError):
    """A Label Studio call that failed; the message is one line and never contains the API key.

    An ``OSError`` (like ``requests``' errors), so the command line shows it as a one-line user error.
    """


class LabelStudioUnreachable(LabelStudioError):
    """No connection to the server (refused, unknown host)."""


class LabelStudioAuthError(LabelStudioError):
    """The server rejected the API key (401) or its user may not do this (403)."""


class LabelStudioTimeout(LabelStudioError):
    """A call that creates something timed out: the server may or may not have done it."""


def resolve_url(url: str | None = None) -> str:
    """``url``, else ``$LABEL_STUDIO_URL``, else :data:`DEFAULT_URL`; without a trailing slash."""
    return (url or os.environ.get("LABEL_STUDIO_URL") or DEFAULT_URL).rstrip("/")


def api_key_from_env() -> str:
    """``$LABEL_STUDIO_API_KEY``.

    Raises:
        LabelStudioError: the variable is unset or empty.
    """
    key = os.environ.get("LABEL_STUDIO_API_KEY", "").strip()
    if not key:
        raise LabelStudioError("LABEL_STUDIO_API_KEY is not set: copy the access token from Label Studio "
                               "(Account & Settings) into that environment variable")
    return key


def connect(url: str | None = None, api_key: str | None = None, timeout_s: float = 60.0,
            max_retries: int = 3, backoff_s: float = 0.5) -> LabelStudioClient:
    """A client for ``url`` (see :func:`resolve_url`) with ``api_key`` (default: from the environment)."""
    return LabelStudioClient(resolve_url(url), api_key or api_key_from_env(), timeout_s=timeout_s,
                             max_retries=max_retries, backoff_s=backoff_s)


def wait_until_healthy(url: str, timeout_s: float = 120.0, poll_s: float = 1.0,
                       alive: Callable[[], bool] = lambda: True) -> float:
    """Poll ``GET {url}/health`` until it answers 200; return the seconds waited.

    Raises:
        LabelStudioError: not healthy within ``timeout_s``, or ``alive()`` turned false (server exited).
    """
    import httpx

    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if not alive():
            raise LabelStudioError(f"the Label Studio server at {url} exited before it became healthy")
        try:
            if httpx.get(f"{url}/health", timeout=5.0).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(poll_s)
    raise LabelStudioError(f"Label Studio at {url} did not answer /health within {timeout_s:.0f} s")


class LabelStudioClient:
    """A thin, retrying wrapper around ``label_studio_sdk.LabelStudio``; plain dicts in and out.

    Args:
        url: server address, e.g. ``http://127.0.0.1:8080``.
        api_key: legacy token or personal access token (kept private, never shown).
        timeout_s: per-request timeout in seconds.
        max_retries: retries after a timeout, dropped connection, 429 or 5xx.
        backoff_s: first retry delay in seconds; doubled each retry (capped at 30 s).
    """

    def __init__(self, url: str, api_key: str, timeout_s: float = 60.0, max_retries: int = 3,
                 backoff_s: float = 0.5) -> None:
        self.url = url.rstrip("/")
        self.max_retries = max(0, int(max_retries))
        self.backoff_s = float(backoff_s)
        self._key = api_key
        self._sdk = self._call("connect", self._make_sdk, timeout_s)

    def _make_sdk(self, timeout_s: float) -> Any:
        try:
            from label_studio_sdk import LabelStudio
        except ImportError:
            raise LabelStudioError("label-studio-sdk is not installed: pip install 'label-studio-sdk>=2,<3'") from None

        # The SDK's own retries are off: ours know which calls may be repeated.
        return LabelStudio(base_url=self.url, api_key=self._key, timeout=timeout_s, max_retries=0)

    def __repr__(self) -> str:
        return f"LabelStudioClient(url={self.url!r})"

    # --- error handling ------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _call(self, what: str, fn: Callable[..., T], *args: Any, creates: bool = False, **kwargs: Any) -> T:
        """Run ``fn`` with retries; translate every failure into a :class:`LabelStudioError`."""
        attempt = 0
        while True:
            try:
                return fn(*args, **kwargs)
            except LabelStudioError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified below, unknown ones re-raised
                error, retry = self._classify(what, exc, creates)
                if error is None:
                    raise
            if not retry or attempt >= self.max_retries:
                raise error from None
            delay = min(self.backoff_s * 2 ** attempt, _MAX_BACKOFF_S)
            attempt += 1
            log.warning("%s; retry %d of %d in %.1f s", error, attempt, self.max_retries, delay)
            time.sleep(delay)

    def _classify(self, what: str, exc: BaseException, creates: bool) -> tuple[LabelStudioError | None, bool]:
        """``(error to raise, whether a retry is allowed)``; ``(None, False)`` for foreign exceptions."""
        import httpx
        from label_studio_sdk.core.api_error import ApiError

        if isinstance(exc, httpx.ConnectError):
            reason = "connection refused" if "refused" in str(exc).lower() else self._scrub(str(exc) or "no connection")
            return LabelStudioUnreachable(f"cannot reach Label Studio at {self.url}: {reason} — "
                                          "is the server running?"), False
        if isinstance(exc, httpx.TimeoutException):
            sent = not isinstance(exc, (httpx.ConnectTimeout, httpx.PoolTimeout))
            cls = LabelStudioTimeout if creates and sent else LabelStudioError
            return cls(f"Label Studio {what} timed out at {self.url}"), not (creates and sent)
        if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
            cls = LabelStudioTimeout if creates else LabelStudioError
            return cls(f"Label Studio {what}: connection dropped ({type(exc).__name__})"), not creates
        if isinstance(exc, ApiError):
            return self._api_error(what, exc, creates)
        if isinstance(exc, (json.JSONDecodeError, ValueError)) and not isinstance(exc, LabelStudioError):
            return LabelStudioError(f"{self.url} answered {what} with something that is not Label Studio's "
                                    f"API ({type(exc).__name__}) — is LABEL_STUDIO_URL right?"), False
        return None, False

    def _api_error(self, what: str, exc: Any, creates: bool) -> tuple[LabelStudioError, bool]:
        status = exc.status_code
        detail = self._scrub(_detail(exc.body))
        if status == 401:
            return LabelStudioAuthError(
                f"Label Studio rejected the API key (401) at {self.url}: check LABEL_STUDIO_API_KEY "
                "(a legacy token also needs LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true on the server; "
                "a personal access token must not be expired or revoked)"), False
        if status == 403:
            return LabelStudioAuthError(f"Label Studio refused {what} (403): the API key's user may not do "
                                        f"this ({detail})"), False
        if status == 404:
            return LabelStudioError(f"Label Studio {what}: not found (404) at {self.url} ({detail})"), False
        retry = status is not None and (status in _NOT_PROCESSED or (status >= 500 and not creates))
        if status is not None and status >= 500 and creates and not retry:
            return LabelStudioTimeout(f"Label Studio {what} failed ({status}): {detail}"), False
        return LabelStudioError(f"Label Studio {what} failed ({status}): {detail}"), retry

    # --- raw requests (multipart upload, file download) ----------------------------------------

    def _raw(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request through the SDK's HTTP client (auth, base URL); raises ``ApiError`` on >= 400."""
        from label_studio_sdk.core.api_error import ApiError

        response = self._sdk._client_wrapper.httpx_client.request(path.lstrip("/"), method=method, **kwargs)
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = response.text[:200]
            raise ApiError(status_code=response.status_code, body=body)
        return response

    # --- account and projects ------------------------------------------------------------------

    def whoami(self) -> str:
        """The e-mail (or username) of the key's user; a cheap check of URL and key."""
        user = self._call("whoami", self._sdk.users.whoami)
        return str(getattr(user, "email", None) or getattr(user, "username", ""))

    def find_project(self, title: str) -> int | None:
        """Id of the (lowest-id) project titled exactly ``title``, or ``None``."""
        projects = self._call("project search", lambda: list(self._sdk.projects.list(title=title, page_size=100)))
        ids = sorted(p.id for p in projects if p.title == title)
        return ids[0] if ids else None

    def create_project(self, title: str, label_config: str, description: str = "") -> int:
        """Create a project; return its id."""
        project = self._call("project creation", self._sdk.projects.create, title=title, label_config=label_config,
                             description=description, creates=True)
        return int(project.id)

    def get_label_config(self, project_id: int) -> str:
        """The project's labelling configuration XML."""
        return str(self._call("project lookup", self._sdk.projects.get, project_id).label_config)

    def set_label_config(self, project_id: int, label_config: str) -> None:
        """Replace the project's labelling configuration (the server refuses removing used labels)."""
        self._call("label config update", self._sdk.projects.update, project_id, label_config=label_config)

    def ensure_project(self, title: str, label_config: str) -> tuple[int, str]:
        """Find the project titled ``title`` or create it; ``(id, what happened)``.

        What happened is ``"created"``, ``"found"`` or ``"updated"`` (an existing project whose
        labelling configuration differed got ``label_config``).
        """
        project_id = self.find_project(title)
        if project_id is None:
            return self.create_project(title, label_config), "created"
        if self.get_label_config(project_id).strip() != label_config.strip():
            self.set_label_config(project_id, label_config)
            return project_id, "updated"
        return project_id, "found"

    def delete_project(self, project_id: int) -> None:
        """Delete a project with its tasks (benchmarks and tests clean up with it)."""
        self._call("project deletion", self._sdk.projects.delete, project_id)

    def ensure_local_storage(self, project_id: int, path: str) -> int:
        """Id of a local-files storage of the project for absolute folder ``path``, created if needed.

        Label Studio serves ``/data/local-files/?d=...`` only for files inside such a storage's
        folder, which must be a sub-folder of the server's ``LOCAL_FILES_DOCUMENT_ROOT``. It is not
        synced: tasks are imported by :meth:`import_tasks`.
        """
        existing = self._call("storage lookup", self._sdk.import_storage.local.list, project=project_id)
        for storage in existing:
            if str(storage.path).rstrip("/") == path.rstrip("/"):
                return int(storage.id)
        storage = self._call("local storage creation", self._sdk.import_storage.local.create, project=project_id,
                             path=path, title=f"cardamage {Path(path).name}", use_blob_urls=False, creates=True)
        return int(storage.id)

    # --- tasks -----------------------------------------------------------------------------------

    def upload_files(self, project_id: int, files: Sequence[str | os.PathLike]) -> list[str]:
        """Upload image files to the project without creating tasks; return their task URLs in order.

        The URLs (``/data/upload/<project>/<prefix>-<name>``) go into task data. Files left
        unused after a failure stay on the server as uploads, never as tasks.
        """
        if not files:
            return []
        handles = [open(f, "rb") for f in files]
        try:
            parts = {f"file{i}": (Path(f).name, h) for i, (f, h) in enumerate(zip(files, handles))}
            response = self._call("file upload", self._raw, "POST", f"api/projects/{project_id}/import",
                                  params={"commit_to_project": "false"}, files=parts, creates=True)
        finally:
            for h in handles:
                h.close()
        ids = [int(i) for i in response.json().get("file_upload_ids") or []]
        if len(ids) != len(files):
            raise LabelStudioError(f"Label Studio stored {len(ids)} of {len(files)} uploaded files")
        uploads = self._call("upload lookup", self._sdk.files.list, project_id, ids=json.dumps(ids))
        by_id = {int(u.id): str(u.file) for u in uploads}
        return [f"/data/{by_id[i].lstrip('/')}" for i in ids]

    def import_tasks(self, project_id: int, tasks: Sequence[dict[str, Any]]) -> list[int]:
        """Import tasks (data, optional predictions in percent) in one request; return task ids in order.

        Raises:
            LabelStudioTimeout: the request timed out; some or all tasks may exist.
        """
        if not tasks:
            return []
        response = self._call("task import", self._sdk.projects.import_tasks, project_id, request=list(tasks),
                              return_task_ids=True, creates=True)
        ids = [int(i) for i in (response.task_ids or [])]
        if len(ids) != len(tasks):
            raise LabelStudioError(f"Label Studio created {len(ids)} tasks for {len(tasks)} imported")
        return ids

    def list_task_data(self, project_id: int, page_size: int = 1000) -> list[tuple[int, dict[str, Any]]]:
        """``(task id, task data)`` of every task of the project, in id order."""
        def fetch() -> list[tuple[int, dict[str, Any]]]:
            pager = self._sdk.tasks.list(project=project_id, fields="task_only", page_size=page_size)
            return [(int(t.id), dict(t.data or {})) for t in pager]
        return sorted(self._call("task list", fetch))

    def export_tasks(self, project_id: int, only_annotated: bool = True) -> list[dict[str, Any]]:
        """The project's JSON export: tasks with ``annotations`` (cancelled ones included) as dicts.

        Prediction ids only: see :meth:`list_predictions` for their results.
        """
        def fetch() -> list[dict[str, Any]]:
            chunks = self._sdk.projects.exports.download_sync(
                project_id, export_type="JSON", download_all_tasks=not only_annotated, download_resources=False)
            return json.loads(b"".join(chunks))
        return self._call("export", fetch)

    def list_predictions(self, project_id: int) -> list[dict[str, Any]]:
        """Every prediction of the project (``task``, ``result`` in percent, ``score``, ``model_version``)."""
        predictions = self._call("prediction list", self._sdk.predictions.list, project=project_id)
        return [p.model_dump(mode="json") for p in predictions]

    def download(self, url: str) -> bytes:
        """Bytes of a file the server serves (``/data/upload/...`` or ``/data/local-files/?d=...``)."""
        return self._call("file download", lambda: self._raw("GET", url).content)

    # --- annotations (annotators, tests and benchmarks) ------------------------------------------

    def create_annotation(self, task_id: int, result: Iterable[dict[str, Any]], was_cancelled: bool = False,
                          lead_time_s: float | None = None) -> int:
        """Submit an annotation as the key's user would in the editor; ``was_cancelled`` means skipped."""
        extra = {} if lead_time_s is None else {"lead_time": lead_time_s}
        annotation = self._call("annotation", self._sdk.annotations.create, task_id, result=list(result),
                                was_cancelled=was_cancelled, creates=True, **extra)
        return int(annotation.id)

    def create_access_token(self) -> str:
        """Enable personal access tokens for the organisation and create one (a JWT refresh token)."""
        self._call("token settings", self._sdk.jwt_settings.update, api_tokens_enabled=True,
                   legacy_api_tokens_enabled=True, api_token_ttl_days=30)
        return str(self._call("token creation", self._sdk.tokens.create, creates=True).token)


def _detail(body: Any) -> str:
    """A short text from an error body (``detail`` and validation errors), at most 300 characters."""
    if isinstance(body, dict):
        parts = [str(body.get("detail") or "")]
        if body.get("validation_errors"):
            parts.append(json.dumps(body["validation_errors"], ensure_ascii=False))
        text = " ".join(p for p in parts if p) or json.dumps(body, ensure_ascii=False)
    elif isinstance(body, str) and body.lstrip().startswith("<"):
        text = "the answer is an HTML page, not Label Studio's JSON API"
    else:
        text = str(body or "no detail")
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."
