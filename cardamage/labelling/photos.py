"""The photos to push: read from a selection CSV (``cardamage select``) or given as files."""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from cardamage.data.dedup import file_sha256
from cardamage.errors import BadInputError
from cardamage.labelling.files import read_text

log = logging.getLogger(__name__)


@dataclass
class Photo:
    """A photo to push: ``name`` is its path as listed in the selection (POSIX), ``score`` its acquisition score."""

    sha256: str
    path: Path
    name: str
    score: float | None = None
    cluster: int | None = None  #: k-means cluster of its embedding in the pool (Label Studio's ordering)
    #: region units: the cell ``(x, y, w, h)`` in photo pixels (``cardamage select --unit region``); ``None``: the photo
    region: tuple[int, int, int, int] | None = None
    #: extra task data (a region task's ``cardamage_region``)
    extra: dict[str, Any] = field(default_factory=dict)


def read_selection(path: str | os.PathLike) -> list[Photo]:
    """Photos of a selection CSV (columns ``id``, ``path``, ``score``, ...; ``id`` = sha256).

    Paths are taken as written (relative to the current folder), else relative to the CSV's
    folder. A photo whose bytes no longer match ``id`` is pushed under its current sha256.

    Raises:
        BadInputError: not UTF-8, no ``path`` column, a row without a path or with a score that is
            not a number, or listed photos that do not exist (all named, up to 5).
    """
    p = Path(path)
    rows = list(csv.DictReader(io.StringIO(read_text(p, "the selection"), newline="")))
    if rows and "path" not in rows[0]:
        raise BadInputError(f"{p}: a selection needs a 'path' column (got {list(rows[0])})")
    photos, missing = [], []
    for number, row in enumerate(rows, 2):
        if not isinstance(row.get("path"), str) or not row["path"].strip():
            raise BadInputError(f"{p}: row {number}: no path")
        file = _locate(row["path"], p.parent)
        if file is None:
            missing.append(row["path"])
            continue
        photos.append(_photo(file, row, p, number))
    if missing:
        raise BadInputError(f"{p}: {len(missing)} selected photo(s) not found: {', '.join(missing[:5])}")
    return photos


def _locate(name: str, base: Path) -> Path | None:
    for candidate in (Path(name), base / name):
        if candidate.is_file():
            return candidate
    return None


def _photo(file: Path, row: Mapping[str, str], source: Path, number: int) -> Photo:
    sha = file_sha256(file)
    listed = (row.get("id") or "").strip()
    if listed and listed != sha:
        log.warning("%s: %s changed since it was selected (sha256 differs); pushing its current bytes",
                    source, row["path"])
    score = row.get("score")
    try:
        value = float(score) if score not in (None, "") else None
    except (TypeError, ValueError):
        raise BadInputError(f"{source}: row {number}: score {score!r} is not a number") from None
    cluster = row.get("cluster")
    try:
        group = int(cluster) if cluster not in (None, "") else None
    except (TypeError, ValueError):
        raise BadInputError(f"{source}: row {number}: cluster {cluster!r} is not an integer") from None
    from cardamage.labelling.regions import parse_region

    region = parse_region(row["region"], f"{source}: row {number}") if (row.get("region") or "").strip() else None
    return Photo(sha256=sha, path=file, name=PurePosixPath(row["path"].replace("\\", "/")).as_posix(), score=value,
                 cluster=group if group is None or group >= 0 else None, region=region)


def photos_from_paths(paths: Sequence[str | os.PathLike]) -> list[Photo]:
    """Photos for files given directly (no acquisition score)."""
    return [Photo(file_sha256(p), Path(p), Path(p).as_posix()) for p in paths]
