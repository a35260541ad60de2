"""The quality benchmark's variants (benchmarks/quality_table.py) build commands the params accept."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from quality_table import VARIANTS, variant_pairs  # noqa: E402

from cardamage.config import load_params  # noqa: E402


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_gives_params_that_load(name, tmp_path):
    args = argparse.Namespace(out=tmp_path, dataset=tmp_path / "bilgi", preset=tmp_path / "presets" / "lite0",
                              seed=42)
    pairs = variant_pairs(name, args)
    assert not any("{presets}" in p for p in pairs)
    params = load_params(ROOT / "params.yaml", pairs)
    if name.startswith("lite0_128_types"):
        assert len(params.data.classes) == 8 and params.data.class_map == {}, "the types, not one damage class"
    else:
        assert params.data.classes == ["damage"] and len(params.data.class_map) == 8
    if name.startswith(("lite1", "lite2")):
        assert params.model.backbone_preset == str(tmp_path / "presets" / f"efficientnet-{name[:5]}")
    assert (params.train.repeat_threshold > 0) == name.endswith("_rfs")
