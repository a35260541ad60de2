"""Streaming scorer: ``cardamage score`` writes one row per pool photo to ``reports/scores.parquet``.

Photos are decoded and letterboxed one batch at a time (a generator; memory stays flat however
large the pool) with the model's own preprocessing (:func:`cardamage.model.inputs.prepare_image`), and
rows go to a Parquet file as each batch finishes (written beside the target, renamed at the end).

Columns: ``id`` (sha256), ``path``, ``entropy``, ``margin``, ``least_confidence`` (with the
configured reduction), ``bald`` (when ``score.mc_samples > 0``), ``random``, ``damaged_share``
(share of photo pixels predicted as damage), ``instance_count`` (connected damage regions of at
least ``score.min_instance_px`` input pixels), ``embedding`` (pooled backbone features, list of
float32), ``phash``, ``model_version``, ``reduction``.

The loop only sees a :class:`Scorer` (a ``predict`` callable and an optional MC ``sample``
callable), never the network: :func:`load_scorer` wraps a saved model.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np
import pandas as pd

from cardamage.active.acquisition import image_scores, random_scores
from cardamage.config import Params, ScoreParams
from cardamage.fileio import atomic_path
from cardamage.data.images import ImageLoadError, load_image
from cardamage.active.pool import Pool, PoolPhoto, build_pool, check_not_empty

log = logging.getLogger(__name__)

#: ``images float32 [B, S, S, 3] -> (probs [B, S, S, C], embeddings [B, D])``.
PredictFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
#: ``(images [B, S, S, 3], T) -> MC-dropout probs [T, B, S, S, C]``.
SampleFn = Callable[[np.ndarray, int], np.ndarray]


@dataclass
class Scorer:
    """What scoring needs from a model: callables, input geometry and the model version."""

    predict: PredictFn
    input_size: int
    resize: str = "letterbox"
    model_version: str = ""
    sample: SampleFn | None = None


def load_scorer(model_path: str | os.PathLike, batch_size: int = 8) -> Scorer:
    """Wrap a model saved by ``cardamage train`` (imports TensorFlow and KerasCV)."""
    from cardamage.model.network import load_model, mc_predict, predict_with_embeddings

    model, info = load_model(model_path)
    return Scorer(predict=lambda x: predict_with_embeddings(model, x, batch_size),
                  sample=lambda x, t: mc_predict(model, x, t, batch_size),
                  input_size=int(info.input_size), resize=info.resize, model_version=info.model_version)


def reduction_tag(params: ScoreParams) -> str:
    """How image scores were reduced (``mean``, ``damage`` or ``topk10``): part of score freshness."""
    return f"topk{params.topk_percent:g}" if params.reduction == "topk" else params.reduction


# ----------------------------------------------------------------------------- batches

def iter_batches(photos: Sequence[PoolPhoto], size: int, resize: str = "letterbox", batch_size: int = 8,
                 unreadable: dict[str, str] | None = None) -> Iterator[tuple[list[PoolPhoto], np.ndarray, np.ndarray]]:
    """Yield ``(photos, images float32 [B, S, S, 3], valid bool [B, S, S])`` one batch at a time.

    ``valid`` is ``False`` on letterbox padding. Photos that fail to decode are logged, added to
    ``unreadable`` (name -> reason) and left out.
    """
    from cardamage.model.inputs import prepare_image

    if batch_size < 1:
        raise ValueError(f"score.batch_size: must be >= 1, got {batch_size}")
    kept: list[PoolPhoto] = []
    images, valids = [], []
    for photo in photos:
        try:
            image = load_image(photo.path)
        except ImageLoadError as exc:
            log.warning("skipping unreadable photo %s: %s", photo.name, exc)
            if unreadable is not None:
                unreadable[photo.name] = str(exc)
            continue
        arr, fit = prepare_image(image, size, resize)
        valid = np.zeros((size, size), bool)
        valid[max(fit.oy, 0):fit.oy + fit.new_h, max(fit.ox, 0):fit.ox + fit.new_w] = True
        kept.append(photo)
        images.append(arr)
        valids.append(valid)
        if len(kept) == batch_size:
            yield kept, np.stack(images), np.stack(valids)
            kept, images, valids = [], [], []
    if kept:
        yield kept, np.stack(images), np.stack(valids)


# ----------------------------------------------------------------------------- one batch

def instance_counts(damage: np.ndarray, min_px: int = 16) -> np.ndarray:
    """Connected damage regions (8-connectivity) of >= ``min_px`` pixels: ``int32 [N]`` from ``bool [N, H, W]``."""
    out = np.zeros(len(damage), np.int32)
    for i, mask in enumerate(damage):
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        out[i] = int((stats[1:n, cv2.CC_STAT_AREA] >= min_px).sum())
    return out


def score_batch(probs: np.ndarray, valid: np.ndarray, params: ScoreParams,
                samples: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Acquisition scores and damage summaries of one batch.

    Args:
        probs: ``[B, S, S, C]``; valid: ``bool [B, S, S]``; samples: ``[T, B, S, S, C]`` or ``None``.

    Returns:
        ``{column: [B]}`` for the score columns, ``damaged_share`` and ``instance_count``.
    """
    methods = ["entropy", "margin", "least_confidence"] + (["bald"] if samples is not None else [])
    cols = image_scores(probs, methods, params.reduction, params.topk_percent, valid, samples)
    damage = (np.asarray(probs).argmax(axis=-1) != 0) & valid
    cols["damaged_share"] = (damage.sum(axis=(1, 2)) / np.maximum(valid.sum(axis=(1, 2)), 1)).astype(np.float32)
    cols["instance_count"] = instance_counts(damage, params.min_instance_px)
    return cols


# ----------------------------------------------------------------------------- the pool

def _schema(dim: int, with_bald: bool):
    import pyarrow as pa

    fields = [("id", pa.string()), ("path", pa.string()), ("entropy", pa.float32()), ("margin", pa.float32()),
              ("least_confidence", pa.float32())]
    fields += [("bald", pa.float32())] if with_bald else []
    fields += [("random", pa.float64()), ("damaged_share", pa.float32()), ("instance_count", pa.int32()),
               ("embedding", pa.list_(pa.float32(), dim)), ("phash", pa.string()), ("model_version", pa.string()),
               ("reduction", pa.string())]
    return pa.schema(fields)


def _batch_table(photos: list[PoolPhoto], cols: dict[str, np.ndarray], emb: np.ndarray, params: ScoreParams,
                 version: str, schema):
    import pyarrow as pa

    ids = [p.sha256 for p in photos]
    data = {"id": ids, "path": [p.name for p in photos], **cols,
            "random": random_scores(ids, params.random_seed),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.astype(np.float32).ravel()), emb.shape[1]),
            "phash": [p.phash for p in photos], "model_version": [version] * len(photos),
            "reduction": [reduction_tag(params)] * len(photos)}
    return pa.table({name: data[name] for name in schema.names}, schema=schema)


def score_photos(photos: Sequence[PoolPhoto], scorer: Scorer, params: ScoreParams, out: str | os.PathLike,
                 unreadable: dict[str, str] | None = None, progress: bool = True) -> int:
    """Score ``photos`` batch by batch and write the Parquet file ``out`` atomically.

    Returns:
        The number of rows written (unreadable photos are left out and added to ``unreadable``).
    """
    import pyarrow.parquet as pq
    from tqdm import tqdm

    mc = params.mc_samples if scorer.sample is not None else 0
    writer = None
    rows = 0
    bar = tqdm(total=len(photos), unit="photo", desc="scoring", disable=not progress)
    with atomic_path(out, suffix=".parquet") as tmp:
        try:
            for batch, images, valid in iter_batches(photos, scorer.input_size, scorer.resize,
                                                     params.batch_size, unreadable):
                probs, emb = scorer.predict(images)
                samples = scorer.sample(images, mc) if mc > 0 else None
                cols = score_batch(probs, valid, params, samples)
                if writer is None:
                    schema = _schema(int(emb.shape[1]), mc > 0)
                    writer = pq.ParquetWriter(tmp, schema)
                writer.write_table(_batch_table(batch, cols, np.asarray(emb), params, scorer.model_version, schema))
                rows += len(batch)
                bar.update(len(batch))
            if writer is None:  # nothing readable: still leave a valid, empty file
                schema = _schema(1, mc > 0)
                writer = pq.ParquetWriter(tmp, schema)
        finally:
            if writer is not None:
                writer.close()
            bar.close()
    log.debug("wrote %s: %d photo(s) scored", out, rows)
    return rows


def read_scores(path: str | os.PathLike) -> pd.DataFrame:
    """The scores table (empty frame when the file is missing)."""
    p = Path(path)
    if not p.is_file():
        return pd.DataFrame(columns=["id", "path", "model_version", "reduction"])
    return pd.read_parquet(p)


def stale_photos(scores: pd.DataFrame, photos: Sequence[PoolPhoto], model_version: str,
                 params: ScoreParams) -> list[PoolPhoto]:
    """Pool photos without a fresh row (other model version, reduction, MC setting, or none at all)."""
    if not len(scores):
        return list(photos)
    fresh = scores[(scores["model_version"] == model_version) & (scores["reduction"] == reduction_tag(params))]
    if (params.mc_samples > 0) != ("bald" in scores.columns):
        fresh = fresh.iloc[0:0]
    have = set(fresh["id"])
    return [p for p in photos if p.sha256 not in have]


def ensure_scores(photos: Sequence[PoolPhoto], path: str | os.PathLike, params: ScoreParams,
                  scorer_factory: Callable[[], Scorer], model_version: str,
                  unreadable: dict[str, str] | None = None, progress: bool = True,
                  force: bool = False) -> pd.DataFrame:
    """The scores of ``photos``, scoring first those that are missing or stale (all with ``force``).

    Fresh rows of photos still in the pool are kept, new rows appended, rows of photos that left
    the pool dropped; the file is rewritten atomically only when something changed.

    Returns:
        One row per readable photo of ``photos``.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = Path(path)
    scores = read_scores(path)
    todo = list(photos) if force else stale_photos(scores, photos, model_version, params)
    wanted = pa.array([p.sha256 for p in photos], pa.string())
    if todo:
        log.info("scoring %d new or stale photo(s) of %d", len(todo), len(photos))
        new_path = path.with_name(f".{path.stem}.new.parquet")
        try:
            score_photos(todo, scorer_factory(), params, new_path, unreadable, progress)
            new = pq.read_table(new_path)
        finally:
            new_path.unlink(missing_ok=True)
        tables = [new]
        if len(scores) and len(todo) < len(photos):
            old = pq.read_table(path)
            keep = pc.and_(pc.is_in(old["id"], value_set=wanted),
                           pc.invert(pc.is_in(old["id"], value_set=new["id"])))
            old = old.filter(keep)
            if old.num_rows and old.schema.equals(new.schema):
                tables.insert(0, old)
        with atomic_path(path, suffix=".parquet") as tmp:
            pq.write_table(pa.concat_tables(tables), tmp)
        scores = read_scores(path)
    return scores[scores["id"].isin(set(wanted.to_pylist()))].reset_index(drop=True)


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
        with atomic_path(cache, suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, ids=np.array(ids, dtype=str), embeddings=np.stack(embs) if embs else np.zeros((0, 0)),
                         model_version=np.array(model_version))
    wanted = {sha for sha, _ in files}
    rows = [e for i, e in zip(ids, embs) if i in wanted]
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)


def run_score(params: Params, source: str | None = None, model_path: str | None = None, out: str | None = None,
              force: bool = False, progress: bool = True) -> tuple[Pool, pd.DataFrame]:
    """``cardamage score``: list the pool, drop exclusions, score what is new or stale.

    Raises:
        ValueError: empty pool, only unreadable photos, unusable model file.
    """
    from cardamage.model.network import read_model_info

    model_path = model_path or params.score.model_path
    pool = build_pool(source or params.data.pool, params.data, params.labelstudio.ledger, params.score.hash_cache)
    check_not_empty(pool)
    version = read_model_info(model_path).model_version
    scores = ensure_scores(pool.photos, out or params.score.out, params.score,
                           lambda: load_scorer(model_path, params.score.batch_size), version,
                           pool.unreadable, progress, force)
    if not len(scores):
        check_not_empty(Pool(pool.source, unreadable=pool.unreadable))
    return pool, scores
