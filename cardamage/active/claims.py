"""Same-claim grouping for selection: photos of one claim show one car, often the same damage twice.

A photo the claim service stored in ``serve.incoming_dir`` has ``<sha256>.json`` beside it with the
request's ``claim_id``; :func:`with_claims` adds that as the ``claim`` column of a scores table
(empty where a photo has none), and ranked selections take at most ``select.max_per_claim`` photos
of one claim per batch (:func:`cardamage.active.selection.ranked`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

#: A sidecar larger than this is not a prediction record: not read.
MAX_SIDECAR_BYTES = 1 << 20


def claim_of(photo: str | Path) -> str | None:
    """The ``claim_id`` in the JSON beside ``photo`` (``<stem>.json``), or ``None``."""
    sidecar = Path(photo).with_suffix(".json")
    try:
        if not sidecar.is_file() or sidecar.stat().st_size > MAX_SIDECAR_BYTES:
            return None
        record = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.debug("%s: no claim id (%s)", sidecar, exc)
        return None
    claim = record.get("claim_id") if isinstance(record, dict) else None
    return str(claim) if isinstance(claim, (str, int)) and str(claim).strip() else None


def with_claims(scores: pd.DataFrame) -> pd.DataFrame:
    """``scores`` with a ``claim`` column (``""`` for photos without a claim id)."""
    out = scores.copy()
    out["claim"] = [claim_of(p) or "" for p in out["path"]] if len(out) else pd.Series(dtype=str)
    return out
