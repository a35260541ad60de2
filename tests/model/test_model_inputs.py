"""Data tier: letterbox geometry, label rasterisation, augmentation alignment, unreadable photos."""

from __future__ import annotations

import logging
import shutil

import cv2
import numpy as np
import pytest
import tensorflow as tf

from cardamage.data.annotations import ImageRecord, Instance
from cardamage.model.inputs import (
    Augment,
    augment_pair,
    base_dataset,
    batched,
    fit_geometry,
    fit_image,
    fit_mask,
    pixel_counts,
    prepare_image,
    unfit,
)
from cardamage.model.losses import IGNORE_INDEX


def test_letterbox_crop_and_stretch_geometry():
    lb = fit_geometry(200, 100, 64, "letterbox")
    assert (lb.new_w, lb.new_h, lb.ox, lb.oy) == (64, 32, 0, 16) and lb.sx == pytest.approx(0.32)
    crop = fit_geometry(200, 100, 64, "crop")
    assert (crop.new_w, crop.new_h, crop.ox, crop.oy) == (128, 64, -32, 0)
    st = fit_geometry(200, 100, 64, "stretch")
    assert (st.sx, st.sy, st.ox, st.oy) == (0.32, 0.64, 0, 0)
    with pytest.raises(ValueError, match="model.resize: 'zoom'"):
        fit_geometry(10, 10, 64, "zoom")


def test_polygon_mask_lands_where_the_image_pixels_are():
    image = np.zeros((100, 200, 3), np.uint8)
    image[20:60, 40:120] = 255
    inst = Instance("damage", polygons=[[(40, 20), (120, 20), (120, 60), (40, 60)]])
    for mode in ("letterbox", "crop", "stretch"):
        fit = fit_geometry(200, 100, 64, mode)
        img, mask = fit_image(image, fit), fit_mask([inst], ["damage"], fit)
        assert img.shape == (64, 64, 3) and mask.shape == (64, 64)
        bright = img[..., 0] > 127
        labelled = mask == 1
        assert (bright & labelled).sum() / (bright | labelled).sum() > 0.85, mode
    lb = fit_geometry(200, 100, 64, "letterbox")
    mask = fit_mask([inst], ["damage"], lb)
    assert (mask[:16] == IGNORE_INDEX).all() and (mask[48:] == IGNORE_INDEX).all()


def test_unfit_restores_the_original_grid():
    image = np.zeros((90, 150, 3), np.uint8)
    image[30:60, 50:100] = 200
    arr, fit = prepare_image(image, 64)
    assert arr.dtype == np.float32 and arr.shape == (64, 64, 3)
    back = unfit(arr[..., 0], fit)
    assert back.shape == (90, 150)
    assert ((back > 100) == (image[..., 0] > 100)).mean() > 0.97
    probs = np.random.default_rng(0).random((64, 64, 3)).astype(np.float32)
    assert unfit(probs, fit).shape == (90, 150, 3)
    crop = fit_geometry(150, 90, 64, "crop")
    assert unfit(np.ones((64, 64), np.float32), crop).shape == (90, 150)


def test_augmentation_keeps_the_mask_aligned_with_the_image():
    """The image's grey level is 100 x its class: after any random transform they must still agree."""
    mask = np.zeros((64, 64), np.uint8)
    mask[10:40, 20:50] = 1
    mask[45:60, 5:20] = 2
    image = np.repeat((mask * 100)[..., None], 3, axis=2).astype(np.uint8)
    aug = Augment(hflip=0.5, scale_range=(0.7, 1.4), rotation_degrees=20, color_jitter=0.0)
    tf.random.set_seed(1)
    changed = 0
    for _ in range(12):
        img, msk = (t.numpy() for t in augment_pair(tf.constant(image), tf.constant(mask), aug))
        assert set(np.unique(msk)) <= {0, 1, 2, IGNORE_INDEX}
        # interior pixels (3x3 neighbourhood of one label) are exact; edges are blended by bilinear sampling
        interior = (cv2.dilate(msk, np.ones((3, 3))) == cv2.erode(msk, np.ones((3, 3)))) & (msk != IGNORE_INDEX)
        agree = np.abs(img[..., 0].astype(int) - msk.astype(int) * 100) <= 1
        assert agree[interior].mean() > 0.99
        changed += int((msk != mask).any())
    assert changed >= 10


def test_colour_jitter_leaves_the_mask_alone():
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 1
    image = np.full((32, 32, 3), 120, np.uint8)
    aug = Augment(hflip=0.0, scale_range=(1.0, 1.0), rotation_degrees=0.0, color_jitter=0.5)
    img, msk = augment_pair(tf.constant(image), tf.constant(mask), aug)
    np.testing.assert_array_equal(msk.numpy(), mask)
    assert img.dtype == tf.uint8


def test_unreadable_photo_is_logged_by_name_and_skipped(sample, tmp_path, caplog):
    good = sorted((sample / "val").glob("*.jpg"))[:2]
    for f in good:
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "broken.jpg").write_bytes(good[0].read_bytes()[:2000])
    square = [Instance("damage", polygons=[[(100, 100), (400, 100), (400, 400), (100, 400)]])]
    records = [ImageRecord(path=f.name, instances=square) for f in good]
    records.insert(1, ImageRecord(path="broken.jpg", instances=square))
    skipped: list[str] = []
    with caplog.at_level(logging.WARNING, logger="cardamage.model.inputs"):
        base = base_dataset(records, tmp_path, ["damage"], {}, 64, skipped=skipped)
        counts, n = pixel_counts(base, 2)
    assert n == 2 and skipped == ["broken.jpg"]
    assert "broken.jpg" in caplog.text
    assert counts[1] > 0 and counts.sum() == 2 * 64 * 64
    images, masks = next(iter(batched(base, 4, training=True, augment=Augment())))
    assert images.shape == (2, 64, 64, 3) and images.dtype == tf.float32 and masks.dtype == tf.int32
    indices = [int(i) for _, _, i in base.as_numpy_iterator()]
    assert indices == [0, 2]
