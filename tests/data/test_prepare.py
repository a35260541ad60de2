"""Data tier: ``cardamage prepare`` merges the sample and Label Studio labels into one stable dataset."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cardamage.cli import main
from cardamage.config import Params
from cardamage.data.annotations import ImageRecord
from cardamage.data.dataset import load_dataset
from cardamage.data.prepare import (
    Item,
    assign_splits,
    hash_split,
    in_test_split,
    manifest_csv,
    prepare,
)
from cardamage.data.prepare_report import summary_metrics

SQUARE = {"name": "polygon", "all_points_x": [100, 400, 400, 100], "all_points_y": [100, 100, 400, 400]}


def _params(sample: Path, tmp: Path, split: str = "keep") -> Params:
    params = Params()
    params.data.root = str(sample)
    params.labelstudio.labelled_dir = str(tmp / "labelled")
    params.prepare.out_dir = str(tmp / "prepared")
    params.prepare.split = split
    return params


def _pull(tmp: Path, photos: dict[str, Path]) -> Path:
    """A ``cardamage pull`` folder: ``images/<name>`` and one VIA file, one square damage per photo."""
    root = tmp / "labelled"
    (root / "images").mkdir(parents=True, exist_ok=True)
    via = {}
    for name, src in photos.items():
        shutil.copyfile(src, root / "images" / name)
        size = (root / "images" / name).stat().st_size
        via[f"images/{name}{size}"] = {"filename": f"images/{name}", "size": size, "file_attributes": {},
                                       "regions": [{"shape_attributes": SQUARE,
                                                    "region_attributes": {"name": "damage"}}]}
    (root / "via_region_data.json").write_text(json.dumps(via))
    return root


def _manifest(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


@pytest.fixture
def prepared(prepared_sample) -> dict:
    """The sample prepared once per session with the defaults (split: keep, no Label Studio labels)."""
    return prepared_sample


def test_sample_keeps_its_split_and_reads_back_with_load_dataset(prepared):
    result, out = prepared["result"], Path(prepared["params"].prepare.out_dir)
    # 10 % of the duplicate groups (by sha256[8:16]) are the fixed test split, whatever their folder
    assert result.report["n_train"] == 53 and result.report["n_val"] == 6 and result.report["n_test"] == 10
    assert result.report["n_sample"] == 69
    data = load_dataset(out, splits=["train", "val", "test"])
    assert sum(r.labelled for r in data.images) == 69
    rows = {r["origin"]: r for r in _manifest(out)}
    assert rows["sample/val/1.jpg"]["split"] == "val" and rows["sample/train/2.jpg"]["split"] == "train"
    assert set(next(iter(rows.values()))) >= {"path", "sha256", "phash", "split", "width", "height",
                                              "n_instances", "source"}
    by_path = {r.path: r for r in data.images}
    for row in rows.values():
        assert int(row["n_instances"]) == len(by_path[row["path"]].instances)


def test_masks_hold_class_indices_at_photo_size(prepared):
    out = Path(prepared["params"].prepare.out_dir)
    row = next(r for r in _manifest(out) if r["origin"] == "sample/train/2.jpg")
    mask = np.asarray(Image.open(out / row["mask"]))
    assert mask.shape == (int(row["height"]), int(row["width"])) and set(np.unique(mask)) == {0, 1}
    assert not (out / "masks").exists(), "a plain 'masks' folder would be read as a split by load_dataset"


def test_exact_duplicates_with_different_labels_are_reported(prepared):
    report = prepared["result"].report
    conflict = report["conflicting_labels"]
    assert [c["photos"] for c in conflict] == [["sample/train/25.jpg", "sample/train/48.jpg"]]
    assert conflict[0]["kept"] == ["sample/train/25.jpg"]
    origins = {r["origin"] for r in prepared["result"].rows}
    assert "sample/train/48.jpg" not in origins
    groups = [set(g) for g in report["duplicate_groups"]]
    assert {"sample/train/19.jpg", "sample/train/79.jpg"} in groups
    assert {"sample/train/33.jpg", "sample/train/8.jpg"} in groups


def test_output_bytes_are_deterministic(prepared, tmp_path):
    params = _params(prepared["sample"], tmp_path)
    prepare(params)
    assert _digest(Path(params.prepare.out_dir)) == _digest(Path(prepared["params"].prepare.out_dir))
    prepare(params)  # rebuilding in place gives the same bytes and leaves no temporary folder behind
    assert _digest(Path(params.prepare.out_dir)) == _digest(Path(prepared["params"].prepare.out_dir))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]


def test_hash_split_is_stable_when_label_studio_photos_arrive(prepared, tmp_path):
    sample = prepared["sample"]
    params = _params(sample, tmp_path, split="hash")
    params.prepare.val_percent = 30
    before = {r["sha256"]: r["split"] for r in prepare(params).rows}
    _pull(tmp_path, {"new1.jpg": sample / "test" / "11.jpg", "new2.jpg": sample / "test" / "12.jpg"})
    after = prepare(params)
    splits = {r["sha256"]: r["split"] for r in after.rows}
    assert all(splits[sha] == side for sha, side in before.items())
    assert after.report["n_labelled"] == 2 and len(splits) == len(before) + 2
    for group in after.report["duplicate_groups"]:
        assert len({r["split"] for r in after.rows if r["origin"] in group}) == 1


def test_label_studio_labels_win_over_a_byte_identical_sample_photo(prepared, tmp_path):
    sample = prepared["sample"]
    params = _params(sample, tmp_path)
    _pull(tmp_path, {"66.jpg": sample / "test" / "66.jpg"})  # same bytes as train/17.jpg
    result = prepare(params)
    rows = {r["origin"]: r for r in result.rows}
    assert "labelled/images/66.jpg" in rows and "sample/train/17.jpg" not in rows
    assert rows["labelled/images/66.jpg"]["split"] == "train", "keeps the split of the sample copy"
    assert any(c["photos"][0] == "labelled/images/66.jpg" for c in result.report["conflicting_labels"])


def test_keep_mode_moves_a_group_split_across_train_and_val():
    def item(name: str, split: str | None, sha: str) -> Item:
        return Item(ImageRecord(path=name), Path(name), "sample", split, sha256=sha)

    group = [item("train/a.jpg", "train", "f" * 64), item("val/b.jpg", "val", "0" * 64)]
    moved = assign_splits([group, [item("new.jpg", None, "0" * 64)]], "keep", 15)
    assert [i.split for i in group] == ["train", "train"]
    assert moved == [{"group": "0" * 12, "split": "train", "moved": ["sample/val/b.jpg"],
                      "members": ["sample/train/a.jpg", "sample/val/b.jpg"]}]
    with pytest.raises(ValueError, match="prepare.split"):
        assign_splits([group], "random")
    with pytest.raises(ValueError, match="prepare.val_percent"):
        assign_splits([group], "hash", 101)


def test_the_test_split_is_fixed_and_takes_no_new_labels(prepared, tmp_path):
    sample, before = prepared["sample"], prepared["result"].rows
    test = {r["origin"]: r["sha256"] for r in before if r["split"] == "test"}
    passing = {o for o, sha in test.items() if in_test_split(sha, 10)}
    assert len(test) == 10 and len(passing) == 9
    # 19.jpg ~ 79.jpg: the near duplicate of a test photo is in the test split too
    assert {"sample/train/19.jpg", "sample/train/79.jpg"} <= set(test) and len(set(test) - passing & {
        "sample/train/19.jpg", "sample/train/79.jpg"}) == 1
    assert not any(in_test_split(r["sha256"], 10) for r in before if r["split"] != "test")
    # Label Studio brings a re-labelled copy of a test photo and a new photo that hashes into the test share
    new_in_share = sample / "test" / "72.jpg"
    assert in_test_split(_sha(new_in_share), 10)
    _pull(tmp_path, {"again-7.jpg": sample / "train" / "7.jpg", "new.jpg": new_in_share})
    params = _params(sample, tmp_path)
    after = prepare(params)
    rows = {r["origin"]: r for r in after.rows}
    assert rows["labelled/images/new.jpg"]["split"] != "test", "new labels never enter the test split"
    assert {o: r["sha256"] for o, r in rows.items() if r["split"] == "test"} == test
    assert "labelled/images/again-7.jpg" not in rows and rows["sample/train/7.jpg"]["split"] == "test"
    assert after.report["test_split"]["held_out"] == [{"photo": "labelled/images/again-7.jpg",
                                                       "test_photos": ["sample/train/7.jpg"]}]
    assert summary_metrics(after.report)["n_test_held_out"] == 1
    params.prepare.test_from_labelled = True
    asked = {r["origin"]: r for r in prepare(params).rows}
    assert asked["labelled/images/again-7.jpg"]["split"] == asked["labelled/images/new.jpg"]["split"] == "test", \
        "unless asked"
    params.prepare.test_percent = 101
    with pytest.raises(ValueError, match="prepare.test_percent"):
        prepare(params)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_hash_split_formula():
    assert hash_split("00000000" + "f" * 56, 15) == "val"  # 0 % 100 = 0 < 15
    assert hash_split("00000063" + "0" * 56, 15) == "train"  # 0x63 = 99
    assert hash_split("0000000e" + "0" * 56, 15) == "val"  # 14
    assert hash_split("0000000f" + "0" * 56, 15) == "train"  # 15


def test_manifest_rows_are_sorted():
    text = manifest_csv([{"path": "val/b.jpg"}, {"path": "train/a.jpg"}])
    assert text.splitlines()[1].startswith("train/a.jpg") and text.endswith("\n")


def test_cli_prints_the_summary_and_writes_metrics(prepared, tmp_path):
    sample = prepared["sample"]
    args = ["prepare", "--set", f"data.root={sample}", "--set", f"labelstudio.labelled_dir={tmp_path / 'none'}",
            "--set", f"prepare.out_dir={tmp_path / 'out'}", "--set", f"prepare.summary={tmp_path / 'sum.json'}"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "69 labelled photo(s)" in result.output and "sample/train/25.jpg = sample/train/48.jpg" in result.output
    summary = json.loads((tmp_path / "sum.json").read_text())
    assert summary["n_train"] == 53 and summary["n_test"] == 10 and summary["n_conflicting_labels"] == 1


def test_exclude_flagged_leaves_out_the_photos_the_label_audit_flagged(prepared, tmp_path):
    from cardamage.data.dedup import file_sha256

    sample = prepared["sample"]
    params = _params(sample, tmp_path)
    root = _pull(tmp_path, {"new1.jpg": sample / "test" / "11.jpg", "new2.jpg": sample / "test" / "12.jpg"})
    audit = tmp_path / "audit.csv"
    audit.write_text("id,image,flagged\n" f"{file_sha256(root / 'images' / 'new1.jpg')},images/new1.jpg,True\n"
                     f"{file_sha256(root / 'images' / 'new2.jpg')},images/new2.jpg,False\n"
                     f"{file_sha256(sample / 'train' / '10.jpg')},10.jpg,True\n")  # a sample photo: never left out
    params.labelstudio.audit.csv = str(audit)
    assert prepare(params).report["n_labelled"] == 2  # off by default
    params.prepare.exclude_flagged = True
    result = prepare(params)
    origins = {r["origin"] for r in result.rows}
    assert result.report["flagged_out"] == ["labelled/images/new1.jpg"]
    assert "labelled/images/new2.jpg" in origins and "sample/train/10.jpg" in origins
    assert summary_metrics(result.report)["n_flagged_out"] == 1
