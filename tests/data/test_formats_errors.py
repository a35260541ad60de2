"""Bad input: each defect is reported (warning or AnnotationError naming the file), never a crash."""

from __future__ import annotations

import json
import logging

import pytest

from cardamage.data.annotations import AnnotationError
from cardamage.data.formats import read_annotations


def _via(tmp_path, regions, filename="a.jpg", name="v.json"):
    data = {f"{filename}10": {"filename": filename, "size": 10, "file_attributes": {}, "regions": regions}}
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _poly(xs, ys, label="damage"):
    return {"shape_attributes": {"name": "polygon", "all_points_x": xs, "all_points_y": ys},
            "region_attributes": {"name": label}}


def _coco(tmp_path, segmentation, width=50, height=40):
    data = {"images": [{"id": 0, "file_name": "c.jpg", "width": width, "height": height}],
            "annotations": [{"id": 0, "image_id": 0, "category_id": 1, "segmentation": segmentation}],
            "categories": [{"id": 1, "name": "dent"}]}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    return path


def test_polygon_with_fewer_than_3_points_is_skipped(tmp_path, caplog):
    path = _via(tmp_path, [_poly([1, 5], [1, 5]), _poly([0, 9, 9], [0, 0, 9]), _poly([1, 1, 1], [2, 2, 2])])
    with caplog.at_level(logging.WARNING):
        ds = read_annotations(path)
    assert len(ds.images[0].instances) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert sum("at least 3" in m for m in messages) == 2
    assert all(str(path) in m and "a.jpg" in m for m in messages)
    assert any("region 0" in m for m in messages) and any("region 2" in m for m in messages)
    assert len(ds.meta["issues"]) == 2


def test_points_outside_the_image_are_clipped(tmp_path, caplog):
    path = _coco(tmp_path, [[-5, 2, 60, 2, 60, 45, 10, 30]])
    with caplog.at_level(logging.WARNING):
        ds = read_annotations(path)
    assert ds.images[0].instances[0].polygons == [[(0.0, 2.0), (50.0, 2.0), (50.0, 40.0), (10.0, 30.0)]]
    assert "clipped" in caplog.text and "c.jpg" in caplog.text and str(path) in caplog.text


def test_self_intersecting_polygon_is_kept_with_a_warning(tmp_path, caplog):
    bowtie = [0, 0, 10, 10, 10, 0, 0, 10]
    with caplog.at_level(logging.WARNING):
        ds = read_annotations(_coco(tmp_path, [bowtie]))
    assert len(ds.images[0].instances[0].polygons[0]) == 4
    assert "self-intersecting" in caplog.text and "c.jpg" in caplog.text


def test_unknown_category_is_dropped_when_classes_given(tmp_path, caplog):
    path = _via(tmp_path, [_poly([0, 9, 9], [0, 0, 9], "damage"), _poly([0, 9, 9], [0, 0, 9], "graffiti")])
    with caplog.at_level(logging.WARNING):
        ds = read_annotations(path, classes=["damage", "dent"])
    assert [i.category for i in ds.images[0].instances] == ["damage"]
    assert ds.categories == ["damage", "dent"]
    assert "'graffiti'" in caplog.text and "a.jpg" in caplog.text and str(path) in caplog.text


def test_unknown_coco_category_id(tmp_path, caplog):
    data = json.loads(_coco(tmp_path, [[0, 0, 9, 0, 9, 9]]).read_text())
    data["annotations"][0]["category_id"] = 42
    (tmp_path / "c.json").write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        ds = read_annotations(tmp_path / "c.json")
    assert ds.images[0].instances == [] and "unknown category_id 42" in caplog.text


@pytest.mark.parametrize("content", ['{"hello": "world"}', "[1, 2, 3]", '"text"', '{"a.jpg": {"size": 3}}'])
def test_json_of_no_known_format_lists_formats_tried(tmp_path, content):
    path = tmp_path / "what.json"
    path.write_text(content)
    with pytest.raises(AnnotationError) as err:
        read_annotations(path)
    message = str(err.value)
    assert str(path) in message and "formats tried" in message
    for name in ("VIA 1.x", "VIA 2.x", "VIA 2 project", "COCO", "Label Studio", "VIA CSV"):
        assert name in message


@pytest.mark.parametrize("name, content", [("empty.json", ""), ("blank.json", "  \n"), ("empty.csv", "")])
def test_empty_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(AnnotationError, match="empty file") as err:
        read_annotations(path)
    assert str(path) in str(err.value)


def test_unparsable_json_names_position(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"a.jpg1": {"filename": "a.jpg",\n "regions": [}')
    with pytest.raises(AnnotationError, match=r"not valid JSON .*line 2") as err:
        read_annotations(path)
    assert str(path) in str(err.value) and "COCO" in str(err.value)


def test_csv_with_wrong_columns(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(AnnotationError, match="missing column"):
        read_annotations(path)


@pytest.mark.parametrize("bad", ["../outside.jpg", "train/../../x.jpg", "/etc/passwd", "C:\\photos\\1.jpg",
                                 "http://example.com/1.jpg"])
def test_unsafe_image_names_are_rejected(tmp_path, bad):
    path = _via(tmp_path, [_poly([0, 9, 9], [0, 0, 9])], filename=bad)
    with pytest.raises(AnnotationError) as err:
        read_annotations(path)
    assert str(path) in str(err.value)


def test_unsafe_names_in_coco_and_labelstudio(tmp_path):
    coco = _coco(tmp_path, [[0, 0, 9, 0, 9, 9]])
    data = json.loads(coco.read_text())
    data["images"][0]["file_name"] = "../../secret.jpg"
    coco.write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match="outside"):
        read_annotations(coco)
    ls = tmp_path / "ls.json"
    ls.write_text(json.dumps([{"data": {"image": "/data/local-files/?d=../../secret.jpg"}}]))
    with pytest.raises(AnnotationError, match="outside"):
        read_annotations(ls)


def test_unknown_shape_and_bad_region_are_skipped(tmp_path, caplog):
    regions = [{"shape_attributes": {"name": "point", "cx": 1, "cy": 2}, "region_attributes": {"name": "damage"}},
               {"shape_attributes": {"name": "polygon", "all_points_x": [1, 2, 3], "all_points_y": [1, 2]},
                "region_attributes": {"name": "damage"}},
               {"shape_attributes": {"name": "rect", "x": 1}, "region_attributes": {"name": "damage"}},
               {"region_attributes": {"name": "damage"}},
               {"shape_attributes": {"name": "polygon", "all_points_x": [0, 9, 9], "all_points_y": [0, 0, 9]},
                "region_attributes": {"name": ""}}]
    with caplog.at_level(logging.WARNING):
        ds = read_annotations(_via(tmp_path, regions))
    assert ds.images[0].instances == []
    assert len(ds.meta["issues"]) == 5
    assert all("a.jpg" in m for m in ds.meta["issues"])


def test_flat_coco_polygon_is_accepted(tmp_path):
    ds = read_annotations(_coco(tmp_path, [0, 0, 9, 0, 9, 9]))
    assert ds.images[0].instances[0].polygons == [[(0.0, 0.0), (9.0, 0.0), (9.0, 9.0)]]


def test_image_listed_twice_is_merged_with_a_warning(tmp_path, caplog):
    entry = {"filename": "a.jpg", "size": 10, "file_attributes": {}, "regions": [_poly([0, 9, 9], [0, 0, 9])]}
    path = tmp_path / "twice.json"
    path.write_text(json.dumps([entry, entry]))
    with caplog.at_level(logging.WARNING):
        ds = read_annotations(path)
    assert len(ds.images) == 1 and len(ds.images[0].instances) == 2
    assert "more than once" in caplog.text and str(path) in caplog.text
