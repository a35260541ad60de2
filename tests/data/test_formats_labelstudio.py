"""Label Studio JSON: percent <-> pixel polygons, brush RLE, choices, predictions, image URLs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cardamage.data.annotations import AnnotationError, Dataset, ImageRecord, Instance
from cardamage.data.formats import read_annotations, write_annotations
from cardamage.data.formats.labelstudio_json import (
    brush_rle_to_mask,
    decode_brush_rle,
    encode_brush_rle,
    image_name_from_url,
    mask_to_brush_rle,
)
from cardamage.data.masks import decode_rle, encode_rle


def _bits_to_bytes(bits: str) -> list[int]:
    bits += "0" * (8 - len(bits) % 8)
    return [int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)]


def _reference_encode(values) -> list[int]:
    """Straight bit-string version of label-studio-converter's encoder, for byte-exact comparison."""
    out = f"{len(values):032b}{7:05b}" + "".join(f"{s - 1:04b}" for s in (3, 4, 8, 16))
    i = 0
    while i < len(values):
        j = i
        while j < len(values) and values[j] == values[i]:
            j += 1
        run, value = j - i, int(values[i])
        if run == 1:
            out += f"000000{value:08b}"
        elif run <= 8:
            out += f"100{run - 1:03b}{value:08b}"
        elif run <= 16:
            out += f"101{run - 1:04b}{value:08b}"
        elif run <= 256:
            out += f"110{run - 1:08b}{value:08b}"
        else:
            while run > 65536:
                out += f"111{65535:016b}{value:08b}"
                run -= 65536
            out += f"111{run - 1:016b}{value:08b}"
        i = j
    return _bits_to_bytes(out)


def test_brush_rle_hand_built_vector():
    # 4 values [0, 0, 0, 255]: header, a run of three 0s, then a single 255
    bits = f"{4:032b}00111" + "0010001101111111" + "100010" + "00000000" + "000000" + "11111111"
    rle = _bits_to_bytes(bits)
    assert decode_brush_rle(rle).tolist() == [0, 0, 0, 255]
    assert encode_brush_rle(np.array([0, 0, 0, 255])) == rle


@pytest.mark.parametrize("lengths", [[1], [8, 9, 16, 17], [256, 257, 1, 1, 2], [65536, 65537, 3], [200_000, 5]])
def test_brush_rle_round_trip_and_matches_reference(lengths):
    rng = np.random.default_rng(len(lengths))
    values = np.concatenate([np.full(n, rng.integers(0, 256), dtype=np.uint8) for n in lengths])
    rle = encode_brush_rle(values)
    assert np.array_equal(decode_brush_rle(rle), values)
    assert rle == _reference_encode(values.tolist())


def test_brush_rle_literal_runs_and_mask_round_trip():
    noise = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)
    assert np.array_equal(decode_brush_rle(encode_brush_rle(noise)), noise)
    mask = np.zeros((37, 53), dtype=np.uint8)
    mask[5:20, 7:40] = 1
    mask[30, 50] = 1
    rle = mask_to_brush_rle(mask)
    assert np.array_equal(brush_rle_to_mask(rle, 37, 53), mask)
    with pytest.raises(ValueError, match="expected"):
        brush_rle_to_mask(rle, 36, 53)


def _task(results, **extra) -> dict:
    return {"id": 7, "data": {"image": "/data/upload/3/1a2b3c4d-17.jpg"}, "annotations": [{"result": results}],
            **extra}


def _poly_result(points, label="damage", w=200, h=100, rid="p1") -> dict:
    return {"id": rid, "type": "polygonlabels", "from_name": "label", "to_name": "image", "original_width": w,
            "original_height": h, "value": {"points": points, "polygonlabels": [label]}}


def test_percent_polygons_brush_choices_and_region_attributes(tmp_path):
    mask = np.zeros((100, 200), dtype=np.uint8)
    mask[10:30, 50:90] = 1
    results = [
        _poly_result([[10, 10], [50, 10], [50, 50]]),
        {"id": "p1", "type": "choices", "from_name": "severity", "to_name": "image",
         "value": {"choices": ["minor"]}},
        {"id": "b1", "type": "brushlabels", "from_name": "brush", "to_name": "image", "original_width": 200,
         "original_height": 100, "value": {"format": "rle", "rle": mask_to_brush_rle(mask), "brushlabels": ["dent"]}},
        {"id": "c1", "type": "choices", "from_name": "choice", "to_name": "image", "value": {"choices": ["bad photo"]}},
    ]
    path = tmp_path / "ls.json"
    path.write_text(json.dumps([_task(results)]))
    ds = read_annotations(path)
    record = ds.images[0]
    assert (record.path, record.width, record.height) == ("17.jpg", 200, 100)
    poly, brush = record.instances
    assert poly.polygons == [[(20.0, 10.0), (100.0, 10.0), (100.0, 50.0)]]  # percent -> pixels
    assert poly.attributes == {"severity": ["minor"]}
    assert brush.category == "dent" and np.array_equal(decode_rle(brush.rle), mask)
    assert record.attributes["choices"] == ["bad photo"]
    assert ds.meta["labelstudio_task_ids"] == {"17.jpg": 7}

    write_annotations(ds, tmp_path / "out.json", "labelstudio")
    out = json.loads((tmp_path / "out.json").read_text())
    types = [r["type"] for r in out[0]["annotations"][0]["result"]]
    assert types == ["polygonlabels", "brushlabels", "choices"]
    assert out[0]["annotations"][0]["result"][0]["value"]["points"] == [[10, 10], [50, 10], [50, 50]]
    back = read_annotations(tmp_path / "out.json", root=tmp_path)
    assert back.images[0].instances[0].polygons == poly.polygons
    assert np.array_equal(decode_rle(back.images[0].instances[1].rle), mask)
    assert back.images[0].attributes["choices"] == ["bad photo"]


def test_sample_round_trip_keeps_every_polygon(sample, tmp_path):
    src = sample / "train" / "via_region_data.json"
    ds = read_annotations(src)
    write_annotations(ds, tmp_path / "ls.json", "labelstudio", from_name="damage", to_name="photo")
    tasks = json.loads((tmp_path / "ls.json").read_text())
    assert tasks[0]["data"]["image"] == "/data/local-files/?d=2.jpg"
    first = tasks[0]["annotations"][0]["result"][0]
    assert (first["from_name"], first["to_name"], first["original_width"]) == ("damage", "photo", 1024)
    back = read_annotations(tmp_path / "ls.json", root=sample / "train")
    assert [r.path for r in back.images] == [r.path for r in ds.images]
    for a, b in zip(ds.images, back.images):
        assert len(a.instances) == len(b.instances)
        for ia, ib in zip(a.instances, b.instances):
            assert ia.category == ib.category
            assert np.allclose(ia.polygons[0], ib.polygons[0], atol=1e-9)
    write_annotations(back, tmp_path / "via.json", "via")
    assert json.loads((tmp_path / "via.json").read_text()) == json.loads(src.read_text())


def test_predictions_read_only_when_asked_and_written_with_scores(tmp_path):
    task = {"data": {"image": "https://example.com/photos/a%201.jpg"},
            "predictions": [{"model_version": "m1", "score": 0.8,
                             "result": [dict(_poly_result([[0, 0], [10, 0], [10, 10]]), score=0.7)]}]}
    path = tmp_path / "ls.json"
    path.write_text(json.dumps([task]))
    plain = read_annotations(path)
    assert plain.images[0].path == "a 1.jpg" and not plain.images[0].labelled and not plain.images[0].instances
    preds = read_annotations(path, predictions=True)
    assert [i.score for i in preds.images[0].instances] == [0.7]
    write_annotations(preds, tmp_path / "p.json", "labelstudio", predictions=True, model_version="v2")
    out = json.loads((tmp_path / "p.json").read_text())[0]
    assert "annotations" not in out
    assert out["predictions"][0]["model_version"] == "v2" and out["predictions"][0]["score"] == pytest.approx(0.7)
    assert out["predictions"][0]["result"][0]["score"] == 0.7


def test_unlabelled_records_become_plain_tasks(tmp_path):
    ds = Dataset(images=[ImageRecord("test/1.jpg", labelled=False)])
    write_annotations(ds, tmp_path / "t.json", "labelstudio", image_url="/data/upload/1/{path}")
    assert json.loads((tmp_path / "t.json").read_text()) == [{"data": {"image": "/data/upload/1/test/1.jpg"}}]


def test_writer_needs_image_size(tmp_path):
    ds = Dataset(images=[ImageRecord("nowhere.jpg", instances=[Instance("d", [[(0, 0), (1, 0), (1, 1)]])])],
                 root=tmp_path)
    with pytest.raises(AnnotationError, match="nowhere.jpg"):
        write_annotations(ds, tmp_path / "t.json", "labelstudio")


@pytest.mark.parametrize("url, expected", [
    ("/data/upload/3/1a2b3c4d-17.jpg", "17.jpg"),
    ("/data/local-files/?d=train/2.jpg", "train/2.jpg"),
    ("/data/local-files/?d=home%2Fme%2Fdata%2Fsample%2Ftrain%2F2.jpg", "train/2.jpg"),
    ("/data/local-files/?d=/abs/elsewhere/9.jpg", "9.jpg"),
    ("https://bucket.example.com/x/y/5.jpg?token=1", "5.jpg"),
    ("s3://bucket/claims/6.jpg", "6.jpg"),
    ("val/8.jpg", "val/8.jpg"),
])
def test_image_name_from_url(sample, url, expected):
    assert image_name_from_url(url, root=sample) == expected


def test_rectangle_result_becomes_polygon(tmp_path):
    rect = {"id": "r", "type": "rectanglelabels", "original_width": 200, "original_height": 100,
            "value": {"x": 10, "y": 20, "width": 50, "height": 30, "rotation": 0, "rectanglelabels": ["dent"]}}
    (tmp_path / "r.json").write_text(json.dumps([_task([rect])]))
    inst = read_annotations(tmp_path / "r.json").images[0].instances[0]
    assert inst.polygons == [[(20.0, 20.0), (120.0, 20.0), (120.0, 50.0), (20.0, 50.0)]]


def test_encode_rle_of_written_brush_matches_mask():
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[2:5, 3:6] = 1
    ds = Dataset(images=[ImageRecord("a.jpg", width=8, height=8, instances=[Instance("d", rle=encode_rle(mask))])])
    from cardamage.data.formats.labelstudio_json import to_labelstudio

    result = to_labelstudio(ds)[0]["annotations"][0]["result"][0]
    assert result["type"] == "brushlabels" and result["from_name"] == "brush"
    assert np.array_equal(brush_rle_to_mask(result["value"]["rle"], 8, 8), mask)
