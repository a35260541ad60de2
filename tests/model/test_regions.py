"""Code tier: the one region counter, the one softmax, the backbone table and the loss with variable weights."""

from __future__ import annotations

import numpy as np

from cardamage.model.backbones import BACKBONES, TABLE, imagenet_sources
from cardamage.model.inference import softmax
from cardamage.model.regions import count_regions, find_regions, instance_counts, remove_small_regions


def _labels() -> np.ndarray:
    labels = np.zeros((10, 10), np.uint8)
    labels[1:3, 1:3] = 1  # 4 px of class 1
    labels[5:9, 5:9] = 2  # 16 px of class 2
    labels[0, 9] = 2  # 1 px of class 2
    return labels


def test_find_regions_areas_boxes_and_masks():
    regions = find_regions(_labels() == 2)
    assert len(regions) == 2 and sorted(regions.areas.tolist()) == [1, 16]
    big = int(np.argmax(regions.areas))
    assert regions.boxes[big].tolist() == [5, 5, 4, 4]
    assert regions.mask(big + 1).sum() == 16


def test_counts_per_class_per_photo_and_small_region_removal():
    labels = _labels()
    assert count_regions(labels, 3, min_px=1) == 3 and count_regions(labels, 3, min_px=4) == 2
    damage = np.stack([labels > 0, np.zeros_like(labels, bool)])
    np.testing.assert_array_equal(instance_counts(damage, min_px=2), [2, 0])
    assert instance_counts(np.zeros((0, 4, 4), bool)).shape == (0,)
    kept = remove_small_regions(labels, 3, min_area_px=2)
    assert kept[0, 9] == 0 and (kept[labels == 1] == 1).all() and (kept[5:9, 5:9] == 2).all()


def test_softmax_is_stable_and_normalised():
    probs = softmax(np.array([[1000.0, 1000.0], [0.0, np.log(3.0)]]))
    np.testing.assert_allclose(probs, [[0.5, 0.5], [0.25, 0.75]])


def test_backbone_table_names_its_imagenet_import():
    assert tuple(TABLE) == BACKBONES and TABLE["mit_b0"].architecture == "segformer"
    assert imagenet_sources() == {"efficientnet-lite0": "efficientnetlite_b0"}


def test_loss_reads_variable_class_weights_at_every_call():
    import keras

    from cardamage.model.losses import SegmentationLoss

    labels = np.array([[[0, 1], [1, 255]]], np.int32)
    probs = np.array([[[[0.7, 0.3], [0.4, 0.6]], [[0.2, 0.8], [0.5, 0.5]]]], np.float32)
    weights = keras.Variable(np.ones(2, np.float32), trainable=False)
    loss = SegmentationLoss(2, weights, dice_weight=0.5)
    np.testing.assert_allclose(float(loss(labels, probs)),
                               float(SegmentationLoss(2, [1.0, 1.0], dice_weight=0.5)(labels, probs)), rtol=1e-6)
    weights.assign([1.0, 3.0])
    np.testing.assert_allclose(float(loss(labels, probs)),
                               float(SegmentationLoss(2, [1.0, 3.0], dice_weight=0.5)(labels, probs)), rtol=1e-6)
    assert loss.get_config()["class_weights"] == [1.0, 3.0]
