"""Scoring engines: each maps a batch of pool photos to score columns; the pipeline does the rest.

An engine is an object with an ``mc_samples`` attribute and a ``map(photos, unreadable)`` method
that yields :class:`cardamage.active.scoring.ScoredBatch` (see :class:`cardamage.active.scoring.Engine`).
The stale check, the Parquet schema and the atomic rewrite live once, in
:mod:`cardamage.active.scoring`. Adding an engine is one module and one line in :data:`ENGINES`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cardamage.errors import BadParameterError

if TYPE_CHECKING:
    from cardamage.active.scoring import Engine
    from cardamage.config import ScoreParams

#: Engine name -> ``"module:factory"``; a factory takes ``(model_path, score params, **options)``.
ENGINES: dict[str, str] = {
    "local": "cardamage.active.engines.local:from_model",
    "ray": "cardamage.active.engines.ray:from_model",
}


def make_engine(name: str, model_path: str, params: ScoreParams, **options: Any) -> Engine:
    """Build the engine ``name`` for the model file ``model_path``."""
    if name not in ENGINES:
        raise BadParameterError(f"--engine: {name!r} is not one of {', '.join(ENGINES)}")
    module, factory = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), factory)(model_path, params, **options)
