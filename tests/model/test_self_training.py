"""Model tier: self-training on confident pseudo-labels (``cardamage train --pseudo-teacher`` runs in test_train)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cardamage.config import Params
from cardamage.data.reviewed import IGNORE_INDEX
from cardamage.errors import BadParameterError
from cardamage.model.inputs import fit_geometry, place
from cardamage.model.io import load_model
from cardamage.model.predict import LoadedModel
from cardamage.model.self_training import add_pseudo_labels, draw_photos, pseudo_label, ramped


@pytest.fixture(scope="module")
def teacher(tiny_model_file) -> LoadedModel:
    return LoadedModel(*load_model(tiny_model_file), str(tiny_model_file))


def test_pseudo_labels_keep_confident_pixels_and_ignore_padding(unlabelled_pool, teacher):
    photos = sorted(unlabelled_pool.glob("*.jpg"))
    # two classes: the argmax probability is always >= 0.5 (up to rounding), never >= 1.01
    kept = pseudo_label(teacher, photos, 48, "letterbox", 0.49)
    assert kept.images.shape == (4, 48, 48, 3) and kept.masks.shape == (4, 48, 48)
    assert [Path(p).name for p in kept.paths] == [p.name for p in photos if p.name != "broken.jpg"]
    assert [Path(p).name for p, _ in kept.skipped] == ["broken.jpg"] and kept.kept_share > 0.999
    for path, mask in zip(kept.paths, kept.masks):
        with Image.open(path) as im:
            fit = fit_geometry(im.width, im.height, 48, "letterbox")
        photo = place(np.ones((fit.new_h, fit.new_w), np.uint8), fit, 0).astype(bool)
        assert not (path.endswith("wide.jpg") and photo.all()), "a wide photo leaves letterbox padding"
        assert (mask[~photo] == IGNORE_INDEX).all() and (mask[photo] != IGNORE_INDEX).all()
    none = pseudo_label(teacher, photos, 48, "letterbox", 1.01)
    assert none.kept_share == 0.0 and (none.masks == IGNORE_INDEX).all()


def test_ramp_ignores_only_pseudo_labelled_photos_until_it_is_full():
    mask = tf.ones((4, 4), tf.uint8)
    image = tf.zeros((4, 4, 3), tf.uint8)
    for ramp_value, pseudo_kept in ((0.0, False), (1.0, True)):
        ramp = tf.Variable(ramp_value)
        _, human, _ = ramped(image, mask, tf.constant(3, tf.int64), ramp)
        _, pseudo, _ = ramped(image, mask, tf.constant(-1, tf.int64), ramp)
        assert (human.numpy() == 1).all()
        assert (pseudo.numpy() == 1).all() if pseudo_kept else (pseudo.numpy() == IGNORE_INDEX).all()


def test_draw_is_seeded_and_bounded():
    photos = [Path(f"{i}.jpg") for i in range(10)]
    assert draw_photos(photos, 3, 2.0, 100, 1) == draw_photos(photos, 3, 2.0, 100, 1)
    assert len(draw_photos(photos, 3, 2.0, 100, 1)) == 6 and len(draw_photos(photos, 3, 2.0, 4, 1)) == 4
    assert len(draw_photos(photos, 30, 1.0, 100, 1)) == 10 and draw_photos(photos, 3, 0.0, 100, 1) == []


def test_a_missing_or_mismatched_teacher_is_refused(tmp_path, tiny_model_file):
    params = Params()
    params.train.pseudo_teacher = str(tmp_path / "nope.keras")
    with pytest.raises(BadParameterError, match="nope.keras: no such model file"):
        add_pseudo_labels(params, tf.data.Dataset.range(0), 0, [])
    params.train.pseudo_teacher, params.data.classes = str(tiny_model_file), ["dent", "scratch"]
    with pytest.raises(Exception, match="dent"):
        add_pseudo_labels(params, tf.data.Dataset.range(0), 0, [])


def test_repeated_labelled_photos_do_not_draw_more_pseudo_labels(unlabelled_pool, tiny_model_file):
    """With class-balanced repeats the labelled set shows 6 elements an epoch for 2 photos: the pseudo-label
    draw follows the 2 photos (pseudo_ratio x 2), the epoch length counts the 6."""
    params = Params()
    params.train.pseudo_teacher, params.train.pseudo_ratio = str(tiny_model_file), 1.0
    params.model.input_size = 48
    photos = sorted(p for p in unlabelled_pool.glob("*.jpg") if p.name != "broken.jpg")
    labelled = tf.data.Dataset.range(6).map(
        lambda i: (tf.zeros((48, 48, 3), tf.uint8), tf.zeros((48, 48), tf.uint8), i))
    out = add_pseudo_labels(params, labelled, 2, photos, per_epoch=6)
    assert out.card["photos"] == 2 and out.count == 8
    assert sum(1 for _ in out.dataset) == 8
