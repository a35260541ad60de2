"""Code tier: the report page (``cardamage report``), also rendered in headless Chromium when installed.

CI installs the browser with ``apt-get update && apt-get install -y chromium``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cardamage.cli import main
from cardamage.config import Params
from cardamage.monitoring.report import build_report, dvc_lock_hash

GREEN = (0, 200, 0)
NOW = dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.timezone.utc)


def _params(tmp: Path) -> Params:
    """Params pointing every artifact into ``tmp``."""
    p = Params()
    rep = tmp / "reports"
    p.evaluate.metrics_file = str(rep / "metrics.json")
    p.evaluate.plots_dir = str(rep)
    p.train.history_csv = str(rep / "train_history.csv")
    p.train.model_path = str(tmp / "models" / "model.keras")
    p.drift.html, p.drift.summary = str(rep / "drift.html"), str(rep / "drift_summary.json")
    p.simulate.plot, p.select.out = str(rep / "active_learning.png"), str(rep / "selection.csv")
    p.prepare.out_dir, p.prepare.summary = str(tmp / "prepared"), str(rep / "prepare_summary.json")
    p.report.out_file = str(rep / "index.html")
    return p


def _artifacts(tmp: Path) -> None:
    """A full set of fake pipeline outputs; every picture is a solid green block."""
    rep = tmp / "reports"
    rep.mkdir(parents=True)
    for name in ("training_curves", "pr_curve", "overlays_worst", "overlays_best", "active_learning"):
        Image.new("RGB", (300, 200), GREEN).save(rep / f"{name}.png")
    (rep / "metrics.json").write_text(json.dumps({
        "mean_iou": 0.61, "damage_iou": 0.42, "instance_count_mae": 1.25, "n_images": 8,
        "model_version": "20260101T000000Z-abcdef123456",
        "image": {"precision": 0.9, "recall": 0.8, "f1": 0.85, "average_precision": 0.88}}))
    (rep / "drift_summary.json").write_text(json.dumps({
        "drift_detected": True, "share_drifted": 0.5, "n_drifted": 6, "n_tested": 12,
        "drifted_features": ["brightness", "embedding"], "embedding": {"source": "colour_histogram"}}))
    (rep / "drift.html").write_text("<html><body>drift</body></html>")
    (rep / "train_history.csv").write_text("epoch,loss\n1,0.5\n")
    (rep / "prepare_summary.json").write_text(json.dumps({"n_photos": 69, "n_train": 61, "n_val": 8,
                                                          "n_conflicting_labels": 1}))
    (tmp / "prepared").mkdir()
    (tmp / "prepared" / "manifest.csv").write_text("path,sha256\n")


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.srcs.append(attrs["src"])
        if tag == "a":
            self.links.append(attrs["href"])


def _parse(html: str) -> _Images:
    parser = _Images()
    parser.feed(html)
    return parser


def test_empty_project_lists_everything_as_not_produced_yet(tmp_path):
    params = _params(tmp_path)
    page = build_report(params, now=NOW)
    html = Path(params.report.out_file).read_text(encoding="utf-8")
    assert page.model_version == "not trained yet" and page.data_version == "not prepared yet"
    assert html.count("not produced yet") == len(page.missing) == 11
    assert "<img" not in html and "2026-01-02 03:04 UTC" in html
    assert "not produced yet: validation metrics" in page.text_summary()


def test_full_report_links_every_artifact_relative_to_the_page(tmp_path):
    _artifacts(tmp_path)
    params = _params(tmp_path)
    page = build_report(params, now=NOW)
    out = Path(params.report.out_file)
    parsed = _parse(out.read_text(encoding="utf-8"))
    assert len(parsed.srcs) == 5
    for ref in parsed.srcs + parsed.links:
        assert not ref.startswith("/") and (out.parent / ref).is_file(), ref
    assert page.missing == ["next photos to label (CSV)"]
    assert page.model_version == "20260101T000000Z-abcdef123456"
    assert re.fullmatch(r"manifest [0-9a-f]{12}", page.data_version)
    text = page.text_summary()
    assert "mean IoU 0.610" in text and "DRIFT DETECTED (6/12 columns: brightness, embedding)" in text
    assert "69 photos (train 61, val 8)" in text


def test_data_version_includes_the_dvc_lock_hash(tmp_path, monkeypatch):
    _artifacts(tmp_path)
    params = _params(tmp_path)
    lock = {"schema": "2.0", "stages": {"prepare": {"cmd": "cardamage prepare", "outs": [
        {"path": params.prepare.out_dir, "md5": "0123456789abcdef0123.dir", "nfiles": 3}]}}}
    (tmp_path / "dvc.lock").write_text(json.dumps(lock))
    monkeypatch.chdir(tmp_path)
    assert dvc_lock_hash(params.prepare.out_dir) == "0123456789ab"
    assert build_report(params, now=NOW).data_version.endswith("/ dvc 0123456789ab")


def test_cli_prints_the_summary(tmp_path):
    _artifacts(tmp_path)
    params = _params(tmp_path)
    args = ["report"] + [x for k, v in (("evaluate.metrics_file", params.evaluate.metrics_file),
                                        ("evaluate.plots_dir", params.evaluate.plots_dir),
                                        ("drift.summary", params.drift.summary), ("drift.html", params.drift.html),
                                        ("prepare.summary", params.prepare.summary),
                                        ("report.out_file", params.report.out_file))
                         for x in ("--set", f"{k}={v}")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"report: {params.report.out_file}" in result.output and "metrics: mean IoU" in result.output


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None,
                    reason="chromium not installed (CI: apt-get update && apt-get install -y chromium)")
def test_page_renders_with_its_pictures_in_headless_chromium(tmp_path):
    _artifacts(tmp_path)
    params = _params(tmp_path)
    build_report(params, now=NOW)
    out = Path(params.report.out_file).resolve()
    shot = tmp_path / "shot.png"
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,3000"]
    dom = subprocess.run(base + ["--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    parsed = _parse(dom.stdout)
    assert len(parsed.srcs) == 5 and all((out.parent / s).is_file() for s in parsed.srcs)
    run = subprocess.run(base + [f"--screenshot={shot}", out.as_uri()], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    assert pixels.std(axis=0).max() > 10, "blank screenshot"
    green = (np.abs(pixels - np.array(GREEN)).sum(axis=1) < 30).sum()
    assert green > 4 * 200 * 200, f"pictures did not load ({green} green pixels)"
