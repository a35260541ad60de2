"""Start and stop a real Label Studio server on 127.0.0.1 (tests and benchmarks).

The ``label-studio`` executable comes from ``$CARDAMAGE_LABEL_STUDIO`` or ``<repo>/.venv-ls/bin/
label-studio`` (its own virtual environment: its pins differ from TensorFlow's). Each server gets
a fresh data folder, a known admin with a 40-character legacy token (enabled with
``LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true``), and local-files serving from ``document_root``, and ML backends and
webhooks allowed on local addresses (``ML_BLOCK_LOCAL_IP``, ``SSRF_PROTECTION_ENABLED`` off: 1.23 blocks them).
A fresh data folder answers ``/health`` after about 35 s (database migrations).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV_EXECUTABLE = "CARDAMAGE_LABEL_STUDIO"
#: Seconds to wait for /health: about 35 s on an idle machine, over 120 s on a busy 2-core one.
ENV_START_TIMEOUT = "CARDAMAGE_LABEL_STUDIO_START_TIMEOUT"


@dataclass
class LabelStudioServer:
    """A running server: ``url``, the admin's legacy ``api_key``, folders, and the process."""

    url: str
    api_key: str
    username: str
    data_dir: Path
    document_root: Path
    log_file: Path
    process: subprocess.Popen
    start_seconds: float

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop the server's process group (only the processes this helper started)."""
        from cardamage.labelling.server import stop_process

        if self.process.poll() is None:
            stop_process(self.process.pid, timeout_s)  # SIGTERM the group, SIGKILL after timeout_s
        self.process.poll()

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's output (for failure messages)."""
        text = self.log_file.read_text(encoding="utf-8", errors="replace") if self.log_file.is_file() else ""
        return "\n".join(text.splitlines()[-lines:])


def find_executable() -> str | None:
    """The ``label-studio`` executable, or ``None`` when neither the env variable nor .venv-ls has one."""
    candidate = os.environ.get(ENV_EXECUTABLE) or str(REPO / ".venv-ls" / "bin" / "label-studio")
    return candidate if Path(candidate).is_file() and os.access(candidate, os.X_OK) else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(data_dir: Path, document_root: Path, username: str, api_key: str) -> dict[str, str]:
    """Environment for ``label-studio start``: the one ``cardamage labelstudio up`` uses, a random password."""
    from cardamage.labelling.server import server_env as package_env

    return package_env(data_dir, document_root, username, secrets.token_urlsafe(16), api_key)


def start_server(document_root: str | os.PathLike, executable: str | None = None,
                 data_dir: str | os.PathLike | None = None, timeout_s: float | None = None) -> LabelStudioServer:
    """Start ``label-studio start --no-browser --host 127.0.0.1 --port <free>`` and wait for /health.

    ``timeout_s`` defaults to ``$CARDAMAGE_LABEL_STUDIO_START_TIMEOUT`` or 300 s.

    Raises:
        FileNotFoundError: no executable; RuntimeError: the server did not become healthy (log tail included).
    """
    from cardamage.labelling.client import LabelStudioError, wait_until_healthy
    from cardamage.labelling.server import start_detached

    exe = executable or find_executable()
    if exe is None:
        raise FileNotFoundError(f"no label-studio executable (set {ENV_EXECUTABLE} or create .venv-ls)")
    data = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="ls-data-"))
    root = Path(document_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    port, api_key = free_port(), secrets.token_hex(20)
    log_file = data / "server.log"
    start = time.monotonic()
    process = start_detached([exe, "start", "--no-browser", "--host", "127.0.0.1", "--port", str(port)], log_file,
                             server_env(data, root, "admin@example.com", api_key))
    server = LabelStudioServer(f"http://127.0.0.1:{port}", api_key, "admin@example.com", data, root, log_file,
                               process, 0.0)
    try:
        limit = timeout_s if timeout_s is not None else float(os.environ.get(ENV_START_TIMEOUT, "300"))
        wait_until_healthy(server.url, limit, alive=lambda: process.poll() is None)
    except LabelStudioError as exc:
        server.stop()
        raise RuntimeError(f"{exc}\n--- server log ---\n{server.log_tail()}") from None
    server.start_seconds = time.monotonic() - start
    return server
