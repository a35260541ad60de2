"""Inference with a segmentation model: probabilities, embeddings, MC-dropout samples, softmax.

All functions take images ``float32 [N, S, S, 3]`` (RGB 0-255, already fitted to the model input
by :mod:`cardamage.model.inputs`) and a model built by :func:`cardamage.model.heads.build_model`
or loaded by :func:`cardamage.model.io.load_model`. Keras is imported only where a helper graph is
built, so :func:`softmax` is usable without TensorFlow.
"""

from __future__ import annotations

import math
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

from cardamage.errors import BadParameterError

if TYPE_CHECKING:
    import keras


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, numerically stable: ``[..., C]`` logits -> ``[..., C]`` probabilities."""
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


_AUX: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def _aux(model: keras.Model) -> dict[str, Any]:
    """Per-model helper graphs built once: probs+embedding, and features before the MC dropout."""
    cached = _AUX.get(model)
    if cached is None:
        import keras

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
    """``images`` as ``float32 [N, S, S, 3]``; raises ``ValueError`` naming the expected shape."""
    arr = np.asarray(images)
    expected = tuple(model.inputs[0].shape[1:])
    if arr.ndim != 4 or tuple(arr.shape[1:]) != expected:
        raise ValueError(f"images: expected shape [N, {expected[0]}, {expected[1]}, 3], got {list(arr.shape)}")
    return arr.astype(np.float32, copy=False)


#: Test-time augmentations ``predict_probs`` knows: ``none``, or ``flip`` (the mean of the photo's
#: prediction and of its mirror image's, mirrored back: twice the model's work).
TTA_MODES = ("none", "flip")


def predict_probs(model: keras.Model, images: np.ndarray, batch_size: int = 8, tta: str = "none") -> np.ndarray:
    """Class probabilities ``float32 [N, S, S, C]`` for images ``[N, S, S, 3]`` (RGB 0-255).

    ``tta="flip"`` averages with the horizontally mirrored input's prediction (mirrored back).
    """
    if tta not in TTA_MODES:
        raise BadParameterError(f"predict.tta: one of {', '.join(TTA_MODES)}, got {tta!r}")
    batch = _as_batch(images, model)
    if not len(batch):
        return np.zeros((0,) + tuple(model.outputs[0].shape[1:]), np.float32)

    def run(x: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(model.predict_on_batch(np.ascontiguousarray(x[i:i + batch_size])))
                               for i in range(0, len(x), batch_size)], axis=0)

    probs = run(batch)
    if tta == "flip":
        probs = (probs + run(batch[:, :, ::-1])[:, :, ::-1]) / 2.0
    return probs


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
    samples = [_mc_batch(aux, batch[i:i + batch_size], T) for i in range(0, len(batch), batch_size)]
    return np.concatenate(samples, axis=1) if samples else np.zeros((T, 0), np.float32)


def _mc_batch(aux: dict[str, Any], batch: np.ndarray, T: int) -> np.ndarray:
    """``T`` dropout draws ``[T, B, S, S, C]`` for one batch ``[B, S, S, 3]``."""
    dropout, *rest = aux["tail"]
    feats = aux["pre_dropout"].predict_on_batch(batch)
    draws = []
    for _ in range(T):
        y = dropout(feats, training=True)
        for layer in rest:
            y = layer(y)
        draws.append(np.asarray(y))
    return np.stack(draws)


def count_params(model: keras.Model) -> int:
    """Number of weights (trainable and not)."""
    return int(sum(math.prod(w.shape) for w in model.weights))
