"""A labelling server in one command: ``cardamage labelstudio up`` / ``down``.

``up`` finds Label Studio (``$CARDAMAGE_LABEL_STUDIO`` or ``.venv-ls/bin/label-studio``; it creates
that virtual environment when neither exists: Label Studio's pins differ from TensorFlow's), starts
it on 127.0.0.1 at ``labelstudio.server_port`` with a generated admin, password and legacy token,
waits for ``/health``, and stores the connection (:mod:`cardamage.labelling.connection`, mode 0600)
that every ``cardamage labelstudio`` command then reads. When a model exists it also starts the ML
backend (``cardamage labelstudio backend``), creates the project and connects the backend to it.
A server ``up`` started before and still healthy is reused; a stopped one is started again with the
same data folder and login. ``down`` stops what ``up`` started (the data and the login are kept).

Label Studio 1.23 refuses ML backends and webhooks on local addresses unless ``ML_BLOCK_LOCAL_IP``
and ``SSRF_PROTECTION_ENABLED`` are off: :func:`server_env` turns them off for this local server.
The password and the token are never printed: the summary names the file that holds them.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cardamage.config import Params
from cardamage.errors import CardamageError, ServiceError
from cardamage.labelling.connection import StoredConnection, read_connection, write_connection

LABEL_STUDIO_SPEC = "label-studio>=1.23,<1.24"
#: Pins Label Studio 1.23 leaves open and needs: sentry-sdk 3 drops the ``send_default_pii`` option
#: that its settings pass, and the server exits at start. The Makefile's install-ls installs the same.
LABEL_STUDIO_PINS = ("sentry-sdk<3",)
ENV_EXECUTABLE = "CARDAMAGE_LABEL_STUDIO"
ADMIN = "admin@cardamage.local"


def server_env(data_dir: Path, document_root: Path, username: str, password: str, api_key: str) -> dict[str, str]:
    """The environment of ``label-studio start``: data folder, admin, legacy token, local files, local ML backends."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO_")}
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LABEL_STUDIO_USERNAME": username,
        "LABEL_STUDIO_PASSWORD": password,
        "LABEL_STUDIO_USER_TOKEN": api_key,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",  # no call to pypi.org at start
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
        "LABEL_STUDIO_ML_BLOCK_LOCAL_IP": "false",  # the ML backend runs on 127.0.0.1 too
        "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false",  # ... and so does its webhook
    })
    return env


def find_label_studio(venv: Path = Path(".venv-ls")) -> Path | None:
    """The ``label-studio`` executable from ``$CARDAMAGE_LABEL_STUDIO`` or ``venv``, or ``None``."""
    candidate = Path(os.environ.get(ENV_EXECUTABLE) or venv / "bin" / "label-studio")
    return candidate if candidate.is_file() and os.access(candidate, os.X_OK) else None


def install_label_studio(venv: Path, echo: Callable[[str], Any] = print) -> Path:
    """Create ``venv`` and install Label Studio into it (what ``make install-ls`` does); its executable."""
    python = os.environ.get("PYTHON", "python3")
    echo(f"installing {LABEL_STUDIO_SPEC} into {venv} (a few minutes, once)...")
    pip = [str(venv / "bin" / "pip"), "install", "-q", LABEL_STUDIO_SPEC, *LABEL_STUDIO_PINS]
    for command in ([python, "-m", "venv", str(venv)], pip):
        if subprocess.run(command, check=False).returncode != 0:
            raise ServiceError(f"`{' '.join(command)}` failed: install Label Studio yourself (make install-ls) "
                               f"or set ${ENV_EXECUTABLE}")
    found = find_label_studio(venv)
    if found is None:
        raise ServiceError(f"{venv}/bin/label-studio is missing after the install")
    return found


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on ``host:port``."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def start_detached(command: Sequence[str], log_file: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``command`` in its own session (it outlives this command), output appended to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        return subprocess.Popen(list(command), env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def stop_process(pid: int, timeout_s: float = 20.0) -> bool:
    """SIGTERM the process group of ``pid``, SIGKILL after ``timeout_s``; whether it was running."""
    if not pid_alive(pid):
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.2)
    if pid_alive(pid):
        os.killpg(pid, signal.SIGKILL)
    _reap(pid)
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)  # our own child (tests): no zombie left behind
    except ChildProcessError:
        pass


def new_connection(folder: Path, port: int) -> StoredConnection:
    """Fresh credentials and folders under ``folder`` for a server at ``port``."""
    return StoredConnection(url=f"http://127.0.0.1:{port}", username=ADMIN, password=secrets.token_urlsafe(18),
                            api_key=secrets.token_hex(20), data_dir=str(folder / "labelstudio-data"),
                            log_file=str(folder / "labelstudio.log"))


def ensure_server(params: Params, timeout_s: float, install: bool,
                  echo: Callable[[str], Any] = print) -> tuple[StoredConnection, str]:
    """The stored server, running and healthy: ``(connection, "reused" | "started")``."""
    from cardamage.labelling.client import LabelStudioError, wait_until_healthy

    ls = params.labelstudio
    path = Path(ls.connection_file)
    conn = read_connection(path)
    if conn and pid_alive(conn.server_pid):
        wait_until_healthy(conn.url, timeout_s, alive=lambda: pid_alive(conn.server_pid))
        return conn, "reused"
    # a stopped server starts again with its data and login, at the port the params name now
    conn = new_connection(path.parent, ls.server_port) if conn is None else \
        dataclasses.replace(conn, url=f"http://127.0.0.1:{ls.server_port}")
    if port_in_use(ls.server_port):
        raise ServiceError(f"port {ls.server_port} on 127.0.0.1 is taken by another program: stop it or set "
                           "labelstudio.server_port (or use that server: LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY)")
    exe = find_label_studio() or (install_label_studio(Path(".venv-ls"), echo) if install else None)
    if exe is None:
        raise ServiceError(f"Label Studio is not installed: run `make install-ls` or set ${ENV_EXECUTABLE}")
    Path(conn.data_dir).mkdir(parents=True, exist_ok=True)
    root = Path(ls.local_files_root or os.environ.get("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT") or Path.cwd())
    env = server_env(Path(conn.data_dir).resolve(), root.resolve(), conn.username, conn.password, conn.api_key)
    conn.server_pid = start_detached([str(exe), "start", "--no-browser", "--host", "127.0.0.1", "--port",
                                      str(ls.server_port)], Path(conn.log_file), env).pid
    write_connection(path, conn)  # before waiting: `down` can stop a start that hangs
    echo(f"starting Label Studio at {conn.url} (the first start migrates its database: about a minute)...")
    try:
        wait_until_healthy(conn.url, timeout_s, alive=lambda: pid_alive(conn.server_pid))
    except LabelStudioError as exc:
        stop_process(conn.server_pid)
        raise ServiceError(f"{exc}; its log: {conn.log_file}") from None
    return conn, "started"


def backend_command(model_path: str, port: int, params_args: tuple[str | None, Sequence[str]]) -> list[str]:
    """``cardamage labelstudio backend`` with this run's ``--params`` and ``--set`` options."""
    exe = Path(sys.executable).with_name("cardamage")
    command = [str(exe)] if exe.is_file() else [sys.executable, "-m", "cardamage.cli"]
    params_file, overrides = params_args
    extra = (["--params", str(Path(params_file).resolve())] if params_file else []) + \
        [a for o in overrides for a in ("--set", o)]
    return command + ["labelstudio", "backend", "--port", str(port), "--model", model_path, *extra]


def ensure_backend(params: Params, conn: StoredConnection, params_args: tuple[str | None, Sequence[str]],
                   timeout_s: float) -> str | None:
    """Start the ML backend when a model exists and it is not running; its URL (``None``: no model)."""
    from cardamage.labelling.client import wait_until_healthy
    from cardamage.service.ml_backend import backend_model_path

    model = backend_model_path(params)
    if not Path(model).is_file():
        return None
    bp = params.labelstudio.backend
    url = f"http://127.0.0.1:{bp.port}"
    if not pid_alive(conn.backend_pid):
        if port_in_use(bp.port):
            raise ServiceError(f"port {bp.port} on 127.0.0.1 is taken: set labelstudio.backend.port")
        conn.backend_log = conn.backend_log or str(Path(conn.log_file).with_name("backend.log"))
        conn.backend_pid = start_detached(backend_command(str(Path(model).resolve()), bp.port, params_args),
                                          Path(conn.backend_log)).pid
        conn.backend_url = url
        write_connection(params.labelstudio.connection_file, conn)
    try:
        wait_until_healthy(url, timeout_s, alive=lambda: pid_alive(conn.backend_pid))
    except CardamageError as exc:
        raise ServiceError(f"the ML backend did not start: {exc}; its log: {conn.backend_log}") from None
    return url


def labelstudio_up(params: Params, params_args: tuple[str | None, Sequence[str]] = (None, ()), install: bool = True,
                   backend: bool = True, timeout_s: float = 600.0, echo: Callable[[str], Any] = print) -> str:
    """Start (or reuse) the server and the backend, create the project, connect them; the summary to print."""
    from cardamage.labelling.client import connect
    from cardamage.labelling.label_config import generate_label_config

    ls = params.labelstudio
    conn, what = ensure_server(params, timeout_s, install, echo)
    client = connect(conn.url, conn.api_key, timeout_s=ls.timeout_s, max_retries=ls.max_retries,
                     deadline_s=ls.deadline_s)
    project_id, _ = client.ensure_project(ls.project_title, generate_label_config(params.data.classes))
    lines = [f"Label Studio {what} at {conn.url}/projects/{project_id} (project {ls.project_title!r})",
             f"  log in as {conn.username}; the password and the API token are in {ls.connection_file} "
             "(readable only by you); every `cardamage labelstudio` / push / pull command uses them"]
    backend_url = ensure_backend(params, conn, params_args, timeout_s) if backend else None
    if backend_url:
        from cardamage.service.ml_backend import backend_auth

        client.connect_ml_backend(project_id, backend_url, basic_auth=backend_auth(params))
        lines.append(f"  ML backend at {backend_url} connected: Data Manager > select tasks > Actions > "
                     "Retrieve Predictions, then sort by prediction score")
    elif backend:
        lines.append("  no model yet: run `dvc repro`, then `cardamage labelstudio up` again for the ML backend")
    lines.append("  stop it with `cardamage labelstudio down`")
    return "\n".join(lines)


def labelstudio_down(params: Params) -> str:
    """Stop the server and the backend ``up`` started; what was done, in one line."""
    path = Path(params.labelstudio.connection_file)
    conn = read_connection(path)
    if conn is None:
        return f"nothing to stop: no {path} (`cardamage labelstudio up` writes it)"
    stopped = [name for name, pid in (("ML backend", conn.backend_pid), ("Label Studio", conn.server_pid))
               if stop_process(pid)]
    conn.server_pid = conn.backend_pid = 0
    write_connection(path, conn)
    return (f"stopped {' and '.join(stopped)}" if stopped else "nothing was running") + \
        f"; data and login kept in {conn.data_dir} and {path} (`cardamage labelstudio up` starts it again)"
