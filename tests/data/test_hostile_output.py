"""Hostile annotation files, part 2: ``convert`` writing wrong output silently, messages naming no
field, ``stats`` counting missing photos as labelled, warning floods, unbounded work on huge input.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from hostile_helpers import coco, photo, poly, via, warnings, write

from cardamage.config import DataParams
from cardamage.data.formats import read_annotations, write_annotations
from cardamage.data.masks import encode_rle

# --- 4. convert writing wrong output silently -------------------------------------------------


def test_convert_clips_polygons_outside_the_image_with_a_warning(tmp_path, caplog):
    photo(tmp_path, "a.png", 100, 80)
    src = write(tmp_path, via([poly([-50, 100049, 100049, -50], [-50, -50, 100049, 100049])]), "via.json")
    ds = read_annotations(src)
    with caplog.at_level(logging.WARNING):
        write_annotations(ds, tmp_path / "out.json", "coco")
    ann = json.loads((tmp_path / "out.json").read_text())["annotations"][0]
    assert ann["bbox"] == [0, 0, 100, 80] and ann["area"] == 100 * 80
    assert all(0 <= v <= 100 for v in ann["segmentation"][0])
    assert any("clipped" in m and "'a.png'" in m for m in warnings(caplog))
    assert ds.images[0].instances[0].polygons[0][0] == (-50.0, -50.0)  # the caller's dataset is left alone


def test_coco_rle_of_another_size_than_its_image_is_skipped(tmp_path, caplog):
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[2:6, 2:6] = 1
    path = write(tmp_path, coco(annotations__segmentation=encode_rle(mask)), "c.json")
    with caplog.at_level(logging.WARNING):
        ds = read_annotations(path)
    assert ds.images[0].instances == []
    assert any(str(path) in m and "annotation 7" in m and "size" in m for m in warnings(caplog))


def test_rle_of_another_size_is_not_written_to_labelstudio(tmp_path, caplog):
    from cardamage.data.annotations import Dataset, ImageRecord, Instance

    mask = np.ones((10, 10), dtype=np.uint8)
    record = ImageRecord("c.jpg", width=50, height=40, instances=[Instance("dent", rle=encode_rle(mask))])
    with caplog.at_level(logging.WARNING):
        write_annotations(Dataset([record]), tmp_path / "ls.json", "labelstudio")
    assert any("'c.jpg'" in m and "size" in m for m in warnings(caplog))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        back = read_annotations(tmp_path / "ls.json")
    assert back.images[0].instances == [] and not any("brush" in m for m in warnings(caplog))


# --- 5. messages naming file, entry and field ------------------------------------------------


@pytest.mark.parametrize("value", ["wide", 1e400, -3, [640], 0.5])
def test_coco_width_that_is_not_a_positive_integer(tmp_path, caplog, value):
    path = write(tmp_path, coco(images__width=value), "c.json")
    with caplog.at_level(logging.WARNING):
        ds = read_annotations(path)
    assert ds.images[0].width is None
    assert any(str(path) in m and "'c.jpg'" in m and "'width'" in m for m in warnings(caplog))


@pytest.mark.parametrize("counts", ["abc", "zzzz", "0" * 20, [5, -3], [1.5, 10], ["a", 10], [0, 100000], 7])
def test_malformed_rle_counts_name_file_annotation_and_field(tmp_path, caplog, counts):
    path = write(tmp_path, coco(annotations__segmentation={"size": [40, 50], "counts": counts}), "c.json")
    with caplog.at_level(logging.WARNING):
        ds = read_annotations(path)
    assert ds.images[0].instances == []
    assert any(str(path) in m and "annotation 7" in m and "counts" in m for m in warnings(caplog)), \
        warnings(caplog)
    for fmt in ("via", "labelstudio", "coco"):
        write_annotations(ds, tmp_path / f"out-{fmt}.json", fmt)


def test_non_numeric_csv_coordinates_name_line_and_field(tmp_path, caplog):
    path = tmp_path / "bad.csv"
    path.write_text("filename,file_size,file_attributes,region_count,region_id,region_shape_attributes,"
                    "region_attributes\n"
                    'a.jpg,wide,"{}",1,0,"{""name"":""polygon"",""all_points_x"":[0,""wide"",9],'
                    '""all_points_y"":[0,0,9]}","{""name"":""dent""}"\n')
    with caplog.at_level(logging.WARNING):
        ds = read_annotations(path)
    assert ds.images[0].instances == []
    messages = warnings(caplog)
    assert any(str(path) in m and "'a.jpg'" in m and "all_points_x" in m for m in messages), messages
    assert any(str(path) in m and "'a.jpg'" in m and "size" in m for m in messages), messages


# --- 6. stats and missing photos -------------------------------------------------------------


def test_stats_reports_missing_photos_separately(tmp_path):
    from cardamage.data.stats import dataset_stats, format_stats

    photo(tmp_path, "a.png", 40, 30)
    data = {**via([poly([0, 9, 9], [0, 0, 9])], "a.png"), **via([poly([0, 9, 9], [0, 0, 9])], "gone.png")}
    stats = dataset_stats(write(tmp_path, data, "via.json"), DataParams())
    assert stats["labelled_images"] == 1
    assert stats["missing_images"] == ["gone.png"]
    assert "1 missing" in format_stats(stats)


# --- 7. warning floods -----------------------------------------------------------------------


def test_many_bad_entries_are_summarised(tmp_path, caplog):
    regions = [poly([1, 2], [1, 2]) for _ in range(1000)] + [{"region_attributes": {}} for _ in range(50)]
    path = write(tmp_path, via(regions), "flood.json")
    with caplog.at_level(logging.WARNING):
        ds = read_annotations(path)
    messages = warnings(caplog)
    assert len(messages) <= 20, messages[:30]
    assert any("995 more" in m and str(path) in m for m in messages), messages
    assert any("45 more" in m and str(path) in m for m in messages), messages
    assert 10 <= len(ds.meta["issues"]) <= 250


def test_warnings_summary_helper():
    from cardamage.data.warnings_summary import WarningSummary

    logger = logging.getLogger("test.summary")
    summary = WarningSummary("f.json", logger, shown=2, kept=3)
    for i in range(6):
        summary.warn(f"bad {i}", kind="polygon")
    summary.warn("odd", kind="category")
    lines = summary.summarize()
    assert lines == ["... and 4 more polygon warnings in f.json"]
    assert summary.messages == ["bad 0", "bad 1", "bad 2", "odd", lines[0]]
    assert summary.summarize() == []


# --- bounded work on huge-but-valid input -----------------------------------------------------


def test_self_intersection_check_is_fast_on_huge_polygons():
    import time

    from cardamage.data.masks import self_intersection, validate_polygon

    t = np.linspace(0, 2 * np.pi, 200_000, endpoint=False)
    circle = list(zip((500 + 400 * np.cos(t)).tolist(), (500 + 400 * np.sin(t)).tolist()))
    zigzag = [(float(i % 2) * 999, float(i) * 0.001) for i in range(40000)]
    start = time.perf_counter()
    assert self_intersection(circle) is False and self_intersection(zigzag) is None  # None: too many pairs
    validate_polygon(circle, 1000, 1000)
    assert time.perf_counter() - start < 5


def test_declared_image_size_over_the_pixel_budget_is_not_trusted(tmp_path, caplog):
    from cardamage.data.dataset import load_dataset

    photo(tmp_path, "a.png", 40, 30)
    data = coco(images__file_name="a.png", images__width=1_000_000, images__height=1_000_000)
    path = write(tmp_path, data, "c.json")
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(path)
    assert (ds.images[0].width, ds.images[0].height) == (40, 30)
    assert any("1000000x1000000" in m and "'a.png'" in m for m in warnings(caplog))
