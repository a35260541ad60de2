"""Damage assessment of new photos: ``cardamage predict IMAGE_OR_DIR...``.

For each photo: probabilities at the network input, the letterbox undone to the ORIGINAL pixel
grid, then one instance per connected damaged region with its polygon (original pixels), class,
confidence (mean class probability inside the region), area (pixels and share of the photo) and
bounding box ``[x, y, width, height]``. A pixel is damaged when ``1 - P(background)`` reaches
``predict.threshold``; its class is the most likely damage class. Written per photo: a JSON
(atomic) and a colour splash (damage in colour on a greyscale photo). With a part model, the
damaged share of each visible car part is reported as well.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cardamage.config import Params
from cardamage.data.images import IMAGE_SUFFIXES, ImageLoadError, list_images, load_image
from cardamage.data.masks import mask_to_instances
from cardamage.errors import BadParameterError, EmptyInputError
from cardamage.fileio import write_bytes, write_json
from cardamage.model.inference import predict_probs
from cardamage.model.inputs import prepare_image, unfit
from cardamage.model.io import ModelInfo, load_model
from cardamage.model.regions import Regions, find_regions

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model and its stored :class:`ModelInfo`."""

    model: Any
    info: ModelInfo
    path: str


@dataclass
class PredictReport:
    """Outcome of a prediction run: JSON files written and photos that failed (path, reason)."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def expand_inputs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given plus the images under each folder (sorted); missing paths raise ``FileNotFoundError``."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(list_images(p))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such image or folder")
    return out


def full_res_probs(loaded: LoadedModel, images: Sequence[np.ndarray], tta: str = "none") -> list[np.ndarray]:
    """Probabilities ``float32 [H, W, C]`` on each photo's own pixel grid (letterbox undone);
    ``tta``: ``none`` or ``flip`` (see :func:`cardamage.model.inference.predict_probs`)."""
    prepared = [prepare_image(img, loaded.info.input_size, loaded.info.resize) for img in images]
    probs = predict_probs(loaded.model, np.stack([a for a, _ in prepared]), tta=tta)
    return [unfit(p, fit) for p, (_, fit) in zip(probs, prepared)]


def damage_labels(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Class mask ``uint8 [H, W]``: 0 where ``1 - P(background) < threshold``, else the likeliest damage class."""
    if not 0 < threshold <= 1:
        raise BadParameterError(f"predict.threshold: must be in (0, 1], got {threshold}")
    damaged = (1.0 - probs[..., 0]) >= threshold
    if probs.shape[-1] <= 2:  # one damage class: no argmax (4.6 -> 0.3 ms at 512 x 512)
        return damaged.astype(np.uint8)
    labels = np.zeros(damaged.shape, np.uint8)
    labels[damaged] = probs[damaged][:, 1:].argmax(-1) + 1  # only where there is damage
    return labels


def find_instances(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str], min_area_px: float,
                   epsilon: float, kept: np.ndarray | None = None) -> list[dict[str, Any]]:
    """One record per connected damaged region (8-connectivity) of each class, largest first.

    One connected-components pass per class: regions under ``min_area_px`` are dropped, the others
    are traced into polygons inside their bounding box (plus a 1 px margin), so the cost follows the
    regions' size, not the photo's.

    Args:
        labels: class mask ``[H, W]`` from :func:`damage_labels`; probs: ``[H, W, C]``.
        min_area_px: smaller regions are dropped (pixels); epsilon: polygon simplification (pixels).
        kept: optional ``bool [H, W]``, set to ``True`` on the pixels of every region kept.
    """
    h, w = labels.shape
    found = []
    for c, name in enumerate(classes, start=1):
        regions = find_regions(labels == c)
        for k in np.flatnonzero(regions.areas >= min_area_px) + 1:
            found.append(_instance(regions, int(k), probs[..., c], name, epsilon, (h, w), kept))
    found.sort(key=lambda d: -d["area_px"])
    for i, inst in enumerate(found):
        inst["id"] = i
    return found


def _instance(regions: Regions, k: int, class_probs: np.ndarray, name: str, epsilon: float,
              shape: tuple[int, int], kept: np.ndarray | None) -> dict[str, Any]:
    """The record of region ``k`` (1..n); ``class_probs``: ``float32 [H, W]`` of its class."""
    h, w = shape
    x, y, bw, bh = (int(v) for v in regions.boxes[k - 1])
    x0, y0, x1, y1 = max(x - 1, 0), max(y - 1, 0), min(x + bw + 1, w), min(y + bh + 1, h)
    region = regions.labels[y0:y1, x0:x1] == k
    if kept is not None:
        kept[y0:y1, x0:x1] |= region
    polygons = [poly for inst in mask_to_instances(region.astype(np.uint8), name, min_area=1.0, epsilon=epsilon)
                for poly in inst.polygons]
    area = int(regions.areas[k - 1])
    return {"id": -1, "class": name, "confidence": round(float(class_probs[y0:y1, x0:x1][region].mean()), 4),
            "area_px": area, "area_share": round(area / (h * w), 6), "bbox": [x, y, bw, bh],
            "polygons": [np.round(np.asarray(poly) + (x0, y0), 1).tolist() for poly in polygons]}


def part_damage(part_probs: np.ndarray, damaged: np.ndarray, parts: Sequence[str],
                min_area_px: float) -> list[dict[str, Any]]:
    """Damaged share of each visible car part: ``|damage & part| / |part|`` on the photo's pixel grid."""
    part_labels = part_probs.argmax(-1)
    out = []
    for p, name in enumerate(parts, start=1):
        visible = part_labels == p
        n = int(visible.sum())
        if n < max(min_area_px, 1):
            continue
        hit = int((visible & damaged).sum())
        out.append({"part": name, "visible_px": n, "visible_share": round(n / visible.size, 6),
                    "damaged_px": hit, "damaged_share": round(hit / n, 6)})
    return out


def color_splash(image: np.ndarray, damaged: np.ndarray, instances: Sequence[dict[str, Any]]) -> np.ndarray:
    """Damage in colour on a greyscale photo, region outlines in red; ``uint8 [H, W, 3]`` RGB."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    out = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    cv2.copyTo(image, np.ascontiguousarray(damaged, dtype=bool).view(np.uint8), out)  # colour where damaged
    thickness = max(1, min(image.shape[:2]) // 300)
    contours = [np.round(np.asarray(poly)).astype(np.int32).reshape(-1, 1, 2)
                for inst in instances for poly in inst["polygons"]]
    if contours:
        cv2.polylines(out, contours, True, (255, 0, 0), thickness)
    return out


def assess(image: np.ndarray, probs: np.ndarray, loaded: LoadedModel, params: Params,
           part_probs: np.ndarray | None = None, parts: Sequence[str] = ()) -> tuple[dict[str, Any], np.ndarray]:
    """The assessment dict of one photo and its colour splash (see module doc)."""
    p = params.predict
    h, w = image.shape[:2]
    min_area = max(1.0, p.min_area_share * h * w)
    damaged = np.zeros((h, w), bool)  # the pixels of the regions kept (small ones dropped)
    instances = find_instances(damage_labels(probs, p.threshold), probs, loaded.info.classes, min_area,
                               p.polygon_epsilon, kept=damaged)
    result: dict[str, Any] = {
        "width": w, "height": h,
        "model": {"path": loaded.path, "version": loaded.info.model_version, "classes": loaded.info.classes},
        "instance_count": len(instances),
        "damaged_share": round(float(damaged.mean()), 6),
        "damage_score": round(float((1.0 - probs[..., 0]).max()), 4),
        "instances": instances,
    }
    if part_probs is not None:
        result["parts"] = part_damage(part_probs, damaged, parts, min_area)
    return result, color_splash(image, damaged, instances)


def _unique_stem(path: Path, used: set[str]) -> str:
    stem, n = path.stem, 1
    while stem in used:
        n += 1
        stem = f"{path.stem}_{n}"
    used.add(stem)
    return stem


def predict_paths(paths: Sequence[str | os.PathLike], params: Params, out_dir: str | os.PathLike | None = None,
                  model_path: str | os.PathLike | None = None,
                  part_model_path: str | os.PathLike | None = None) -> PredictReport:
    """Assess every photo in ``paths`` (files or folders); unreadable photos are reported and skipped.

    Writes ``<out_dir>/<stem>.json`` and ``<out_dir>/<stem>_splash.<jpg|png>`` per photo.
    """
    p = params.predict
    files = expand_inputs(paths)
    if not files:
        raise EmptyInputError(f"predict: no images ({', '.join(IMAGE_SUFFIXES)}) in {[str(x) for x in paths]}")
    main_path = model_path or p.model_path
    main = LoadedModel(*load_model(main_path, expect_classes=params.data.classes), str(main_path))
    part_path = part_model_path or p.part_model_path
    part = LoadedModel(*load_model(part_path), str(part_path)) if part_path else None
    return predict_files(files, main, params, Path(out_dir or p.out_dir), part)


def predict_files(files: Sequence[Path], main: LoadedModel, params: Params, out: Path,
                  part: LoadedModel | None = None) -> PredictReport:
    """:func:`predict_paths` with models already loaded (a service or a benchmark keeps them warm)."""
    p = params.predict
    report, used = PredictReport(), set()
    step = max(1, p.batch_size)
    for start in range(0, len(files), step):
        batch = []
        for f in files[start:start + step]:
            try:
                batch.append((Path(f), load_image(f)))
            except ImageLoadError as exc:
                log.warning("skipping %s", exc)
                report.failed.append((str(f), str(exc)))
        if not batch:
            continue
        images = [img for _, img in batch]
        probs = full_res_probs(main, images, p.tta)
        part_probs = full_res_probs(part, images, p.tta) if part else [None] * len(images)
        for (f, image), pr, pp in zip(batch, probs, part_probs):
            result, splash = assess(image, pr, main, params, pp, part.info.classes if part else ())
            report.written.append(_write(out, _unique_stem(f, used), f, result, splash, p.splash_format))
    return report


def _write(out: Path, stem: str, source: Path, result: dict[str, Any], splash: np.ndarray, fmt: str) -> Path:
    splash_name = f"{stem}_splash.{fmt}"
    ok, encoded = cv2.imencode(f".{fmt}", cv2.cvtColor(splash, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{source}: could not encode the splash as {fmt}")
    write_bytes(out / splash_name, encoded.tobytes())
    json_path = write_json(out / f"{stem}.json", {"image": str(source), "splash": splash_name, **result})
    log.info("%s: %d damage region(s), %.1f%% damaged", source, result["instance_count"], 100 * result["damaged_share"])
    return json_path
