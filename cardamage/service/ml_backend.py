"""The Label Studio ML backend: ``cardamage labelstudio backend`` serves the model over Label Studio's
ML backend protocol, so annotators connect it in the project settings and press "Retrieve predictions".

Endpoints (what Label Studio 1.23 calls, see ``label_studio/ml/api_connector.py``):

- ``GET /health``: ``{"status": "UP", "model_version", "model_reload", "retrain", "label_studio"}``.
- ``POST /setup`` (``project``, ``schema``, ``hostname``, ``access_token``): checks the labelling
  configuration against ``data.classes``; answers ``{"model_version"}`` (Label Studio's prediction
  model version is ours), or 400 naming the problems.
- ``POST /predict`` (``tasks``, ``label_config``): one entry per task, see
  :mod:`cardamage.service.ml_backend_predict`; the answer comes within
  ``labelstudio.backend.time_limit_s`` (Label Studio gives up after 100 s).
- ``POST /webhook``: annotation events; new annotations count towards a background retrain
  (:mod:`cardamage.service.retrain`). Unknown labels are logged and not counted.
- ``GET /versions``: the model version served.

The model is loaded once and reloaded when its file gets a new version (the claim service's
:class:`~cardamage.service.models.ModelHolder`). Photos are fetched from Label Studio with the
connection every ``cardamage labelstudio`` command uses (``labelstudio.url`` / ``$LABEL_STUDIO_URL``
and ``$LABEL_STUDIO_API_KEY``: a legacy or a personal access token; or the connection stored by
``cardamage labelstudio up``), else with the ``hostname`` and
``access_token`` Label Studio sends to ``/setup``. With ``labelstudio.backend.basic_auth_user`` set,
every request needs HTTP basic auth with ``$CARDAMAGE_BACKEND_PASSWORD``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from cardamage.config import Params
from cardamage.errors import BadParameterError, CardamageError
from cardamage.labelling.label_config import check_label_config, parse_label_config
from cardamage.labelling.redact import register_secret
from cardamage.service.backend_labels import annotation_labels, pool_clusters
from cardamage.service.ml_backend_predict import predict_tasks
from cardamage.service.models import ModelHolder
from cardamage.service.retrain import Retrainer

log = logging.getLogger(__name__)

PASSWORD_ENV = "CARDAMAGE_BACKEND_PASSWORD"
#: Webhook actions that bring a new or changed label.
LABEL_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")


def backend_model_path(params: Params, model_path: str | None = None) -> str:
    """``--model``, else ``labelstudio.backend.model_path``, else ``serve.model_path``, else ``predict.model_path``."""
    return (model_path or params.labelstudio.backend.model_path or params.serve.model_path
            or params.predict.model_path)


def backend_holder(params: Params, model_path: str | None = None) -> ModelHolder:
    """The backend's model holder: :func:`backend_model_path`, checked against ``data.classes`` and
    ``model.input_size``, looked at every ``serve.reload_check_s`` seconds."""
    return ModelHolder(backend_model_path(params, model_path), check_s=params.serve.reload_check_s,
                       expect_classes=params.data.classes, expect_input_size=params.model.input_size)


class LabelStudioFiles:
    """Downloads task images from Label Studio: the configured connection, else the one ``/setup`` gave."""

    def __init__(self, params: Params, client: Any = None):
        self.params, self._client, self._lock = params, client, threading.Lock()
        self.setup_hostname: str | None = None
        self._setup_token: str | None = None

    def remember_setup(self, hostname: Any, token: Any) -> None:
        """Keep the ``hostname`` and ``access_token`` of a ``/setup`` call (used without a configured key)."""
        if isinstance(token, str) and token.strip():
            register_secret(token.strip())
            self._setup_token = token.strip()
        if isinstance(hostname, str) and hostname.startswith(("http://", "https://")):
            self.setup_hostname = hostname.rstrip("/")

    def client(self) -> Any:
        """The Label Studio client (made on first use)."""
        from cardamage.labelling.client import connect
        from cardamage.labelling.connection import stored_credentials
        from cardamage.labelling.push import connect_params

        with self._lock:
            if self._client is None:
                ls = self.params.labelstudio
                configured = os.environ.get("LABEL_STUDIO_API_KEY", "").strip() or \
                    stored_credentials(ls.connection_file)
                if configured or not self._setup_token:
                    self._client = connect_params(self.params)
                else:
                    url = ls.url or os.environ.get("LABEL_STUDIO_URL") or self.setup_hostname
                    self._client = connect(url, self._setup_token, timeout_s=ls.timeout_s,
                                           max_retries=ls.max_retries, deadline_s=ls.deadline_s)
            return self._client

    def fetch(self, url: str) -> bytes:
        """Bytes of ``url`` (``/data/upload/...``, ``/data/local-files/?d=...``) from Label Studio."""
        return self.client().download(url)

    def state(self) -> str:
        """``connected`` or ``not connected yet`` (for ``/health``)."""
        return "connected" if self._client is not None else "not connected yet"


def backend_auth(params: Params) -> tuple[str, str] | None:
    """``(user, password)`` of the backend's basic auth, or ``None`` when ``basic_auth_user`` is not set."""
    user = params.labelstudio.backend.basic_auth_user
    if not user:
        return None
    password = os.environ.get(PASSWORD_ENV, "")
    if not password:
        raise BadParameterError(f"labelstudio.backend.basic_auth_user is set but ${PASSWORD_ENV} is empty")
    register_secret(password)
    return user, password


def _authorised(header: str | None, expected: tuple[str, str]) -> bool:
    if not header or not header.lower().startswith("basic "):
        return False
    try:
        user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return secrets.compare_digest(user, expected[0]) & secrets.compare_digest(password, expected[1])


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _json_body(request: Request) -> dict[str, Any] | JSONResponse:
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "the body is not JSON")
    return body if isinstance(body, dict) else _error(400, "the body is not a JSON object")


class Backend:
    """What the routes share: the model holder, the Label Studio files, the retrainer, the params."""

    def __init__(self, params: Params, holder: ModelHolder, files: LabelStudioFiles, retrainer: Retrainer):
        self.params, self.holder, self.files, self.retrainer = params, holder, files, retrainer
        self.predict_lock = threading.Lock()  # one model call at a time; requests queue in the thread pool

    def version(self) -> str:
        return self.holder.current().main.info.model_version or "cardamage"

    def health(self) -> dict[str, Any]:
        return {"status": "UP", "model_class": "cardamage", "model_version": self.version(),
                "model_reload": dict(self.holder.reload_state), "retrain": self.retrainer.status(),
                "label_studio": self.files.state()}

    def setup(self, body: dict[str, Any]) -> JSONResponse:
        self.files.remember_setup(body.get("hostname"), body.get("access_token"))
        schema = body.get("schema")
        problems = check_label_config(schema, self.params.data.classes) if isinstance(schema, str) else \
            ["no labelling configuration ('schema') in the request"]
        if problems:
            log.warning("setup for project %s refused: %s", body.get("project"), "; ".join(problems))
            return _error(400, "; ".join(problems))
        log.info("setup for project %s: model version %s", body.get("project"), self.version())
        return JSONResponse({"model_version": self.version()})

    def predict(self, body: dict[str, Any]) -> JSONResponse:
        tasks, schema = body.get("tasks"), body.get("label_config")
        if not isinstance(tasks, list):
            return _error(400, "'tasks' is not a list")
        if not isinstance(schema, str):
            return _error(400, "no 'label_config' in the request")
        try:
            config = parse_label_config(schema)
        except CardamageError as exc:
            return _error(400, str(exc))
        deadline = time.monotonic() + self.params.labelstudio.backend.time_limit_s
        loaded = self.holder.current().main
        with self.predict_lock:
            results = predict_tasks(tasks, loaded, self.params, config, self.files.fetch,
                                    pool_clusters(self.params), deadline)
        done = sum(1 for r in results if "result" in r)
        log.info("predict: %d of %d task(s) predicted with model %s", done, len(tasks), loaded.info.model_version)
        return JSONResponse({"results": results, "model_version": loaded.info.model_version})

    def webhook(self, body: dict[str, Any]) -> JSONResponse:
        action = body.get("action")
        if action not in LABEL_ACTIONS:
            log.debug("webhook: %s ignored", action)
            return JSONResponse({"status": "ignored", "action": action})
        annotation, task = body.get("annotation"), body.get("task")
        task_id = task.get("id") if isinstance(task, dict) else None
        if not isinstance(annotation, dict) or annotation.get("was_cancelled"):
            return JSONResponse({"status": "ignored", "action": action})
        unknown = sorted(set(annotation_labels(annotation)) - set(self.params.data.classes))
        if unknown:
            log.warning("webhook: annotation %s of task %s has label(s) %s not in data.classes %s: not counted",
                        annotation.get("id"), task_id, unknown, self.params.data.classes)
            return JSONResponse({"status": "unknown_labels", "labels": unknown})
        self.retrainer.record()
        return JSONResponse({"status": "counted", "retrain": self.retrainer.status()})


def create_backend_app(params: Params, model_path: str | None = None, client: Any = None,
                       holder: ModelHolder | None = None, retrainer: Retrainer | None = None) -> FastAPI:
    """The ML backend app (nothing is loaded before its lifespan starts, unless ``holder`` is loaded).

    Args:
        client: a :class:`~cardamage.labelling.client.LabelStudioClient` for the images (default: made
            from the params and the environment on the first ``/predict``).
    """
    bp = params.labelstudio.backend
    auth = backend_auth(params)
    holder = holder or backend_holder(params, model_path)
    retrainer = retrainer or Retrainer(bp.retrain_commands, bp.retrain_after, bp.retrain_quiet_s, bp.retrain_log,
                                       bp.state_file)
    backend = Backend(params, holder, LabelStudioFiles(params, client), retrainer)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if not holder.loaded:
            holder.load()
        holder.start()
        retrainer.start()
        yield
        retrainer.stop()
        holder.stop()

    app = FastAPI(title="cardamage Label Studio ML backend", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.backend = backend

    @app.middleware("http")
    async def basic_auth(request: Request, call_next: Any) -> Any:
        if auth is not None and not _authorised(request.headers.get("authorization"), auth):
            log.warning("refused %s %s: no or wrong basic auth", request.method, request.url.path)
            return JSONResponse({"error": "authentication required"}, status_code=401,
                                headers={"WWW-Authenticate": 'Basic realm="cardamage"'})
        return await call_next(request)

    @app.get("/")
    @app.get("/health")
    def health() -> dict[str, Any]:
        return backend.health()

    @app.get("/versions")
    def versions() -> dict[str, Any]:
        return {"versions": [backend.version()]}

    for path, handler in (("/setup", backend.setup), ("/predict", backend.predict), ("/webhook", backend.webhook)):
        app.add_api_route(path, _route(handler), methods=["POST"])
    return app


def _route(handler: Any) -> Any:
    """An async endpoint that parses the JSON body and runs ``handler(body)`` in the thread pool."""
    from starlette.concurrency import run_in_threadpool

    async def endpoint(request: Request) -> JSONResponse:
        body = await _json_body(request)
        if isinstance(body, JSONResponse):
            log.warning("%s refused: %s", request.url.path, body.body.decode())
            return body
        return await run_in_threadpool(handler, body)

    endpoint.__name__ = handler.__name__
    return endpoint


def run_backend(params: Params, host: str | None = None, port: int | None = None,
                model_path: str | None = None) -> None:
    """Load the model, then serve the backend with uvicorn until interrupted (``cardamage labelstudio backend``)."""
    import uvicorn

    bp = params.labelstudio.backend
    holder = backend_holder(params, model_path)
    holder.check_files()
    holder.load()
    app = create_backend_app(params, holder=holder)
    log.info("Label Studio ML backend on http://%s:%d (model %s)", host or bp.host, port or bp.port, holder.path)
    uvicorn.run(app, host=host or bp.host, port=port or bp.port, log_config=None)
