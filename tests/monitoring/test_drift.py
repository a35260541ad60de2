"""Data tier: Evidently drift of new photos against the training photos.

Night-time (darkened) and blurred versions of sample photos must show as drift; a random split
of the same photos, and the untouched val/test photos, must not.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image, ImageEnhance, ImageFilter

from cardamage.cli import main
from cardamage.config import Params
from cardamage.data.images import list_images
from cardamage.monitoring.drift import (
    choose_embedding,
    compare,
    feature_results,
    format_summary,
    metrics_view,
    summarise,
    usable_columns,
)
from cardamage.monitoring.features import measure_photos

pytest.importorskip("evidently")


def _variants(sample: Path, out: Path) -> dict[str, Path]:
    """Folders ``orig``, ``dark`` (30 % brightness) and ``blur`` (Gaussian, radius 3) of the val + test photos."""
    folders = {k: out / k for k in ("orig", "dark", "blur")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    for src in list_images(sample / "val") + list_images(sample / "test"):
        name = f"{src.parent.name}_{src.name}"
        with Image.open(src) as img:
            img.save(folders["orig"] / name, quality=75)
            ImageEnhance.Brightness(img).enhance(0.3).save(folders["dark"] / name, quality=75)
            img.filter(ImageFilter.GaussianBlur(3)).save(folders["blur"] / name, quality=75)
    return folders


@pytest.fixture(scope="module")
def tables(tmp_path_factory, request) -> dict[str, pd.DataFrame]:
    """Feature tables: the sample's training photos and each variant folder."""
    sample = Path(request.config.rootpath) / "data" / "sample"
    folders = _variants(sample, tmp_path_factory.mktemp("drift"))
    out = {"train": measure_photos(list_images(sample / "train"))}
    out.update({k: measure_photos(list_images(f)) for k, f in folders.items()})
    return out


def _pair(reference: pd.DataFrame, current: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([reference.assign(side="reference"), current.assign(side="current")], ignore_index=True)


@pytest.mark.parametrize("variant,expected", [("dark", {"brightness", "contrast", "embedding"}),
                                              ("blur", {"sharpness", "edge_density"})])
def test_night_and_blurred_photos_show_as_drift(tables, variant, expected):
    result = compare(_pair(tables["train"], tables[variant]))
    s = result.summary
    assert s["drift_detected"], format_summary(s)
    assert expected <= set(s["drifted_features"])
    assert s["embedding"]["source"] == "colour_histogram" and "not available" in s["embedding"]["note"]
    assert s["n_reference"] == len(tables["train"]) and s["n_current"] == len(tables[variant])


@pytest.mark.parametrize("seed", [0])
def test_a_random_split_of_the_same_photos_is_not_drift(tables, seed):
    photos = pd.concat([tables["train"], tables["orig"]], ignore_index=True)
    order = np.random.default_rng(seed).permutation(len(photos))
    half = len(photos) // 2
    result = compare(_pair(photos.iloc[order[:half]], photos.iloc[order[half:]]))
    assert not result.summary["drift_detected"], format_summary(result.summary)


def test_untouched_validation_and_pool_photos_are_not_drift(tables):
    result = compare(_pair(tables["train"], tables["orig"]))
    assert not result.summary["drift_detected"], format_summary(result.summary)
    assert result.summary["n_drifted"] <= 1


def test_cli_writes_html_summary_details_and_features(tables, tmp_path, request):
    sample = Path(request.config.rootpath) / "data" / "sample"
    current = tmp_path / "night"
    current.mkdir()
    for src in list_images(sample / "test"):
        with Image.open(src) as img:
            ImageEnhance.Brightness(img).enhance(0.25).save(current / src.name, quality=75)
    rep = tmp_path / "reports"
    args = ["drift", "--current", str(current), "--reference", str(sample / "train"),
            "--set", f"drift.html={rep / 'drift.html'}", "--set", f"drift.summary={rep / 'drift_summary.json'}",
            "--set", f"drift.details={rep / 'drift_details.json'}",
            "--set", f"drift.features_csv={rep / 'features.csv'}",
            "--set", f"score.model_path={tmp_path / 'no_model.keras'}"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "DRIFT DETECTED" in result.output
    summary = json.loads((rep / "drift_summary.json").read_text())
    assert summary["drift_detected"] is True and "brightness" in summary["drifted_features"]
    assert set(summary) <= {*metrics_view({}).keys(), "drift_detected", "share_drifted", "n_drifted", "n_tested",
                            "n_reference", "n_current", "drift_share_threshold", "stattest_threshold",
                            "drifted_features", "embedding"}
    details = json.loads((rep / "drift_details.json").read_text())
    assert details["features"]["brightness"]["drifted"] is True and details["current"] == str(current)
    html = (rep / "drift.html").read_text(encoding="utf-8")
    assert html.lstrip().lower().startswith("<!doctype html") or "<html" in html[:2000].lower()
    assert len(html) > 100_000
    features = pd.read_csv(rep / "features.csv")
    assert set(features["side"]) == {"reference", "current"} and "sharpness" in features.columns
    failing = CliRunner().invoke(main, args + ["--fail-on-drift"])
    assert failing.exit_code == 1
    _renders_offline(rep / "drift.html", tmp_path)


def _renders_offline(page: Path, tmp: Path) -> None:
    """The Evidently page draws something in headless Chromium without network (skipped without it)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        return
    shot = tmp / "drift.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={tmp / 'profile'}", "--window-size=1000,1000", "--virtual-time-budget=10000",
                    f"--screenshot={shot}", page.resolve().as_uri()], capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert (pixels < 128).mean() > 0.005, "the drift report rendered blank"


def test_one_current_photo_is_refused_with_a_clear_message(tables):
    with pytest.raises(ValueError, match=r"at least 2 readable photos .* current 1"):
        compare(_pair(tables["train"], tables["orig"].iloc[:1]))


def test_feature_results_reads_tests_and_falls_back_to_the_method():
    report = {"metrics": [
        {"config": {"type": "evidently:metric_v2:ValueDrift", "column": "a", "method": "K-S p_value",
                    "threshold": 0.01}, "value": 0.001},
        {"config": {"type": "evidently:metric_v2:ValueDrift", "column": "b", "method": "Wasserstein distance (normed)",
                    "threshold": 0.1}, "value": 0.05},
        {"config": {"type": "evidently:metric_v2:DriftedColumnsCount"}, "value": {"count": 1}}],
        "tests": [{"metric_config": {"params": {"column": "a"}}, "status": "FAIL"}]}
    out = feature_results(report)
    assert out["a"]["drifted"] is True and out["b"]["drifted"] is False


def test_summarise_counts_the_embedding_as_one_column():
    features = {c: {"drifted": c == "x"} for c in ("x", "y", "z", "w")}
    s = summarise(features, {"drifted": True, "source": "model", "score": 1.0}, {}, 0.01, 0.4)
    assert s["drifted_features"] == ["x", "embedding"] and s["n_tested"] == 5 and s["share_drifted"] == 0.4
    assert s["drift_detected"] is True
    assert metrics_view(s)["embedding"] == {"source": "model", "score": 1.0, "drifted": True}


def test_usable_columns_skips_columns_missing_on_one_side():
    table = pd.DataFrame({"side": ["reference"] * 3 + ["current"] * 2, "a": [1, 2, 3, 4, 5],
                          "q": [75, 75, 75, np.nan, np.nan]})
    kept, skipped = usable_columns(table, ["a", "q", "absent"])
    assert kept == ["a"] and "current" in skipped["q"]


def test_choose_embedding_prefers_the_model_and_explains_the_fallback():
    table = pd.DataFrame({"hist_000": [1.0], "emb_0000": [0.5]})
    assert choose_embedding(table, "auto")[1] == "model"
    assert choose_embedding(table, "histogram")[1] == "colour_histogram"
    assert choose_embedding(table, "none")[0] == []
    with pytest.raises(ValueError, match="drift.embedding"):
        choose_embedding(table.drop(columns="emb_0000"), "model")


def test_default_reference_is_the_prepared_train_split(tmp_path):
    from cardamage.monitoring.drift import reference_files

    params = Params()
    params.prepare.out_dir = str(tmp_path / "prepared")
    params.data.root = str(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="drift.reference"):
        reference_files(params)
    (tmp_path / "prepared" / "train").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "prepared" / "train" / "a.jpg")
    files, label = reference_files(params)
    assert [f.name for f in files] == ["a.jpg"] and label.endswith("train")
