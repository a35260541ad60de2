"""Code tier: settlement proposals from the price table, and every "refer to a handler" rule."""

from __future__ import annotations

import pytest

from cardamage.config import SettlementParams
from cardamage.service.settlement import PhotoDamage, check_table, price_region, propose, size_band


def table(**changes) -> SettlementParams:
    p = SettlementParams(
        currency="EUR", band_edges=[0.02, 0.10],
        prices={"scratch": {"small": [100.0, 200.0], "medium": [300.0, 600.0], "large": [900.0, 2000.0]},
                "dent": {"small": [150.0, 300.0], "medium": [400.0, 900.0]}},
        part_prices={"headlamp": {"scratch": {"small": [250.0, 500.0]}}},
        combine_photos="max", max_uncertainty=0.35, max_damaged_share=0.35, max_total=5000.0)
    for key, value in changes.items():
        setattr(p, key, value)
    return p


def region(cls: str = "scratch", share: float = 0.01, conf: float = 0.9, part: str | None = None, i: int = 0):
    return {"id": i, "class": cls, "area_share": share, "confidence": conf, "part": part}


def photo(*regions, name: str = "a.jpg", ok: bool = True, damaged: float | None = None) -> PhotoDamage:
    return PhotoDamage(name, ok, sum(r["area_share"] for r in regions) if damaged is None else damaged, list(regions))


def test_size_bands_follow_the_edges():
    edges = [0.02, 0.10]
    assert [size_band(s, edges) for s in (0.0, 0.0199, 0.02, 0.0999, 0.10, 0.9)] == \
        ["small", "small", "medium", "medium", "large", "large"]


def test_estimate_from_the_price_table():
    out = propose([photo(region("scratch", 0.01), region("dent", 0.05, i=1))], table())
    assert (out["decision"], out["rule"]) == ("estimate", "price_table")
    assert out["estimate"] == {"min": 100.0 + 400.0, "max": 200.0 + 900.0} and out["currency"] == "EUR"
    assert [ln["source"] for ln in out["lines"]] == ["prices.scratch.small", "prices.dent.medium"]
    assert out["reason"] and out["mean_confidence"] == pytest.approx(0.9)


def test_part_price_wins_where_the_part_is_known():
    line = price_region(region("scratch", 0.01, part="headlamp"), table())
    assert (line["min"], line["max"], line["source"]) == (250.0, 500.0, "part_prices.headlamp.scratch.small")
    fallback = price_region(region("scratch", 0.01, part="door"), table())
    assert fallback["source"] == "prices.scratch.small"


def test_photos_of_one_claim_combine_by_max_or_sum():
    photos = [photo(region("scratch", 0.01), name="a.jpg"), photo(region("scratch", 0.05), name="b.jpg")]
    assert propose(photos, table())["estimate"] == {"min": 300.0, "max": 600.0}
    assert propose(photos, table(combine_photos="sum"))["estimate"] == {"min": 400.0, "max": 800.0}


def test_no_damage():
    out = propose([photo(), photo(name="b.jpg")], table())
    assert (out["decision"], out["rule"]) == ("no_damage", "no_damage")
    assert out["estimate"] == {"min": 0.0, "max": 0.0} and out["mean_confidence"] is None


def test_quality_failure_refers_but_keeps_the_estimate_of_good_photos():
    out = propose([photo(region()), PhotoDamage("dark.jpg", False)], table())
    assert (out["decision"], out["rule"]) == ("refer_to_handler", "quality_gate")
    assert "dark.jpg" in out["reason"] and out["estimate"] == {"min": 100.0, "max": 200.0}
    relaxed = propose([photo(region()), PhotoDamage("dark.jpg", False)], table(refer_on_quality_failure=False))
    assert relaxed["rule"] == "price_table"


def test_no_assessable_photo():
    out = propose([PhotoDamage("dark.jpg", False)], table(refer_on_quality_failure=False))
    assert (out["decision"], out["rule"]) == ("refer_to_handler", "no_photo")


def test_large_damage_refers():
    out = propose([photo(region("scratch", 0.3), damaged=0.5)], table())
    assert (out["decision"], out["rule"]) == ("refer_to_handler", "large_damage")
    assert "50%" in out["reason"]


def test_uncertain_model_refers():
    out = propose([photo(region(conf=0.55), region(conf=0.6, i=1))], table())
    assert (out["decision"], out["rule"]) == ("refer_to_handler", "uncertain")
    assert "0.43" in out["reason"]  # 1 - mean(0.55, 0.6)


def test_missing_price_refers():
    out = propose([photo(region("dent", 0.2, conf=0.9), damaged=0.2)], table())
    assert (out["rule"], out["estimate"]) == ("no_price", None)
    assert "dent/large" in out["reason"]
    unknown = propose([photo(region("rust", 0.01))], table())
    assert unknown["rule"] == "no_price" and "rust/small" in unknown["reason"]


def test_amount_limit_refers():
    out = propose([photo(region("scratch", 0.2), damaged=0.2)], table(max_total=1500.0))
    assert (out["decision"], out["rule"]) == ("refer_to_handler", "amount_limit")
    assert out["estimate"] == {"min": 900.0, "max": 2000.0}


def test_rule_order_quality_before_damage_size():
    out = propose([photo(region("scratch", 0.5), damaged=0.6), PhotoDamage("blur.jpg", False)], table())
    assert out["rule"] == "quality_gate"


@pytest.mark.parametrize("change, needle", [
    ({"band_edges": [0.1, 0.02]}, "settlement.band_edges"),
    ({"prices": {"scratch": {"huge": [1.0, 2.0]}}}, "settlement.prices.scratch.huge"),
    ({"prices": {"scratch": {"small": [3.0, 2.0]}}}, "settlement.prices.scratch.small"),
    ({"part_prices": {"door": {"dent": {"small": [1.0]}}}}, "settlement.part_prices.door.dent.small"),
    ({"max_uncertainty": 1.5}, "settlement.max_uncertainty"),
])
def test_malformed_table_is_named(change, needle):
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
        check_table(table(**change))


def test_repo_price_table_is_valid():
    from test_service_support import REPO

    from cardamage.config import load_params

    check_table(load_params(REPO / "params.yaml").settlement)
