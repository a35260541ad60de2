"""load_dataset: splits, relative paths, sizes from headers, missing and unlabelled images."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from cardamage.data.annotations import AnnotationError
from cardamage.data.dataset import image_path, iter_images, load_dataset


def test_sample_layout(sample):
    ds = load_dataset(sample)
    assert ds.root == sample
    assert len(ds.images) == 78
    labelled = list(iter_images(ds, labelled=True))
    assert len(labelled) == 70
    assert {r.split for r in labelled} == {"train", "val"}
    test = list(iter_images(ds, split="test"))
    assert len(test) == 8 and not any(r.labelled for r in test)
    assert sum(len(r.instances) for r in iter_images(ds, split="train")) == 152
    assert sum(len(r.instances) for r in iter_images(ds, split="val")) == 12
    first = ds.images[0]
    assert (first.path, first.split, first.source) == ("train/2.jpg", "train", "train/via_region_data.json")
    assert all((r.width, r.height) == (1024, 1024) for r in ds.images)
    assert all(image_path(ds, r).is_file() for r in ds.images)
    assert ds.meta["annotation_files"] == {"train": "train/via_region_data.json", "val": "val/via_region_data.json"}


def test_multiclass_template_and_split_choice(sample):
    ds = load_dataset(sample, annotation_file="{split}_multiclass.json", splits=["val"])
    assert {r.split for r in ds.images} == {"val"}
    assert sum(len(r.instances) for r in ds.images) == 24
    assert set(ds.categories) == {"headlamp", "door", "front_bumper", "hood", "rear_bumper"}
    with pytest.raises(AnnotationError, match="'nope'"):
        load_dataset(sample, splits=["nope"])


def test_multiclass_outside_points_clipped_to_header_size(sample, caplog):
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(sample, annotation_file="{split}_multiclass.json", splits=["train"])
    five = ds.by_path()["train/5.jpg"]
    assert max(x for i in five.instances for p in i.polygons for x, _ in p) == 1024
    assert "train/5.jpg" in caplog.text and "clipped" in caplog.text


def test_single_annotation_file_as_root(sample):
    ds = load_dataset(sample / "val" / "via_region_data.json")
    assert ds.root == sample / "val"
    assert len(ds.images) == 8 and ds.images[0].path == "1.jpg" and ds.images[0].split is None


def _copy_val(sample, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(sample / "val", root / "val")
    return root


def test_missing_image_file_is_dropped_with_a_warning(sample, tmp_path, caplog):
    root = _copy_val(sample, tmp_path)
    (root / "val" / "1.jpg").unlink()
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(root)
    assert "val/1.jpg" not in ds.by_path() and len(ds.images) == 7
    message = next(m for m in ds.meta["issues"] if "'1.jpg'" in m)
    assert "val/via_region_data.json" in message and "does not exist" in message
    assert message in caplog.text


def test_image_without_annotation_is_kept_unlabelled(sample, tmp_path, caplog):
    root = _copy_val(sample, tmp_path)
    shutil.copy(sample / "test" / "11.jpg", root / "val" / "extra.jpg")
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(root)
    extra = ds.by_path()["val/extra.jpg"]
    assert not extra.labelled and extra.split == "val" and (extra.width, extra.height) == (1024, 1024)
    assert "val/extra.jpg" in caplog.text and "no annotation" in caplog.text


def test_size_mismatch_is_reported(sample, tmp_path, caplog):
    root = tmp_path / "d"
    root.mkdir()
    shutil.copy(sample / "val" / "1.jpg", root / "1.jpg")
    coco = {"images": [{"id": 1, "file_name": "1.jpg", "width": 640, "height": 640}], "annotations": [],
            "categories": [{"id": 1, "name": "damage"}]}
    (root / "ann.json").write_text(json.dumps(coco))
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(root / "ann.json")
    assert (ds.images[0].width, ds.images[0].height) == (640, 640)
    assert "640x640" in caplog.text and "1024x1024" in caplog.text


def test_missing_root(tmp_path):
    with pytest.raises(AnnotationError, match="no such"):
        load_dataset(tmp_path / "absent")
