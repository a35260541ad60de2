"""Optional Ray engine for ``cardamage score --engine ray`` (``pip install -e .[ray]``).

The pool is a Ray Dataset of photo paths; ``map_batches`` runs a class-based UDF, so each actor
loads the model once and scores batches of ``score.batch_size`` photos with the same code as the
local engine (:func:`cardamage.active.scoring.iter_batches`, ``score_batch``, the model's embeddings).
The driver puts the rows back in pool order and writes the same Parquet schema, so the table
equals the local engine's up to float rounding (and MC-dropout noise when ``score.mc_samples > 0``).

Cluster: ``ray.init()`` connects to the cluster named by ``RAY_ADDRESS`` (or ``--ray-address``);
without one a local Ray instance is started with the machine's CPUs. Photos must be readable by the
workers at the same paths (shared storage), and the workers need this package installed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cardamage.config import Params, ScoreParams
from cardamage.active.pool import PoolPhoto

log = logging.getLogger(__name__)


class PhotoScorer:
    """Ray ``map_batches`` UDF: one model per actor; ``{"i", "path"}`` batches in, score columns out."""

    def __init__(self, model_path: str, score: dict[str, Any]) -> None:
        from cardamage.active.scoring import load_scorer

        self.params = ScoreParams(**score)
        self.scorer = load_scorer(model_path, self.params.batch_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Score one batch; unreadable photos come back with ``ok=False`` and the reason in ``error``."""
        from cardamage.active.scoring import iter_batches, score_batch

        photos = [PoolPhoto(Path(p), str(i), "", "") for i, p in zip(batch["i"], batch["path"], strict=True)]
        unreadable: dict[str, str] = {}
        rows: dict[int, dict[str, Any]] = {}
        p, mc = self.params, self.params.mc_samples if self.scorer.sample is not None else 0
        for chunk, images, valid in iter_batches(photos, self.scorer.input_size, self.scorer.resize,
                                                 p.batch_size, unreadable):
            probs, emb = self.scorer.predict(images)
            samples = self.scorer.sample(images, mc) if mc > 0 else None
            cols = score_batch(probs, valid, p, samples)
            for k, photo in enumerate(chunk):
                rows[int(photo.name)] = {**{c: v[k] for c, v in cols.items()}, "embedding": np.asarray(emb[k])}
        return _columns(batch["i"], rows, unreadable)


def _columns(indices: Sequence[Any], rows: dict[int, dict[str, Any]], unreadable: dict[str, str]) -> dict:
    """Column arrays for a batch (rows of unreadable photos filled with zeros and ``ok=False``)."""
    names = sorted({c for r in rows.values() for c in r if c != "embedding"})
    dim = next((len(r["embedding"]) for r in rows.values()), 1)
    out: dict[str, Any] = {"i": np.asarray(indices, np.int64),
                           "ok": np.array([int(i) in rows for i in indices]),
                           "error": np.array([unreadable.get(str(i), "") for i in indices], dtype=object)}
    for c in names:
        out[c] = np.array([rows[int(i)][c] if int(i) in rows else 0 for i in indices])
    out["embedding"] = np.stack([rows[int(i)]["embedding"] if int(i) in rows else np.zeros(dim, np.float32)
                                 for i in indices]).astype(np.float32)
    return out


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """``ray.init`` once: ``address`` / ``RAY_ADDRESS`` for a cluster, else a local instance."""
    import ray

    if ray.is_initialized():
        return
    env = {"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2"}}
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, runtime_env=env, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=env, log_to_driver=False)


def score_photos_ray(photos: Sequence[PoolPhoto], model_path: str | os.PathLike, params: ScoreParams,
                     out: str | os.PathLike, model_version: str, actors: int = 1,
                     unreadable: dict[str, str] | None = None) -> int:
    """Score ``photos`` on Ray and write ``out`` like :func:`cardamage.active.scoring.score_photos`.

    Returns:
        Rows written (unreadable photos are left out and added to ``unreadable``).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from cardamage.fileio import atomic_path
    from cardamage.active.scoring import _batch_table, _schema

    if actors < 1:
        raise ValueError(f"--actors: expected at least 1, got {actors}")
    items = [{"i": i, "path": str(Path(p.path).resolve())} for i, p in enumerate(photos)]
    ds = ray.data.from_items(items).map_batches(
        PhotoScorer, fn_constructor_kwargs={"model_path": str(Path(model_path).resolve()),
                                            "score": dataclasses.asdict(params)},
        batch_size=params.batch_size, concurrency=actors, num_cpus=1, batch_format="numpy")
    rows = sorted(ds.take_all(), key=lambda r: int(r["i"]))
    good = [r for r in rows if r["ok"]]
    for r in rows:
        if not r["ok"] and unreadable is not None:
            unreadable[photos[int(r["i"])].name] = str(r["error"])
    mc = "bald" in (good[0] if good else {})
    emb = np.stack([np.asarray(r["embedding"], np.float32) for r in good]) if good else np.zeros((0, 1), np.float32)
    schema = _schema(int(emb.shape[1]), mc)
    cols = {c: np.asarray([r[c] for r in good]) for c in ("entropy", "margin", "least_confidence", "damaged_share",
                                                         "instance_count") + (("bald",) if mc else ())}
    table = _batch_table([photos[int(r["i"])] for r in good], cols, emb, params, model_version, schema)
    with atomic_path(out, suffix=".parquet") as tmp:
        pq.write_table(table if good else pa.Table.from_pylist([], schema=schema), tmp)
    log.info("wrote %s: %d photo(s) scored on Ray (%d actor(s))", out, len(good), actors)
    return len(good)


def run_score_ray(params: Params, source: str | None = None, model_path: str | None = None,
                  out: str | None = None, force: bool = False, actors: int = 1, address: str | None = None):
    """``cardamage score --engine ray``: the local command's pool, freshness and merge, scored on Ray.

    Returns:
        ``(pool, scores)`` like :func:`cardamage.active.scoring.run_score`.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from cardamage.fileio import atomic_path
    from cardamage.model.network import read_model_info
    from cardamage.active.pool import build_pool, check_not_empty
    from cardamage.active.scoring import read_scores, stale_photos

    model_path = model_path or params.score.model_path
    out_path = Path(out or params.score.out)
    pool = build_pool(source or params.data.pool, params.data, params.labelstudio.ledger, params.score.hash_cache)
    check_not_empty(pool)
    version = read_model_info(model_path).model_version
    old = read_scores(out_path)
    todo = list(pool.photos) if force else stale_photos(old, pool.photos, version, params.score)
    if todo:
        connect(address)
        new_path = out_path.with_name(f".{out_path.stem}.ray.parquet")
        try:
            score_photos_ray(todo, model_path, params.score, new_path, version, actors, pool.unreadable)
            new = pq.read_table(new_path)
        finally:
            new_path.unlink(missing_ok=True)
        tables = [new]
        wanted = pa.array([p.sha256 for p in pool.photos], pa.string())
        if len(old) and len(todo) < len(pool.photos) and out_path.is_file():
            kept = pq.read_table(out_path)
            kept = kept.filter(pc.and_(pc.is_in(kept["id"], value_set=wanted),
                                       pc.invert(pc.is_in(kept["id"], value_set=new["id"]))))
            if kept.num_rows and kept.schema.equals(new.schema):
                tables.insert(0, kept)
        with atomic_path(out_path, suffix=".parquet") as tmp:
            pq.write_table(pa.concat_tables(tables), tmp)
    scores = read_scores(out_path)
    ids = {p.sha256 for p in pool.photos}
    return pool, scores[scores["id"].isin(ids)].reset_index(drop=True)
