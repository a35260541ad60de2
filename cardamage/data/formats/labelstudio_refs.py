"""Label Studio image references (task ``data`` values) back to file names under the dataset root."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from cardamage.data.annotations import is_file, safe_relative_path

_UPLOAD_PREFIX = re.compile(r"^[0-9a-fA-F]{8}-")


def _under_root(d: str, root: Path | None) -> str:
    """A local-files ``d`` value as a path relative to ``root``: its longest tail that exists there."""
    parts = [p for p in d.replace("\\", "/").split("/") if p]
    if root is not None:
        for i in range(len(parts)):
            if is_file(root / "/".join(parts[i:])):
                return "/".join(parts[i:])
    absolute = d.startswith(("/", "\\")) or (len(d) > 1 and d[1] == ":")
    return parts[-1] if absolute and parts else "/".join(parts)


def image_name_from_url(url: str, root: str | Path | None = None, source: str = "Label Studio file") -> str:
    """Map a task's image reference back to a file name relative to ``root``.

    ``/data/local-files/?d=a/b/17.jpg`` -> the longest tail of ``a/b/17.jpg`` found under ``root``
    (else ``a/b/17.jpg``); ``/data/upload/3/1a2b3c4d-17.jpg`` -> ``17.jpg`` (upload prefix removed);
    other URLs -> their last path part; plain relative names are kept.
    """
    parsed = urlparse(url)
    if "local-files" in parsed.path:
        name = _under_root(parse_qs(parsed.query).get("d", [""])[0], Path(root) if root is not None else None)
    elif parsed.scheme or url.startswith("/"):
        name = unquote(PurePosixPath(parsed.path).name)
        if "/data/upload/" in parsed.path:
            name = _UPLOAD_PREFIX.sub("", name)
    else:
        name = url
    return safe_relative_path(name, source)


def image_url_of(data: dict[str, Any], data_key: str | None) -> str | None:
    if data_key:
        value = data.get(data_key)
        return value if isinstance(value, str) else None
    if isinstance(data.get("image"), str):
        return data["image"]
    return next((v for v in data.values() if isinstance(v, str) and v), None)
