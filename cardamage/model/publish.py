"""The promotion gate: ``cardamage publish`` promotes the candidate only when it is not worse.

The candidate (``train.model_path``, or ``--candidate``) and the production model
(``publish.production_path``) are measured on the same fixed test split
(:func:`cardamage.model.evaluate.evaluation_records`), photo by photo. The candidate is promoted when

* the lower bound of the bootstrap interval (``evaluate.confidence``, paired over test photos,
  :mod:`cardamage.model.bootstrap`) of ``candidate - production`` damage IoU is at least
  ``-publish.tolerance_iou``: the test photos show it is not worse by more than the tolerance, and
* no class's IoU drops by more than its tolerance (``publish.class_tolerance``, else
  ``publish.default_class_tolerance``).

Without a usable production model (none yet, a truncated or foreign file: said so), the candidate
is promoted as the first. The comparison is refused, naming both sides, when the production model
predicts other classes or takes another input size, when the test set lost photos that the
production model was measured on (its card lists them), or when the candidate is a version a
person rolled back. ``--force`` promotes without the gate and ``--rollback`` restores the newest
archived production model. Every outcome writes ``publish.decision`` (a DVC metrics file), adds a
line to ``publish.history`` and, when production changes, writes the model card ``publish.card``.
Cheap where it can be: the candidate's per-photo results come from ``evaluate.per_photo`` and the
production model's from its card when they are for the same model and the same photos.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cardamage.config import Params
from cardamage.data.dedup import file_sha256
from cardamage.errors import BadInputError
from cardamage.fileio import finite_json, write_json
from cardamage.model.bootstrap import paired_difference, summarize
from cardamage.model.card import model_card, photo_counts
from cardamage.model.evaluate import PhotoEval, evaluate_photos, evaluation_records
from cardamage.model.io import ModelInfo, check_compatible, read_model_info
from cardamage.model.registry import Production, archive_production, archived, install, read_production, remove_archived
from cardamage.monitoring.history import append_entry, read_entries, rolled_back_versions

log = logging.getLogger(__name__)


@dataclass
class Decision:
    """One outcome of ``cardamage publish`` (what ``publish.decision`` holds, see :meth:`to_json`).

    ``action``: ``promoted``, ``refused``, ``unchanged`` (the candidate already is production),
    ``forced`` or ``rolled_back``.
    """

    action: str
    reason: str
    candidate: dict[str, Any] = field(default_factory=dict)
    production_before: dict[str, Any] | None = None
    difference: dict[str, Any] | None = None
    class_checks: list[dict[str, Any]] = field(default_factory=list)
    test_set: dict[str, Any] = field(default_factory=dict)
    time: str = ""
    production: str | None = None

    @property
    def promoted(self) -> bool:
        return self.action in ("promoted", "forced", "rolled_back")

    def to_json(self) -> dict[str, Any]:
        return {"promoted": self.promoted, "action": self.action, "reason": self.reason, "time": self.time,
                "production": self.production, "candidate": self.candidate,
                "production_before": self.production_before, "difference": self.difference,
                "class_checks": self.class_checks, "test_set": self.test_set}

    def line(self) -> str:
        """One line for the terminal."""
        head = "PROMOTED" if self.promoted else ("UNCHANGED" if self.action == "unchanged" else "NOT PROMOTED")
        return f"{head} {self.candidate.get('model_version', '?')}: {self.reason}"


def now_text() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- per-photo results

def current_test_shas(params: Params) -> dict[str, str]:
    """``{sha256: path}`` of the labelled photos of the evaluation splits, as they are now."""
    _, records, root = evaluation_records(params)
    return {file_sha256(root / r.path): r.path for r in records}


def _cached_eval(data: dict[str, Any], version: str | None, shas: set[str]) -> PhotoEval | None:
    try:
        cached = PhotoEval.from_json(data)
    except (KeyError, TypeError, ValueError):
        return None
    return cached if version and cached.model_version == version and set(cached.shas) == shas else None


def candidate_eval(params: Params, path: Path, info: ModelInfo, shas: set[str]) -> PhotoEval:
    """The candidate's per-photo results: ``evaluate.per_photo`` when it is for this model and these photos."""
    file = Path(params.evaluate.per_photo)
    try:
        data = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}
    except (OSError, ValueError):
        data = {}
    cached = _cached_eval(data, info.model_version, shas) if isinstance(data, dict) else None
    if cached:
        log.info("candidate %s: per-photo results reused from %s", info.model_version, file)
        return cached
    log.info("candidate %s: evaluating on the test split", info.model_version)
    return evaluate_photos(params, path)


def figures(ev: PhotoEval, params: Params, order: list[str]) -> dict[str, Any]:
    """:func:`~cardamage.model.bootstrap.summarize` of one model on the photos ``order``."""
    return summarize(ev.cms(order), ev.classes, params.evaluate.bootstrap, params.evaluate.confidence)


def side(info: ModelInfo, path: Path, figs: dict[str, Any] | None) -> dict[str, Any]:
    """One model's entry in the decision: version, file, classes, input size and figures."""
    return {"model_version": info.model_version, "path": str(path), "classes": list(info.classes),
            "input_size": int(info.input_size), **({"metrics": figs} if figs else {})}


# ----------------------------------------------------------------------------- the rule

def class_checks(cand: dict[str, Any], prod: dict[str, Any], params: Params) -> list[dict[str, Any]]:
    """Per damage class: both IoUs, the drop and its tolerance, and whether it passes."""
    p = params.publish
    checks = []
    for name in list(cand["iou"])[1:]:
        c, q = cand["iou"][name]["value"], (prod["iou"].get(name) or {}).get("value")
        tol = float(p.class_tolerance.get(name, p.default_class_tolerance))
        drop = None if c is None or q is None else q - c
        checks.append({"class": name, "candidate": c, "production": q, "drop": drop, "tolerance": tol,
                       "ok": drop is None or drop <= tol})
    return checks


def verdict(diff: dict[str, Any], checks: list[dict[str, Any]], params: Params, n: int) -> tuple[bool, str]:
    """Promote or not, and why, from the paired damage IoU difference and the class checks."""
    tol = params.publish.tolerance_iou
    ci = diff["ci"] or [diff["value"], diff["value"]]
    level = f"{params.evaluate.confidence:.0%} interval over {n} test photos"
    text = f"damage IoU {diff['value']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}] against production ({level})"
    if ci[0] < -tol:
        return False, (f"{text}: the lower bound is below -{tol:g} (publish.tolerance_iou), so the test photos "
                       "do not show that the candidate is not worse")
    bad = [c for c in checks if not c["ok"]]
    if bad:
        return False, text + "; " + "; ".join(
            f"{c['class']} IoU dropped {c['drop']:.3f} ({c['production']:.3f} -> {c['candidate']:.3f}), more than "
            f"its tolerance {c['tolerance']:g}" for c in bad)
    return True, f"{text}: not worse by more than {tol:g}; no class dropped more than its tolerance"


def incompatible(prod: ModelInfo, cand: ModelInfo) -> str | None:
    """Why the two models cannot be compared on the same photos, naming both; ``None`` when they can."""
    if list(prod.classes) == list(cand.classes) and int(prod.input_size) == int(cand.input_size):
        return None
    return (f"the production model {prod.model_version} predicts {list(prod.classes)} at {prod.input_size} px but "
            f"the candidate {cand.model_version} predicts {list(cand.classes)} at {cand.input_size} px: they cannot "
            "be compared on the same test photos (`cardamage publish --force` replaces production)")


def shrunk(card: dict[str, Any], now: dict[str, str]) -> str | None:
    """Why the test set no longer holds every photo the production model was measured on; ``None`` if it does."""
    before = {p["sha256"]: p.get("path", "?") for p in (card.get("evaluation") or {}).get("photos", [])
              if isinstance(p, dict) and "sha256" in p}
    gone = sorted(path for sha, path in before.items() if sha not in now)
    if not gone:
        return None
    shown = ", ".join(gone[:5]) + (f" and {len(gone) - 5} more" if len(gone) > 5 else "")
    return (f"the test set shrank: the production model was measured on {len(before)} photos and {len(gone)} of "
            f"them are gone ({shown}), so its figures would not compare with earlier weeks; restore them, or "
            "`cardamage publish --force` to start a new series")


# ----------------------------------------------------------------------------- the command

def publish(params: Params, candidate: str | None = None, force: bool = False,
            now: str | None = None) -> Decision:
    """Run the gate (or ``force``), update production, the card, the decision file and the history."""
    now = now or now_text()
    cand_path = Path(candidate or params.train.model_path)
    cand_info = read_model_info(cand_path)
    check_compatible(cand_info, params.data.classes, source=str(cand_path))
    shas = current_test_shas(params)
    order = sorted(shas)
    cand_ev = candidate_eval(params, cand_path, cand_info, set(shas))
    cand_figs = figures(cand_ev, params, order)
    prod = read_production(params.publish)
    test_set = {"n_photos": len(order), "fingerprint": cand_ev.fingerprint, "splits": cand_ev.splits}
    decision = Decision("refused", "", side(cand_info, cand_path, cand_figs), test_set=test_set, time=now,
                        production=prod.version)
    if force:
        decision.action, decision.reason = "forced", "promoted without the gate by `cardamage publish --force`"
        if prod.info:
            decision.production_before = side(prod.info, prod.path, None)
    elif prod.info is None:
        decision.action, decision.reason = "promoted", f"first model: {prod.problem}"
    else:
        _gate(decision, params, cand_info, cand_figs, cand_ev, prod, shas)
    if decision.promoted:
        _promote(params, cand_path, cand_info, cand_ev, cand_figs, prod, decision, "force" if force else "gate")
    _record(params, decision, "force" if force else "gate", cand_figs)
    return decision


def _gate(decision: Decision, params: Params, cand_info: ModelInfo, cand_figs: dict[str, Any], cand_ev: PhotoEval,
          prod: Production, shas: dict[str, str]) -> None:
    """Fill ``decision`` by comparing the candidate with the usable production model ``prod``."""
    assert prod.info is not None
    decision.production_before = side(prod.info, prod.path, None)
    blocked = rolled_back_versions(read_entries(params.publish.history)[0])
    problem = (("the candidate is already the production model", "unchanged")
               if prod.version == cand_info.model_version else None)
    if not problem and cand_info.model_version in blocked:
        problem = (f"version {cand_info.model_version} was rolled back on {blocked[cand_info.model_version]}; "
                   "`cardamage publish --force` publishes it anyway", "refused")
    reason = None if problem else (incompatible(prod.info, cand_info) or shrunk(prod.card, shas))
    if problem or reason:
        decision.reason, decision.action = problem if problem else (reason, "refused")
        return
    order = sorted(shas)
    prod_ev = _cached_eval(prod.card.get("evaluation") or {}, prod.version, set(shas))
    try:
        prod_ev = prod_ev or evaluate_photos(params, prod.path)
    except BadInputError as exc:  # unloadable weights behind a readable header: not kept in the archive either
        prod.info, decision.production_before, decision.action = None, None, "promoted"
        decision.reason = f"first model: the production model cannot be loaded and is treated as none ({exc})"
        return
    prod_figs = figures(prod_ev, params, order)
    decision.production_before["metrics"] = prod_figs
    decision.difference = paired_difference(cand_ev.cms(order), prod_ev.cms(order), params.evaluate.bootstrap,
                                            params.evaluate.confidence)
    decision.class_checks = class_checks(cand_figs, prod_figs, params)
    ok, decision.reason = verdict(decision.difference, decision.class_checks, params, len(order))
    decision.action = "promoted" if ok else "refused"


def _promote(params: Params, path: Path, info: ModelInfo, ev: PhotoEval, figs: dict[str, Any], prod: Production,
             decision: Decision, how: str) -> None:
    archive_production(prod, params.publish, decision.time, replaced_by=info.model_version)
    card = model_card(params, info, path, figs, ev, decision.time, how, decision.reason)
    install(path, card, params.publish)
    decision.production = info.model_version


def _record(params: Params, decision: Decision, event: str, figs: dict[str, Any] | None,
            extra: dict[str, Any] | None = None) -> None:
    """Write the decision file and add the history line."""
    from cardamage.monitoring.data_version import data_version, data_version_text

    write_json(params.publish.decision, finite_json(decision.to_json()))
    entry = {"time": decision.time, "event": event, "model_version": decision.candidate.get("model_version"),
             "production_before": (decision.production_before or {}).get("model_version"),
             "production": decision.production, "promoted": decision.promoted, "action": decision.action,
             "reason": decision.reason, "data_version": data_version_text(data_version(params)),
             "test_set": decision.test_set, "metrics": figs, "photos": photo_counts(params), **(extra or {})}
    append_entry(params.publish.history, finite_json(entry))
    log.info("%s", decision.line())


def rollback(params: Params, now: str | None = None) -> Decision:
    """Restore the newest archived production model; the replaced version is blocked from the gate.

    Raises:
        BadInputError: nothing archived to roll back to.
    """
    now = now or now_text()
    p = params.publish
    prod = read_production(p)
    earlier = [c for c in archived(p) if c.get("model_version") != prod.version]
    if not earlier:
        raise BadInputError(f"{p.archive_dir}: no earlier production model to roll back to")
    target = earlier[0]
    archive_production(prod, p, now, rolled_back_at=now)
    card = {k: v for k, v in target.items() if k not in ("file", "archived_at", "replaced_by")}
    install(target["file"], {**card, "restored_at": now, "promoted_by": "rollback"}, p)
    remove_archived(target)
    info = read_model_info(p.production_path)
    reason = (f"rolled back by `cardamage publish --rollback`: {prod.version or 'no usable model'} replaced by "
              f"{info.model_version} (promoted {target.get('promoted_at', '?')})")
    decision = Decision("rolled_back", reason, side(info, Path(p.production_path), target.get("metrics")),
                        side(prod.info, prod.path, None) if prod.info else None, time=now,
                        production=info.model_version, test_set=target.get("test_set") or {})
    _record(params, decision, "rollback", target.get("metrics"), {"rolled_back_version": prod.version})
    return decision

