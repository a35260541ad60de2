"""Input pipeline: photos and polygon labels to fixed-size arrays, and the tf.data pipeline.

Geometry: a photo of ``W x H`` pixels is fitted to the ``S x S`` network input by a
:class:`Fit` (scale ``sx, sy`` then offset ``ox, oy`` in input pixels):

* ``letterbox``: keep the aspect ratio, fit inside, pad (label :data:`IGNORE_INDEX` in the padding);
* ``crop``: keep the aspect ratio, cover, cut the overflow at both ends (centre crop);
* ``stretch``: scale each axis independently.

Every photo is decoded by :func:`cardamage.data.images.load_image` (EXIF orientation, RGB); a photo
that cannot be read is logged by name and skipped. Decoded, resized images and masks are cached
in memory (``uint8``: ``S*S*4`` bytes per photo) before augmentation.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import tensorflow as tf

from cardamage.config import DataParams, TrainParams
from cardamage.data.annotations import ImageRecord, Instance, category_mapper
from cardamage.data.images import ImageLoadError, load_image
from cardamage.data.masks import class_mask, instance_mask
from cardamage.data.reviewed import Box, mask_unreviewed
from cardamage.errors import BadParameterError
from cardamage.model.losses import IGNORE_INDEX

log = logging.getLogger(__name__)

RESIZE_MODES = ("letterbox", "crop", "stretch")


# ----------------------------------------------------------------------------- geometry

@dataclass(frozen=True)
class Fit:
    """How a ``orig_w x orig_h`` photo maps onto the ``size x size`` input: ``x' = x * sx + ox``.

    ``new_w, new_h`` is the resized photo before padding / cropping (pixels).
    """

    orig_w: int
    orig_h: int
    size: int
    sx: float
    sy: float
    ox: int
    oy: int
    new_w: int
    new_h: int


def fit_geometry(width: int, height: int, size: int, mode: str = "letterbox") -> Fit:
    """The :class:`Fit` of a ``width x height`` photo into a ``size`` square for ``mode``."""
    if mode not in RESIZE_MODES:
        raise BadParameterError(f"model.resize: {mode!r} is not one of {RESIZE_MODES}")
    if width < 1 or height < 1 or size < 1:
        raise ValueError(f"image size: expected positive sizes, got {width}x{height} -> {size}")
    if mode == "stretch":
        new_w, new_h = size, size
    else:
        scale = (min if mode == "letterbox" else max)(size / width, size / height)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    ox, oy = (size - new_w) // 2, (size - new_h) // 2
    return Fit(width, height, size, new_w / width, new_h / height, ox, oy, new_w, new_h)


def inference_mode(resize: str) -> str:
    """The fit used at prediction time: a centre crop would hide part of the photo, so it letterboxes."""
    return "stretch" if resize == "stretch" else "letterbox"


def place(resized: np.ndarray, fit: Fit, fill: int) -> np.ndarray:
    """Put a ``new_h x new_w`` array into a ``size x size`` canvas at ``(ox, oy)`` (pad or crop)."""
    s = fit.size
    canvas = np.full((s, s) + resized.shape[2:], fill, dtype=resized.dtype)
    x0, y0 = max(fit.ox, 0), max(fit.oy, 0)
    sx0, sy0 = max(-fit.ox, 0), max(-fit.oy, 0)
    w, h = min(fit.new_w - sx0, s - x0), min(fit.new_h - sy0, s - y0)
    canvas[y0:y0 + h, x0:x0 + w] = resized[sy0:sy0 + h, sx0:sx0 + w]
    return canvas


def fit_image(image: np.ndarray, fit: Fit) -> np.ndarray:
    """Resize + pad/crop an RGB ``uint8 [H, W, 3]`` photo to ``uint8 [S, S, 3]`` (padding is black)."""
    shrink = fit.new_w < image.shape[1] or fit.new_h < image.shape[0]
    resized = cv2.resize(image, (fit.new_w, fit.new_h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return place(resized, fit, 0)


def fit_mask(instances: Sequence[Instance], classes: Sequence[str], fit: Fit,
             category_of: Callable[[Instance], str | None] | None = None,
             reviewed: Sequence[Box] | None = None) -> np.ndarray:
    """Class mask ``uint8 [S, S]`` of the instances under ``fit``; outside the photo = :data:`IGNORE_INDEX`.

    Polygons are scaled to input pixels and rasterised there (sharper than resizing a full-size mask);
    RLE instances are rasterised at full size and resized with nearest neighbour. ``reviewed``: the
    record's reviewed boxes in photo pixels (``None``: the whole photo); pixels outside them are
    :data:`IGNORE_INDEX` too.
    """
    if any(inst.rle is not None for inst in instances):
        full = np.zeros((fit.orig_h, fit.orig_w), np.uint8)
        index = {name: i + 1 for i, name in enumerate(classes)}
        for inst in instances:
            name = category_of(inst) if category_of else inst.category
            if name in index:
                full[instance_mask(inst, fit.orig_h, fit.orig_w).astype(bool)] = index[name]
        resized = cv2.resize(full, (fit.new_w, fit.new_h), interpolation=cv2.INTER_NEAREST)
    else:
        scaled = [replace(inst, polygons=[[(x * fit.sx, y * fit.sy) for x, y in poly] for poly in inst.polygons])
                  for inst in instances]
        resized = class_mask(scaled, classes, fit.new_h, fit.new_w, category_of)
    return place(mask_unreviewed(resized, reviewed, fit.sx, fit.sy), fit, IGNORE_INDEX)


def unfit(array: np.ndarray, fit: Fit, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Undo :func:`fit_image` for a ``[S, S]`` or ``[S, S, C]`` array (probabilities, masks).

    Returns:
        ``[orig_h, orig_w(, C)]``; for a crop fit, the cropped-away border is filled from the nearest
        predicted pixels.
    """
    x0, y0 = max(fit.ox, 0), max(fit.oy, 0)
    x1, y1 = min(fit.ox + fit.new_w, fit.size), min(fit.oy + fit.new_h, fit.size)
    region = np.ascontiguousarray(array[y0:y1, x0:x1])
    if fit.ox < 0 or fit.oy < 0:
        pad = ((max(-fit.oy, 0),) * 2, (max(-fit.ox, 0),) * 2) + ((0, 0),) * (region.ndim - 2)
        region = np.pad(region, pad, mode="edge")
    channels = region.shape[2] if region.ndim == 3 else 1
    if channels > 512:  # cv2.resize handles at most 512 channels
        raise ValueError(f"array: too many channels ({channels})")
    out = cv2.resize(region, (fit.orig_w, fit.orig_h), interpolation=interpolation)
    return out.reshape((fit.orig_h, fit.orig_w) + region.shape[2:])


def prepare_image(image: np.ndarray, size: int, resize: str = "letterbox") -> tuple[np.ndarray, Fit]:
    """A photo ``uint8 [H, W, 3]`` as network input ``float32 [S, S, 3]`` (RGB 0-255) and its :class:`Fit`.

    Uses :func:`inference_mode` (a crop-trained model still sees the whole photo).
    """
    fit = fit_geometry(image.shape[1], image.shape[0], size, inference_mode(resize))
    return fit_image(image, fit).astype(np.float32), fit


# ----------------------------------------------------------------------------- records

def load_records(data: DataParams, splits: Sequence[str]) -> tuple[list[ImageRecord], Path]:
    """Labelled records of ``splits`` under ``data.root`` and the root they are relative to.

    ``data.annotation_file`` may contain ``{split}`` (e.g. ``{split}_multiclass.json``).
    Logs the source categories that map to no model class.
    """
    from cardamage.data.dataset import load_dataset

    dataset = load_dataset(data.root, annotation_file=data.annotation_file, category_key=data.category_key,
                           splits=list(splits))
    records = [r for r in dataset.images if r.labelled]
    if not records:
        raise BadParameterError(f"data.root: no labelled images in {data.root} splits {list(splits)} "
                         f"(annotation file {data.annotation_file!r})")
    category_of = category_mapper(data.classes, data.class_map)
    unused = sorted({i.category for r in records for i in r.instances if category_of(i) is None})
    if unused:
        log.warning("categories %s map to no class of %s (set data.class_map); they count as background",
                    unused, data.classes)
    return records, Path(dataset.root or data.root)


def true_instance_count(record: ImageRecord, category_of: Callable[[Instance], str | None]) -> int:
    """Number of labelled instances of a record that belong to a model class."""
    return sum(1 for inst in record.instances if category_of(inst) is not None)


# ----------------------------------------------------------------------------- tf.data

@dataclass
class Augment:
    """Augmentation strengths (see ``train`` params): flip probability, zoom range, degrees, jitter."""

    hflip: float = 0.5
    scale_range: tuple[float, float] = (0.8, 1.25)
    rotation_degrees: float = 10.0
    color_jitter: float = 0.2

    @classmethod
    def from_params(cls, train: TrainParams) -> Augment:
        lo, hi = (list(train.scale_range) + [1.0, 1.0])[:2]
        if not 0 < lo <= hi:
            raise BadParameterError(f"train.scale_range: expected [low, high] with 0 < low <= high, "
                                    f"got {train.scale_range}")
        return cls(train.hflip, (lo, hi), train.rotation_degrees, train.color_jitter)


def base_dataset(records: Sequence[ImageRecord], root: str | os.PathLike, classes: Sequence[str],
                 class_map: dict[str, str], size: int, resize: str = "letterbox",
                 skipped: list[str] | None = None, cache: bool = True) -> tf.data.Dataset:
    """Unbatched, cached ``(image uint8 [S,S,3], mask uint8 [S,S], index int64)`` for readable photos.

    ``index`` points into ``records``. Unreadable photos are logged by name, appended to ``skipped``
    and left out.
    """
    root = Path(root)
    category_of = category_mapper(classes, class_map)
    skipped = skipped if skipped is not None else []

    def load(i: np.int64) -> tuple[np.ndarray, np.ndarray, bool]:
        record = records[int(i)]
        try:
            image = load_image(root / record.path)
        except ImageLoadError as exc:
            log.warning("skipping unreadable photo %s: %s", record.path, exc)
            skipped.append(record.path)
            return np.zeros((size, size, 3), np.uint8), np.zeros((size, size), np.uint8), False
        fit = fit_geometry(image.shape[1], image.shape[0], size, resize)
        return fit_image(image, fit), fit_mask(record.instances, classes, fit, category_of, record.reviewed), True

    def load_tf(i: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        image, mask, ok = tf.numpy_function(load, [i], [tf.uint8, tf.uint8, tf.bool], stateful=False)
        image.set_shape((size, size, 3))
        mask.set_shape((size, size))
        return image, mask, i, ok

    def readable(image: tf.Tensor, mask: tf.Tensor, i: tf.Tensor, ok: tf.Tensor) -> tf.Tensor:
        return ok

    def drop_flag(image: tf.Tensor, mask: tf.Tensor, i: tf.Tensor, ok: tf.Tensor) -> tuple:
        return image, mask, i

    ds = tf.data.Dataset.range(len(records)).map(load_tf, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.filter(readable).map(drop_flag)
    return ds.cache() if cache else ds


def batched(base: tf.data.Dataset, batch_size: int, training: bool = False, augment: Augment | None = None,
            seed: int = 0, shuffle_buffer: int = 2048, count: int | None = None,
            example_map: Callable[..., tuple] | None = None) -> tf.data.Dataset:
    """``(image float32 [B,S,S,3] 0-255, mask int32 [B,S,S])`` batches, shuffled and augmented when training.

    ``count`` (photos in ``base``, e.g. from :func:`pixel_counts`) lets Keras know the epoch length.
    ``example_map``: applied to each shuffled ``(image, mask, index)`` before batching (the
    pseudo-label ramp of :mod:`cardamage.model.self_training`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    ds = base
    if count is not None:
        ds = ds.apply(tf.data.experimental.assert_cardinality(count))
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if example_map is not None:
        ds = ds.map(example_map)
    ds = ds.map(lambda image, mask, i: (image, mask)).batch(batch_size)
    if training and augment is not None:  # augment whole batches: one op per batch, not per photo
        ds = ds.map(lambda images, masks: augment_batch(images, masks, augment), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda images, masks: (tf.cast(images, tf.float32), tf.cast(masks, tf.int32)))
    return ds.prefetch(tf.data.AUTOTUNE)


def pixel_counts(base: tf.data.Dataset, num_classes: int) -> tuple[np.ndarray, int]:
    """Label pixel counts ``int64 [C]`` (ignored pixels excluded) and the number of photos.

    Iterating the whole cached dataset also fills its cache.
    """
    counts = np.zeros(num_classes, np.int64)
    n = 0
    for _, mask, _ in base.as_numpy_iterator():
        values = mask[mask != IGNORE_INDEX]
        counts += np.bincount(values, minlength=num_classes)[:num_classes]
        n += 1
    return counts, n


def _affine(batch: tf.Tensor, size: int, aug: Augment) -> tf.Tensor:
    """Random flip / zoom / rotation / shift per image as ``[B, 8]`` projective transforms (output -> input)."""
    c = (size - 1) / 2.0
    lo, hi = aug.scale_range
    s = tf.exp(tf.random.uniform([batch], math.log(lo), math.log(hi)))
    theta = tf.random.uniform([batch], -1.0, 1.0) * aug.rotation_degrees * math.pi / 180.0
    flip = tf.where(tf.random.uniform([batch]) < aug.hflip, -1.0, 1.0)
    shift = tf.abs(s - 1.0) * size / 2.0
    tx, ty = tf.random.uniform([batch], -1.0, 1.0) * shift, tf.random.uniform([batch], -1.0, 1.0) * shift
    cos, sin = tf.cos(theta) / s, tf.sin(theta) / s
    # input = F R(-theta) / s (out - c - t) + c, F = diag(flip, 1)
    a00, a01, a10, a11 = flip * cos, flip * sin, -sin, cos
    ux, uy = c + tx, c + ty
    bx = c - (a00 * ux + a01 * uy)
    by = c - (a10 * ux + a11 * uy)
    zeros = tf.zeros_like(a00)
    return tf.stack([a00, a01, bx, a10, a11, by, zeros, zeros], axis=1)


def augment_batch(images: tf.Tensor, masks: tf.Tensor, aug: Augment) -> tuple[tf.Tensor, tf.Tensor]:
    """One random geometric transform per photo for image (bilinear) and mask (nearest), then colour jitter.

    Args:
        images: ``uint8 [B, S, S, 3]``; masks: ``uint8 [B, S, S]``.

    Returns:
        ``float32 [B, S, S, 3]`` (0-255) and ``int32 [B, S, S]``; pixels brought in from outside the
        photo are black in the image and :data:`IGNORE_INDEX` in the mask.
    """
    size = int(images.shape[1])
    transforms = _affine(tf.shape(images)[0], size, aug)
    shape = tf.constant([size, size], tf.int32)
    img = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32), transforms=transforms, output_shape=shape,
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")
    msk = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(masks, tf.float32)[..., None], transforms=transforms, output_shape=shape,
        fill_value=float(IGNORE_INDEX), interpolation="NEAREST", fill_mode="CONSTANT")[..., 0]
    if aug.color_jitter > 0:
        img = _jitter(img, aug.color_jitter)
    return img, tf.cast(msk, tf.int32)


def augment_pair(image: tf.Tensor, mask: tf.Tensor, aug: Augment) -> tuple[tf.Tensor, tf.Tensor]:
    """:func:`augment_batch` for one ``uint8 [S, S, 3]`` photo and ``uint8 [S, S]`` mask (returns ``uint8``)."""
    img, msk = augment_batch(image[None], mask[None], aug)
    return tf.cast(tf.clip_by_value(tf.round(img[0]), 0, 255), tf.uint8), tf.cast(msk[0], tf.uint8)


def _jitter(img: tf.Tensor, strength: float) -> tf.Tensor:
    """Per-photo brightness, contrast and saturation jitter of ``float32 [B, S, S, 3]`` in 0-255."""
    n = tf.shape(img)[0]

    def factor(spread: float) -> tf.Tensor:
        return tf.random.uniform([n, 1, 1, 1], 1.0 - spread, 1.0 + spread)

    img = img + tf.random.uniform([n, 1, 1, 1], -0.5, 0.5) * strength * 255.0
    mean = tf.reduce_mean(img, axis=[1, 2, 3], keepdims=True)
    img = (img - mean) * factor(strength) + mean
    grey = tf.reduce_mean(img, axis=3, keepdims=True)
    img = (img - grey) * factor(strength) + grey
    return tf.clip_by_value(img, 0.0, 255.0)
