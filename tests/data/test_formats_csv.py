"""VIA CSV export: the sample's real file (with its ``undefined`` cells) and the writer."""

from __future__ import annotations

import csv
import logging

from cardamage.data.formats import read_annotations, write_annotations
from cardamage.data.formats.via_csv import replace_undefined

HEADER = "filename,file_size,file_attributes,region_count,region_id,region_shape_attributes,region_attributes\n"


def _polygons(ds):
    return {r.path: [(i.category, i.polygons) for i in r.instances] for r in ds.images}


def test_sample_csv_reports_undefined_and_keeps_all_polygons(sample, caplog):
    path = sample / "train" / "via_region_data.csv"
    with caplog.at_level(logging.WARNING):
        ds = read_annotations(path)
    assert ds.meta["format"] == "via-csv"
    assert sum(len(r.instances) for r in ds.images) == 152
    assert len(ds.images) == 62
    first = caplog.records[0].getMessage()
    assert str(path) in first and "line 2" in first and '"type":undefined' in first
    assert len(ds.meta["via_csv_recovered"]) == 152
    assert ds.meta["via_csv_recovered"][0] == {"line": 2, "column": "region_attributes",
                                               "text": '{"name":"damage","type":undefined}'}
    inst = ds.images[0].instances[0]
    assert inst.category == "damage" and inst.attributes == {"type": None}
    assert _polygons(ds) == _polygons(read_annotations(sample / "train" / "via_region_data.json"))


def test_replace_undefined_leaves_strings_alone():
    assert replace_undefined('{"a":undefined,"b":"undefined","c":[undefined]}') == \
        '{"a":null,"b":"undefined","c":[null]}'


def test_csv_writer_round_trip(sample, tmp_path):
    ds = read_annotations(sample / "val" / "via_region_data.json")
    ds.images[0].instances.clear()  # an image without regions: a region_count 0 row
    write_annotations(ds, tmp_path / "out.csv", "via-csv")
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert rows[0]["region_count"] == "0" and rows[0]["region_shape_attributes"] == "{}"
    assert rows[1]["file_size"] == str(ds.images[1].file_size)
    back = read_annotations(tmp_path / "out.csv")
    assert _polygons(back) == _polygons(ds)
    assert back.meta["issues"] == []


def test_unrecoverable_region_attributes_is_reported(tmp_path, caplog):
    path = tmp_path / "bad.csv"
    path.write_text(HEADER
                    + '1.jpg,10,"{}",2,0,"{""name"":""polygon"",""all_points_x"":[0,9,9],""all_points_y"":[0,0,9]}",'
                      '"{""name"":""dent""}"\n'
                    + '1.jpg,10,"{}",2,1,"{""name"":""polygon"",""all_points_x"":[0,5,5],""all_points_y"":[0,0,5]}",'
                      '"{name: oops"\n')
    with caplog.at_level(logging.WARNING):
        ds = read_annotations(path)
    assert [i.category for i in ds.images[0].instances] == ["dent"]
    text = caplog.text
    assert "line 3" in text and "invalid JSON in region_attributes" in text and "{name: oops" in text
    assert "region 1" in text and "skipped" in text
