"""Code tier: one data version for the report page (a line) and the claim service (a mapping)."""

from __future__ import annotations

import json
from pathlib import Path

from cardamage.config import Params
from cardamage.monitoring.data_version import data_version, data_version_text, dvc_lock_entry


def _params(tmp: Path) -> Params:
    p = Params()
    p.prepare.out_dir, p.prepare.summary = str(tmp / "prepared"), str(tmp / "prepare_summary.json")
    return p


def _lock(tmp: Path, out_dir: str, md5: str = "0123456789abcdef0123.dir") -> Path:
    lock = tmp / "dvc.lock"
    lock.write_text(json.dumps({"schema": "2.0", "stages": {
        "train": {"cmd": "cardamage train", "outs": [{"path": "models/model.keras", "md5": "ff"}]},
        "prepare": {"cmd": "cardamage prepare", "outs": [{"path": out_dir + "/", "md5": md5, "nfiles": 3}]}}}))
    return lock


def test_nothing_prepared(tmp_path):
    version = data_version(_params(tmp_path), tmp_path / "dvc.lock")
    assert version is None and data_version_text(version) == "not prepared yet"


def test_summary_only_gives_the_service_a_mapping_and_the_report_not_prepared(tmp_path):
    params = _params(tmp_path)
    Path(params.prepare.summary).write_text(json.dumps({"n_photos": 69, "n_train": 61}))
    version = data_version(params, tmp_path / "dvc.lock")
    assert version["source"] == Path(params.prepare.summary).as_posix() and version["n_photos"] == 69
    assert len(version["sha256"]) == 12 and data_version_text(version) == "not prepared yet"


def test_manifest_and_dvc_lock(tmp_path):
    params = _params(tmp_path)
    Path(params.prepare.out_dir).mkdir()
    (Path(params.prepare.out_dir) / "manifest.csv").write_text("path,split\na.jpg,train\n")
    Path(params.prepare.summary).write_text("{}")
    lock = _lock(tmp_path, params.prepare.out_dir)
    version = data_version(params, lock)
    assert version == {"source": "dvc.lock", "stage": "prepare", "path": params.prepare.out_dir + "/",
                       "md5": "0123456789abcdef0123.dir", "manifest": version["manifest"]}
    assert data_version_text(version) == f"manifest {version['manifest']} / dvc 0123456789ab"
    without_lock = data_version(params, tmp_path / "absent.lock")
    assert data_version_text(without_lock) == f"manifest {version['manifest']}"


def test_unreadable_lock_is_not_recorded(tmp_path):
    (tmp_path / "dvc.lock").write_text("stages: [unclosed\n")
    assert dvc_lock_entry("data/prepared", tmp_path / "dvc.lock") is None
    (tmp_path / "dvc.lock").write_text("- a list\n")
    assert dvc_lock_entry("data/prepared", tmp_path / "dvc.lock") is None
