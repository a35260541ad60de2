"""COCO reader/writer, and the cross-check of the sample against the shared COCO conversion."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cardamage.data.annotations import Dataset, ImageRecord, Instance
from cardamage.data.dataset import load_dataset
from cardamage.data.formats import read_annotations, write_annotations
from cardamage.data.masks import decode_rle, encode_rle, rasterize_polygons


def _coco(images, annotations, categories) -> dict:
    return {"images": images, "annotations": annotations, "categories": categories}


def _write(tmp_path, data, name="c.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _mask() -> np.ndarray:
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[2:8, 3:12] = 1
    mask[10:15, 20:28] = 1
    return mask


def _uncompressed(mask: np.ndarray) -> list[int]:
    flat = mask.ravel(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.r_[0, changes, flat.size]
    counts = np.diff(bounds).tolist()
    return ([0] + counts) if flat[0] else counts


@pytest.mark.parametrize("start", [0, 1])
def test_rle_polygons_ids_and_iscrowd(tmp_path, start):
    mask = _mask()
    data = _coco(
        [{"id": start, "file_name": "a.jpg", "width": 30, "height": 20},
         {"id": start + 1, "file_name": "b.jpg", "width": 30, "height": 20}],
        [{"id": start, "image_id": start, "category_id": start, "iscrowd": 1, "segmentation": encode_rle(mask)},
         {"id": start + 1, "image_id": start, "category_id": start + 1, "iscrowd": 1,
          "segmentation": {"size": [20, 30], "counts": _uncompressed(mask)}},
         {"id": start + 2, "image_id": start + 1, "category_id": start + 1, "iscrowd": 0,
          "segmentation": [[1, 1, 5, 1, 5, 5], [10, 10, 15, 10, 15, 15, 10, 15]],
          "attributes": {"occluded": True}, "score": 0.5}],
        [{"id": start, "name": "dent"}, {"id": start + 1, "name": "scratch"}, {"id": start + 2, "name": "unused"}])
    ds = read_annotations(_write(tmp_path, data))
    assert ds.categories == ["dent", "scratch", "unused"]  # unused category kept
    compressed, uncompressed = ds.images[0].instances
    assert compressed.iscrowd and uncompressed.iscrowd
    assert isinstance(compressed.rle["counts"], str) and isinstance(uncompressed.rle["counts"], list)
    assert np.array_equal(decode_rle(compressed.rle), mask) and np.array_equal(decode_rle(uncompressed.rle), mask)
    multi = ds.images[1].instances[0]
    assert len(multi.polygons) == 2 and multi.attributes == {"occluded": True} and multi.score == 0.5
    assert (ds.images[0].width, ds.images[0].height) == (30, 20)

    write_annotations(ds, tmp_path / "out.json", "coco")
    out = json.loads((tmp_path / "out.json").read_text())
    assert [i["id"] for i in out["images"]] == [1, 2]
    assert [c["id"] for c in out["categories"]] == [1, 2, 3]
    assert [a["id"] for a in out["annotations"]] == [1, 2, 3]
    a1, a2, a3 = out["annotations"]
    assert a1["area"] == a2["area"] == mask.sum() and a1["iscrowd"] == 1
    assert a2["segmentation"]["counts"] == _uncompressed(mask)  # kept as written
    assert a3["bbox"] == [1, 1, 14, 14] and a3["attributes"] == {"occluded": True} and a3["score"] == 0.5
    assert a3["area"] == rasterize_polygons(multi.polygons, 20, 30).sum() > 25  # mask area of the merged polygons
    back = read_annotations(tmp_path / "out.json")
    assert back.images[1].instances[0].polygons == multi.polygons
    assert np.array_equal(decode_rle(back.images[0].instances[1].rle), mask)


def test_writer_reads_size_from_disk_and_ids_from_start(sample, tmp_path):
    ds = read_annotations(sample / "val" / "via_region_data.json")
    assert ds.images[0].width is None
    write_annotations(ds, tmp_path / "c.json", "coco", start_id=0)
    out = json.loads((tmp_path / "c.json").read_text())
    assert out["images"][0]["id"] == 0 and out["categories"] == [{"id": 0, "name": "damage", "supercategory": ""}]
    assert (out["images"][0]["width"], out["images"][0]["height"]) == (1024, 1024)
    assert all(len(a["bbox"]) == 4 and a["area"] > 0 for a in out["annotations"])


def test_writer_without_size_or_file_uses_polygon_extent(tmp_path, caplog):
    ds = Dataset(images=[ImageRecord("x.jpg", instances=[Instance("dent", [[(0, 0), (40.5, 0), (40.5, 30)]])])])
    write_annotations(ds, tmp_path / "c.json", "coco")
    image = json.loads((tmp_path / "c.json").read_text())["images"][0]
    assert (image["width"], image["height"]) == (41, 30)
    assert "size unknown" in caplog.text


def test_bilgi_placeholder_category_stays(shared_datasets):
    ds = read_annotations(shared_datasets / "bilgi-car-damage" / "valid" / "_annotations.coco.json")
    assert ds.categories[0] == "car" and len(ds.categories) == 9
    assert not any(i.category == "car" for _, i in ds.instances())
    assert len(ds.images) == 492
    counts = {c: 0 for c in ds.categories}
    for _, inst in ds.instances():
        counts[inst.category] += 1
    assert counts["cizik"] == 358 and counts["kaput_hasar"] == 19


def _by_name(ds) -> dict[str, list]:
    return {r.name: sorted((i.category, tuple(p)) for i in r.instances for p in i.polygons)
            for r in ds.images if r.labelled}


@pytest.mark.parametrize("annotation_file, shared_name", [
    ("via_region_data.json", "COCO_{split}_annos.json"),
    ("{split}_multiclass.json", "COCO_mul_{split}_annos.json"),
])
def test_sample_to_coco_matches_shared_coco(sample, shared_datasets, tmp_path, annotation_file, shared_name):
    ds = load_dataset(sample, annotation_file=annotation_file)
    write_annotations(ds, tmp_path / "ours.json", "coco")
    ours = _by_name(read_annotations(tmp_path / "ours.json", root=sample))
    theirs: dict[str, list] = {}
    for split in ("train", "val"):
        theirs.update(_by_name(read_annotations(shared_datasets / "coco-car-damage" / split
                                                / shared_name.format(split=split))))
    assert len(ours) == 70 and set(ours) == set(theirs)
    mismatched = [name for name in ours if ours[name] != theirs[name]]
    assert mismatched == []
