"""The scoring pipeline: ``cardamage score`` writes one row per pool photo to ``reports/scores.parquet``.

One pipeline, pluggable engines (:mod:`cardamage.active.engines`): an engine only maps a batch of
pool photos to score columns (:class:`ScoredBatch`); this module owns everything else once: the
freshness check (:func:`stale_photos`), the Parquet schema (:func:`schema`, read from the strategy
registry), writing beside the target and renaming (:func:`write_scores`), and merging fresh rows
with new ones (:func:`ensure_scores`).

Photos are decoded and scored one batch at a time by :mod:`cardamage.active.scorer` (the
:class:`~cardamage.active.scorer.Scorer`, :func:`~cardamage.active.scorer.iter_batches`,
:func:`~cardamage.active.scorer.score_batch`).

Columns: ``id`` (sha256), ``path``, one or more per registered strategy
(:func:`cardamage.active.strategies.score_columns`: ``entropy``, ``margin``, ``least_confidence``
with the configured reduction, ``bald`` when ``score.mc_samples > 0``, ``random``, ...),
``damaged_share`` (share of photo pixels predicted as damage), ``instance_count`` (connected
damage regions of at least ``score.min_instance_px`` input pixels), ``embedding`` (pooled backbone
features, list of float32), ``phash``, ``model_version``, ``reduction``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import pandas as pd

from cardamage.active import scores_store
from cardamage.active.balance import CLASS_SHARES
from cardamage.active.pool import Pool, PoolPhoto, check_not_empty, pool_for
from cardamage.active.scorer import Scorer, iter_batches, reduction_tag
from cardamage.active.strategies import CELL_DTYPE, score_columns
from cardamage.config import Params, ScoreParams
from cardamage.fileio import atomic_path

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- the pool

#: Columns every scores table has besides the strategies' score columns.
FIXED_COLUMNS = ("id", "path", "damaged_share", "instance_count", CLASS_SHARES, "embedding", "phash",
                 "model_version", "reduction")


class ScoredBatch(NamedTuple):
    """What an engine yields: ``photos`` (B), ``columns`` ``{name: [B]}`` from
    :func:`~cardamage.active.scorer.score_batch`, ``embeddings`` ``float32 [B, D]``."""

    photos: list[PoolPhoto]
    columns: dict[str, np.ndarray]
    embeddings: np.ndarray


class Engine(Protocol):
    """Maps pool photos to scored batches; unreadable photos go to ``unreadable`` (name -> reason)."""

    mc_samples: int

    def map(self, photos: Sequence[PoolPhoto], unreadable: dict[str, str]) -> Iterator[ScoredBatch]: ...


def schema(dim: int, mc_samples: bool):
    """The Arrow schema of a scores table with ``dim``-dimensional embeddings."""
    import pyarrow as pa

    fields = [("id", pa.string()), ("path", pa.string())]
    fields += [(c, pa.list_(pa.float32()) if t == CELL_DTYPE else pa.from_numpy_dtype(np.dtype(t)))
               for c, t in score_columns(mc_samples).items()]
    fields += [("damaged_share", pa.float32()), ("instance_count", pa.int32()), (CLASS_SHARES, pa.list_(pa.float32())),
               ("embedding", pa.list_(pa.float32(), dim)), ("phash", pa.string()), ("model_version", pa.string()),
               ("reduction", pa.string())]
    return pa.schema(fields)


def batch_table(batch: ScoredBatch, params: ScoreParams, version: str, table_schema):
    """One scored batch as an Arrow table of ``table_schema``."""
    import pyarrow as pa

    emb = np.asarray(batch.embeddings, np.float32)
    columns = {c: list(np.asarray(v, np.float32)) if np.ndim(v) == 2 else v for c, v in batch.columns.items()}
    data = {"id": [p.sha256 for p in batch.photos], "path": [p.name for p in batch.photos], **columns,
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), emb.shape[1]),
            "phash": [p.phash for p in batch.photos], "model_version": [version] * len(batch.photos),
            "reduction": [reduction_tag(params)] * len(batch.photos)}
    return pa.table({name: data[name] for name in table_schema.names}, schema=table_schema)


def write_scores(engine: Engine, photos: Sequence[PoolPhoto], params: ScoreParams, out: str | os.PathLike,
                 version: str, unreadable: dict[str, str] | None = None, progress: bool = True) -> int:
    """Score ``photos`` with ``engine`` batch by batch into the Parquet file ``out``, atomically.

    Returns:
        The number of rows written (unreadable photos are left out and added to ``unreadable``).
    """
    import pyarrow.parquet as pq
    from tqdm import tqdm

    unreadable = {} if unreadable is None else unreadable
    writer = table_schema = None
    rows = 0
    bar = tqdm(total=len(photos), unit="photo", desc="scoring", disable=not progress)
    with atomic_path(out, suffix=".parquet") as tmp:
        try:
            for batch in engine.map(photos, unreadable):
                if writer is None:
                    table_schema = schema(int(batch.embeddings.shape[1]), engine.mc_samples > 0)
                    writer = pq.ParquetWriter(tmp, table_schema)
                writer.write_table(batch_table(batch, params, version, table_schema))
                rows += len(batch.photos)
                bar.update(len(batch.photos))
            if writer is None:  # nothing readable: still leave a valid, empty file
                writer = pq.ParquetWriter(tmp, schema(1, engine.mc_samples > 0))
        finally:
            if writer is not None:
                writer.close()
            bar.close()
    log.debug("wrote %s: %d photo(s) scored", out, rows)
    return rows


def score_photos(photos: Sequence[PoolPhoto], scorer: Scorer, params: ScoreParams, out: str | os.PathLike,
                 unreadable: dict[str, str] | None = None, progress: bool = True) -> int:
    """Score ``photos`` with a model in this process (the local engine) and write ``out``; returns rows."""
    from cardamage.active.engines.local import LocalEngine

    return write_scores(LocalEngine(scorer, params), photos, params, out, scorer.model_version, unreadable, progress)


def read_scores(path: str | os.PathLike) -> pd.DataFrame:
    """The scores table (empty frame when the file is missing).

    Raises:
        BadInputError: the file is not a readable scores table (named, with the way out).
    """
    table = scores_store.read_table(path)
    return _empty_scores() if table is None else table.to_pandas()


def _empty_scores() -> pd.DataFrame:
    return pd.DataFrame(columns=["id", "path", "model_version", "reduction"])


def stale_photos(scores: pd.DataFrame, photos: Sequence[PoolPhoto], model_version: str,
                 params: ScoreParams) -> list[PoolPhoto]:
    """Pool photos without a fresh row (other model version, reduction, score columns, region grid, or none).

    The score columns are those the strategy registry expects now (``bald`` only with
    ``score.mc_samples > 0``; a newly registered strategy's columns): any other set rescores all.
    """
    if not len(scores):
        return list(photos)
    fresh = scores[(scores["model_version"] == model_version) & (scores["reduction"] == reduction_tag(params))]
    expected = score_columns(params.mc_samples > 0)
    if set(scores.columns) != set(FIXED_COLUMNS) | set(expected):
        fresh = fresh.iloc[0:0]
    cells = next((c for c, t in expected.items() if t == CELL_DTYPE), None)
    if cells is not None and len(fresh):  # another score.region_grid: rescore
        fresh = fresh[[isinstance(v, (list, np.ndarray)) and len(v) == params.region_grid ** 2
                       for v in fresh[cells]]]
    have = set(fresh["id"])
    return [p for p in photos if p.sha256 not in have]


EngineFactory = Callable[[], Engine | Scorer]


def ensure_scores(photos: Sequence[PoolPhoto], path: str | os.PathLike, params: ScoreParams,
                  engine_factory: EngineFactory, model_version: str,
                  unreadable: dict[str, str] | None = None, progress: bool = True,
                  force: bool = False) -> pd.DataFrame:
    """The scores of ``photos``, scoring first those that are missing or stale (all with ``force``).

    Fresh rows of photos still in the pool are kept, new rows appended, rows of photos that left
    the pool dropped. Each scored batch is committed as it is finished
    (:mod:`cardamage.active.scores_store`), so a killed run resumes after its last batch; the
    table is rewritten atomically once at the end, only when something changed.
    ``engine_factory`` is called only when something needs scoring; it returns an engine, or a
    :class:`Scorer` that is then run by the local engine.

    Returns:
        One row per readable photo of ``photos``.

    Raises:
        BadInputError: ``path`` exists but is not a readable table (``force`` replaces it).
    """
    path = Path(path)
    scores_store.clean_leftovers(path)
    if force:
        scores_store.discard_parts(path)
    old = scores_store.read_table(path, force=force)
    wanted = [p.sha256 for p in photos]
    current = None if force else scores_store.latest_rows([old, scores_store.read_parts(path)], wanted)
    known = current.to_pandas() if current is not None else _empty_scores()
    todo = stale_photos(known, photos, model_version, params)
    if todo:
        log.info("scoring %d new or stale photo(s) of %d", len(todo), len(photos))
        engine = engine_factory()
        if isinstance(engine, Scorer):
            from cardamage.active.engines.local import LocalEngine

            engine = LocalEngine(engine, params)
        _score_into_parts(engine, todo, params, path, model_version, unreadable, progress)
    if todo or scores_store.parts_dir(path).is_dir():
        merged = scores_store.latest_rows([None if force else old, scores_store.read_parts(path)], wanted)
        if merged is None:  # nothing readable: still leave a valid, empty table
            merged = schema(1, params.mc_samples > 0).empty_table()
        scores_store.commit(path, merged)
    scores = read_scores(path)
    return scores[scores["id"].isin(set(wanted))].reset_index(drop=True)


def _score_into_parts(engine: Engine, photos: Sequence[PoolPhoto], params: ScoreParams, path: Path,
                      version: str, unreadable: dict[str, str] | None, progress: bool) -> int:
    """Score ``photos`` batch by batch, committing each batch as a part file of ``path``; returns rows."""
    from tqdm import tqdm

    unreadable = {} if unreadable is None else unreadable
    table_schema = None
    rows = 0
    with tqdm(total=len(photos), unit="photo", desc="scoring", disable=not progress) as bar:
        for batch in engine.map(photos, unreadable):
            if table_schema is None:
                table_schema = schema(int(batch.embeddings.shape[1]), engine.mc_samples > 0)
            scores_store.append_part(path, batch_table(batch, params, version, table_schema))
            rows += len(batch.photos)
            bar.update(len(batch.photos))
    return rows


def labelled_embeddings(files: Sequence[tuple[str, Path]], scorer_factory: Callable[[], Scorer],
                        model_version: str, cache: str | os.PathLike, batch_size: int = 8) -> np.ndarray:
    """Pooled embeddings ``float32 [M, D]`` of the labelled photos, cached in an ``.npz`` per model version.

    Args:
        files: ``(sha256, file)`` of each labelled photo; unreadable ones are skipped.
        cache: ``.npz`` with ``ids``, ``embeddings`` and ``model_version``; only missing ids are computed.
    """
    cache = Path(cache)
    ids: list[str] = []
    embs: list[np.ndarray] = []
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as npz:
            if str(npz["model_version"]) == model_version:
                ids, embs = [str(i) for i in npz["ids"]], list(npz["embeddings"])
    known = set(ids)
    todo = [PoolPhoto(f, str(f), sha, "") for sha, f in files if sha not in known]
    if todo:
        scorer = scorer_factory()
        log.info("computing embeddings of %d labelled photo(s)", len(todo))
        for batch, images, _ in iter_batches(todo, scorer.input_size, scorer.resize, batch_size):
            _, emb = scorer.predict(images)
            ids += [p.sha256 for p in batch]
            embs += list(np.asarray(emb, np.float32))
        with atomic_path(cache, suffix=".npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, ids=np.array(ids, dtype=str), embeddings=np.stack(embs) if embs else np.zeros((0, 0)),
                     model_version=np.array(model_version))
    wanted = {sha for sha, _ in files}
    rows = [e for i, e in zip(ids, embs) if i in wanted]
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)


def checked_model_version(model_path: str | os.PathLike, params: Params) -> str:
    """The version of the model in ``model_path`` once it is known to fit the params (before any scoring).

    Raises:
        ModelMismatchError: the model predicts other classes than ``data.classes`` (a car-part model
            given for the damage model, say), or is not a cardamage model.
    """
    from cardamage.model.io import check_compatible, read_model_info

    info = read_model_info(model_path)
    check_compatible(info, expect_classes=params.data.classes, source=str(model_path))
    if int(info.input_size) != int(params.model.input_size):
        log.warning("%s takes %d px input, params say model.input_size=%d: scoring at the model's own size "
                    "(retrain to use the new size)", model_path, info.input_size, params.model.input_size)
    return info.model_version


def run_score(params: Params, source: str | None = None, model_path: str | None = None, out: str | None = None,
              force: bool = False, progress: bool = True, engine: str = "local",
              **engine_options) -> tuple[Pool, pd.DataFrame]:
    """``cardamage score``: list the pool, drop exclusions, score what is new or stale with ``engine``.

    Args:
        engine: a name from :data:`cardamage.active.engines.ENGINES` (``local``, ``ray``).
        engine_options: passed to the engine (Ray: ``actors``, ``address``).

    Raises:
        CardamageError: empty pool, only unreadable photos, unusable model file, missing engine.
    """
    from cardamage.active.engines import make_engine

    model_path = model_path or params.score.model_path
    version = checked_model_version(model_path, params)
    pool = pool_for(params, source)
    check_not_empty(pool)
    scores = ensure_scores(pool.photos, out or params.score.out, params.score,
                           lambda: make_engine(engine, model_path, params.score, **engine_options), version,
                           pool.unreadable, progress, force)
    if not len(scores):
        check_not_empty(Pool(pool.source, unreadable=pool.unreadable))
    return pool, scores
