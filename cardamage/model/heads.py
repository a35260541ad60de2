"""Segmentation heads: DeepLabV3+ / SegFormer over a KerasCV backbone, and the simulation's light head.

With :mod:`cardamage.model.backbones`, the only module importing ``keras_cv`` (KerasCV is frozen
upstream; switching to KerasHub must stay a change of these two files).

Model contract of :class:`SegmentationModel` (what every other module relies on):

* input ``image``: ``float32 [N, S, S, 3]``, RGB, 0-255 (the backbone rescales to 0-1 inside),
  ``S = input_size``; photos are letterboxed / resized to ``S`` by :mod:`cardamage.model.inputs`;
* output ``probs``: ``float32 [N, S, S, C]`` softmax, ``C = len(classes) + 1``, channel 0 is
  background;
* layer ``high_features``: the deepest backbone feature map (its spatial mean is the image
  embedding), layer ``mc_dropout``: the head dropout used for MC-dropout.

:func:`build_light_head` is the small FPN-style decoder the active-learning simulation trains on
frozen, cached backbone features (:mod:`cardamage.model.frozen`); it shares the conv block
(:func:`conv_bn_relu`) and the stride map (:data:`STRIDES`, :func:`~cardamage.model.backbones.feature_levels`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
import keras_cv  # noqa: F401  (registers KerasCV's layers and backbones for loading saved models)
from keras_cv.layers import SpatialPyramidPooling
from keras_cv.models import Task

from cardamage.config import ModelParams
from cardamage.errors import BadParameterError
from cardamage.model.backbones import STRIDES, architecture_of, build_backbone, feature_levels, is_backbone, spec_of

ARCHITECTURES = ("deeplabv3plus", "segformer")


def conv_bn_relu(x: Any, filters: int, kernel: int, name: str | None = None) -> Any:
    """``kernel x kernel`` conv (no bias, same padding) -> batch norm -> ReLU; ``[N, h, w, filters]``.

    ``name`` prefixes the three layer names (``None``: Keras' automatic names).
    """
    names = (f"{name}_conv", f"{name}_bn", f"{name}_relu") if name else (None, None, None)
    x = keras.layers.Conv2D(filters, kernel, padding="same", use_bias=False, name=names[0])(x)
    x = keras.layers.BatchNormalization(name=names[1])(x)
    return keras.layers.ReLU(name=names[2])(x)


# ----------------------------------------------------------------------------- full network

def build_model(params: ModelParams, num_classes: int) -> keras.Model:
    """Build the segmentation network described by ``params``.

    Args:
        params: the ``model`` section.
        num_classes: output channels, background included (``len(data.classes) + 1``, >= 2).

    Returns:
        An uncompiled :class:`SegmentationModel` ``image [N,S,S,3] -> probs [N,S,S,num_classes]``.
    """
    if params.architecture not in ARCHITECTURES:
        raise BadParameterError(f"model.architecture: {params.architecture!r} is not one of {ARCHITECTURES}")
    if not params.backbone_preset:  # cheap check first; with a preset, check what the preset built
        _check_fit(params.backbone, spec_of(params.backbone).architecture, params.architecture)
    backbone = build_backbone(params.backbone, params.input_size, params.width, params.backbone_preset)
    if params.backbone_preset:
        _check_fit(params.backbone, architecture_of(backbone), params.architecture)
    return SegmentationModel(backbone=backbone, num_classes=num_classes, architecture=params.architecture,
                             head_filters=params.head_filters, projection_filters=params.projection_filters,
                             aspp_dilation_rates=list(params.aspp_dilation_rates), dropout=params.dropout,
                             bn_momentum=params.bn_momentum, name=f"{params.architecture}_{params.backbone}")


def _check_fit(name: str, built: str | None, architecture: str) -> None:
    """Raise when a backbone family (``built``: the head it fits, ``None`` = unknown) does not fit ``architecture``."""
    if built is not None and built != architecture:
        raise BadParameterError(f"model.backbone: {name!r} does not fit model.architecture="
                         f"{architecture!r} (segformer takes mit_b0; deeplabv3plus takes a CNN)")


@keras.saving.register_keras_serializable(package="cardamage")
class SegmentationModel(Task):
    """DeepLabV3+ or SegFormer head over a KerasCV backbone (a KerasCV ``Task``).

    Like KerasCV's own tasks, the config stores the backbone's config plus the head arguments,
    so a ``.keras`` file rebuilds the same graph offline. ``cardamage_info`` (a plain dict, see
    :class:`cardamage.model.io.ModelInfo`) rides along in the config.

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
        features = _pyramid(backbone, size)
        strides = sorted(features)
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
        self._set_bn_momentum(bn_momentum)
        self.backbone = backbone
        self.num_classes = num_classes
        self.architecture = architecture
        self.head_filters = head_filters
        self.projection_filters = projection_filters
        self.aspp_dilation_rates = list(aspp_dilation_rates)
        self.dropout = dropout
        self.bn_momentum = bn_momentum
        self.cardamage_info = dict(cardamage_info or {})

    def _set_bn_momentum(self, bn_momentum: float | None) -> None:
        if bn_momentum is None:
            return
        if not 0 < bn_momentum < 1:
            raise BadParameterError(f"model.bn_momentum: must be in (0, 1), got {bn_momentum}")
        for layer in self._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = bn_momentum

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


def _pyramid(backbone: keras.Model, size: int) -> dict[int, Any]:
    """``{stride: feature tensor [N, S/stride, S/stride, C_stride]}`` for strides >= 4.

    As KerasCV's tasks do: a functional view of the backbone exposing its pyramid levels.
    """
    levels = feature_levels(backbone, size)
    strides = sorted(s for s in levels if s >= 4)
    extractor = keras.Model(backbone.input, {f"s{s}": backbone.get_layer(levels[s]).output for s in strides})
    _freeze_unused(backbone, extractor)
    feats = extractor(backbone.input)
    return {s: feats[f"s{s}"] for s in strides}


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
        raise BadParameterError(f"model.head_filters: must be positive, got {head_filters}")
    if not 0 <= dropout < 1:
        raise BadParameterError(f"model.dropout: must be in [0, 1), got {dropout}")


def _deeplab_decoder(high: Any, low: Any, filters: int, projection: int, rates: Sequence[int]) -> Any:
    """DeepLabV3+ decoder (as in KerasCV's DeepLabV3Plus): ASPP on stride 32, fused at stride 4.

    Returns ``[N, S/4, S/4, filters]``.
    """
    x = SpatialPyramidPooling(dilation_rates=list(rates), num_channels=filters, name="aspp")(high)
    x = keras.layers.Resizing(int(low.shape[1]), int(low.shape[2]), interpolation="bilinear",
                              name="aspp_upsample")(x)
    low = conv_bn_relu(low, projection, 1, "low_level")
    x = keras.layers.Concatenate(name="decoder_concat")([x, low])
    return conv_bn_relu(x, filters, 3, "decoder")


def _segformer_decoder(features: Sequence[Any], filters: int) -> Any:
    """SegFormer all-MLP decoder (as in KerasCV's SegFormer): project, upsample to stride 4, fuse.

    Returns ``[N, S/4, S/4, filters]``.
    """
    h, w = int(features[0].shape[1]), int(features[0].shape[2])
    outs = []
    for i, feat in enumerate(features):
        y = keras.layers.Dense(filters, name=f"mlp_{i}")(feat)
        if int(feat.shape[1]) != h:
            y = keras.layers.Resizing(h, w, interpolation="bilinear", name=f"mlp_{i}_upsample")(y)
        outs.append(y)
    x = keras.layers.Concatenate(name="decoder_concat")(outs[::-1])
    return conv_bn_relu(x, filters, 1, "fuse")


# ----------------------------------------------------------------------------- light head (simulation)

def pyramid_extractor(backbone: keras.Model, input_size: int, label: str = "backbone") -> keras.Model:
    """``image [N,S,S,3] (RGB 0-255) -> [maps at stride 4, 8, 16, 32]`` of ``backbone``.

    The outputs are a list in :data:`STRIDES` order, map ``s`` of shape ``[N, S/s, S/s, C_s]``.

    Raises:
        ValueError: the backbone has no feature map at one of the strides (``label`` names it).
    """
    if not is_backbone(backbone):
        raise ValueError(f"backbone: expected a KerasCV backbone, got {type(backbone).__name__}")
    levels = feature_levels(backbone, input_size)
    missing = [s for s in STRIDES if s not in levels]
    if missing:
        raise ValueError(f"{label} has no feature map at stride(s) {missing}")
    return keras.Model(backbone.input, [backbone.get_layer(levels[s]).output for s in STRIDES])


def stride32_stages(backbone: keras.Model, input_size: int, stages: int, label: str = "backbone") -> keras.Model:
    """``stride-16 map [N, S/16, S/16, C_16] -> stride-32 map [N, S/32, S/32, C_32]``: the part of
    ``backbone`` between those pyramid levels, its last ``stages`` stages (and the top conv) trainable.

    Fine-tuning these on cached stride-16 features costs no backbone pass over the photo. Earlier
    layers of that part stay frozen, and every batch norm keeps its preset statistics (inference
    mode), as usual when fine-tuning on few labels. Stages are KerasCV's ``block{n}`` layer groups.

    Raises:
        BadParameterError: ``stages`` outside ``1..`` the stages there, or a backbone without ``block{n}`` names.
    """
    levels = feature_levels(backbone, input_size)
    part = keras.Model(backbone.get_layer(levels[16]).output, backbone.get_layer(levels[32]).output,
                       name="stride32_stages")
    stage_of = [int(m.group(1)) if (m := re.match(r"block(\d+)", layer.name)) else None for layer in part.layers]
    numbers = sorted({n for n in stage_of if n is not None})
    if not numbers or not 1 <= stages <= len(numbers):
        raise BadParameterError(f"simulate.tune_stages: {label} has {len(numbers)} stage(s) past stride 16 "
                                f"({', '.join(f'block{n}' for n in numbers) or 'no block<n> layers'}); got {stages}")
    tuned = False  # from the first tuned stage's first layer on (the top conv after the last block included)
    for layer, number in zip(part.layers, stage_of):
        tuned = tuned or (number is not None and number >= numbers[-stages])
        layer.trainable = tuned and not isinstance(layer, keras.layers.BatchNormalization)
    return part


@dataclass
class Head:
    """A light decoder head in three views sharing weights.

    ``trunk``: ``[stride 4, 8, 16, 32 maps] -> h [N, S/4, S/4, filters]`` (convs + batch norm);
    ``tail``: ``h -> logits [N, S/4, S/4, C]`` (dropout + 1x1 classifier, no batch norm, so
    ``tail(h, training=True)`` is pure MC dropout); ``model``: features -> softmax of the logits
    bilinearly upsampled to ``[N, S, S, C]`` (trained and evaluated at full input resolution).
    """

    trunk: keras.Model
    tail: keras.Model
    model: keras.Model


def build_light_head(shapes: Sequence[tuple[int, ...]], num_classes: int, filters: int, dropout: float,
                     size: int, stride32: keras.Model | None = None) -> Head:
    """FPN-style decoder over frozen features: 1x1 laterals summed top-down to stride 8, a 3x3
    conv-BN-ReLU there, then upsampled, concatenated with the stride-4 lateral and fused by a 1x1
    conv-BN-ReLU (a 3x3 conv at stride 4 would cost 9x more on 2 cores for little gain).

    Args:
        shapes: feature shapes ``(S/s, S/s, C_s)`` for ``s`` in :data:`STRIDES`.
        num_classes: output channels, background included.
        filters: decoder channels; dropout: rate before the classifier.
        size: input side ``S`` in pixels (the output is upsampled to it).
        stride32: :func:`stride32_stages`: the stride-32 map is computed from the stride-16 input
            by these (partly trainable) backbone stages; the cached stride-32 input is then unused.
    """
    layers = keras.layers
    inputs = [keras.Input(shape) for shape in shapes]
    x = layers.Conv2D(filters, 1)(inputs[3] if stride32 is None else stride32(inputs[2]))
    for feat in (inputs[2], inputs[1]):
        x = layers.UpSampling2D(2, interpolation="bilinear")(x)
        x = layers.Add()([x, layers.Conv2D(filters, 1)(feat)])
    x = conv_bn_relu(x, filters, 3)
    x = layers.UpSampling2D(2, interpolation="bilinear")(x)
    x = layers.Concatenate()([x, layers.Conv2D(max(8, filters // 2), 1)(inputs[0])])
    trunk = keras.Model(inputs, conv_bn_relu(x, filters, 1), name="trunk")
    h = keras.Input(trunk.output.shape[1:])
    tail = keras.Model(h, layers.Conv2D(num_classes, 1)(layers.Dropout(dropout)(h)), name="tail")
    logits = layers.Resizing(size, size, interpolation="bilinear")(tail(trunk(inputs)))
    return Head(trunk, tail, keras.Model(inputs, layers.Softmax()(logits), name="head"))
