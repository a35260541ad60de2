"""Which prepared data the pipeline stands on: one answer for the report page and the claim service.

:func:`data_version` gathers what identifies the prepared dataset (``prepare.out_dir``), each key
only when it is known:

- ``manifest``: the first 12 hex characters of the sha256 of ``<prepare.out_dir>/manifest.csv``
  (written by ``cardamage prepare``);
- ``source: "dvc.lock"`` with ``stage``, ``path`` and ``md5`` (DVC's hash of the folder) where
  ``dvc.lock`` records the prepared folder as a stage output;
- otherwise ``source: <prepare.summary>`` with its ``sha256`` (12 hex) and ``n_photos`` where the
  prepare summary exists.

The claim service returns that mapping as ``data`` on ``GET /version``; the report page shows
:func:`data_version_text` of it (``manifest <sha12> / dvc <md5_12>``, or ``not prepared yet``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from cardamage.config import Params
from cardamage.data.dedup import file_sha256

#: Hex characters kept of a sha256 or DVC md5 (as in model versions).
SHORT = 12
NOT_PREPARED = "not prepared yet"


def file_digest(path: Path, n: int = SHORT) -> str | None:
    """First ``n`` hex characters of the sha256 of a file, ``None`` if missing."""
    return file_sha256(path)[:n] if path.is_file() else None


def dvc_lock_entry(out_dir: str, lock: Path = Path("dvc.lock")) -> dict[str, Any] | None:
    """``{"stage", "path", "md5"}`` of the output ``out_dir`` in ``dvc.lock`` (any stage); ``None`` when the
    lock is missing or unreadable or does not record that folder."""
    if not lock.is_file():
        return None
    try:
        stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {}) or {}
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    wanted = Path(out_dir)
    for name, stage in stages.items():
        outs = stage.get("outs") if isinstance(stage, dict) else None
        for out in outs if isinstance(outs, list) else []:
            if isinstance(out, dict) and Path(str(out.get("path", ""))) == wanted and out.get("md5"):
                return {"stage": name, "path": out["path"], "md5": str(out["md5"])}
    return None


def short_md5(md5: str) -> str:
    """A DVC md5 shortened to :data:`SHORT` characters, without the ``.dir`` suffix of folders."""
    return md5.removesuffix(".dir")[:SHORT]


def dvc_lock_hash(out_dir: str, lock: Path = Path("dvc.lock")) -> str | None:
    """DVC's hash of ``out_dir`` as recorded in ``dvc.lock`` (shortened), ``None`` if not recorded."""
    entry = dvc_lock_entry(out_dir, lock)
    return short_md5(entry["md5"]) if entry else None


def _n_photos(summary: Path) -> Any:
    try:
        data = json.loads(summary.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("n_photos") if isinstance(data, dict) else None


def data_version(params: Params, lock: Path = Path("dvc.lock")) -> dict[str, Any] | None:
    """What identifies the prepared training data (see the module docstring); ``None`` when nothing does."""
    version: dict[str, Any] = {}
    entry = dvc_lock_entry(params.prepare.out_dir, lock)
    summary = Path(params.prepare.summary)
    if entry:
        version = {"source": "dvc.lock", **entry}
    elif summary.is_file():
        version = {"source": summary.as_posix(), "sha256": file_digest(summary), "n_photos": _n_photos(summary)}
    manifest = file_digest(Path(params.prepare.out_dir) / "manifest.csv")
    if manifest:
        version["manifest"] = manifest
    return version or None


def data_version_text(version: dict[str, Any] | None) -> str:
    """One line for people: ``manifest <sha12>`` (+ `` / dvc <md5_12>``), or ``not prepared yet`` without a
    manifest (the prepared folder is what the model trains on)."""
    if not version or not version.get("manifest"):
        return NOT_PREPARED
    text = f"manifest {version['manifest']}"
    if version.get("source") == "dvc.lock":
        text += f" / dvc {short_md5(version['md5'])}"
    return text
