"""COCO mask AP of a segmentation model: instances are the connected regions of each class.

Ground truth: the 8-connected regions of each class in the label mask (the ignore index and
padding are left out, ``iscrowd = 0``). Detections: the regions of each class in the predicted
class map, scored by the mean probability of their class over their pixels. Both are RLE-encoded
and scored by ``pycocotools.cocoeval.COCOeval`` (``iouType="segm"``): mask AP over IoU 0.50:0.95,
AP at 0.50, and AP per class. Masks are the evaluation's ``S x S`` input grids, so areas (and the
small / medium / large split COCO makes) are in input pixels.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cardamage.model.regions import find_regions


@dataclass
class MaskInstances:
    """Ground-truth and detected instances of the evaluated photos, one list entry per photo."""

    gt: list[list[tuple[int, dict[str, Any]]]] = field(default_factory=list)
    det: list[list[tuple[int, dict[str, Any], float]]] = field(default_factory=list)
    shape: tuple[int, int] = (0, 0)

    def add(self, truth: np.ndarray, pred: np.ndarray, probs: np.ndarray, num_classes: int,
            ignore: int = 255, min_px: int = 1) -> None:
        """One photo: ``truth``/``pred`` ``uint8 [S, S]`` class maps, ``probs float32 [S, S, C]``."""
        self.shape = truth.shape
        valid = truth != ignore
        self.gt.append([(c, rle) for c in range(1, num_classes) for rle, _ in _regions(truth == c, min_px)])
        self.det.append([(c, rle, float(probs[..., c][m].mean()))
                         for c in range(1, num_classes) for rle, m in _regions((pred == c) & valid, min_px)])


def _regions(mask: np.ndarray, min_px: int) -> list[tuple[dict[str, Any], np.ndarray]]:
    from pycocotools import mask as mask_utils

    regions = find_regions(mask)
    out = []
    for k in np.flatnonzero(regions.areas >= min_px) + 1:
        m = regions.labels == k
        out.append((mask_utils.encode(np.asfortranarray(m.astype(np.uint8))), m))
    return out


def mask_ap(found: MaskInstances, classes: Sequence[str]) -> dict[str, Any]:
    """``{"mask_ap", "mask_ap50", "per_class": {name: AP or None}, "gt_instances", "detections"}``;
    AP is ``None`` (JSON null) where no ground-truth instance exists."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    h, w = found.shape
    images = [{"id": i + 1, "width": int(w), "height": int(h)} for i in range(len(found.gt))]
    anns, dets = [], []
    for i, photo in enumerate(found.gt):
        for c, rle in photo:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": c, "segmentation": _json_rle(rle),
                         "area": float(rle_area(rle)), "bbox": _bbox(rle), "iscrowd": 0})
    for i, photo in enumerate(found.det):
        for c, rle, score in photo:
            dets.append({"image_id": i + 1, "category_id": c, "segmentation": _json_rle(rle), "score": score})
    result: dict[str, Any] = {"mask_ap": None, "mask_ap50": None, "per_class": {n: None for n in classes},
                              "gt_instances": len(anns), "detections": len(dets)}
    if not anns:
        return result
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": k + 1, "name": n} for k, n in enumerate(classes)]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt.createIndex()
        if not dets:
            return {**result, "mask_ap": 0.0, "mask_ap50": 0.0,
                    "per_class": {n: 0.0 if any(c == k + 1 for p in found.gt for c, _ in p) else None
                                  for k, n in enumerate(classes)}}
        ev = COCOeval(gt, gt.loadRes(dets), iouType="segm")
        ev.params.maxDets = [1, 10, 100]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # [T iou, R recall, K class, A area, M maxDets]
    per_class = {}
    for k, name in enumerate(classes):
        p = precision[:, :, k, 0, -1]
        per_class[name] = round(float(p[p > -1].mean()), 4) if (p > -1).any() else None
    return {**result, "mask_ap": round(float(ev.stats[0]), 4), "mask_ap50": round(float(ev.stats[1]), 4),
            "per_class": per_class}


def rle_area(rle: dict[str, Any]) -> int:
    from pycocotools import mask as mask_utils

    return int(mask_utils.area(rle))


def _bbox(rle: dict[str, Any]) -> list[float]:
    from pycocotools import mask as mask_utils

    return [float(v) for v in mask_utils.toBbox(rle)]


def _json_rle(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}
