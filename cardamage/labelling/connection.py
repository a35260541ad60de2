"""The stored Label Studio connection that ``cardamage labelstudio up`` writes and every command reads.

The file (``labelstudio.connection_file``, git-ignored) holds the server's URL, its admin's login
and API token, and the processes ``up`` started. It is written atomically with mode ``0600``
(readable only by its owner) and never printed. A key in the environment wins: with
``LABEL_STUDIO_API_KEY`` set, an existing server (``labelstudio.url`` / ``LABEL_STUDIO_URL``) is
used as before and the file is not read.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from cardamage.errors import BadInputError
from cardamage.fileio import atomic_path


@dataclass
class StoredConnection:
    """What ``up`` started: ``url``, the admin's ``username`` / ``password`` / ``api_key`` (legacy
    token), the server's ``data_dir`` and ``log_file``, and the process ids (``0``: not running)."""

    url: str
    username: str
    password: str
    api_key: str
    data_dir: str
    log_file: str
    server_pid: int = 0
    backend_url: str | None = None
    backend_pid: int = 0
    backend_log: str | None = None


def read_connection(path: str | os.PathLike) -> StoredConnection | None:
    """The stored connection, or ``None`` when the file does not exist.

    Raises:
        BadInputError: the file is not one ``up`` wrote (named; remove it and run ``up`` again).
    """
    p = Path(path)
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        known = {f.name for f in fields(StoredConnection)}
        return StoredConnection(**{k: v for k, v in data.items() if k in known})
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise BadInputError(f"{p}: not a Label Studio connection written by `cardamage labelstudio up` "
                            f"({type(exc).__name__}); remove it and run `cardamage labelstudio up` again") from None


def write_connection(path: str | os.PathLike, conn: StoredConnection) -> Path:
    """Write ``conn`` atomically, readable and writable only by the current user (``0600``)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(p, mode=0o600) as tmp:  # mkstemp's file is 0600 from the start
        tmp.write_text(json.dumps(asdict(conn), indent=2) + "\n", encoding="utf-8")
    return p


def stored_credentials(path: str | os.PathLike) -> tuple[str, str] | None:
    """``(url, api_key)`` of the stored connection when no key is in the environment, else ``None``."""
    if os.environ.get("LABEL_STUDIO_API_KEY", "").strip():
        return None
    conn = read_connection(path)
    return (conn.url, conn.api_key) if conn else None
