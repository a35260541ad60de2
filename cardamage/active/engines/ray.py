"""Optional Ray engine for ``cardamage score --engine ray`` (``pip install -e .[ray]``).

The pool is a Ray Dataset of photo paths; ``map_batches`` runs a class-based UDF, so each actor
loads the model once and scores batches of ``score.batch_size`` photos with the same code as the
local engine (:func:`cardamage.active.scorer.iter_batches`, ``score_batch``, the model's embeddings).
The engine yields the rows back in pool order as :class:`~cardamage.active.scoring.ScoredBatch`;
the scoring pipeline writes them, so the table equals the local engine's up to float rounding
(and MC-dropout noise when ``score.mc_samples > 0``).

Cluster: ``ray.init()`` connects to the cluster named by ``RAY_ADDRESS`` (or ``--ray-address``);
without one a local Ray instance is started with the machine's CPUs. Photos must be readable by the
workers at the same paths (shared storage), and the workers need this package installed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cardamage.active.pool import PoolPhoto
from cardamage.active.scoring import ScoredBatch
from cardamage.config import ScoreParams
from cardamage.errors import BadParameterError, MissingExtraError

log = logging.getLogger(__name__)


class PhotoScorer:
    """Ray ``map_batches`` UDF: one model per actor; ``{"i", "id", "path"}`` batches in, score columns out."""

    def __init__(self, model_path: str, score: dict[str, Any]) -> None:
        from cardamage.active.engines.local import from_model

        self.engine = from_model(model_path, ScoreParams(**score))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Score one batch; unreadable photos come back with ``ok=False`` and the reason in ``error``."""
        photos = [PoolPhoto(Path(p), str(i), str(sha), "")
                  for i, sha, p in zip(batch["i"], batch["id"], batch["path"], strict=True)]
        unreadable: dict[str, str] = {}
        rows: dict[int, dict[str, Any]] = {}
        for scored in self.engine.map(photos, unreadable):
            for k, photo in enumerate(scored.photos):
                rows[int(photo.name)] = {**{c: v[k] for c, v in scored.columns.items()},
                                         "embedding": np.asarray(scored.embeddings[k])}
        return _columns(batch["i"], rows, unreadable)


def _columns(indices: Sequence[Any], rows: dict[int, dict[str, Any]], unreadable: dict[str, str]) -> dict:
    """Column arrays for a batch (rows of unreadable photos filled with zeros and ``ok=False``)."""
    names = sorted({c for r in rows.values() for c in r if c != "embedding"})
    dim = next((len(r["embedding"]) for r in rows.values()), 1)
    out: dict[str, Any] = {"i": np.asarray(indices, np.int64),
                           "ok": np.array([int(i) in rows for i in indices]),
                           "error": np.array([unreadable.get(str(i), "") for i in indices], dtype=object)}
    for c in names:
        blank = np.zeros_like(next(r[c] for r in rows.values() if c in r))
        out[c] = np.array([rows[int(i)][c] if int(i) in rows else blank for i in indices])
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


class RayEngine:
    """Scores on ``actors`` Ray actors, each holding the model once."""

    def __init__(self, model_path: str | os.PathLike, params: ScoreParams, actors: int = 1,
                 address: str | None = None) -> None:
        if actors < 1:
            raise BadParameterError(f"--actors: expected at least 1, got {actors}")
        self.model_path = str(Path(model_path).resolve())
        self.params = params
        self.actors = actors
        self.address = address
        self.mc_samples = params.mc_samples  # saved models always have a sampler

    def map(self, photos: Sequence[PoolPhoto], unreadable: dict[str, str]) -> Iterator[ScoredBatch]:
        """Score all ``photos`` on Ray, then yield them in pool order, ``score.batch_size`` at a time."""
        import ray

        connect(self.address)
        items = [{"i": i, "id": p.sha256, "path": str(Path(p.path).resolve())} for i, p in enumerate(photos)]
        ds = ray.data.from_items(items).map_batches(
            PhotoScorer, fn_constructor_kwargs={"model_path": self.model_path,
                                                "score": dataclasses.asdict(self.params)},
            batch_size=self.params.batch_size, concurrency=self.actors, num_cpus=1, batch_format="numpy")
        rows = sorted(ds.take_all(), key=lambda r: int(r["i"]))
        for r in rows:
            if not r["ok"]:
                unreadable[photos[int(r["i"])].name] = str(r["error"])
        good = [r for r in rows if r["ok"]]
        log.info("%d photo(s) scored on Ray (%d actor(s))", len(good), self.actors)
        for start in range(0, len(good), self.params.batch_size):
            chunk = good[start:start + self.params.batch_size]
            names = [c for c in chunk[0] if c not in ("i", "ok", "error", "embedding")]
            yield ScoredBatch([photos[int(r["i"])] for r in chunk],
                              {c: np.asarray([r[c] for r in chunk]) for c in names},
                              np.stack([np.asarray(r["embedding"], np.float32) for r in chunk]))


def from_model(model_path: str | os.PathLike, params: ScoreParams, actors: int = 1,
               address: str | None = None) -> RayEngine:
    """The Ray engine (``pip install -e .[ray]``; ``address`` or ``RAY_ADDRESS`` for a cluster)."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise MissingExtraError("--engine ray needs Ray: pip install -e .[ray]")
    return RayEngine(model_path, params, actors, address)
