"""VIA 1.x / 2.x JSON readers and writers on the sample's real files and small VIA 1 files."""

from __future__ import annotations

import json
import logging
import math

import pytest

from cardamage.data.annotations import AnnotationError
from cardamage.data.formats import read_annotations, write_annotations
from cardamage.data.formats.via import ELLIPSE_POINTS, detect_category_key


def _via_polygons(data: dict) -> dict[str, list]:
    """filename -> sorted (category, points) straight from VIA 2 JSON."""
    out: dict[str, list] = {}
    for entry in data.values():
        out[entry["filename"]] = sorted(
            (r["region_attributes"]["name"], tuple(zip(r["shape_attributes"]["all_points_x"],
                                                       r["shape_attributes"]["all_points_y"])))
            for r in entry["regions"])
    return out


def test_sample_via2_export_read(sample):
    ds = read_annotations(sample / "train" / "via_region_data.json")
    assert ds.meta["format"] == "via"
    assert ds.meta["via_category_key"] == "name"
    assert len(ds.images) == 62
    assert sum(len(r.instances) for r in ds.images) == 152
    assert ds.categories == ["damage"]
    first = ds.images[0]
    assert (first.path, first.file_size) == ("2.jpg", 94448)
    assert first.instances[0].polygons[0][:2] == [(626.0, 541.0), (698.0, 502.0)]


def test_via2_to_coco_to_via2_keeps_every_polygon(sample, tmp_path):
    src = sample / "train" / "via_region_data.json"
    original = json.loads(src.read_text())
    write_annotations(read_annotations(src), tmp_path / "coco.json", "coco")
    back = read_annotations(tmp_path / "coco.json", root=sample / "train")
    assert back.meta["format"] == "coco"
    write_annotations(back, tmp_path / "via.json", "via")
    result = json.loads((tmp_path / "via.json").read_text())
    assert _via_polygons(result) == _via_polygons(original)
    assert result == original  # keys (filename+size from disk), attributes and ints all identical


def test_via_project_round_trip_keeps_attributes_and_settings(sample, tmp_path):
    src = sample / "train" / "car-damage-train.json"
    original = json.loads(src.read_text())
    ds = read_annotations(src)
    assert ds.meta["format"] == "via-project"
    assert ds.meta["via_attributes"] == original["_via_attributes"]
    write_annotations(ds, tmp_path / "project.json", "via-project")
    written = json.loads((tmp_path / "project.json").read_text())
    assert written["_via_attributes"] == original["_via_attributes"]
    assert written["_via_settings"] == original["_via_settings"]
    assert written["_via_img_metadata"] == original["_via_img_metadata"]
    assert read_annotations(tmp_path / "project.json").meta["via_attributes"] == original["_via_attributes"]


def test_via_project_written_from_other_format_gets_attributes(sample, tmp_path):
    ds = read_annotations(sample / "val" / "val_multiclass.json")
    write_annotations(ds, tmp_path / "p.json", "via-project")
    written = json.loads((tmp_path / "p.json").read_text())
    options = written["_via_attributes"]["region"]["name"]["options"]
    assert set(options) == {"headlamp", "door", "front_bumper", "hood", "rear_bumper"}
    assert written["_via_settings"]["project"]["name"] == "p"


def _via1_entry(name: str, size: int, regions: dict) -> dict:
    return {"fileref": "", "size": size, "filename": name, "base64_img_data": "",
            "file_attributes": {"source": "flickr"}, "regions": regions}


def _region(shape: dict, label: str = "damage", **extra) -> dict:
    return {"shape_attributes": shape, "region_attributes": {"name": label, **extra}}


VIA1_REGIONS = {
    "0": _region({"name": "polygon", "all_points_x": [10, 50, 30], "all_points_y": [10, 10, 40]}, kind="dent"),
    "1": _region({"name": "rect", "x": 5, "y": 6, "width": 20, "height": 10}),
    "2": _region({"name": "circle", "cx": 50, "cy": 50, "r": 10}),
    "3": _region({"name": "ellipse", "cx": 50, "cy": 50, "rx": 20, "ry": 10}),
    "4": _region({"name": "polyline", "all_points_x": [1, 9, 9], "all_points_y": [1, 1, 9]}),
    "5": _region({"name": "point", "cx": 3, "cy": 4}),
}


@pytest.mark.parametrize("layout", ["dict", "list"])
def test_via1_dict_regions_both_layouts(tmp_path, caplog, layout):
    entries = [_via1_entry("a.jpg", 1234, VIA1_REGIONS), _via1_entry("b.jpg", 99, {})]
    data = {f"{e['filename']}{e['size']}": e for e in entries} if layout == "dict" else entries
    path = tmp_path / "via1.json"
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.INFO):
        ds = read_annotations(path)
    assert ds.meta["format"] == "via1"
    a, b = ds.images
    assert (a.path, a.file_size, a.attributes) == ("a.jpg", 1234, {"source": "flickr"})
    assert b.labelled and b.instances == []
    assert len(a.instances) == 5  # the point is skipped
    poly, rect, circle, ellipse, polyline = a.instances
    assert poly.polygons == [[(10.0, 10.0), (50.0, 10.0), (30.0, 40.0)]] and poly.attributes == {"kind": "dent"}
    assert rect.polygons == [[(5.0, 6.0), (25.0, 6.0), (25.0, 16.0), (5.0, 16.0)]]
    assert len(circle.polygons[0]) == ELLIPSE_POINTS
    assert all(math.isclose(math.dist(p, (50, 50)), 10) for p in circle.polygons[0])
    xs = [x for x, _ in ellipse.polygons[0]]
    assert math.isclose(min(xs), 30) and math.isclose(max(xs), 70)
    assert polyline.polygons == [[(1.0, 1.0), (9.0, 1.0), (9.0, 9.0)]]
    assert "approximated" in caplog.text
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'point'" in m and "a.jpg" in m and str(path) in m for m in warning)


def test_via1_writer_round_trip(tmp_path, sample):
    ds = read_annotations(sample / "val" / "via_region_data.json")
    write_annotations(ds, tmp_path / "v1.json", "via1")
    raw = json.loads((tmp_path / "v1.json").read_text())
    entry = next(iter(raw.values()))
    assert isinstance(entry["regions"], dict) and list(entry["regions"])[0] == "0"
    assert entry["fileref"] == "" and entry["base64_img_data"] == ""
    back = read_annotations(tmp_path / "v1.json")
    assert [i.polygons for _, i in back.instances()] == [i.polygons for _, i in ds.instances()]


@pytest.mark.parametrize("key", ["Class Name", "cls", "class", "label", "type"])
def test_category_key_variants(key):
    assert detect_category_key([{key: "dent"}, {key: "scratch"}], "f.json") == key


def test_category_key_prefers_the_complete_candidate():
    # like the sample CSV: "type" is unset (null) everywhere
    assert detect_category_key([{"name": "damage", "type": None}] * 3, "f.json") == "name"


def test_category_key_ambiguous_raises():
    with pytest.raises(AnnotationError, match=r"--category-key") as err:
        detect_category_key([{"name": "door", "type": "dent"}], "f.json")
    assert "'name'" in str(err.value) and "'type'" in str(err.value) and "f.json" in str(err.value)


def test_explicit_category_key_moves_others_to_attributes(tmp_path):
    data = {"a.jpg1": {"filename": "a.jpg", "size": 1, "file_attributes": {}, "regions": [
        _region({"name": "polygon", "all_points_x": [0, 9, 9], "all_points_y": [0, 0, 9]}, "door", type="dent")]}}
    (tmp_path / "v.json").write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match="--category-key"):
        read_annotations(tmp_path / "v.json")
    ds = read_annotations(tmp_path / "v.json", category_key="type")
    inst = ds.images[0].instances[0]
    assert (inst.category, inst.attributes) == ("dent", {"name": "door"})
    with pytest.raises(AnnotationError, match="'colour'"):
        read_annotations(tmp_path / "v.json", category_key="colour")
