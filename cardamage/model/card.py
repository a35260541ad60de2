"""The model card written beside the production model (``publish.card``, ``models/production.json``).

What a person needs to trust or reproduce the model in production::

    model_version, classes, input_size, architecture, backbone, created    from the model file
    promoted_at, promoted_by (gate | force | rollback), decision           how it got there
    data_version       the prepared data: manifest sha256 and DVC's hash of it in dvc.lock
    git                {"revision": <commit>, "dirty": <uncommitted changes to tracked files>}
    params             the training params stored in the model + data/prepare/evaluate/publish
    metrics            damage IoU, mean IoU, IoU per class on the test split, with intervals
    test_set           {"n_photos", "fingerprint", "splits"}
    evaluation         the per-photo results behind the metrics (sha256 + confusion matrix per photo)
    photos             labelled photos by split and source: {"train": {"sample": 53}, ...}
"""

from __future__ import annotations

import csv
import logging
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from cardamage.config import Params, params_to_dict
from cardamage.model.evaluate import PhotoEval
from cardamage.model.io import ModelInfo

log = logging.getLogger(__name__)


def git_revision(cwd: str | Path = ".") -> dict[str, Any] | None:
    """``{"revision", "dirty"}`` of the git checkout at ``cwd``; ``None`` outside git (or without git)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=20)
        if rev.returncode != 0:
            return None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"revision": rev.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def photo_counts(params: Params) -> dict[str, dict[str, int]]:
    """Labelled photos of the prepared data by split and source, from ``<prepare.out_dir>/manifest.csv``.

    ``{}`` when there is no manifest (data not prepared by ``cardamage prepare``).
    """
    manifest = Path(params.prepare.out_dir) / "manifest.csv"
    if not manifest.is_file():
        return {}
    counts: dict[str, Counter] = {}
    with open(manifest, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            counts.setdefault(row.get("split") or "?", Counter())[row.get("source") or "?"] += 1
    return {split: dict(sorted(c.items())) for split, c in sorted(counts.items())}


def card_params(params: Params) -> dict[str, Any]:
    """The parameter sections a card records besides the model's own training params."""
    return {k: v for k, v in params_to_dict(params).items() if k in ("data", "prepare", "evaluate", "publish")}


def model_card(params: Params, info: ModelInfo, source: Path, metrics: dict[str, Any], ev: PhotoEval,
               when: str, how: str, reason: str) -> dict[str, Any]:
    """The card of a model being promoted (see the module docstring)."""
    from cardamage.monitoring.data_version import data_version, data_version_text

    version = data_version(params)
    return {
        "model_version": info.model_version, "classes": list(info.classes), "input_size": int(info.input_size),
        "resize": info.resize, "architecture": info.architecture, "backbone": info.backbone, "created": info.created,
        "source": str(source), "promoted_at": when, "promoted_by": how, "decision": reason,
        "data_version": {"text": data_version_text(version), **(version or {})},
        "git": git_revision(),
        "params": {"training": (info.extra or {}).get("params", {}), **card_params(params)},
        "metrics": metrics,
        "test_set": {"n_photos": len(ev.photos), "fingerprint": ev.fingerprint, "splits": ev.splits},
        "evaluation": ev.to_json(),
        "photos": photo_counts(params),
    }
