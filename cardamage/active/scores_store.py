"""The scores table on disk: read it safely, commit scored batches as they go, merge, clean up.

Layout beside the table (``score.out``, default ``reports/scores.parquet``):

* ``scores.parquet``: the table :func:`cardamage.active.scoring.ensure_scores` returns rows of;
* ``.scores.parts/part-<n>.parquet``: one file per scored batch of a run that has not finished
  yet, each written to a temporary file and renamed, so a killed ``cardamage score`` keeps every
  batch it finished and the next run resumes after them (:func:`read_parts`);
* leftovers of killed runs (temporary files of :func:`cardamage.fileio.atomic_path`, the
  ``.scores.new.parquet`` of earlier versions) are removed when the next run starts
  (:func:`clean_leftovers`). One ``score`` run at a time per table.

A table or part that Parquet cannot read is reported by name: the table is an error unless
``--force`` (which rescores the pool and replaces it), a part is deleted with a warning (its
photos are scored again).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from cardamage.errors import BadInputError
from cardamage.fileio import atomic_path

log = logging.getLogger(__name__)

_PART_PREFIX = "part-"


def parts_dir(path: str | os.PathLike) -> Path:
    """The folder of committed batches of an unfinished run (``.<stem>.parts`` beside the table)."""
    p = Path(path)
    return p.with_name(f".{p.stem}.parts")


def clean_leftovers(path: str | os.PathLike) -> list[Path]:
    """Remove temporary files that killed runs left beside ``path`` and in its parts folder.

    Returns:
        The files removed (each is also logged).
    """
    p = Path(path)
    patterns = [(p.parent, f".{p.name}."), (p.parent, f".{p.stem}.new.parquet"),
                (parts_dir(p), f".{_PART_PREFIX}")]
    removed = []
    for folder, prefix in patterns:
        if not folder.is_dir():
            continue
        for leftover in folder.iterdir():
            if leftover.name.startswith(prefix) and leftover.is_file():
                leftover.unlink(missing_ok=True)
                removed.append(leftover)
                log.info("removed %s, left over by an interrupted run", leftover)
    return removed


def read_table(path: str | os.PathLike, force: bool = False):
    """The scores table as an Arrow table, ``None`` when there is none.

    Raises:
        BadInputError: the file exists but is not a readable Parquet table (not with ``force``,
            which warns and returns ``None`` so the pool is rescored and the file replaced).
    """
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.is_file():
        return None
    try:
        table = pq.read_table(p)
        _check_columns(p, table.schema.names)
        return table
    except (OSError, ValueError, BadInputError) as exc:
        if force:
            log.warning("%s: unreadable scores table (%s); rescoring the pool and replacing it", p, exc)
            return None
        raise BadInputError(f"{p}: not a readable scores table ({exc}); `cardamage score --force` "
                            "rescores the pool and replaces it") from None


def _check_columns(path: Path, names: Iterable[str]) -> None:
    missing = {"id", "path", "model_version", "reduction"} - set(names)
    if missing:
        raise BadInputError(f"{path}: not a scores table (missing columns {sorted(missing)})")


def read_parts(path: str | os.PathLike):
    """The batches committed by unfinished runs, as one Arrow table (``None`` when there are none).

    Parts are concatenated in the order they were written; a part that cannot be read, or whose
    schema differs from the newest part's (another embedding size, other score columns), is
    deleted with a warning.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = parts_dir(path)
    if not folder.is_dir():
        return None
    tables = []
    for part in sorted(folder.glob(f"{_PART_PREFIX}*.parquet")):
        try:
            table = pq.read_table(part)
            _check_columns(part, table.schema.names)
            tables.append((part, table))
        except (OSError, ValueError, BadInputError) as exc:
            log.warning("%s: unreadable part of an interrupted run, deleted (%s)", part, exc)
            part.unlink(missing_ok=True)
    if not tables:
        return None
    newest = tables[-1][1].schema
    kept = []
    for part, table in tables:
        if table.schema.equals(newest):
            kept.append(table)
        else:
            log.warning("%s: part of an interrupted run with other columns, deleted", part)
            part.unlink(missing_ok=True)
    return pa.concat_tables(kept)


def append_part(path: str | os.PathLike, table) -> Path:
    """Commit one scored batch (an Arrow table) as the next part file, atomically; returns its path."""
    import pyarrow.parquet as pq

    folder = parts_dir(path)
    folder.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.stem[len(_PART_PREFIX):]) for p in folder.glob(f"{_PART_PREFIX}*.parquet")
               if p.stem[len(_PART_PREFIX):].isdigit()]
    target = folder / f"{_PART_PREFIX}{max(numbers, default=0) + 1:06d}.parquet"
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)
    return target


def latest_rows(tables: Iterable, wanted: Iterable[str]):
    """Concatenate ``tables`` (oldest first, ``None`` skipped) keeping the newest row of each id in ``wanted``.

    Tables whose schema differs from the newest table's are left out (their photos get rescored).
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    present = [t for t in tables if t is not None]
    if not present:
        return None
    newest = present[-1].schema
    table = pa.concat_tables([t for t in present if t.schema.equals(newest)])
    table = table.filter(pc.is_in(table["id"], value_set=pa.array(list(wanted), pa.string())))
    ids = table["id"].to_pylist()
    last = {sha: i for i, sha in enumerate(ids)}
    return table.take(pa.array(np.array(sorted(last.values()), dtype=np.int64)))


def commit(path: str | os.PathLike, table) -> None:
    """Write the merged ``table`` onto ``path`` atomically, then drop the parts folder."""
    import pyarrow.parquet as pq

    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    shutil.rmtree(parts_dir(path), ignore_errors=True)


def discard_parts(path: str | os.PathLike) -> None:
    """Forget the batches of unfinished runs (``score --force`` starts from nothing)."""
    shutil.rmtree(parts_dir(path), ignore_errors=True)
