"""Data tier: the reviewed area of a photo (region tasks) survives every format and masks training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cardamage.data.annotations import Dataset, ImageRecord, Instance
from cardamage.data.formats import read_annotations, write_annotations
from cardamage.data.reviewed import (
    IGNORE_INDEX,
    MAX_BOXES,
    clip_polygon,
    mask_unreviewed,
    merge,
    normalize,
    parse_boxes,
    reviewed_mask,
    reviewed_share,
)
from cardamage.model.losses import IGNORE_INDEX as LOSS_IGNORE

SQUARE = [(10.0, 10.0), (50.0, 10.0), (50.0, 50.0), (10.0, 50.0)]


def _dataset(reviewed) -> Dataset:
    record = ImageRecord(path="a.jpg", width=100, height=80, instances=[Instance("damage", [SQUARE])],
                         attributes={"view": "front"}, reviewed=reviewed)
    return Dataset(images=[record], categories=["damage"])


def test_boxes_parse_from_json_text_and_lists():
    assert parse_boxes("[[0, 0, 10, 20.5]]", "x") == [(0.0, 0.0, 10.0, 20.5)]
    assert parse_boxes([[1, 2, 3, 4], [5, 6, 7, 8]], "x") == [(1, 2, 3, 4), (5, 6, 7, 8)]
    assert parse_boxes([], "x") == []


@pytest.mark.parametrize("value, reason", [
    ("[[0, 0, 10", "not JSON"), ({"x": 1}, "not a list"), ([[0, 0, 10]], "four finite numbers"),
    ([[0, 0, True, 4]], "four finite numbers"), ([[0, 0, float("nan"), 4]], "four finite numbers"),
    ([[0, 0, 0, 4]], "width, height > 0"), ([[-1, 0, 5, 4]], "x, y >= 0"),
    ([[0, 0, 1, 1]] * (MAX_BOXES + 1), "more than"),
])
def test_bad_boxes_are_refused_with_the_place_and_reason(value, reason):
    with pytest.raises(ValueError, match=reason) as err:
        parse_boxes(value, "file.json: image 'a.jpg'")
    assert "file.json: image 'a.jpg'" in str(err.value)


def test_mask_counts_pixels_whose_centre_is_inside_a_box():
    m = reviewed_mask([(2, 1, 3, 2)], 5, 8)
    assert m.sum() == 6 and m[1:3, 2:5].all()
    assert reviewed_mask(None, 3, 4).all()
    assert reviewed_mask([(0, 0, 4, 4)], 4, 4, sx=0.5, sy=0.5)[:2, :2].all()
    assert reviewed_mask([(0, 0, 4, 4)], 4, 4, sx=0.5, sy=0.5).sum() == 4
    assert not reviewed_mask([(1e9, 1e9, 1e9, 1e9)], 4, 4).any(), "boxes beyond the photo clip to nothing"


def test_unreviewed_pixels_get_the_loss_ignore_index():
    assert IGNORE_INDEX == LOSS_IGNORE
    mask = np.ones((4, 6), np.uint8)
    mask_unreviewed(mask, [(0, 0, 3, 4)])
    assert (mask[:, :3] == 1).all() and (mask[:, 3:] == IGNORE_INDEX).all()


def test_share_merge_and_a_fully_covered_photo_is_an_ordinary_one():
    assert reviewed_share([(0, 0, 50, 80), (25, 0, 50, 80)], 80, 100) == pytest.approx(0.75)
    assert reviewed_share(None, 80, 100) == 1.0
    assert reviewed_share([(0, 0, 1000, 1000)], 40_000, 40_000) == pytest.approx(0.000625, rel=0.1)
    assert merge([(0, 0, 1, 1)], None) is None
    assert merge([(0, 0, 1, 1)], [(0, 0, 1, 1), (2, 2, 1, 1)]) == [(0, 0, 1, 1), (2, 2, 1, 1)]
    assert normalize([(0, 0, 60, 80), (50, 0, 50, 80)], 80, 100) is None
    assert normalize([(0, 0, 60, 80)], 80, 100) == [(0, 0, 60, 80)]


def test_clip_polygon_keeps_the_part_inside_the_box():
    clipped = clip_polygon(SQUARE, (30, 0, 100, 30))
    xs, ys = [p[0] for p in clipped], [p[1] for p in clipped]
    assert (min(xs), max(xs), min(ys), max(ys)) == (30, 50, 10, 30)
    assert clip_polygon(SQUARE, (60, 60, 10, 10)) == []
    assert clip_polygon(SQUARE, (0, 0, 100, 100)) == SQUARE


@pytest.mark.parametrize("fmt, name", [("via", "v.json"), ("via1", "v1.json"), ("via-csv", "v.csv"),
                                       ("coco", "c.json")])
def test_reviewed_boxes_survive_every_format(tmp_path, fmt, name):
    boxes = [(0.0, 0.0, 40.5, 80.0), (60.0, 10.0, 40.0, 30.0)]
    path = write_annotations(_dataset(boxes), tmp_path / name, fmt)
    back = read_annotations(path).images[0]
    assert back.reviewed == boxes and back.attributes.get("view") == "front"
    assert "reviewed_boxes" not in back.attributes
    whole = read_annotations(write_annotations(_dataset(None), tmp_path / f"whole_{name}", fmt)).images[0]
    assert whole.reviewed is None, "a photo labelled as a whole stays one"


def test_the_via_attribute_is_text_and_the_coco_field_a_list(tmp_path):
    via = json.loads(write_annotations(_dataset([(1, 2, 3, 4)]), tmp_path / "v.json", "via").read_text())
    assert next(iter(via.values()))["file_attributes"]["reviewed_boxes"] == "[[1,2,3,4]]"
    coco = json.loads(write_annotations(_dataset([(1, 2, 3, 4)]), tmp_path / "c.json", "coco").read_text())
    assert coco["images"][0]["reviewed_boxes"] == [[1, 2, 3, 4]]


def test_a_bad_reviewed_value_is_warned_and_counts_as_nothing_reviewed(tmp_path, caplog):
    path = write_annotations(_dataset(None), tmp_path / "c.json", "coco")
    data = json.loads(path.read_text())
    data["images"][0]["reviewed_boxes"] = [[0, 0, -5, 3]]
    path.write_text(json.dumps(data))
    record = read_annotations(path).images[0]
    assert record.reviewed == []
    assert "c.json" in caplog.text and "reviewed_boxes" in caplog.text and "nothing of this photo" in caplog.text


def test_training_and_evaluation_masks_ignore_unreviewed_pixels():
    from cardamage.model.inputs import fit_geometry, fit_mask

    fit = fit_geometry(100, 80, 50, "letterbox")
    record = _dataset([(0, 0, 30, 80)]).images[0]
    mask = fit_mask(record.instances, ["damage"], fit, reviewed=record.reviewed)
    whole = fit_mask(record.instances, ["damage"], fit)
    inside = reviewed_mask(record.reviewed, 80, 100, fit.sx, fit.sy)[: fit.new_h, : fit.new_w]
    assert (mask != IGNORE_INDEX).sum() == inside.sum() == 15 * 40
    assert (mask[mask != IGNORE_INDEX] == whole[mask != IGNORE_INDEX]).all(), "reviewed labels unchanged"
    assert 1 in mask, "the damage inside the reviewed box is still labelled"


def test_prepare_keeps_the_boxes_and_writes_ignore_outside_them(prepared_sample, tmp_path):
    from cardamage.config import Params
    from cardamage.data.prepare import prepare

    sample = prepared_sample["sample"]
    params = Params()
    params.data.root = str(sample)
    params.labelstudio.labelled_dir = str(tmp_path / "labelled")
    params.prepare.out_dir = str(tmp_path / "prepared")
    photo = tmp_path / "labelled" / "images" / "region.jpg"
    photo.parent.mkdir(parents=True)
    Image.new("RGB", (400, 300), (90, 120, 150)).save(photo)
    size = photo.stat().st_size
    square = {"name": "polygon", "all_points_x": [100, 350, 350, 100], "all_points_y": [100, 100, 250, 250]}
    region = {"shape_attributes": square, "region_attributes": {"name": "damage"}}
    via = {f"images/region.jpg{size}": {"filename": "images/region.jpg", "size": size, "regions": [region],
                                        "file_attributes": {"reviewed_boxes": "[[0,0,250,300]]"}}}
    (tmp_path / "labelled" / "via_region_data.json").write_text(json.dumps(via))
    result = prepare(params)
    row = next(r for r in result.rows if r["origin"] == "labelled/images/region.jpg")
    out = tmp_path / "prepared"
    mask = np.asarray(Image.open(out / row["mask"]))
    assert (mask[:, :250] != IGNORE_INDEX).all() and (mask[:, 250:] == IGNORE_INDEX).all()
    assert (mask[101:250, 101:250] == 1).all() and (mask[:100, :250] == 0).all()
    back = read_annotations(out / row["split"] / params.data.annotation_file).by_path()[Path(row["path"]).name]
    assert back.reviewed == [(0, 0, 250, 300)]
    shutil.rmtree(out)
