"""Region tasks: a cell of a photo sent to Label Studio as a crop, and its labels mapped back.

Push (:func:`region_photos`): each selected cell (``region = "x,y,w,h"`` in the selection, photo
pixels) grows by ``labelstudio.region_margin`` of its size on every side (clipped to the photo) to
the **crop box**. The crop is written to ``labelstudio.crops_dir`` (JPEG, atomically, reused when
it exists) and pushed as the task's image; the task data holds ``cardamage_region``:
``{"photo_id": sha256, "photo_path", "photo_width", "photo_height", "crop_box": [x, y, w, h],
"cell": [x, y, w, h]}``. The ledger key of a region task is ``<sha256>@x,y,w,h`` (the crop box),
so pushing the same selection twice creates no second task. The model's polygons are clipped to
the crop and shifted into its pixels (:func:`region_predictions`).

Pull (:func:`merge_regions`): the polygons of each region task (crop pixels) are shifted back into
the photo and clipped to the crop box (a polygon drawn past the crop's edge is clipped, with a
warning). All region tasks of one photo become one labelled photo whose reviewed area
(``ImageRecord.reviewed``) is the union of their crop boxes; training ignores the pixels outside it.
A task whose data has no usable crop box, or whose photo is gone or changed on disk since the push
(sha256), is reported and not merged.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from cardamage.config import Params
from cardamage.data.annotations import ImageRecord, Instance
from cardamage.data.dedup import file_sha256
from cardamage.data.reviewed import clip_polygon, normalize, parse_boxes
from cardamage.errors import BadInputError
from cardamage.fileio import write_bytes
from cardamage.labelling.photos import Photo

log = logging.getLogger(__name__)

#: Task data key of a region task's geometry.
REGION_KEY = "cardamage_region"
Box = tuple[int, int, int, int]


def parse_region(text: str, where: str) -> Box:
    """``"x,y,w,h"`` -> four ints (width, height > 0); BadInputError naming ``where`` otherwise."""
    try:
        x, y, w, h = (int(float(p)) for p in str(text).split(","))
    except (ValueError, OverflowError):
        raise BadInputError(f"{where}: region {text!r} is not 'x,y,width,height'") from None
    if w <= 0 or h <= 0 or x < 0 or y < 0:
        raise BadInputError(f"{where}: region {text!r} needs x, y >= 0 and width, height > 0")
    return x, y, w, h


def crop_box(cell: Box, width: int, height: int, margin: float) -> Box:
    """The cell grown by ``margin`` x its size on each side, clipped to the ``width x height`` photo."""
    x, y, w, h = cell
    mx, my = round(w * margin), round(h * margin)
    x0, y0 = max(0, x - mx), max(0, y - my)
    x1, y1 = min(width, x + w + mx), min(height, y + h + my)
    if x1 <= x0 or y1 <= y0:
        raise BadInputError(f"region {list(cell)} lies outside the {width}x{height} photo")
    return x0, y0, x1 - x0, y1 - y0


def region_key(sha256: str, box: Box) -> str:
    """Ledger key and ``cardamage_id`` of a region task."""
    return f"{sha256}@{','.join(str(v) for v in box)}"


def write_crop(photo: Photo, box: Box, out_dir: Path) -> Path:
    """The crop of ``photo`` (EXIF-oriented, as the model sees it) as a JPEG in ``out_dir``; reused if present."""
    from PIL import Image

    from cardamage.data.images import load_image

    x, y, w, h = box
    out = out_dir / f"{Path(photo.name).stem}_{photo.sha256[:12]}_{x}_{y}_{w}_{h}.jpg"
    if not out.is_file():
        image = load_image(photo.path)
        buf = io.BytesIO()
        Image.fromarray(image[y:y + h, x:x + w]).save(buf, format="JPEG", quality=95)
        write_bytes(out, buf.getvalue())
    return out


def region_photos(photos: Sequence[Photo], params: Params) -> list[Photo]:
    """One crop :class:`Photo` per region photo (see the module docstring); other photos pass through.

    Raises:
        ImageLoadError: a region's photo cannot be read; BadInputError: a cell outside its photo.
    """
    from cardamage.data.images import image_size

    ls = params.labelstudio
    out = []
    for photo in photos:
        if photo.region is None:
            out.append(photo)
            continue
        width, height = image_size(photo.path)
        try:
            box = crop_box(photo.region, width, height, ls.region_margin)
        except BadInputError as exc:
            raise BadInputError(f"{photo.name}: {exc}") from None
        crop = write_crop(photo, box, Path(ls.crops_dir))
        info = {"photo_id": photo.sha256, "photo_path": str(photo.path), "photo_width": width,
                "photo_height": height, "crop_box": list(box), "cell": list(photo.region)}
        out.append(replace(photo, sha256=region_key(photo.sha256, box), path=crop, extra={REGION_KEY: info}))
    return out


def source_photos(photos: Sequence[Photo]) -> list[Photo]:
    """The photos the model should predict for ``photos``: region tasks map to their whole photo (once)."""
    out: dict[str, Photo] = {}
    for p in photos:
        info = p.extra.get(REGION_KEY)
        if info is None:
            out.setdefault(p.sha256, p)
        else:
            out.setdefault(info["photo_id"], Photo(info["photo_id"], Path(info["photo_path"]), p.name))
    return list(out.values())


def to_crop(instances: Sequence[Instance], box: Sequence[float]) -> list[Instance]:
    """Photo-pixel polygons clipped to ``box = (x, y, w, h)`` and shifted into the crop's pixels."""
    x0, y0 = float(box[0]), float(box[1])
    out = []
    for inst in instances:
        polygons = [[(px - x0, py - y0) for px, py in clip_polygon(poly, tuple(box))] for poly in inst.polygons]
        polygons = [poly for poly in polygons if poly]
        if polygons:
            out.append(replace(inst, polygons=polygons, rle=None))
    return out


def region_predictions(predictions: Mapping[str, Sequence[Instance]], photos: Sequence[Photo]
                       ) -> dict[str, list[Instance]]:
    """``predictions`` (photo sha256 -> instances, photo pixels) plus each region task's, in crop pixels."""
    out = {k: list(v) for k, v in predictions.items()}
    for p in photos:
        info = p.extra.get(REGION_KEY)
        if info is not None and info["photo_id"] in predictions:
            out[p.sha256] = to_crop(predictions[info["photo_id"]], info["crop_box"])
    return out


# --- pull ---------------------------------------------------------------------------------------------


def region_info(task: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """``(cardamage_region, None)`` of a region task, ``(None, reason)`` when it is unusable,
    ``(None, None)`` for a whole-photo task."""
    data = task.get("data") or {}
    if REGION_KEY not in data:
        return None, None
    info = data[REGION_KEY]
    if not isinstance(info, dict) or not isinstance(info.get("photo_id"), str) or \
            not isinstance(info.get("photo_path"), str):
        return None, "region task without photo_id / photo_path in its data"
    try:
        box = parse_boxes([info.get("crop_box")], "crop_box")[0]
        width, height = int(info["photo_width"]), int(info["photo_height"])
    except (ValueError, TypeError, KeyError) as exc:
        return None, f"region task without a usable crop box in its data ({exc})"
    if box[0] + box[2] > width or box[1] + box[3] > height:
        return None, f"crop box {list(box)} reaches beyond the {width}x{height} photo"
    return {**info, "crop_box": box, "photo_width": width, "photo_height": height}, None


def photo_problem(info: dict[str, Any]) -> str | None:
    """Why the region's photo cannot take its labels (missing, changed since the push, or not the size the
    task data claims: that size is never trusted for memory), or ``None``."""
    path = Path(info["photo_path"])
    if not path.is_file():
        return f"{path}: the photo of this region task is gone"
    if file_sha256(path) != info["photo_id"]:
        return f"{path}: the photo changed on disk since its regions were pushed (sha256 differs); not merged"
    from cardamage.data.images import ImageLoadError, image_size

    try:
        size = image_size(path)
    except ImageLoadError as exc:
        return str(exc)
    if size != (info["photo_width"], info["photo_height"]):
        return (f"{path}: the task data says {info['photo_width']}x{info['photo_height']} pixels, the photo is "
                f"{size[0]}x{size[1]}; not merged")
    return None


def to_photo(record: ImageRecord, info: dict[str, Any], where: str) -> list[Instance]:
    """A region task's instances (crop pixels) in photo pixels, clipped to the crop box; a polygon or mask
    drawn past the crop's edge is clipped, with a warning naming ``where``."""
    x, y, w, h = (int(v) for v in info["crop_box"])
    out, clipped = [], False
    for inst in record.instances:
        if inst.rle is not None:
            out.append(replace(inst, rle=_paste(inst.rle, (x, y, w, h), info["photo_height"], info["photo_width"])))
            continue
        polygons = []
        for poly in inst.polygons:
            inside = clip_polygon(poly, (0.0, 0.0, float(w), float(h)))
            clipped |= _rounded(inside) != _rounded(poly)
            if inside:
                polygons.append([(px + x, py + y) for px, py in inside])
        if polygons:
            out.append(replace(inst, polygons=polygons))
    if clipped:
        log.warning("%s: polygon(s) drawn outside the crop; clipped to the crop box %s", where, [x, y, w, h])
    return out


def _rounded(poly: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(round(px, 3), round(py, 3)) for px, py in poly]


def _paste(rle: dict[str, Any], box: Box, height: int, width: int) -> dict[str, Any]:
    """A crop-sized RLE mask placed at ``box`` in a ``height x width`` photo-sized RLE."""
    import numpy as np

    from cardamage.data.masks import decode_rle, encode_rle

    x, y, w, h = box
    crop = decode_rle(rle)[:h, :w]
    full = np.zeros((height, width), np.uint8)
    full[y:y + crop.shape[0], x:x + crop.shape[1]] = crop
    return encode_rle(full)


def merged_record(info: dict[str, Any], parts: Sequence[tuple[list[Instance], Sequence[float]]]) -> ImageRecord:
    """One photo's record from its region tasks: their instances, reviewed = the union of their crop boxes."""
    boxes = list(dict.fromkeys(tuple(float(v) for v in box) for _, box in parts))
    width, height = info["photo_width"], info["photo_height"]
    return ImageRecord(path=Path(info["photo_path"]).name, width=width, height=height,
                       instances=[inst for instances, _ in parts for inst in instances],
                       reviewed=normalize(boxes, height, width))


def merge_regions(pulled: Sequence[Any], summary: Any) -> tuple[list[Any], list[Any]]:
    """Turn the pulled region tasks into one pulled photo each (whole-photo tasks pass through).

    Args:
        pulled: :class:`~cardamage.labelling.pull.Pulled` items of every annotated task.
        summary: the :class:`~cardamage.labelling.pull.PullSummary`; unusable region tasks are
            added to its ``problems`` / ``unusable`` lists.

    Returns:
        ``(photos, region_items)``: whole-photo items plus one merged item per photo with usable
        region labels (its ``regions`` lists their task ids), and the region tasks' own items (for the
        ledger: each region key becomes ``labelled`` or ``unusable``).
    """
    from cardamage.labelling.label_config import NO_DAMAGE
    from cardamage.labelling.label_config import UNUSABLE as UNUSABLE_CHOICE
    from cardamage.labelling.pull import DAMAGE, Pulled

    photos, region_items = [], []
    groups: dict[str, tuple[dict[str, Any], list[Any]]] = {}
    checked: dict[tuple[Any, ...], str | None] = {}
    for item in pulled:
        info, reason = region_info(item.task)
        if info is None and reason is None:
            photos.append(item)
            continue
        who = f"task {item.task.get('id')} ({(item.task.get('data') or {}).get('cardamage_path')})"
        if info is not None:  # a photo's regions share one check (one sha256 of the file)
            key = (info["photo_path"], info["photo_id"], info["photo_width"], info["photo_height"])
            if key not in checked:
                checked[key] = photo_problem(info)
            reason = checked[key]
        if info is None or reason is not None:
            summary.problems.append(f"{who}: {reason}")
            continue
        region_items.append(item)
        if item.verdict == UNUSABLE_CHOICE:
            summary.unusable.append(who)
        elif item.verdict not in (DAMAGE, NO_DAMAGE):
            summary.problems.append(f"{who}: no polygon and no choice, or 'no damage' with polygons drawn")
        else:
            groups.setdefault(info["photo_id"], (info, []))[1].append(
                (item, to_photo(item.record, info, f"Label Studio {who}")))
    whole = {p.sha256 for p in photos}
    for sha, (info, parts) in sorted(groups.items()):
        if sha in whole:
            summary.problems.append(f"{info['photo_path']}: labelled as a whole photo too; its region tasks are "
                                    "not merged")
            continue
        record = merged_record(info, [(instances, it.task["data"][REGION_KEY]["crop_box"]) for it, instances in parts])
        first = parts[0][0]
        task = {"id": first.task.get("id"), "data": {"cardamage_id": sha, "cardamage_path": info["photo_path"]}}
        photos.append(Pulled(task, sha, DAMAGE if record.instances else NO_DAMAGE, record, first.annotation_id,
                             annotation=first.annotation, regions=[int(it.task["id"]) for it, _ in parts]))
    return photos, region_items
