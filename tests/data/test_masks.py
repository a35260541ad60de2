"""Polygon <-> mask conversion and COCO RLE helpers."""

import logging

import numpy as np
import pytest

from cardamage.data.annotations import Instance
from cardamage.data.masks import (
    PolygonError,
    class_mask,
    decode_rle,
    encode_rle,
    is_self_intersecting,
    mask_to_instances,
    mask_to_polygons,
    polygon_area,
    rasterize_polygons,
    validate_polygon,
)

SQUARE = [(2.0, 2.0), (12.0, 2.0), (12.0, 12.0), (2.0, 12.0)]


def test_rasterize_square_area_matches_polygon_area():
    mask = rasterize_polygons([SQUARE], 20, 20)
    assert mask.dtype == np.uint8 and mask.shape == (20, 20)
    assert mask.sum() == pytest.approx(polygon_area(SQUARE), abs=1)


def test_mask_to_polygons_round_trip_iou():
    mask = rasterize_polygons([[(5, 5), (40, 8), (30, 35), (8, 30)]], 48, 48)
    polys = mask_to_polygons(mask).outer
    assert len(polys) == 1
    back = rasterize_polygons(polys, 48, 48)
    iou = (back & mask).sum() / (back | mask).sum()
    assert iou > 0.9


def test_holes_are_reported():
    mask = np.zeros((30, 30), np.uint8)
    mask[5:25, 5:25] = 1
    mask[12:18, 12:18] = 0
    traced = mask_to_polygons(mask)
    assert len(traced.outer) == 1 and len(traced.holes) == 1


def test_mask_to_instances_one_per_component():
    mask = np.zeros((30, 30), np.uint8)
    mask[2:8, 2:8] = 1
    mask[20:28, 20:28] = 1
    insts = mask_to_instances(mask, "damage")
    assert len(insts) == 2 and all(i.category == "damage" for i in insts)


def test_too_few_points_is_an_error():
    with pytest.raises(PolygonError, match="at least 3"):
        validate_polygon([(0, 0), (1, 1)])
    with pytest.raises(PolygonError):
        validate_polygon([(0, 0), (1, 1), (0, 0)])


def test_points_outside_are_clipped_with_warning(caplog):
    with caplog.at_level(logging.WARNING):
        poly = validate_polygon([(-5, 2), (15, 2), (15, 30)], width=10, height=20, where="x.jpg")
    assert poly == [(0.0, 2.0), (10.0, 2.0), (10.0, 20.0)]
    assert "clipped" in caplog.text and "x.jpg" in caplog.text


def test_self_intersection_is_detected_and_warned(caplog):
    bowtie = [(0, 0), (10, 10), (10, 0), (0, 10)]
    assert is_self_intersecting(bowtie)
    assert not is_self_intersecting(SQUARE)
    with caplog.at_level(logging.WARNING):
        validate_polygon(bowtie)
    assert "self-intersecting" in caplog.text


def test_rle_round_trip_compressed_and_uncompressed():
    mask = rasterize_polygons([SQUARE], 16, 20)
    rle = encode_rle(mask)
    assert isinstance(rle["counts"], str)
    assert (decode_rle(rle) == mask).all()
    flat = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    assert (decode_rle({"size": [16, 20], "counts": counts}) == mask).all()


def test_class_mask_uses_class_order_and_map():
    a = Instance("scratch", [SQUARE])
    b = Instance("unknown-thing", [[(0, 0), (3, 0), (3, 3)]])
    out = class_mask([a, b], ["dent", "damage"], 16, 16, category_of=lambda i: {"scratch": "damage"}.get(i.category))
    assert set(np.unique(out)) == {0, 2}
