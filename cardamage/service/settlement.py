"""Settlement proposal of a claim: a repair-cost range from the price table, or "refer to a handler".

Pure functions over the per-photo assessments (no model, no I/O). Each damage region is priced by
its class and size band (its share of the photo: ``small < band_edges[0] <= medium < band_edges[1]
<= large``), from ``settlement.part_prices[part][class][band]`` when the part is known, else from
``settlement.prices[class][band]``. Photos of one claim usually show the same damage from several
sides, so by default (``combine_photos: max``) the costliest photo gives the claim's range; ``sum``
adds the photos up.

The first rule that applies decides, and the proposal names it (``rule``) with a sentence
(``reason``): ``reused_photo`` (a photo seen before under another claim), ``quality_gate``,
``no_photo``, ``no_damage``, ``large_damage``, ``uncertain``, ``no_price``, ``amount_limit``, else
``price_table``. ``decision`` is ``estimate``, ``no_damage`` or ``refer_to_handler``; a referred
claim keeps its estimate when one could be priced, for the handler.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cardamage.config import SettlementParams
from cardamage.errors import BadParameterError

BANDS = ("small", "medium", "large")


@dataclass
class PhotoDamage:
    """What the settlement needs from one photo.

    Attributes:
        name: the photo's name as shown to people.
        quality_ok: passed the quality gate (a photo that did not is not assessed).
        damaged_share: damaged pixels / all pixels [0-1].
        instances: damage regions: ``class``, ``confidence`` [0-1], ``area_share`` [0-1], optional ``part``.
        reuse: earlier photos of other claims this photo is or nearly is (:mod:`cardamage.service.reuse`).
    """

    name: str
    quality_ok: bool
    damaged_share: float = 0.0
    instances: Sequence[dict[str, Any]] = ()
    reuse: Sequence[dict[str, Any]] = ()


def check_table(p: SettlementParams) -> None:
    """Raise ``ValueError`` naming the key when the price table or the rules are malformed."""
    edges = p.band_edges
    if len(edges) != 2 or not 0 < edges[0] < edges[1] < 1:
        raise BadParameterError(f"settlement.band_edges: expected two increasing shares in (0, 1), got {edges}")
    tables = [(f"settlement.prices.{c}", bands) for c, bands in p.prices.items()]
    tables += [(f"settlement.part_prices.{part}.{c}", bands) for part, by_class in p.part_prices.items()
               for c, bands in by_class.items()]
    for key, bands in tables:
        for band, rng in bands.items():
            if band not in BANDS:
                raise BadParameterError(f"{key}.{band}: unknown size band (expected one of {list(BANDS)})")
            if len(rng) != 2 or not 0 <= rng[0] <= rng[1]:
                raise BadParameterError(f"{key}.{band}: expected [min, max] with 0 <= min <= max, got {rng}")
    for name in ("max_uncertainty", "max_damaged_share"):
        if not 0 <= getattr(p, name) <= 1:
            raise BadParameterError(f"settlement.{name}: must be in [0, 1], got {getattr(p, name)}")


def size_band(area_share: float, edges: Sequence[float]) -> str:
    """``small``, ``medium`` or ``large`` for a region covering ``area_share`` of the photo."""
    return BANDS[0] if area_share < edges[0] else BANDS[1] if area_share < edges[1] else BANDS[2]


def price_region(inst: dict[str, Any], p: SettlementParams) -> dict[str, Any]:
    """One priced line: class, part, band, ``min``/``max`` (``None`` without a price) and the table key used."""
    cls, part = inst["class"], inst.get("part")
    band = size_band(float(inst["area_share"]), p.band_edges)
    rng, source = None, None
    if part and band in p.part_prices.get(part, {}).get(cls, {}):
        rng, source = p.part_prices[part][cls][band], f"part_prices.{part}.{cls}.{band}"
    elif band in p.prices.get(cls, {}):
        rng, source = p.prices[cls][band], f"prices.{cls}.{band}"
    return {"instance": inst.get("id"), "class": cls, "part": part, "band": band,
            "area_share": inst["area_share"], "confidence": inst["confidence"],
            "min": float(rng[0]) if rng else None, "max": float(rng[1]) if rng else None, "source": source}


def price_photos(photos: Sequence[PhotoDamage], p: SettlementParams) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Priced lines of every assessed photo and the claim's range ``{"min", "max"}`` (see module doc)."""
    lines, totals = [], []
    for i, photo in enumerate(photos):
        if not photo.quality_ok:
            continue
        mine = [{"photo": i, "photo_name": photo.name, **price_region(inst, p)} for inst in photo.instances]
        lines += mine
        totals.append((sum(ln["min"] or 0.0 for ln in mine), sum(ln["max"] or 0.0 for ln in mine)))
    if not totals:
        return lines, {"min": 0.0, "max": 0.0}
    if p.combine_photos == "sum":
        return lines, {"min": round(sum(t[0] for t in totals), 2), "max": round(sum(t[1] for t in totals), 2)}
    best = max(totals, key=lambda t: (t[1], t[0]))
    return lines, {"min": round(best[0], 2), "max": round(best[1], 2)}


def _rule(photos: Sequence[PhotoDamage], lines: list[dict[str, Any]], total: dict[str, float],
          p: SettlementParams) -> tuple[str, str]:
    """The first applying rule and its reason."""
    reused = [ph for ph in photos if ph.reuse]
    if reused:
        claims = sorted({str(m.get("claim_id")) for ph in reused for m in ph.reuse})
        return "reused_photo", (f"{len(reused)} photo(s) seen before under another claim "
                                f"({', '.join(ph.name for ph in reused)}; claim(s) {', '.join(claims)})")
    failed = [ph.name for ph in photos if not ph.quality_ok]
    if failed and p.refer_on_quality_failure:
        return "quality_gate", f"{len(failed)} photo(s) failed the quality check ({', '.join(failed)})"
    assessed = [ph for ph in photos if ph.quality_ok]
    if not assessed:
        return "no_photo", "no photo could be assessed"
    if not lines:
        return "no_damage", f"no damage found on {len(assessed)} photo(s)"
    worst = max(assessed, key=lambda ph: ph.damaged_share)
    if worst.damaged_share > p.max_damaged_share:
        return "large_damage", (f"{worst.name}: {100 * worst.damaged_share:.0f}% of the photo is damaged "
                                f"(limit {100 * p.max_damaged_share:.0f}%)")
    uncertainty = 1.0 - sum(ln["confidence"] for ln in lines) / len(lines)
    if uncertainty > p.max_uncertainty:
        return "uncertain", (f"the model is unsure: uncertainty {uncertainty:.2f} (1 - mean region confidence) "
                             f"above {p.max_uncertainty:.2f}")
    unpriced = sorted({f"{ln['class']}/{ln['band']}" + (f" on {ln['part']}" if ln["part"] else "")
                       for ln in lines if ln["min"] is None})
    if unpriced:
        return "no_price", f"no price in the table for {', '.join(unpriced)}"
    if total["max"] > p.max_total:
        return "amount_limit", f"upper estimate {total['max']:.2f} {p.currency} above {p.max_total:.2f}"
    return "price_table", f"{len(lines)} damage region(s) priced from the table"


def propose(photos: Sequence[PhotoDamage], p: SettlementParams) -> dict[str, Any]:
    """The claim's proposal: ``decision``, ``rule``, ``reason``, ``currency``, ``estimate`` (``{"min",
    "max"}`` or ``None`` when nothing could be priced), ``lines`` (one per damage region) and the
    ``mean_confidence`` of the regions (``None`` without any)."""
    lines, total = price_photos(photos, p)
    rule, reason = _rule(photos, lines, total, p)
    decision = {"price_table": "estimate", "no_damage": "no_damage"}.get(rule, "refer_to_handler")
    priced = any(ln["min"] is not None for ln in lines) or rule == "no_damage"
    confidence = sum(ln["confidence"] for ln in lines) / len(lines) if lines else None
    return {"decision": decision, "rule": rule, "reason": reason, "currency": p.currency,
            "estimate": total if priced else None, "lines": lines,
            "mean_confidence": round(confidence, 4) if confidence is not None else None}
