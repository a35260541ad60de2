"""The one place that talks to a Label Studio server (SDK 2.x, plus two multipart/file requests).

Connection: ``LABEL_STUDIO_URL`` (default ``http://localhost:8080``) and ``LABEL_STUDIO_API_KEY``:
a legacy token (40 hex characters; the server needs ``LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true``
from 1.23 on) or a personal access token (a JWT refresh token, exchanged by the SDK for short-lived
access tokens). The key is stripped of surrounding whitespace and refused up front when it holds a
character no key has (:func:`cardamage.labelling.redact.check_api_key`); it is never logged and never
part of an error message.

Every SDK/HTTP call goes through :meth:`LabelStudioClient._call`: any exception becomes a
:class:`LabelStudioError` (a ``ServiceError``) with a one-line, scrubbed message, raised ``from None``.
Timeouts, dropped connections, 429 and 5xx answers are retried with exponential backoff; a refused
connection fails at once. One call, retries included, ends after ``deadline_s`` even when the server
trickles bytes (:mod:`cardamage.labelling.transport`); an attempt without an answer for a few seconds
is announced at INFO ("waiting for Label Studio at URL (attempt k/n ...)..."). Calls that create
something (imports, uploads, annotations) are not retried after a timeout, since the server may have
done the work: :class:`LabelStudioTimeout` tells the caller to reconcile first (see
:mod:`cardamage.labelling.push`).

Coordinates never appear here: results are passed through as Label Studio JSON (percent).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from cardamage.labelling.client_errors import (
    LabelStudioAuthError,
    LabelStudioError,
    LabelStudioTimeout,
    LabelStudioUnreachable,
    classify,
    one_line,
    parse_export,
)
from cardamage.labelling.redact import check_api_key, install_log_filter, scrub

__all__ = ["LabelStudioAuthError", "LabelStudioClient", "LabelStudioError", "LabelStudioTimeout",
           "LabelStudioUnreachable", "api_key_from_env", "connect", "resolve_url", "wait_until_healthy"]

log = logging.getLogger(__name__)

DEFAULT_URL = "http://localhost:8080"
#: Seconds one request may wait for the server (each read and write; connecting: at most 10 s).
DEFAULT_TIMEOUT_S = 30.0
#: Seconds one call may take in all, retries and backoff included (at least twice the timeout).
DEFAULT_DEADLINE_S = 90.0
#: Seconds without an answer after which the user is told what is being waited for.
NOTICE_AFTER_S = 5.0
T = TypeVar("T")
#: The SDK's loggers (and their children), scrubbed like ours (:func:`~.redact.install_log_filter`).
SDK_LOGGERS = ("label_studio_sdk",)
_MAX_BACKOFF_S = 30.0


def resolve_url(url: str | None = None) -> str:
    """``url``, else ``$LABEL_STUDIO_URL``, else :data:`DEFAULT_URL`; without a trailing slash."""
    return (url or os.environ.get("LABEL_STUDIO_URL") or DEFAULT_URL).strip().rstrip("/")


def api_key_from_env() -> str:
    """``$LABEL_STUDIO_API_KEY`` without surrounding whitespace.

    Raises:
        LabelStudioError: the variable is unset or empty.
        BadParameterError: the key has a character no key has (the message says which and where).
    """
    key = os.environ.get("LABEL_STUDIO_API_KEY", "")
    if not key.strip():
        raise LabelStudioError("LABEL_STUDIO_API_KEY is not set: run `cardamage labelstudio up` for a local server, "
                               "or copy the access token from Label Studio (Account & Settings) into that "
                               "environment variable")
    return check_api_key(key, "LABEL_STUDIO_API_KEY")


def connect(url: str | None = None, api_key: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
            max_retries: int = 3, backoff_s: float = 0.5, deadline_s: float | None = None) -> LabelStudioClient:
    """A client for ``url`` (see :func:`resolve_url`) with ``api_key`` (default: from the environment).

    See :class:`LabelStudioClient` for the other arguments.
    """
    key = api_key_from_env() if api_key is None else check_api_key(api_key, "api_key")
    return LabelStudioClient(resolve_url(url), key, timeout_s=timeout_s, max_retries=max_retries,
                             backoff_s=backoff_s, deadline_s=deadline_s)


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
        except Exception as exc:  # noqa: BLE001 - a bad URL: say so, scrubbed
            raise LabelStudioError(f"cannot check {url}/health: {type(exc).__name__}: {one_line(str(exc))}") from None
        time.sleep(poll_s)
    raise LabelStudioError(f"Label Studio at {url} did not answer /health within {timeout_s:.0f} s")


class LabelStudioClient:
    """A thin, retrying wrapper around ``label_studio_sdk.LabelStudio``; plain dicts in and out.

    Args:
        url: server address, e.g. ``http://127.0.0.1:8080``.
        api_key: legacy token or personal access token (kept private, never shown).
        timeout_s: per-request timeout in seconds (each read and write; connecting: at most 10 s).
        max_retries: retries after a timeout, dropped connection, 429 or 5xx.
        backoff_s: first retry delay in seconds; doubled each retry (capped at 30 s).
        deadline_s: the most seconds one call may take, all attempts and backoff included
            (``None``: :data:`DEFAULT_DEADLINE_S`, at least twice ``timeout_s``).

    Raises:
        BadParameterError: ``api_key`` has a character no key has.
    """

    def __init__(self, url: str, api_key: str, timeout_s: float = DEFAULT_TIMEOUT_S, max_retries: int = 3,
                 backoff_s: float = 0.5, deadline_s: float | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = float(timeout_s)
        self.max_retries = max(0, int(max_retries))
        self.backoff_s = float(backoff_s)
        self.deadline_s = float(deadline_s) if deadline_s else max(DEFAULT_DEADLINE_S, 2 * self.timeout_s)
        self._key = check_api_key(api_key, "api_key")
        self._shown_url = scrub(self.url)  # for messages: no password from http://user:password@host
        self._deadline: Any = None
        self._sdk = self._call("connect", self._make_sdk)

    def _make_sdk(self) -> Any:
        try:
            from label_studio_sdk import LabelStudio

            from cardamage.labelling.transport import Deadline, make_http_client
        except ImportError:
            raise LabelStudioError("label-studio-sdk is not installed: pip install 'label-studio-sdk>=2,<3'") from None

        self._deadline = Deadline()
        # The SDK's own retries are off: ours know which calls may be repeated. Its timeout is the client's.
        return LabelStudio(base_url=self.url, api_key=self._key, max_retries=0,
                           httpx_client=make_http_client(self.timeout_s, self._deadline))

    def __repr__(self) -> str:
        return f"LabelStudioClient(url={self._shown_url!r})"

    # --- error handling ------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[..., T], *args: Any, creates: bool = False, **kwargs: Any) -> T:
        """Run ``fn`` with retries within :attr:`deadline_s`; every failure becomes a one-line, scrubbed
        :class:`LabelStudioError` raised ``from None`` (the original text never reaches the user)."""
        start = time.monotonic()
        deadline = start + self.deadline_s
        attempts = self.max_retries + 1
        install_log_filter(SDK_LOGGERS)  # loggers of modules imported since the last call
        for attempt in range(1, attempts + 1):
            notice = self._notice(what, attempt, attempts, deadline)
            try:
                if self._deadline is None:  # making the SDK client: no request
                    return fn(*args, **kwargs)
                with self._deadline.until(deadline):
                    return fn(*args, **kwargs)
            except LabelStudioError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is translated, none passes unscrubbed
                from label_studio_sdk.core.api_error import ApiError

                error, retry = classify(what, exc, creates, self._shown_url, time.monotonic() - start, ApiError)
            finally:
                if notice is not None:
                    notice.cancel()
            delay = min(self.backoff_s * 2 ** (attempt - 1), _MAX_BACKOFF_S)
            if retry and attempt < attempts and time.monotonic() + delay >= deadline:
                waited = "" if error.timed_out else f"; gave up after {time.monotonic() - start:.1f} s"
                raise type(error)(f"{error}{waited} ({attempt} attempt(s) within the deadline of "
                                  f"{self.deadline_s:g} s)") from None
            if not retry or attempt >= attempts:
                raise error from None
            log.warning("%s; retry %d of %d in %.1f s", error, attempt, self.max_retries, delay)
            time.sleep(delay)
            log.info("waiting for Label Studio at %s (attempt %d/%d: %s)...", self._shown_url, attempt + 1, attempts,
                     what)
        raise AssertionError("unreachable")  # pragma: no cover

    def _notice(self, what: str, attempt: int, attempts: int, deadline: float) -> threading.Timer | None:
        """A started timer that says what is being waited for when an attempt takes a while."""
        if self._deadline is None:
            return None
        after = min(NOTICE_AFTER_S, self.timeout_s / 2)
        left = max(0.0, deadline - time.monotonic())
        timer = threading.Timer(after, log.info, args=(
            "waiting for Label Studio at %s (attempt %d/%d: %s, no answer for %.1f s; giving up in %.0f s)...",
            self._shown_url, attempt, attempts, what, after, left - after))
        timer.daemon = True
        timer.start()
        return timer

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
            body = self._call("file upload", lambda: self._raw(
                "POST", f"api/projects/{project_id}/import", params={"commit_to_project": "false"},
                files=parts).json(), creates=True)
        finally:
            for h in handles:
                h.close()
        ids = [int(i) for i in (body.get("file_upload_ids") if isinstance(body, dict) else None) or []]
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
            return self._export_json(b"".join(chunks), project_id)
        return self._call("export", fetch)

    def _export_json(self, data: bytes, project_id: int) -> list[dict[str, Any]]:
        """The tasks of an export's bytes (:func:`~.client_errors.parse_export`; errors name project and server)."""
        return parse_export(data, f"the JSON export of project {project_id} from {self._shown_url}")

    def list_predictions(self, project_id: int) -> list[dict[str, Any]]:
        """Every prediction of the project (``task``, ``result`` in percent, ``score``, ``model_version``)."""
        return self._call("prediction list", lambda: [p.model_dump(mode="json")
                                                      for p in self._sdk.predictions.list(project=project_id)])

    def download(self, url: str) -> bytes:
        """Bytes of a file the server serves (``/data/upload/...`` or ``/data/local-files/?d=...``)."""
        return self._call("file download", lambda: self._raw("GET", url).content)

    # --- ML backend (``cardamage labelstudio init --backend``) ------------------------------------

    def connect_ml_backend(self, project_id: int, url: str, title: str = "cardamage",
                           basic_auth: tuple[str, str] | None = None, timeout_s: float = 100.0) -> tuple[int, str]:
        """Connect the ML backend at ``url`` to the project (the server checks ``/health`` and ``/setup``
        first); an existing connection to the same URL is updated. ``(id, "created" | "updated")``."""
        auth = {"auth_method": "BASIC_AUTH", "basic_auth_user": basic_auth[0], "basic_auth_pass": basic_auth[1]} \
            if basic_auth else {"auth_method": "NONE"}
        found = self._call("ML backend lookup", self._sdk.ml.list, project=project_id)
        same = [b for b in found if str(b.url).rstrip("/") == url.rstrip("/")]
        if same:
            self._call("ML backend update", self._sdk.ml.update, same[0].id, url=url, project=project_id,
                       title=title, is_interactive=False, timeout=timeout_s, **auth)
            return int(same[0].id), "updated"
        backend = self._call("ML backend connection", self._sdk.ml.create, url=url, project=project_id, title=title,
                             is_interactive=False, timeout=timeout_s, creates=True, **auth)
        return int(backend.id), "created"

    def retrieve_predictions(self, project_id: int, task_ids: Sequence[int] | None = None) -> None:
        """The Data Manager's "Retrieve predictions" for ``task_ids`` (``None``: every task): the server
        asks the connected ML backend for the tasks without a prediction of its current model version."""
        selected = {"all": True, "excluded": []} if task_ids is None else {"all": False, "included": list(task_ids)}
        self._call("predictions retrieval", self._sdk.actions.create, id="retrieve_tasks_predictions",
                   project=project_id, selected_items=selected)

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

