"""The production model, its card and its archive: what ``cardamage publish`` promotes and rolls back.

Files (``publish`` section of ``params.yaml``)::

    production_path  models/production.keras   the model the claim service and the Label Studio push use
    card             models/production.json    its model card (versions, params, metrics with intervals)
    archive_dir      models/archive/<version>.keras + <version>.json
                                                replaced production models, the newest keep_archived kept

A model file is copied to a temporary name beside its target and renamed (the model before its
card), so the claim service, which reloads when the file changes, never reads half a model. A
missing, truncated or foreign production file is "no production model": :func:`read_production`
says why instead of failing.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cardamage.config import PublishParams
from cardamage.errors import CardamageError
from cardamage.fileio import atomic_path, write_json
from cardamage.model.io import ModelInfo, read_model_info

log = logging.getLogger(__name__)


@dataclass
class Production:
    """The production model as found on disk.

    Attributes:
        path: ``publish.production_path``; info: its stored :class:`ModelInfo` (``None``: none usable).
        card: its model card when the card is for this very version, else ``{}``.
        problem: why there is no usable production model (``None`` when there is one).
    """

    path: Path
    info: ModelInfo | None = None
    card: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None

    @property
    def version(self) -> str | None:
        return self.info.model_version if self.info else None


def read_card(path: str | Path) -> dict[str, Any]:
    """A model card; ``{}`` when missing or unreadable (with a warning)."""
    p = Path(path)
    if not p.is_file():
        return {}
    try:
        card = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable model card (%s); ignored", p, exc)
        return {}
    return card if isinstance(card, dict) else {}


def read_production(p: PublishParams) -> Production:
    """The production model's info and card, or why there is none (missing, corrupt, not a cardamage model)."""
    path = Path(p.production_path)
    if not path.is_file():
        return Production(path, problem=f"no production model yet ({path} does not exist)")
    try:
        info = read_model_info(path)
    except (CardamageError, OSError) as exc:
        log.warning("%s: unusable production model (%s); treated as none", path, exc)
        return Production(path, problem=f"the production model is unusable and treated as none: {exc}")
    card = read_card(p.card)
    if card and card.get("model_version") != info.model_version:
        log.warning("%s describes %s, not the production model %s: card ignored", p.card,
                    card.get("model_version"), info.model_version)
        card = {}
    return Production(path, info, card)


def copy_model(src: str | Path, dst: str | Path) -> Path:
    """Copy a model file atomically (temporary file beside ``dst``, then rename)."""
    with atomic_path(dst, suffix=".keras") as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)


def install(src: str | Path, card: dict[str, Any], p: PublishParams) -> None:
    """Make ``src`` the production model with ``card`` as its card (model first, then the card)."""
    copy_model(src, p.production_path)
    write_json(p.card, card)
    log.info("production model is now %s (%s)", card.get("model_version"), p.production_path)


def archive_production(prod: Production, p: PublishParams, now: str, **marks: Any) -> str | None:
    """Copy the current production model and card into ``archive_dir`` (``marks`` added to the card).

    Returns the archived version, ``None`` when there is no usable production model to keep.
    """
    if prod.info is None:
        return None
    folder = Path(p.archive_dir)
    version = prod.info.model_version or "unversioned"
    card = {**(prod.card or {"model_version": version, "classes": prod.info.classes,
                             "input_size": prod.info.input_size}), "archived_at": now, **marks}
    copy_model(prod.path, folder / f"{version}.keras")
    write_json(folder / f"{version}.json", card)
    prune_archive(p)
    return version


def archived(p: PublishParams) -> list[dict[str, Any]]:
    """Cards of the archived models that still have their file, newest archived first."""
    folder = Path(p.archive_dir)
    cards = []
    for card_file in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        card = read_card(card_file)
        if card and (folder / f"{card_file.stem}.keras").is_file():
            cards.append({**card, "file": str(folder / f"{card_file.stem}.keras")})
    return sorted(cards, key=lambda c: (str(c.get("archived_at", "")), str(c.get("model_version", ""))),
                  reverse=True)


def prune_archive(p: PublishParams) -> None:
    """Keep the ``keep_archived`` newest archived models; remove the others (model and card)."""
    for card in archived(p)[max(p.keep_archived, 0):]:
        model = Path(card["file"])
        model.unlink(missing_ok=True)
        model.with_suffix(".json").unlink(missing_ok=True)
        log.info("archive: removed %s (publish.keep_archived: %d)", model, p.keep_archived)


def remove_archived(card: dict[str, Any]) -> None:
    """Delete one archived model and its card (after it was restored to production)."""
    model = Path(card["file"])
    model.unlink(missing_ok=True)
    model.with_suffix(".json").unlink(missing_ok=True)
