"""Model tier: every architecture / backbone family builds at tiny size, saves and loads exactly."""

from __future__ import annotations

import shutil
import zipfile

import numpy as np
import pytest

from cardamage.config import ModelParams
from cardamage.model.backbones import BACKBONES, build_backbone, save_backbone_preset
from cardamage.model.heads import build_model
from cardamage.model.inference import mc_predict, predict_probs, predict_with_embeddings
from cardamage.model.io import ModelInfo, ModelMismatchError, load_model, read_model_info, save_model

SIZE = 64


def tiny(**kwargs) -> ModelParams:
    base = dict(backbone="mobilenetv3_small", width=0.5, input_size=SIZE, head_filters=16, projection_filters=8)
    base.update(kwargs)
    return ModelParams(**base)


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def small_model():
    return build_model(tiny(), 3)


@pytest.mark.parametrize("architecture,backbone,width", [
    ("deeplabv3plus", "mobilenetv3_small", 0.5),
    ("deeplabv3plus", "resnet18_v2", 0.25),
    ("deeplabv3plus", "efficientnetlite_b0", 0.25),
    ("deeplabv3plus", "efficientnetv2_b0", 0.25),
    ("segformer", "mit_b0", 0.25),
])
def test_each_family_builds_with_the_right_shapes(architecture, backbone, width, batch):
    model = build_model(tiny(architecture=architecture, backbone=backbone, width=width), 3)
    probs, emb = predict_with_embeddings(model, batch)
    assert probs.shape == (2, SIZE, SIZE, 3)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-4)
    assert emb.ndim == 2 and emb.shape[0] == 2
    np.testing.assert_allclose(predict_probs(model, batch), probs, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["mobilenetv3_large", "resnet50_v2"])
def test_full_width_backbones_build(backbone, batch):
    model = build_model(tiny(backbone=backbone, width=1.0), 2)
    assert predict_probs(model, batch).shape == (2, SIZE, SIZE, 2)


def test_save_load_round_trip_is_exact_and_self_contained(small_model, batch, tmp_path):
    info = save_model(small_model, tmp_path / "m.keras", ModelInfo(classes=["dent", "scratch"], input_size=SIZE))
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(tmp_path / "m.keras", alone / "m.keras")  # no sidecar file can help
    loaded, stored = load_model(alone / "m.keras", expect_classes=["dent", "scratch"], expect_input_size=SIZE)
    np.testing.assert_array_equal(predict_probs(loaded, batch), predict_probs(small_model, batch))
    assert stored.classes == ["dent", "scratch"] and stored.input_size == SIZE and stored.resize == "letterbox"
    assert stored.model_version == info.model_version and len(stored.model_version.split("-")[-1]) == 12
    assert read_model_info(alone / "m.keras").model_version == info.model_version
    assert zipfile.is_zipfile(alone / "m.keras")


def test_mismatched_classes_or_size_name_both(small_model, tmp_path):
    save_model(small_model, tmp_path / "m.keras", ModelInfo(classes=["dent", "scratch"], input_size=SIZE))
    with pytest.raises(ModelMismatchError, match=r"\['dent', 'scratch'\].*\['damage'\]"):
        load_model(tmp_path / "m.keras", expect_classes=["damage"])
    with pytest.raises(ModelMismatchError, match=r"64x64.*128x128"):
        load_model(tmp_path / "m.keras", expect_input_size=128)


def test_foreign_or_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_model_info(tmp_path / "none.keras")
    (tmp_path / "x.keras").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a .keras"):
        read_model_info(tmp_path / "x.keras")


def test_mc_dropout_samples_vary_only_with_dropout(small_model, batch):
    samples = mc_predict(small_model, batch, T=4)
    assert samples.shape == (4, 2, SIZE, SIZE, 3)
    assert samples.std(axis=0).max() > 0
    no_dropout = build_model(tiny(dropout=0.0), 3)
    still = mc_predict(no_dropout, batch, T=3)
    np.testing.assert_allclose(still[0], still[2], atol=1e-6)
    np.testing.assert_allclose(still[0], predict_probs(no_dropout, batch), atol=1e-5)


def test_local_preset_folder_initialises_the_backbone(small_model, tmp_path):
    folder = save_backbone_preset(small_model, tmp_path / "preset")
    model = build_model(tiny(backbone_preset=str(folder), input_size=96), 2)
    for a, b in zip(small_model.backbone.weights, model.backbone.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    (tmp_path / "not_a_preset").mkdir()
    (tmp_path / "not_a_preset" / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="backbone_preset"):
        build_model(tiny(backbone_preset=str(tmp_path / "not_a_preset")), 2)


def test_missing_or_foreign_preset_falls_back_to_random_init_with_warning(small_model, tmp_path, caplog):
    """The default params name an imported preset that exists only after `backbone import`."""
    import logging

    with caplog.at_level(logging.WARNING):
        model = build_model(tiny(backbone_preset=str(tmp_path / "missing")), 2)
    assert model.output_shape[-1] == 2 and "random weights" in caplog.text
    (tmp_path / "skipped").mkdir()
    (tmp_path / "skipped" / "NOT_IMPORTED.txt").write_text("no torch")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        build_model(tiny(backbone_preset=str(tmp_path / "skipped")), 2)
    assert "random weights" in caplog.text
    folder = save_backbone_preset(small_model, tmp_path / "preset")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        other = build_model(tiny(backbone="resnet18_v2", backbone_preset=str(folder)), 2)
    assert "ignoring the preset" in caplog.text and "resnet" in other.name


@pytest.mark.parametrize("kwargs,message", [
    (dict(name="vgg99", input_size=64), "unknown backbone 'vgg99'"),
    (dict(name="resnet18_v2", input_size=100), "multiple of 32, got 100"),
    (dict(name="resnet18_v2", input_size=64, width=0), "model.width"),
])
def test_backbone_argument_checks_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_backbone(**kwargs)


def test_architecture_backbone_mismatch_and_bad_inputs(small_model):
    with pytest.raises(ValueError, match="does not fit"):
        build_model(tiny(architecture="segformer", backbone="resnet18_v2"), 2)
    with pytest.raises(ValueError, match="num_classes"):
        build_model(tiny(), 1)
    with pytest.raises(ValueError, match=r"expected shape \[N, 64, 64, 3\]"):
        predict_probs(small_model, np.zeros((1, 32, 32, 3)))
    assert set(BACKBONES) >= {"mobilenetv3_small", "resnet18_v2", "efficientnetlite_b0", "mit_b0"}
