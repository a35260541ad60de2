"""Model tier: the promotion gate (``cardamage publish``), the model card, the archive and rollback.

The sample is prepared once (real ``cardamage prepare``: its fixed test split has 10 photos). The
models here are ``.keras`` files holding only their cardamage info, and their per-photo results on
the test split are written as ``evaluate`` would (``evaluate.per_photo``), so the gate runs for
real without training: what it decides follows from those confusion matrices alone. The real
models and the real evaluation go through the gate in tests/test_dvc_pipeline.py.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from cardamage.cli import main
from cardamage.config import Params
from cardamage.fileio import write_json
from cardamage.model.publish import current_test_shas, publish, rollback
from cardamage.monitoring.history import read_entries


@pytest.fixture
def prepared(prepared_sample) -> Path:
    """The prepared sample (shared, read only): its test split has 10 photos."""
    return Path(prepared_sample["params"].prepare.out_dir)


def _params(tmp: Path, prepared: Path) -> Params:
    p = Params()
    p.data.root = p.prepare.out_dir = str(prepared)
    p.prepare.summary = str(tmp / "reports" / "prepare_summary.json")
    p.train.model_path = str(tmp / "models" / "model.keras")
    p.evaluate.per_photo = str(tmp / "reports" / "eval_photos.json")
    p.evaluate.bootstrap = 300
    pub = p.publish
    pub.production_path, pub.card = str(tmp / "models" / "production.keras"), str(tmp / "models" / "production.json")
    pub.decision, pub.history = str(tmp / "reports" / "publish.json"), str(tmp / "reports" / "history.jsonl")
    pub.archive_dir = str(tmp / "models" / "archive")
    return p


def _model(path: str | Path, version: str, classes: tuple[str, ...] = ("damage",), size: int = 64) -> Path:
    """A ``.keras`` zip with only its cardamage info (all the gate reads of a model it need not run)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"classes": list(classes), "input_size": size, "model_version": version}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", json.dumps({"config": {"cardamage_info": info}}))
    return path


def _cm(i: int, hit: float, classes: int = 1, confused: float = 0.0) -> list[list[int]]:
    """Photo ``i``: 1000 px, 150-249 damage px, a share ``hit`` found; with 2 classes half is each, and a
    share ``confused`` of the found second class is predicted as the first."""
    damage, false_pos = 150 + (17 * i) % 100, 10 + (7 * i) % 30
    if classes == 1:
        found = round(damage * hit)
        return [[1000 - damage - false_pos, false_pos], [damage - found, found]]
    half = damage // 2
    found = round(half * hit)
    swapped = round(found * confused)
    return [[1000 - 2 * half - false_pos, false_pos, 0], [half - found, found, 0],
            [half - found, swapped, found - swapped]]


def _candidate(params: Params, version: str, hit: float, classes: tuple[str, ...] = ("damage",),
               confused: float = 0.0, size: int = 64) -> Path:
    """Write the candidate model and its per-photo results on the current test split (as evaluate does)."""
    shas = current_test_shas(params)
    photos = [{"path": path, "sha256": sha, "cm": _cm(i, hit, len(classes), confused)}
              for i, (sha, path) in enumerate(sorted(shas.items()))]
    write_json(params.evaluate.per_photo, {"model_version": version, "classes": ["background", *classes],
                                           "input_size": size, "splits": ["test"], "photos": photos})
    return _model(params.train.model_path, version, classes, size)


def _production_version(params: Params) -> str:
    with zipfile.ZipFile(params.publish.production_path) as zf:
        return json.loads(zf.read("config.json"))["config"]["cardamage_info"]["model_version"]


def test_the_first_model_is_promoted_with_its_card_and_a_history_line(tmp_path, prepared):
    params = _params(tmp_path, prepared)
    _candidate(params, "v1", 0.6)
    decision = publish(params)
    assert decision.action == "promoted" and decision.reason.startswith("first model: no production model yet")
    assert Path(params.publish.production_path).read_bytes() == Path(params.train.model_path).read_bytes()
    card = json.loads(Path(params.publish.card).read_text())
    assert card["model_version"] == "v1" and card["promoted_by"] == "gate"
    assert card["test_set"]["n_photos"] == 10 and len(card["evaluation"]["photos"]) == 10
    assert card["photos"]["train"] == {"sample": 53} and card["photos"]["test"] == {"sample": 10}
    assert card["data_version"]["text"].startswith("manifest ") and "revision" in (card["git"] or {"revision": 1})
    assert {"training", "data", "prepare", "evaluate", "publish"} <= set(card["params"])
    lo, hi = card["metrics"]["damage_iou"]["ci"]
    assert lo <= card["metrics"]["damage_iou"]["value"] <= hi
    saved = json.loads(Path(params.publish.decision).read_text())
    assert saved["promoted"] is True and saved["production"] == "v1"
    (entry,), _ = read_entries(params.publish.history)
    assert entry["model_version"] == "v1" and entry["promoted"] and entry["photos"]["train"] == {"sample": 53}


def test_a_worse_candidate_is_refused_and_production_kept(tmp_path, prepared):
    params = _params(tmp_path, prepared)
    _candidate(params, "v1", 0.6)
    publish(params)
    before = Path(params.publish.production_path).read_bytes()
    _candidate(params, "v2", 0.4)
    decision = publish(params)
    assert decision.action == "refused" and not decision.promoted
    assert "lower bound is below -0.02" in decision.reason and "10 test photos" in decision.reason
    assert decision.difference["value"] < 0 and decision.production == "v1"
    assert Path(params.publish.production_path).read_bytes() == before
    assert json.loads(Path(params.publish.card).read_text())["model_version"] == "v1"
    entries, _ = read_entries(params.publish.history)
    assert [(e["model_version"], e["promoted"]) for e in entries] == [("v1", True), ("v2", False)]
    # the same candidate again: the same decision (seeded intervals), and a candidate equal to production passes
    assert publish(params).reason == decision.reason
    _candidate(params, "v3", 0.6)
    assert publish(params).action == "promoted"


def test_promotion_archives_the_old_model_and_rollback_restores_it(tmp_path, prepared):
    params = _params(tmp_path, prepared)
    _candidate(params, "v1", 0.6)
    publish(params)
    _candidate(params, "v2", 0.7)
    assert publish(params).action == "promoted" and _production_version(params) == "v2"
    assert (Path(params.publish.archive_dir) / "v1.keras").is_file()
    args = ["publish", "--set", f"data.root={prepared}", "--set", f"prepare.out_dir={prepared}"] + [
        x for k in ("production_path", "card", "decision", "history", "archive_dir")
        for x in ("--set", f"publish.{k}={getattr(params.publish, k)}")] + [
        "--set", f"train.model_path={params.train.model_path}",
        "--set", f"evaluate.per_photo={params.evaluate.per_photo}"]
    result = CliRunner().invoke(main, args + ["--rollback"])
    assert result.exit_code == 0, result.output
    assert "PROMOTED" in result.output and "rolled back" in result.output
    assert _production_version(params) == "v1"
    assert json.loads(Path(params.publish.card).read_text())["model_version"] == "v1"
    # the rolled-back version does not come back through the gate ...
    refused = publish(params)
    assert refused.action == "refused" and "v2 was rolled back" in refused.reason
    assert _production_version(params) == "v1"
    # ... unless a person forces it
    result = CliRunner().invoke(main, args + ["--force"])
    assert result.exit_code == 0 and "--force" in result.output and _production_version(params) == "v2"
    events = [e["event"] for e in read_entries(params.publish.history)[0]]
    assert events == ["gate", "gate", "rollback", "gate", "force"]


def test_rollback_with_nothing_archived_is_one_line(tmp_path, prepared):
    params = _params(tmp_path, prepared)
    result = CliRunner().invoke(main, ["publish", "--rollback", "--set", f"publish.archive_dir={tmp_path / 'a'}",
                                       "--set", f"publish.production_path={tmp_path / 'p.keras'}"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "no earlier production model to roll back to" in result.output
    with pytest.raises(Exception, match="roll back"):
        rollback(params)


def test_a_class_that_drops_more_than_its_tolerance_blocks_promotion(tmp_path, prepared):
    params = _params(tmp_path, prepared)
    params.data.classes = ["dent", "scratch"]
    params.publish.class_tolerance, params.publish.default_class_tolerance = {"scratch": 0.1}, 0.15
    _candidate(params, "v1", 0.6, ("dent", "scratch"))
    publish(params)
    _candidate(params, "v2", 0.6, ("dent", "scratch"), confused=0.5)  # same damage found, scratch called dent
    decision = publish(params)
    assert decision.difference["value"] == pytest.approx(0.0), "damage IoU is unchanged"
    assert decision.action == "refused" and "scratch IoU dropped" in decision.reason
    assert "its tolerance 0.1" in decision.reason and "dent IoU" not in decision.reason
    checks = {c["class"]: c for c in decision.class_checks}
    assert not checks["scratch"]["ok"] and checks["dent"]["ok"] and checks["dent"]["tolerance"] == 0.15


@pytest.mark.parametrize("classes, size, named", [(("headlamp",), 64, ("['headlamp']", "['damage']")),
                                                  (("damage",), 256, ("at 256 px", "at 64 px"))])
def test_a_production_model_for_other_classes_or_size_is_refused_naming_both(tmp_path, prepared, classes, size,
                                                                            named):
    params = _params(tmp_path, prepared)
    _model(params.publish.production_path, "old", classes, size)
    _candidate(params, "v1", 0.6)
    decision = publish(params)
    assert decision.action == "refused" and all(n in decision.reason for n in named), decision.reason
    assert "old" in decision.reason and "v1" in decision.reason and "--force" in decision.reason
    assert _production_version(params) == "old"


@pytest.mark.parametrize("how, said", [("missing", "does not exist"), ("garbage", "not a .keras model file"),
                                       ("foreign", "not a cardamage model"), ("no_weights", "cannot be loaded")])
def test_a_missing_or_corrupt_production_model_is_treated_as_none_and_said_so(tmp_path, prepared, how, said):
    params = _params(tmp_path, prepared)
    prod = Path(params.publish.production_path)
    prod.parent.mkdir(parents=True)
    if how == "garbage":
        prod.write_bytes(b"PK\x03\x04 cut short")
    elif how == "foreign":
        with zipfile.ZipFile(prod, "w") as zf:
            zf.writestr("config.json", json.dumps({"class_name": "Functional", "config": {}}))
    elif how == "no_weights":
        _model(prod, "old")  # a readable header, no weights: found when the gate loads it to compare
    _candidate(params, "v1", 0.6)
    decision = publish(params)
    assert decision.action == "promoted" and decision.reason.startswith("first model:")
    assert said in decision.reason and ("treated as none" in decision.reason or how == "missing")
    assert _production_version(params) == "v1"
    assert not list(Path(params.publish.archive_dir).glob("*.keras")), "an unusable model is not kept for rollback"


def test_a_test_set_that_shrank_is_not_compared(tmp_path, prepared):
    data = tmp_path / "prepared"
    shutil.copytree(prepared, data)
    params = _params(tmp_path, data)
    _candidate(params, "v1", 0.6)
    publish(params)
    via_file = data / "test" / "via_region_data.json"
    via = json.loads(via_file.read_text())
    gone = sorted(via)[0]
    via_file.write_text(json.dumps({k: v for k, v in via.items() if k != gone}))
    _candidate(params, "v2", 0.9)  # better, but measured on 9 photos where production had 10
    decision = publish(params)
    assert decision.action == "refused" and "the test set shrank" in decision.reason
    assert "measured on 10 photos and 1 of them are gone" in decision.reason
    assert via[gone]["filename"] in decision.reason and _production_version(params) == "v1"
