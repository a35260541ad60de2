"""Saving and loading segmentation models: one self-contained ``.keras`` file per model.

The saved file carries a :class:`ModelInfo` in the model config (classes, input size, resize
mode, normalisation, model version) so that a saved model predicts correctly with no other file.
Reading that info (:func:`read_model_info`, :func:`check_compatible`) opens the zip only and
imports neither TensorFlow nor KerasCV; saving and loading import them.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cardamage.errors import BadInputError, ModelMismatchError
from cardamage.fileio import atomic_path

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

__all__ = ["NORMALISATION", "ModelInfo", "ModelMismatchError", "check_compatible", "load_model", "read_model_info",
           "save_model", "weights_digest"]

NORMALISATION = "rgb_0_255"  # the model takes RGB 0-255 floats; rescaling is inside the backbone


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


def weights_digest(model: keras.Model) -> str:
    """SHA-256 hex digest of all weight values (order and bytes), independent of the file format."""
    import keras

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
    from cardamage.model.heads import SegmentationModel

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
    import keras

    from cardamage.model.heads import SegmentationModel

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
    """Read the :class:`ModelInfo` stored in a ``.keras`` file without building the network.

    Raises:
        FileNotFoundError: no such file.
        BadInputError: not a readable ``.keras`` file (not a zip, cut short, bad CRC); the message names it.
        ModelMismatchError: a Keras file without (usable) cardamage info.
    """
    import zlib

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: model file not found (`dvc repro` trains one and publishes it as "
                                "models/production.keras; or `cardamage train`)")
    try:
        with zipfile.ZipFile(p) as zf:
            config = json.loads(zf.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError, EOFError, zlib.error) as exc:  # JSON and Unicode errors too
        raise BadInputError(f"{p}: not a .keras model file ({exc})") from exc
    except OSError as exc:
        if isinstance(exc, (FileNotFoundError, PermissionError)):
            raise
        raise BadInputError(f"{p}: the model file cannot be read ({exc})") from exc
    inner = config.get("config") if isinstance(config, dict) else None
    data = inner.get("cardamage_info") if isinstance(inner, dict) else None
    if not data:
        raise ModelMismatchError(f"{p}: not a cardamage model (no cardamage_info in its config; "
                         "save it with cardamage.model.io.save_model)")
    try:
        return ModelInfo(**data)
    except TypeError as exc:
        raise ModelMismatchError(f"{p}: unreadable cardamage_info in its config ({exc})") from exc


def load_model(path: str | os.PathLike, expect_classes: Sequence[str] | None = None,
               expect_input_size: int | None = None) -> tuple[keras.Model, ModelInfo]:
    """Load a model saved by :func:`save_model` and check it fits the caller.

    Raises:
        ModelMismatchError: the stored classes or input size differ from the expected ones
            (the message names both), or not a cardamage model.
        FileNotFoundError: a missing file.
        BadInputError: not a ``.keras`` file, or one Keras cannot load (cut short, bad CRC, broken
            weights): one line naming the file, with the original error chained.
    """
    import zlib

    import keras

    import cardamage.model.heads  # noqa: F401  (registers SegmentationModel and KerasCV's classes)

    info = read_model_info(path)
    check_compatible(info, expect_classes, expect_input_size, source=str(path))
    try:
        model = keras.saving.load_model(path, compile=False)
    except (FileNotFoundError, PermissionError):
        raise
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError, zlib.error) as exc:
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        raise BadInputError(f"{path}: the model file cannot be loaded ({reason})") from exc
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
