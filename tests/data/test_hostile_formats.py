"""Hostile annotation files, part 1: brush RLE bombs, native crashes in pycocotools, and well-formed
JSON of the wrong shape. Each test reproduces a defect found in review: no traceback, no native
crash, bounded memory, and messages naming the file, the entry and the field.
"""

from __future__ import annotations

import json
import logging
import tracemalloc

import numpy as np
import pytest
from hostile_helpers import (
    assert_clean_exit,
    assert_named,
    bits,
    coco,
    ls,
    photo,
    poly,
    run_child,
    via,
    warnings,
    write,
)

from cardamage.data.annotations import AnnotationError
from cardamage.data.formats import read_annotations, write_annotations
from cardamage.data.formats.labelstudio_json import brush_rle_to_mask, decode_brush_rle, mask_to_brush_rle
from cardamage.data.masks import rasterize_polygons
from cardamage.errors import CardamageError

# --- 1. brush RLE bombs ------------------------------------------------------------------------


def _brush_bomb(count: int) -> list[int]:
    """A brush RLE header declaring ``count`` values (word size 8, sizes 3/4/8/16), then one short run."""
    return bits((count, 32), (7, 5), (2, 4), (3, 4), (7, 4), (15, 4), (1, 1), (3, 2), (65535, 16), (255, 8))


def test_brush_rle_header_bomb_is_refused_before_allocating(tmp_path, caplog):
    value = {"format": "rle", "rle": _brush_bomb(2 ** 31), "brushlabels": ["dent"]}
    tasks = ls(value, type="brushlabels", id="b9")
    path = write(tmp_path, tasks, "ls.json")
    tracemalloc.start()
    try:
        with caplog.at_level(logging.WARNING):
            ds = read_annotations(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 1024 ** 2, f"{peak / 2 ** 20:.0f} MiB allocated for a 10x10 brush"
    assert ds.images[0].instances == []
    message = next(m for m in warnings(caplog) if "brush" in m)
    assert str(path) in message and "task 3" in message and "b9" in message and str(2 ** 31) in message


def test_brush_rle_bomb_matching_a_huge_declared_image_hits_the_hard_cap():
    count = 30000 * 30000 * 4  # < 2**32: fits the header and matches original_width x original_height x 4
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="limit"):
            brush_rle_to_mask(_brush_bomb(count), 30000, 30000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 1024 ** 2


def test_brush_rle_decoder_keeps_its_signature_and_checks_max_values():
    mask = np.zeros((6, 7), dtype=np.uint8)
    mask[1:4, 2:5] = 1
    rle = mask_to_brush_rle(mask)
    assert decode_brush_rle(rle).size == 6 * 7 * 4  # positional use, as pull and the tests call it
    with pytest.raises(ValueError, match="declares"):
        decode_brush_rle(rle, max_values=10)
    assert np.array_equal(brush_rle_to_mask(rle, 6, 7), mask)


@pytest.mark.parametrize("rle", ["abc", {"a": 1}, [1, 2, 300], [1.5, 2], [[1, 2]], [-1, 3], 7])
def test_brush_rle_of_the_wrong_type_is_skipped(tmp_path, caplog, rle):
    path = write(tmp_path, ls({"format": "rle", "rle": rle, "brushlabels": ["dent"]}, type="brushlabels"))
    with caplog.at_level(logging.WARNING):
        ds = read_annotations(path)
    assert ds.images[0].instances == []
    assert any(str(path) in m and "rle" in m and "r1" in m for m in warnings(caplog))


# --- 2. native crashes in pycocotools ---------------------------------------------------------


def test_huge_coordinates_do_not_crash_convert_to_coco(tmp_path):
    photo(tmp_path, "a.png", 100, 80)
    src = write(tmp_path, via([poly([10, 4e8, 4e8, 10], [10, 10, 4e8, 4e8])]), "via.json")
    proc = run_child(f"""
        import json
        from cardamage.data.formats import read_annotations, write_annotations
        ds = read_annotations({str(src)!r})
        write_annotations(ds, {str(tmp_path / 'out.json')!r}, "coco")
        ann = json.load(open({str(tmp_path / 'out.json')!r}))["annotations"][0]
        print(json.dumps({{"bbox": ann["bbox"], "area": ann["area"]}}))
    """)
    assert_clean_exit(proc)
    ann = json.loads(proc.stdout.strip().splitlines()[-1])
    assert ann["bbox"] == [10, 10, 90, 70] and ann["area"] == pytest.approx(90 * 70, rel=0.05)


def test_rasterize_clips_huge_and_guards_non_finite_coordinates():
    proc = run_child("""
        import numpy as np
        from cardamage.data.masks import rasterize_polygons
        from cardamage.data.annotations import Instance
        from cardamage.data.formats.coco import geometry
        huge = [(0.0, 0.0), (4e8, 0.0), (4e8, 4e8), (0.0, 4e8)]
        assert rasterize_polygons([huge], 10, 12).sum() == 120
        nan = [(0.0, 0.0), (float("nan"), 0.0), (5.0, 5.0)]
        inf = [(0.0, 0.0), (float("inf"), 0.0), (5.0, 5.0)]
        assert rasterize_polygons([nan, inf], 10, 12).sum() == 0
        seg, area, bbox = geometry(Instance("d", [huge]), 10, 12)
        assert area == 120, area
        print("ok")
    """)
    assert_clean_exit(proc)


def _pycocotools_mask(polygons, height, width):
    from pycocotools import mask as mask_utils

    flat = [[float(c) for point in poly for c in point] for poly in polygons]
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(flat, height, width)))


def test_clipping_before_rasterising_keeps_the_mask_inside_the_image():
    near = [(-30.0, 5.0), (60.0, -20.0), (130.0, 50.0), (40.0, 95.0), (20.0, 40.0), (-10.0, 70.0)]
    assert np.array_equal(rasterize_polygons([near], 80, 100), _pycocotools_mask([near], 80, 100))
    far = [(-3000.0, 5.0), (60.0, -2000.0), (1300.0, 50.0), (40.0, 9500.0), (20.0, 40.0), (-10.0, 70.0)]
    difference = rasterize_polygons([far], 80, 100) != _pycocotools_mask([far], 80, 100)
    assert difference.sum() <= 80 + 100  # at most boundary pixels of the clipped edges move


def test_boundary_too_long_for_pycocotools_is_refused():
    zigzag = [(float(i % 2) * 999, float(i) * 0.001) for i in range(40000)] + [(0.0, 50.0)]
    with pytest.raises(CardamageError, match="boundary"):
        rasterize_polygons([zigzag], 1000, 1000)


# --- 3. well-formed JSON of the wrong shape --------------------------------------------------


COCO_SHAPES = [
    ("images__id", [1], "'id'"), ("images__id", {"a": 1}, "'id'"), ("images__id", None, "'id'"),
    ("images__file_name", ["c.jpg"], "'file_name'"),
    ("annotations__image_id", [0], "'image_id'"), ("annotations__image_id", {"x": 0}, "'image_id'"),
    ("annotations__category_id", {"a": 1}, "'category_id'"), ("annotations__category_id", [1], "'category_id'"),
    ("annotations__score", "high", "'score'"),
    ("annotations__segmentation", [{"a": 1}], "polygon 0"), ("annotations__segmentation", ["abcdef"], "polygon 0"),
    ("categories__id", [1], "'id'"), ("categories__name", {"n": 1}, "'name'"),
]


@pytest.mark.parametrize("key, value, field", COCO_SHAPES)
def test_coco_fields_of_the_wrong_type(tmp_path, caplog, key, value, field):
    assert_named(write(tmp_path, coco(**{key: value}), "c.json"), field, caplog)


@pytest.mark.parametrize("section", ["images", "annotations", "categories"])
@pytest.mark.parametrize("value", ["abc", {"a": 1}, 5])
def test_coco_sections_of_the_wrong_type(tmp_path, section, value):
    data = coco()
    data[section] = value
    path = write(tmp_path, data, "c.json")
    try:
        read_annotations(path)
    except AnnotationError as exc:
        assert str(path) in str(exc) and (section in str(exc) or "formats tried" in str(exc))


@pytest.mark.parametrize("mutate, field", [
    (lambda t: t[0]["annotations"][0]["result"][0].update(value="points"), "'value'"),
    (lambda t: t[0]["annotations"][0]["result"][0].update(value=[1, 2]), "'value'"),
    (lambda t: t[0].update(annotations=5), "'annotations'"),
    (lambda t: t[0]["annotations"][0].update(result=5), "'result'"),
    (lambda t: t[0]["annotations"][0]["result"][0].update(id=[1]), "'id'"),
    (lambda t: t[0]["annotations"][0]["result"][0].update(original_width="wide"), "'original_width'"),
    (lambda t: t[0]["annotations"][0]["result"][0].update(original_height=1e400), "'original_height'"),
    (lambda t: t[0]["annotations"][0]["result"][0]["value"].update(points="abc"), "'points'"),
    (lambda t: t[0]["annotations"][0]["result"][0].update(score="high"), "'score'"),
    (lambda t: t[0]["data"].update(image="http://[abc/x.jpg"), "image"),
])
def test_labelstudio_fields_of_the_wrong_type(tmp_path, caplog, mutate, field):
    tasks = ls({"points": [[1, 1], [5, 1], [5, 5]], "polygonlabels": ["dent"]})
    mutate(tasks)
    assert_named(write(tmp_path, tasks, "ls.json"), field, caplog)


def test_labelstudio_rectangle_with_string_coordinates_allocates_nothing(tmp_path, caplog):
    value = {"x": "ab", "y": 1, "width": 2, "height": 3, "rectanglelabels": ["dent"]}
    path = write(tmp_path, ls(value, type="rectanglelabels", original_width=10 ** 6))
    with caplog.at_level(logging.WARNING):
        ds = read_annotations(path)
    assert ds.images[0].instances == [] and any("'x'" in m for m in warnings(caplog))


def test_labelstudio_very_long_local_file_name(tmp_path):
    tasks = ls({"points": [[1, 1], [5, 1], [5, 5]], "polygonlabels": ["dent"]})
    tasks[0]["data"]["image"] = "/data/local-files/?d=" + "a" * 300 + "/x.jpg"
    ds = read_annotations(write(tmp_path, tasks, "ls.json"))
    assert ds.images[0].path.endswith("x.jpg")


@pytest.mark.parametrize("data, field", [
    (via("abc"), "'regions'"),
    (via(5), "'regions'"),
    (via([{"shape_attributes": [1], "region_attributes": {"name": "d"}}]), "shape_attributes"),
    (via([{"shape_attributes": {"name": "polygon", "all_points_x": "123", "all_points_y": "456"},
            "region_attributes": {"name": "d"}}]), "all_points_x"),
    (via([{"shape_attributes": {"name": "rect", "x": 1, "y": 1, "width": 1e400, "height": 3},
            "region_attributes": {"name": "d"}}]), "region 0"),
    ({"a": {"filename": ["a.jpg"], "regions": []}}, "'filename'"),
    (via({"²": poly([0, 9, 9], [0, 0, 9]), "0": poly([0, 9, 9], [0, 0, 9])}), None),
    (via([], size=1e400), "'size'"),
    (via([], size="wide"), "'size'"),
])
def test_via_fields_of_the_wrong_type(tmp_path, caplog, data, field):
    assert_named(write(tmp_path, data, "v.json"), field, caplog)


def test_via_project_with_settings_and_attributes_of_the_wrong_type_writes_back(tmp_path):
    data = {"_via_settings": [1], "_via_attributes": [1], "_via_img_metadata": via([poly([0, 9, 9], [0, 0, 9])])}
    ds = read_annotations(write(tmp_path, data, "p.json"))
    write_annotations(ds, tmp_path / "out.json", "via-project")
    assert read_annotations(tmp_path / "out.json").images[0].instances[0].category == "damage"


def test_deeply_nested_json_is_an_annotation_error(tmp_path):
    deep: object = 1
    for _ in range(600):
        deep = [deep]
    path = write(tmp_path, via([], file_attributes={"x": deep}), "deep.json")
    try:
        ds = read_annotations(path)
    except AnnotationError as exc:
        assert str(path) in str(exc) and "nested" in str(exc)
    else:
        write_annotations(ds, tmp_path / "out.json", "via")


def test_integer_with_thousands_of_digits(tmp_path):
    path = tmp_path / "big.json"
    path.write_text('{"a": {"filename": "a.jpg", "size": ' + "9" * 5000 + ', "regions": []}}')
    with pytest.raises(AnnotationError) as err:
        read_annotations(path)
    assert str(path) in str(err.value)


def test_lone_surrogate_escape_is_an_annotation_error(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(via([poly([0, 9, 9], [0, 0, 9], "\ud800")])))
    with pytest.raises(AnnotationError, match="surrogate") as err:
        read_annotations(path)
    assert str(path) in str(err.value)


def test_csv_field_over_the_csv_module_limit(tmp_path):
    path = tmp_path / "big.csv"
    path.write_text("filename,file_size,file_attributes,region_count,region_id,region_shape_attributes,"
                    "region_attributes\n" + 'a.jpg,10,"{}",1,0,"' + "x" * 200_000 + '","{}"\n')
    with pytest.raises(AnnotationError) as err:
        read_annotations(path)
    assert str(path) in str(err.value) and "line" in str(err.value)
