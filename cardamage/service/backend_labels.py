"""Small helpers of the ML backend: the labels of a webhook annotation, and the pool's clusters.

The pool's clusters come from the scores table (``score.out``, written by ``cardamage score``) with
``select.clusters`` and ``select.seed``, as ``select`` computes them; they are rebuilt when that
file changes and are ``None`` when it is missing or unreadable (predictions then carry no cluster).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

from cardamage.active.clusters import PoolClusters
from cardamage.config import Params
from cardamage.errors import CardamageError

log = logging.getLogger(__name__)

_cache: dict[str, Any] = {}
_cache_lock = threading.Lock()


def annotation_labels(annotation: dict[str, Any]) -> Iterator[str]:
    """Every label name in an annotation's ``result`` (polygon, brush, rectangle labels and choices)."""
    result = annotation.get("result")
    for item in result if isinstance(result, list) else []:
        value = item.get("value") if isinstance(item, dict) else None
        if not isinstance(value, dict):
            continue
        for key in ("polygonlabels", "brushlabels", "rectanglelabels", "labels"):
            names = value.get(key)
            for name in names if isinstance(names, list) else []:
                if isinstance(name, str):
                    yield name


def pool_clusters(params: Params) -> PoolClusters | None:
    """The pool's clusters from ``score.out`` (cached while the file is unchanged; see the module doc)."""
    path, k = params.score.out, params.select.clusters
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (path, st.st_mtime_ns, st.st_size, k, params.select.seed)
    with _cache_lock:
        if _cache.get("key") == key:
            return _cache["clusters"]
        from cardamage.active.scoring import read_scores

        try:
            clusters = PoolClusters.from_scores(read_scores(path), k, params.select.seed)
        except (CardamageError, OSError, ValueError) as exc:
            log.warning("no clusters for the predictions: %s", exc)
            clusters = None
        _cache.update(key=key, clusters=clusters)
        return clusters
