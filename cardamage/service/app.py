"""The claim service: a FastAPI app built by :func:`create_app`, served by uvicorn (``cardamage serve``).

Endpoints: ``POST /v1/assess`` (multipart photos + optional ``claim_id``), ``GET /v1/splash/<id>.jpg``,
``GET /health``, ``GET /version``, the upload page at ``/`` (``/static/*``), and FastAPI's
``/openapi.json`` and ``/docs``. The models are loaded once, at startup (``cardamage serve``: before
the server listens; a process manager's factory: in the lifespan), and reloaded in the background
when the model file gets a new version that fits ``data.classes`` / ``model.input_size``
(:mod:`.models`). Nothing happens at import.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from cardamage import __version__
from cardamage.config import Params, load_params
from cardamage.errors import BadParameterError
from cardamage.monitoring.data_version import data_version
from cardamage.service.batcher import Overloaded
from cardamage.service.claims import ClaimService, ClientGone
from cardamage.service.docs import add_offline_docs
from cardamage.service.logs import REQUEST_ID, configure_logging
from cardamage.service.metrics import MetricsMiddleware, ServiceMetrics, add_metrics_route
from cardamage.service.middleware import Admission, RequestContext, UploadLimits, overloaded_body
from cardamage.service.models import ModelHolder
from cardamage.service.pruner import Pruner
from cardamage.service.reuse import open_reuse_index
from cardamage.service.settlement import check_table
from cardamage.service.uploads import Upload, UploadError

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
ASSESS_PATH = "/v1/assess"
ASSESS_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "An empty, truncated or corrupt photo (`error.files` names each)"},
    503: {"description": "Busy: over serve.batch.max_inflight requests or serve.batch.max_queue photos "
                         "(`overloaded`, with `Retry-After`)"},
    413: {"description": "Over serve.max_upload_mb, over serve.max_photos_per_request, a photo over "
                         "data.max_pixels or all photos over serve.max_request_pixels (`too_many_pixels`)"},
    415: {"description": "Not multipart/form-data, a part that is not an image, or an unsupported format"},
    422: {"description": "No `photos` field, or a `claim_id` over 128 characters"},
}
HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "request_too_large",
              415: "unsupported_media_type", 422: "invalid_request"}


def model_paths(params: Params, model_path: str | None = None) -> tuple[str, str | None]:
    """Damage and part model paths: ``--model``, else ``serve.*``, else ``predict.*``."""
    main = model_path or params.serve.model_path or params.predict.model_path
    return main, params.serve.part_model_path or params.predict.part_model_path


def _error(status: int, code: str, message: str, **more: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **more}, "request_id": REQUEST_ID.get()},
                        status_code=status)


async def _disconnect(request: Request) -> None:
    """Return when the client of ``request`` (whose body is read) disconnects."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _add_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        log.info("refused: %s", exc)  # counted by MetricsMiddleware from the body's code
        return JSONResponse(overloaded_body(str(exc)), status_code=503, headers={"Retry-After": str(retry_after_s)})

    @app.exception_handler(ClientGone)
    async def gone(request: Request, exc: ClientGone) -> JSONResponse:
        log.info("%s", exc)
        return _error(499, "client_closed_request", str(exc))

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, exc: UploadError) -> JSONResponse:
        log.info("refused upload: %s %s", exc.code, exc.message)
        return _error(exc.status, **exc.body())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, HTTP_CODES.get(exc.status_code, "http_error"), str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [{"loc": [str(x) for x in e.get("loc", ())], "msg": e.get("msg", "")} for e in exc.errors()]
        text = "; ".join(f"{'.'.join(f['loc'])}: {f['msg']}" for f in fields)
        return _error(422, "invalid_request", f"The request is not valid: {text}", fields=fields)


def _add_routes(app: FastAPI, service: ClaimService, holder: ModelHolder, params: Params) -> None:
    started = time.time()

    @app.post(ASSESS_PATH, summary="Assess the damage on claim photos and propose a settlement",
              responses=ASSESS_ERRORS)
    async def assess(request: Request,
                     photos: Annotated[list[UploadFile], File(description="One or more photos (JPEG, PNG, WebP)")],
                     claim_id: Annotated[str | None, Form(max_length=128, description="Your claim reference")] = None
                     ) -> JSONResponse:
        uploads = [Upload(f.filename or f"photo{i + 1}", f.content_type, await f.read()) for i, f in enumerate(photos)]
        answer = await service.assess_async(uploads, claim_id, REQUEST_ID.get() or "", lambda: _disconnect(request))
        return JSONResponse(answer)

    @app.get("/v1/splash/{splash_id}.jpg", summary="Colour splash picture of an assessed photo",
             response_class=FileResponse)
    def splash(splash_id: str) -> FileResponse:
        try:
            path = service.splashes.path(splash_id)
        except ValueError:
            raise StarletteHTTPException(404, "No such splash picture.") from None
        if not path.is_file():
            raise StarletteHTTPException(404, "No such splash picture.")
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/health", summary="Liveness and readiness")
    def health() -> dict[str, Any]:
        m = holder.current()
        return {"status": "ok", "model_version": m.main.info.model_version, "reloads": holder.reloads,
                "model_reload": dict(holder.reload_state), "uptime_s": round(time.time() - started, 1)}

    @app.get("/version", summary="Service, model and data versions")
    def version() -> dict[str, Any]:
        return {"service": __version__, **holder.describe(), "data": data_version(params)}

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")


def check_serve_params(params: Params) -> None:
    """Raise :class:`BadParameterError` for working-size and pixel-budget values the service cannot use."""
    s = params.serve
    need = max(params.drift.max_side, params.model.input_size)
    for key, value in (("max_side", s.max_side), ("work_side", s.work_side)):
        if value < need:
            raise BadParameterError(f"serve.{key}: must be at least drift.max_side ({params.drift.max_side}) and "
                                    f"model.input_size ({params.model.input_size}), got {value}")
    b = s.batch
    if min(b.max_batch, b.max_queue, b.max_inflight, b.workers) < 1 or b.max_wait_ms < 0 or b.retry_after_s < 0:
        raise BadParameterError(f"serve.batch: max_batch, max_queue, max_inflight and workers must be >= 1, "
                                f"max_wait_ms and retry_after_s >= 0, got {b}")
    if s.max_request_pixels < 1:
        raise BadParameterError(f"serve.max_request_pixels: must be >= 1, got {s.max_request_pixels}")


def _inflight(service: ClaimService, metrics: ServiceMetrics, n: int) -> None:
    service.inflight = n
    metrics.set_inflight(n)


def create_app(params: Params | None = None, model_path: str | None = None) -> FastAPI:
    """Build the app; the models load when it starts (lifespan, or :func:`run_server` before), not here.
    Only the model files' stored info is read here (no TensorFlow), so a file that does not fit fails now.

    Raises:
        ValueError: a malformed settlement table.
        BadParameterError: an unusable ``serve.max_side`` / ``serve.max_request_pixels``.
        FileNotFoundError, BadInputError, ModelMismatchError: a missing or unreadable model file, or one
            for other classes (``data.classes``) or another input size (``model.input_size``).
    """
    params = params or load_params()
    check_table(params.settlement)
    check_serve_params(params)
    main, part = model_paths(params, model_path)
    holder = ModelHolder(main, part, params.serve.reload_check_s, params.data.classes, params.model.input_size)
    holder.check_files()
    metrics = ServiceMetrics()
    metrics.track_models(holder)
    service = ClaimService(params, holder, metrics, open_reuse_index(params.serve))
    pruner = Pruner.from_params(params)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not holder.loaded:
            holder.load()
        holder.start()
        service.batcher.start()
        pruner.start()
        log.info("serving model %s (version %s)", main, holder.current().main.info.model_version)
        try:
            yield
        finally:  # uvicorn has finished the accepted requests (timeout_graceful_shutdown) before this
            service.batcher.stop()
            pruner.stop()
            holder.stop()
            if service.reuse is not None:
                service.reuse.close()

    app = FastAPI(title="cardamage claim service", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, description="Car damage assessment of claim photos, with a settlement proposal.")
    app.state.holder, app.state.service, app.state.metrics, app.state.pruner = holder, service, metrics, pruner
    _add_error_handlers(app, params.serve.batch.retry_after_s)
    _add_routes(app, service, holder, params)
    add_metrics_route(app, metrics)
    add_offline_docs(app)
    app.add_middleware(UploadLimits, max_bytes=int(params.serve.max_upload_mb * (1 << 20)), paths=(ASSESS_PATH,))
    b = params.serve.batch
    app.add_middleware(Admission, max_inflight=b.max_inflight, retry_after_s=b.retry_after_s, paths=(ASSESS_PATH,),
                       on_change=lambda n: _inflight(service, metrics, n))
    app.add_middleware(RequestContext)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` / gunicorn: params from ``$CARDAMAGE_PARAMS`` (else ./params.yaml),
    model from ``$CARDAMAGE_MODEL`` (else the params); sets up the logs as ``serve.log_format`` says."""
    params = load_params(os.environ.get("CARDAMAGE_PARAMS") or None)
    configure_logging(params.serve.log_format)
    return create_app(params, os.environ.get("CARDAMAGE_MODEL") or None)


def run_server(params: Params, host: str | None = None, port: int | None = None,
               model_path: str | None = None) -> None:
    """``cardamage serve``: build the app, load the models, and run it on uvicorn until interrupted.

    Raises:
        CardamageError, FileNotFoundError: a model file that does not fit or does not load (one line
            naming the file), or unusable params: nothing listens then.
    """
    import uvicorn

    configure_logging(params.serve.log_format)
    app = create_app(params, model_path)
    app.state.holder.load()  # before listening: a file that does not load is one line (the CLI's Error:)
    uvicorn.run(app, host=host or params.serve.host, port=port or params.serve.port, log_config=None,
                access_log=False, proxy_headers=True, timeout_graceful_shutdown=30)
