"""``cardamage serve --engine ray``: the claim service as a Ray Serve deployment (``pip install -e .[ray]``).

Each replica builds the very app of :func:`cardamage.service.app.create_app` (same routes, same error
bodies, same micro-batcher and admission control, started by the app's lifespan, which Serve runs in
the replica). Serve's HTTP proxy spreads requests over ``serve.ray.min_replicas`` ..
``serve.ray.max_replicas`` replicas, each holding ``serve.ray.num_cpus`` CPUs, and autoscales on
``serve.ray.target_ongoing_requests`` requests in progress per replica.

Cluster: ``serve.ray.address``, else ``$RAY_ADDRESS``, else a local Ray instance is started. The
replicas may run on any node, so every node needs this package installed and must read the model file
and the params' paths (``serve.incoming_dir``, ``serve.splash_dir``, ...) at the same path as the
driver: the replicas work in the driver's working directory when it exists on their node (shared
storage). Nothing happens at import; Ray is imported only when used.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cardamage.config import Params
from cardamage.config_serve import RayServeParams
from cardamage.errors import BadParameterError, MissingExtraError, ServiceError

log = logging.getLogger(__name__)

APP_NAME = "cardamage"
DEPLOYMENT_NAME = "ClaimService"
#: Serve's own controller, proxy and replica logs: warnings only, no access log (the app logs requests).
QUIET_LOGS: dict[str, Any] = {"log_level": "WARNING", "enable_access_log": False}
REPLICA_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}


def _serve() -> ModuleType:
    """``ray.serve``, or :class:`MissingExtraError` naming the extra to install."""
    try:
        from ray import serve
    except ImportError as exc:
        raise MissingExtraError(f"--engine ray needs Ray Serve: pip install -e .[ray] ({exc})") from None
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # its driver-side INFO lines; ours say where it serves
    return serve


def check_ray_params(ray: RayServeParams) -> None:
    """Raise :class:`BadParameterError` for ``serve.ray`` values Serve cannot use (naming the key)."""
    if ray.min_replicas < 0:
        raise BadParameterError(f"serve.ray.min_replicas: must be >= 0, got {ray.min_replicas}")
    if ray.max_replicas < max(1, ray.min_replicas):
        raise BadParameterError(f"serve.ray.max_replicas: must be >= 1 and >= serve.ray.min_replicas "
                                f"({ray.min_replicas}), got {ray.max_replicas}")
    if ray.target_ongoing_requests <= 0:
        raise BadParameterError(f"serve.ray.target_ongoing_requests: must be > 0, got {ray.target_ongoing_requests}")
    if ray.num_cpus < 0:
        raise BadParameterError(f"serve.ray.num_cpus: must be >= 0, got {ray.num_cpus}")


class ProxyRequestId:
    """ASGI middleware: drops the app's ``X-Request-ID`` response header, as Serve's proxy adds one.

    The proxy echoes the request's ``X-Request-ID`` (or one it made and passed to the app, which logs
    it and puts it in the body), so each answer carries the header once, as on uvicorn. Only an unsafe
    id sent by a client differs: the proxy echoes it, the body and the logs carry the app's new one.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_once(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
            await send(message)

        await self.app(scope, receive, send_once)


def replica_app(params: Params, model_path: str | None, workdir: str | None) -> Any:
    """Runs in each replica: work in ``workdir`` (the driver's, where this node has it), log as
    ``serve.log_format`` says, and build the app; its lifespan loads the models."""
    from cardamage.service.app import create_app
    from cardamage.service.logs import configure_logging

    if workdir and os.path.isdir(workdir):
        os.chdir(workdir)  # relative params paths (incoming_dir, dvc.lock, ...) mean what they mean on the driver
    configure_logging(params.serve.log_format)
    app = create_app(params, model_path)
    app.state.holder.load()  # here, not in the lifespan: Serve then reports why a model does not load
    app.add_middleware(ProxyRequestId)
    return app


def deployment_options(params: Params) -> dict[str, Any]:
    """``serve.deployment`` options from ``serve.ray`` and ``serve.batch``.

    A replica takes up to ``serve.batch.max_inflight + serve.batch.max_queue`` requests at once, so the
    app itself sees the excess and refuses it at once (its admission control: 503 + ``Retry-After``)
    while its micro-batcher sees the concurrent requests; beyond that each caller (Serve's proxy)
    queues at most ``serve.batch.max_queue`` more and answers 503 after (``max_queued_requests``), so
    no request waits in an unbounded queue.
    """
    ray, batch = params.serve.ray, params.serve.batch
    check_ray_params(ray)
    return {
        "name": DEPLOYMENT_NAME,
        "ray_actor_options": {"num_cpus": ray.num_cpus, "runtime_env": {"env_vars": dict(REPLICA_ENV)}},
        "autoscaling_config": {"min_replicas": ray.min_replicas, "initial_replicas": max(1, ray.min_replicas),
                               "max_replicas": ray.max_replicas,
                               "target_ongoing_requests": ray.target_ongoing_requests},
        "max_ongoing_requests": max(batch.max_inflight + batch.max_queue, ray.target_ongoing_requests),
        "max_queued_requests": batch.max_queue,
        "graceful_shutdown_timeout_s": 30.0,
        "logging_config": dict(QUIET_LOGS),
    }


def build_deployment(params: Params, model_path: str | None = None, workdir: str | None = None) -> Any:
    """The bound Serve application (``serve.run`` it) of :func:`create_app` ``(params, model_path)``.

    ``params`` (a picklable dataclass) and the model path travel to the replicas, which may run on other
    nodes: the model file must be readable on every node at that path. A relative ``model_path`` is
    made absolute here; ``workdir`` (default: the current directory) is where the replicas work.

    Raises:
        MissingExtraError: Ray Serve is not installed.
        BadParameterError: unusable ``serve.ray`` values.
    """
    from cardamage.service.app import model_paths

    serve = _serve()
    options = deployment_options(params)
    main = str(Path(model_paths(params, model_path)[0]).resolve())
    workdir = workdir or os.getcwd()

    def build_app() -> Any:  # a function: Serve calls it in each replica (the app is not pickled)
        return replica_app(params, main, workdir)

    return serve.deployment(serve.ingress(build_app)(), **options).bind()


def connect(address: str | None, **local: Any) -> bool:
    """``ray.init`` quietly unless Ray is up: ``address``, else ``$RAY_ADDRESS``, else a local instance
    (no dashboard; ``local`` adds ``ray.init`` arguments, e.g. ``num_cpus``, ``object_store_memory``).

    Returns True when this call started a local instance (so the caller shuts it down after).
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    quiet: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    try:
        if address:
            ray.init(address=address, **quiet)
            return False
        ray.init(include_dashboard=False, **quiet, **local)
    except (ConnectionError, RuntimeError) as exc:
        raise ServiceError(f"serve.ray.address: cannot connect to Ray at {address or 'a local instance'}: "
                           f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    return True


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def wait_for_interrupt(poll_s: float = 1.0) -> None:
    """Block until Ctrl-C or SIGTERM (as uvicorn stops on both; SIGTERM only in the main thread)."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main else None
    try:
        while True:
            time.sleep(poll_s)
    except KeyboardInterrupt:
        log.info("stopping the claim service")
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def start(params: Params, host: str, port: int, model_path: str | None = None) -> None:
    """Start Serve's HTTP proxy on ``host:port`` and deploy the app (Ray must be initialised).

    Raises:
        ServiceError: the replicas did not start (e.g. the model did not load in them).
    """
    serve = _serve()
    app = build_deployment(params, model_path)
    serve.start(http_options={"host": host, "port": port}, logging_config=dict(QUIET_LOGS))
    try:
        serve.run(app, name=APP_NAME, route_prefix="/", logging_config=dict(QUIET_LOGS))
    except RuntimeError as exc:
        raise ServiceError(f"Ray Serve could not start the claim service: {_why_failed(serve, exc)}") from exc


def _why_failed(serve: ModuleType, exc: Exception) -> str:
    """The last line of the replicas' traceback (the error itself), else of ``exc``."""
    text = str(exc)
    try:
        deployment = serve.status().applications[APP_NAME].deployments[DEPLOYMENT_NAME]
        text = deployment.message or text
    except Exception:  # noqa: BLE001 - the status is only for a better message
        pass
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    return lines[-1] if lines else type(exc).__name__


def stop(local: bool) -> None:
    """Remove the app (gracefully); on a local instance that :func:`connect` started, also Serve and Ray."""
    import ray

    if not ray.is_initialized():
        return
    serve = _serve()
    try:
        serve.delete(APP_NAME)  # replicas stop gracefully (lifespan shutdown); other applications keep running
    except Exception as exc:  # noqa: BLE001 - stopping must not hide why the service stopped
        log.warning("could not remove the Ray Serve application %s: %s", APP_NAME, exc)
    if local:
        ray.shutdown()  # Serve's controller and proxy go with the instance


def run_ray_server(params: Params, host: str | None = None, port: int | None = None,
                   model_path: str | None = None) -> None:
    """``cardamage serve --engine ray``: serve the app on Ray Serve at ``host:port`` until interrupted.

    The params and the model file are checked before Ray starts (nothing is started when they do not
    fit); the model path must be readable on every node of the cluster.

    Raises:
        MissingExtraError: Ray Serve is not installed.
        CardamageError, FileNotFoundError: unusable params or a model file that does not fit.
        ServiceError: Ray cannot be reached, or the replicas did not start.
    """
    from cardamage.service.app import create_app
    from cardamage.service.logs import configure_logging

    _serve()
    configure_logging(params.serve.log_format)
    create_app(params, model_path)  # the cheap checks (settlement table, sizes, model info), no TensorFlow
    check_ray_params(params.serve.ray)
    host, port = host or params.serve.host, port or params.serve.port
    local = connect(params.serve.ray.address)
    try:
        start(params, host, port, model_path)
        r = params.serve.ray
        log.info("claim service on Ray Serve at http://%s:%d (%d-%d replicas of %s CPU)", host, port,
                 r.min_replicas, r.max_replicas, r.num_cpus)
        wait_for_interrupt()
    finally:
        stop(local)
