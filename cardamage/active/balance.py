"""Class-aware batches: rare damage types get their share of a batch (``select.class_balance``).

With a model of several damage classes, a ranked batch tends to fill with the commonest type (the
model is unsure about scratches everywhere). With ``select.class_balance: true`` every ranked
strategy (photo and region units) walks its ranking round-robin over the photos' **predicted
dominant damage type**: the best photo predicted as type A, then the best of type B, and so on, with
photos where no type reaches ``MIN_SHARE`` of the pixels as one more group. Within a group the
ranking is kept, and the round starts with the group of the best-ranked photo, so the top photo
stays first. The near-duplicate, claim and per-photo caps then apply as usual.

The dominant type comes from the ``class_shares`` score column: per photo the mean probability of
each damage class over its own pixels (``float32 [C-1]``, letterbox padding excluded). A binary
model has one damage class, so balancing changes nothing.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

#: Column of the scores table: mean probability per damage class (``list<float32>``, ``C - 1`` values).
CLASS_SHARES = "class_shares"
#: A photo whose largest damage share is under this has no dominant type (its own group).
MIN_SHARE = 1e-3


def class_shares(probs: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``float32 [B, C-1]``: mean probability of each damage class over the valid pixels of each photo.

    Args:
        probs: ``[B, S, S, C]`` softmax output (channel 0 is background); valid: ``bool [B, S, S]``.
    """
    weights = valid.astype(np.float32)[..., None]
    total = np.maximum(weights.sum(axis=(1, 2)), 1.0)
    return ((np.asarray(probs, np.float32)[..., 1:] * weights).sum(axis=(1, 2)) / total).astype(np.float32)


def dominant_class(shares: np.ndarray, min_share: float = MIN_SHARE) -> np.ndarray:
    """``int [N]``: index of each row's largest damage share, ``-1`` when it is under ``min_share``."""
    shares = np.asarray(shares, np.float64).reshape(len(shares), -1)
    best = shares.argmax(axis=1)
    return np.where(shares.max(axis=1) >= min_share, best, -1)


def round_robin(order: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``order`` (row indices, best first) re-walked one row per group in turn, each group in its own order.

    Groups take turns in the order of their best-ranked row.
    """
    queues: dict[int, list[int]] = {}
    for i in (int(j) for j in order):
        queues.setdefault(int(groups[i]), []).append(i)
    lanes = list(queues.values())  # dicts keep insertion order: the group of the best row first
    out: list[int] = []
    for k in range(max((len(q) for q in lanes), default=0)):
        out += [q[k] for q in lanes if k < len(q)]
    return np.asarray(out, dtype=np.int64)


def balanced_order(order: np.ndarray, table: pd.DataFrame, enabled: bool) -> np.ndarray:
    """``order`` walked round-robin over predicted damage types when ``enabled`` and the model has several.

    A table without :data:`CLASS_SHARES` (scored by an older version) keeps its order, with a warning.
    """
    if not enabled or not len(order):
        return order
    if CLASS_SHARES not in table.columns:
        log.warning("select.class_balance: the scores have no %r column (rescore with `cardamage score`); "
                    "ranking without it", CLASS_SHARES)
        return order
    shares = np.stack([np.asarray(v, np.float32) for v in table[CLASS_SHARES]])
    if shares.shape[1] < 2:
        return order  # one damage class: nothing to balance
    groups = dominant_class(shares)
    log.info("class balance: %s", ", ".join(f"type {g}: {n}" for g, n in
                                            zip(*np.unique(groups[order], return_counts=True))))
    return round_robin(order, groups)
