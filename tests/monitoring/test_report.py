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
from operator import attrgetter
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
SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"
FIG = {"value": 0.42, "ci": [0.35, 0.48]}


def _params(tmp: Path) -> Params:
    """Params pointing every artifact into ``tmp``."""
    p = Params()
    rep = tmp / "reports"
    p.evaluate.metrics_file = str(rep / "metrics.json")
    p.evaluate.plots_dir = str(rep)
    p.train.history_csv = str(rep / "train_history.csv")
    p.train.model_path = str(tmp / "models" / "model.keras")
    p.drift.html, p.drift.summary = str(rep / "drift.html"), str(rep / "drift_summary.json")
    p.drift.features_csv = str(rep / "drift_features.csv")
    p.simulate.plot, p.select.out = str(rep / "active_learning.png"), str(rep / "selection.csv")
    p.prepare.out_dir, p.prepare.summary = str(tmp / "prepared"), str(rep / "prepare_summary.json")
    p.publish.decision, p.publish.history = str(rep / "publish.json"), str(rep / "history.jsonl")
    p.publish.card = str(tmp / "models" / "production.json")
    p.report.out_file, p.report.assets_dir = str(rep / "index.html"), str(rep / "assets")
    return p


def _decision(action: str = "promoted") -> dict:
    side = {"metrics": {"damage_iou": FIG, "mean_iou": {"value": 0.61, "ci": [0.55, 0.66]}, "confidence": 0.9,
                        "n_photos": 10, "iou": {"background": FIG, "damage": FIG}}}
    return {"promoted": action == "promoted", "action": action, "production": "v1" if action != "promoted" else "v2",
            "reason": "damage IoU +0.020 [-0.010, +0.050] against production" if action == "promoted" else
            "damage IoU -0.200 [-0.300, -0.100]: the lower bound is below -0.02", "time": "2026-01-02T03:00:00+00:00",
            "candidate": {"model_version": "v2", **side}, "production_before": {"model_version": "v1", **side},
            "difference": {"value": 0.02, "ci": [-0.01, 0.05]}, "test_set": {"n_photos": 10, "fingerprint": "abc"},
            "class_checks": [{"class": "damage", "candidate": 0.42, "production": 0.40, "drop": -0.02,
                              "tolerance": 0.05, "ok": True}]}


def _history(n: int) -> str:
    lines = [{"time": f"2026-01-0{i + 1}T00:00:00+00:00", "event": "gate", "model_version": f"v{i + 1}",
              "promoted": i % 2 == 0, "action": "promoted" if i % 2 == 0 else "refused",
              "metrics": {"damage_iou": {"value": 0.3 + 0.05 * i, "ci": [0.2 + 0.05 * i, 0.4 + 0.05 * i]}},
              "photos": {"train": {"sample": 53, "labelled": 5 * i}, "val": {"sample": 6}, "test": {"sample": 10}}}
             for i in range(n)]
    return "".join(json.dumps(x) + "\n" for x in lines)


def _artifacts(tmp: Path, action: str = "promoted", history: int = 2) -> None:
    """A full set of pipeline outputs; every figure is a solid green block, thumbnails are sample photos."""
    rep = tmp / "reports"
    rep.mkdir(parents=True)
    for name in ("training_curves", "overlays_worst", "overlays_best", "active_learning"):
        Image.new("RGB", (300, 200), GREEN).save(rep / f"{name}.png")
    (rep / "metrics.json").write_text(json.dumps({
        "mean_iou": 0.61, "damage_iou": 0.42, "instance_count_mae": 1.25, "n_images": 10, "splits": ["test"],
        "model_version": "v2", "intervals": {"damage_iou": FIG, "mean_iou": {"value": 0.61, "ci": [0.55, 0.66]}},
        "plots_skipped": {"pr_curve": "every evaluated photo shows damage (10 of 10): precision is 1"},
        "image": {"precision": 1.0, "recall": 0.8, "f1": 0.89, "average_precision": 0.88, "negatives": 0}}))
    (rep / "drift_summary.json").write_text(json.dumps({
        "drift_detected": True, "share_drifted": 0.5, "n_drifted": 6, "n_tested": 12,
        "drifted_features": ["brightness", "embedding"], "embedding": {"source": "colour_histogram"}}))
    ref = [f"reference,{SAMPLE / 'train' / f'{i}.jpg'},r{i},{100 + i % 5}" for i in (2, 10, 13, 14, 15, 16)]
    cur = [f"current,{SAMPLE / 'test' / name},c{k},{b}" for k, (name, b) in
           enumerate((("11.jpg", 102), ("12.jpg", 180), ("28.jpg", 40)))]
    (rep / "drift_features.csv").write_text("side,path,sha256,brightness\n" + "\n".join(ref + cur) + "\n")
    (rep / "drift.html").write_text("<html><body>drift</body></html>")
    (rep / "train_history.csv").write_text("epoch,loss\n1,0.5\n")
    (rep / "prepare_summary.json").write_text(json.dumps({"n_photos": 69, "n_train": 53, "n_val": 6, "n_test": 10,
                                                          "n_conflicting_labels": 1}))
    (rep / "publish.json").write_text(json.dumps(_decision(action)))
    (rep / "history.jsonl").write_text(_history(history))
    rows = [f"id{i},{SAMPLE / 'test' / name},{0.9 - 0.1 * i:.2f},{i + 1},hybrid,top entropy"
            for i, name in enumerate(("45.jpg", "60.jpg", "67.jpg"))]
    (rep / "selection.csv").write_text("id,path,score,rank,strategy,reason\n" + "\n".join(rows) + "\n")
    (tmp / "prepared").mkdir()
    (tmp / "prepared" / "manifest.csv").write_text("path,sha256\n")


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.links: list[str] = []
        self.headings: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.srcs.append(attrs["src"])
        if tag == "a":
            self.links.append(attrs["href"])
        self._in_h2 = tag == "h2"

    def handle_data(self, data):
        if self._in_h2:
            self.headings.append(data)
            self._in_h2 = False


def _parse(html: str) -> _Page:
    parser = _Page()
    parser.feed(html)
    return parser


def test_empty_project_lists_everything_as_not_produced_yet(tmp_path):
    params = _params(tmp_path)
    page = build_report(params, now=NOW)
    html = Path(params.report.out_file).read_text(encoding="utf-8")
    assert page.model_version == "not trained yet" and page.data_version == "not prepared yet"
    assert html.count("not produced yet") == len(page.missing) + 1 == 14  # + the active-learning line
    assert "<img" not in html and "2026-01-02 03:04 UTC" in html
    assert _parse(html).headings[0] == "No gate decision yet"
    assert "not produced yet: gate decision (JSON)" in page.text_summary()
    assert Path(params.report.assets_dir).is_dir(), "a DVC output, even when empty"


def test_the_page_reads_in_order_verdict_comparison_selection_history_drift(tmp_path):
    _artifacts(tmp_path)
    params = _params(tmp_path)
    page = build_report(params, now=NOW)
    out = Path(params.report.out_file)
    html = out.read_text(encoding="utf-8")
    parsed = _parse(html)
    assert parsed.headings[:5] == ["Promoted: the candidate v2 is now in production", "Candidate vs production",
                                   "Next photos to label (3, hybrid)", "History", "Data drift"]
    assert "0.420 [0.350, 0.480]" in html and "+0.020 [-0.010, +0.050]" in html, "figures with their intervals"
    assert "IoU per class" in html and "in production <code>v2</code>" in html
    for ref in parsed.srcs + parsed.links:
        assert not ref.startswith("/") and (out.parent / ref).is_file(), ref
    assets = Path(params.report.assets_dir)
    assert len(list((assets / "selection").glob("*.jpg"))) == 3 and "score 0.9000" in html
    # drift: 12.jpg (brightness 180) and 28.jpg (40) moved most, 11.jpg (102) is like the training photos
    movers = sorted(p.name for p in (assets / "drift").glob("*.jpg"))
    assert movers == ["00-12.jpg", "01-28.jpg", "02-11.jpg"]
    assert "brightness 180.000 (training median 101.500)" in html
    assert (assets / "history.png").is_file() and (assets / "labelled_photos.png").is_file()
    assert "precision-recall curve left out: every evaluated photo shows damage (10 of 10)" in html
    assert "precision-recall curve" not in page.missing and "image-level precision is 1" in html
    assert re.fullmatch(r"manifest [0-9a-f]{12}", page.data_version)
    text = page.text_summary()
    assert "verdict: PROMOTED v2" in text and "next to label: 3 photo(s), 45.jpg" in text
    assert "DRIFT DETECTED (6/12 columns: brightness, embedding)" in text and "test 10" in text
    assert text.splitlines()[-1].startswith(f"open {out.resolve().as_uri()}")


def test_a_refusal_a_short_history_and_a_bad_history_line_are_said(tmp_path):
    _artifacts(tmp_path, action="refused", history=1)
    params = _params(tmp_path)
    (tmp_path / "reports" / "active_learning.png").unlink()
    with open(params.publish.history, "a") as fh:
        fh.write("{not json\n")
    build_report(params, now=NOW)
    html = Path(params.report.out_file).read_text(encoding="utf-8")
    assert _parse(html).headings[0] == "Not promoted: production v1 stays"
    assert "the lower bound is below -0.02" in html
    assert "metric history plot left out: it needs at least two evaluations, 1 so far" in html
    assert f"{params.publish.history}:2: not JSON" in html
    assert "active-learning curve left out: not produced yet; `cardamage simulate`" in html
    assert not list(Path(params.report.assets_dir).glob("*.png")), "no stale plot from an earlier run"


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
    keys = ("evaluate.metrics_file", "evaluate.plots_dir", "drift.summary", "drift.html", "drift.features_csv",
            "prepare.summary", "publish.decision", "publish.history", "select.out", "report.out_file",
            "report.assets_dir")
    args = ["report"] + [x for k in keys for x in ("--set", f"{k}={attrgetter(k)(params)}")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"report: {params.report.out_file}" in result.output and "metrics: mean IoU" in result.output
    assert "verdict: PROMOTED" in result.output and "open file://" in result.output


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
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,6000"]
    dom = subprocess.run(base + ["--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    parsed = _parse(dom.stdout)
    # 3 selection thumbnails, 3 drift thumbnails, 2 history plots, active learning, training curves, 2 overlays
    assert len(parsed.srcs) == 12 and all((out.parent / s).is_file() for s in parsed.srcs)
    assert parsed.headings[0].startswith("Promoted")
    run = subprocess.run(base + [f"--screenshot={shot}", out.as_uri()], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    assert pixels.std(axis=0).max() > 10, "blank screenshot"
    green = (np.abs(pixels - np.array(GREEN)).sum(axis=1) < 30).sum()
    assert green > 3 * 200 * 200, f"pictures did not load ({green} green pixels)"


def test_active_learning_table_gives_effort_to_target_against_random():
    from cardamage.active.simulate_results import summarise
    from cardamage.monitoring import report_sections as sec

    def run(arm, seed, values, step):
        return {"strategy": arm, "seed": seed,
                "history": [{"labelled": 10, "effort": 11.0 + step * i, "tasks": 10 + 4 * i, "mean_iou": v,
                             "damage_iou": v} for i, v in enumerate(values)]}

    state = {"config": {}, "full_pool": {"mean_iou": 0.8, "labelled": 100},
             "runs": {"a": run("random", 0, [0.5, 0.6, 0.7, 0.77], 11.0),
                      "b": run("random", 1, [0.5, 0.6, 0.77, 0.78], 11.0),
                      "c": run("entropy@region", 0, [0.5, 0.77, 0.8, 0.8], 16.5),
                      "d": run("entropy@region", 1, [0.5, 0.76, 0.8, 0.8], 16.5)}}
    result = summarise(state, ["random", "entropy@region"], 0.95, metric="mean_iou")
    assert result["effort_to_target"] == {"random": 44.0, "entropy@region": 27.5}
    assert result["effort_relative_to_random"]["entropy@region"] == 0.625
    # target 0.76: random's mean 0.735 at 33 and 0.775 at 44, entropy's 0.5 at 11 and 0.765 at 27.5
    assert result["effort_to_target_interpolated"] == {"random": 39.9, "entropy@region": 27.2}
    assert result["effort_interpolated_relative_to_random"]["entropy@region"] == 0.682
    assert result["effort_to_target_interpolated_per_seed"]["random"] == {"0": 42.4, "1": 32.4}
    from cardamage.active.simulate_results import format_summary
    assert format_summary(result).splitlines()[3].split()[-2:] == ["27.2", "68%"], "cardamage simulate's table"
    assert result["noise_floor"]["max_seed_spread"] == 0.07
    assert result["effort_to_target_per_seed"] == {"random": {"0": 44.0, "1": 33.0},
                                                   "entropy@region": {"0": 27.5, "1": 27.5}}
    html = sec.active_learning_table(result)
    assert "<td>entropy@region</td><td>2</td><td>0.800</td><td>27.5</td><td>0: 27.5, 1: 27.5</td><td>14</td>" in html
    assert "<td>0: 44.0, 1: 33.0</td>" in html
    assert "<td>27.2</td><td>68%</td>" in html
    assert "Noise floor" in html and sec.active_learning_table({}) == ""
