"""A frozen backbone + light head learner: what the active-learning simulation trains each round.

Affordable on 2 CPU cores because the backbone is FROZEN: its feature pyramid (strides 4, 8, 16,
32) and pooled embedding (spatial mean of the stride-32 map, as
:func:`cardamage.model.inference.predict_with_embeddings`) are computed once per photo at
``simulate.input_size`` (letterboxed as in :mod:`cardamage.model.inputs`) and cached to ``.npz``
in ``simulate.cache_dir`` (:func:`load_bank`). Each round retrains from scratch only the light
head of :func:`cardamage.model.heads.build_light_head` (:class:`HeadTrainer`; loss =
:class:`cardamage.model.losses.SegmentationLoss`, class-weighted cross-entropy + Dice as in
training; Adam, per-epoch cosine decay by default). MC-dropout samples only the head's dropout and
classifier (:func:`predict_head`). With ``simulate.head_restarts`` K > 1 each fit trains K heads
from different seeds and returns a :class:`HeadEnsemble`: every prediction (evaluation, acquisition
scores, pseudo-labels) averages their probabilities, which steadies a learner whose single restarts
differ by about 0.01 damage IoU at the same labels. With ``simulate.tune_stages`` N > 0 the head also
fine-tunes the backbone's last N stages (:func:`cardamage.model.heads.stride32_stages`): they turn the
cached stride-16 map into the stride-32 one, so no photo passes through the backbone again; each fit
restarts them from the preset's weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cardamage.config import Params
from cardamage.errors import BadParameterError, EmptyInputError
from cardamage.fileio import atomic_path
from cardamage.model.backbones import STRIDES
from cardamage.model.inference import softmax
from cardamage.model.losses import IGNORE_INDEX, class_weights_from_counts, confusion_matrix, iou_per_class

if TYPE_CHECKING:
    import keras

    from cardamage.model.heads import Head

log = logging.getLogger(__name__)


@dataclass
class FeatureBank:
    """Frozen-backbone features of one set of photos.

    Attributes:
        features: ``{stride: float16 [N, S/stride, S/stride, C_stride]}``.
        embeddings: ``float32 [N, D]`` pooled stride-32 features.
        masks: ``uint8 [N, S, S]`` labels (0 background, 1.. classes, 255 padding).
        paths: photo paths relative to the dataset root.
    """

    features: dict[int, np.ndarray]
    embeddings: np.ndarray
    masks: np.ndarray
    paths: list[str]

    def inputs(self, index: np.ndarray | Sequence[int] | slice) -> list[np.ndarray]:
        """Head inputs ``[float32 [n, h_s, w_s, C_s] for s in STRIDES]`` of the selected photos."""
        return [self.features[s][index].astype(np.float32) for s in STRIDES]


# ----------------------------------------------------------------------------- features

def backbone_config(params: Params) -> dict[str, Any]:
    """The frozen backbone the simulation uses (simulate.* falling back to model.*)."""
    sim, model = params.simulate, params.model
    return {"backbone": sim.backbone or model.backbone,
            "width": sim.backbone_width if sim.backbone_width is not None else model.width,
            "preset": sim.backbone_preset or model.backbone_preset, "input_size": sim.input_size}


def _cache_key(params: Params, split_paths: Sequence[str]) -> str:
    """16 hex digits identifying the backbone, its preset files, the classes and the photos."""
    cfg = backbone_config(params)
    preset = Path(cfg["preset"]) if cfg["preset"] else None
    stamp = []
    if preset is not None and preset.is_dir():  # a re-imported preset must not reuse old features
        stamp = [(p.name, p.stat().st_mtime_ns) for p in sorted(preset.rglob("*")) if p.is_file()]
    blob = json.dumps([cfg, stamp, params.data.classes, params.data.class_map, str(params.data.root),
                       list(split_paths)], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _backbone(params: Params) -> tuple[keras.Model, dict[str, Any]]:
    """The simulation's backbone as :func:`backbone_config` names it, and that configuration."""
    from cardamage.model.backbones import build_backbone

    cfg = backbone_config(params)
    return build_backbone(cfg["backbone"], cfg["input_size"], cfg["width"], cfg["preset"]), cfg


def _tuned_stages(params: Params) -> keras.Model:
    """The frozen backbone's stride-16 -> stride-32 part with its last ``simulate.tune_stages`` stages
    trainable (:func:`cardamage.model.heads.stride32_stages`)."""
    from cardamage.model.heads import stride32_stages

    if not backbone_config(params)["preset"]:  # a random init differs per build: not the cached features' own
        raise BadParameterError("simulate.tune_stages: needs a backbone preset (simulate.backbone_preset or "
                                "model.backbone_preset), the weights the cached features came from")
    backbone, cfg = _backbone(params)
    return stride32_stages(backbone, cfg["input_size"], params.simulate.tune_stages,
                           label=f"simulate.backbone: {cfg['backbone']}")


def _extractor(params: Params) -> keras.Model:
    """A Keras model ``image [N,S,S,3] (RGB 0-255) -> [stride 4, 8, 16, 32 maps]`` of the frozen backbone."""
    from cardamage.model.heads import pyramid_extractor

    backbone, cfg = _backbone(params)
    return pyramid_extractor(backbone, cfg["input_size"], label=f"simulate.backbone: {cfg['backbone']}")


def extract_features(params: Params, records: Sequence[Any], root: Path, batch_size: int = 32) -> FeatureBank:
    """Run the frozen backbone over ``records`` letterboxed to ``simulate.input_size``; skip unreadable photos."""
    from tqdm import tqdm

    from cardamage.data.annotations import category_mapper
    from cardamage.data.images import ImageLoadError, load_image
    from cardamage.model.inputs import fit_geometry, fit_image, fit_mask

    size = params.simulate.input_size
    extractor = _extractor(params)
    category_of = category_mapper(params.data.classes, params.data.class_map)
    feats: dict[int, list[np.ndarray]] = {s: [] for s in STRIDES}
    masks, paths, batch = [], [], []

    def flush() -> None:
        outs = extractor(np.stack(batch).astype(np.float32), training=False)
        for s, out in zip(STRIDES, outs):
            feats[s].append(np.asarray(out, np.float16))
        batch.clear()

    for record in tqdm(records, desc="backbone features", unit="photo"):
        try:
            image = load_image(root / record.path)
        except ImageLoadError as exc:
            log.warning("skipping unreadable photo %s: %s", record.path, exc)
            continue
        fit = fit_geometry(image.shape[1], image.shape[0], size, "letterbox")
        batch.append(fit_image(image, fit))
        masks.append(fit_mask(record.instances, params.data.classes, fit, category_of, record.reviewed))
        paths.append(record.path)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not paths:
        raise EmptyInputError(f"simulate: no readable photo among {len(records)} record(s)")
    features = {s: np.concatenate(feats[s]) for s in STRIDES}
    emb = features[32].astype(np.float32).mean(axis=(1, 2))
    return FeatureBank(features, emb, np.stack(masks), paths)


def load_bank(params: Params, splits: Sequence[str], limit: int | None) -> FeatureBank:
    """Labelled photos of ``splits`` (first ``limit`` by path) as a :class:`FeatureBank`, cached on disk."""
    from cardamage.model.inputs import load_records

    records, root = load_records(params.data, splits)
    records = sorted(records, key=lambda r: r.path)[:limit]
    cache = Path(params.simulate.cache_dir) / f"{'+'.join(splits)}-{_cache_key(params, [r.path for r in records])}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as npz:
            log.info("features from cache %s", cache)
            return FeatureBank({s: npz[f"s{s}"] for s in STRIDES}, npz["embeddings"], npz["masks"],
                               [str(p) for p in npz["paths"]])
    bank = extract_features(params, records, root)
    with atomic_path(cache, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, embeddings=bank.embeddings, masks=bank.masks, paths=np.array(bank.paths, dtype=str),
                 **{f"s{s}": bank.features[s] for s in STRIDES})
    return bank


# ----------------------------------------------------------------------------- training

#: Seed offset between the restarts of one fit: restart ``i`` uses ``seed + i * RESTART_SEED_STEP`` (restart 0
#: is the single head's seed, so ``head_restarts: 1`` trains exactly what it always did).
RESTART_SEED_STEP = 100_000


@dataclass
class HeadEnsemble:
    """``K`` trained weight sets of one head shape (``simulate.head_restarts``).

    The members share one Keras head (the trainer's): :meth:`members` loads each weight set in turn,
    so use each yielded head before asking for the next. Predictions average the members'
    probabilities (:func:`head_probs`, :func:`predict_head`).
    """

    head: Head
    weights: list[list[np.ndarray]]

    def members(self) -> Iterator[Head]:
        """The shared head with each member's weights loaded in turn."""
        for w in self.weights:
            self.head.model.set_weights(w)
            yield self.head


def members(head: Head | HeadEnsemble) -> Iterator[Head]:
    """The heads to average: an ensemble's members, or the one head."""
    return head.members() if isinstance(head, HeadEnsemble) else iter([head])


def head_probs(head: Head | HeadEnsemble, inputs: Any) -> np.ndarray:
    """Probabilities ``float32 [N, S, S, C]`` at full input size for frozen features ``inputs`` (an
    ensemble: the mean over its members)."""
    total, k = None, 0
    for member in members(head):
        p = np.asarray(member.model(inputs, training=False), np.float32)
        total, k = (p if total is None else total + p), k + 1
    return total / k


class HeadTrainer:
    """Trains heads of one shape many times, compiling once (a fresh Keras model per round costs seconds).

    Each :meth:`fit` starts from the initial weights a newly built head would get for its seed, with
    a reset optimizer, dropout random state reset from the seed (so a fit depends on its seed and
    labels, not on what the process fitted or scored before) and class weights from the labelled
    pixels (``train.class_weighting``).
    """

    def __init__(self, params: Params, bank: FeatureBank):
        import keras

        from cardamage.model.losses import SegmentationLoss

        sim = params.simulate
        self.params = params
        self.num_classes = len(params.data.classes) + 1
        self.shapes = [tuple(bank.features[s].shape[1:]) for s in STRIDES]
        self.stride32 = _tuned_stages(params) if sim.tune_stages else None
        self._stride32_start = self.stride32.get_weights() if self.stride32 is not None else []
        self.head = self._build()
        self.model = self.head.model
        # A variable, so new weights for a new labelled set need no retracing of the compiled step.
        self.class_weights = keras.Variable(np.ones(self.num_classes, np.float32), trainable=False,
                                            name="class_weights")
        optimizer = keras.optimizers.Adam(sim.learning_rate)
        self.model.compile(optimizer=optimizer, loss=SegmentationLoss(self.num_classes, self.class_weights,
                                                                      dice_weight=params.train.dice_weight))
        optimizer.build(self.model.trainable_variables)
        self._optimizer_start = [np.array(v.numpy()) for v in optimizer.variables]
        # Dropout's random state lives outside get_weights(): without a reset each fit's masks would
        # depend on every fit and MC-dropout call before it in the process.
        self._seed_states = [v for v in self.model.variables if v.path.endswith("seed_generator_state")]

    def _build(self) -> Head:
        from cardamage.model.heads import build_light_head

        sim = self.params.simulate
        return build_light_head(self.shapes, self.num_classes, sim.head_filters, sim.dropout, sim.input_size,
                                self.stride32)

    def fit(self, bank: FeatureBank, index: np.ndarray, seed: int,
            masks: np.ndarray | None = None) -> Head | HeadEnsemble:
        """Train on the photos ``index`` of ``bank`` from a fresh start: the trained :class:`Head`, or with
        ``simulate.head_restarts`` K > 1 a :class:`HeadEnsemble` of K heads (seeds ``seed + i x``
        :data:`RESTART_SEED_STEP`).

        ``masks``: ``uint8 [n, S, S]`` labels of those photos instead of the bank's (region labels:
        :data:`IGNORE_INDEX` outside the reviewed crops).
        """
        k = self.params.simulate.head_restarts
        if k <= 1:
            return self._fit_one(bank, index, seed, masks)
        weights = []
        for i in range(k):
            self._fit_one(bank, index, seed + i * RESTART_SEED_STEP, masks)
            weights.append(self.model.get_weights())
        return HeadEnsemble(self.head, weights)

    def _fit_one(self, bank: FeatureBank, index: np.ndarray, seed: int, masks: np.ndarray | None) -> Head:
        """One head trained from the initial weights of ``seed`` (see :meth:`fit`)."""
        import keras

        sim, train = self.params.simulate, self.params.train
        keras.utils.set_random_seed(seed)
        self.model.set_weights(self._build().model.get_weights())
        if self.stride32 is not None:  # tuned backbone stages restart from their pretrained weights
            self.stride32.set_weights(self._stride32_start)
        for var, value in zip(self.model.optimizer.variables, self._optimizer_start):
            var.assign(value)
        first = int(np.random.default_rng(seed).integers(1, 2**30))
        for i, state in enumerate(self._seed_states):  # dropout draws: a function of the seed alone
            state.assign(np.array([first + i, 0], dtype=state.dtype))
        masks = bank.masks[index] if masks is None else masks
        counts = np.bincount(masks[masks != IGNORE_INDEX].ravel(), minlength=self.num_classes)[:self.num_classes]
        self.class_weights.assign(class_weights_from_counts(counts, train.class_weighting, train.max_class_weight))
        steps = math.ceil(len(index) / sim.batch_size)
        epochs = max(sim.epochs, math.ceil(sim.min_steps / steps))
        callbacks = []
        if sim.lr_schedule == "cosine":  # decays to 0: the last epoch's weights vary less between runs
            callbacks.append(keras.callbacks.LearningRateScheduler(
                lambda epoch: sim.learning_rate * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))))
        self.model.fit(bank.inputs(index), masks.astype(np.int32), batch_size=sim.batch_size, epochs=epochs,
                       shuffle=True, verbose=0, callbacks=callbacks)
        return self.head


# ----------------------------------------------------------------------------- inference

def predict_head(head: Head | HeadEnsemble, bank: FeatureBank, index: np.ndarray, mc_samples: int = 0,
                 batch_size: int = 64) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Yield ``(batch index, probs [B,S/4,S/4,C], samples [T,B,S/4,S/4,C] or None)`` over ``index``.

    Probabilities at the head's native stride 4 (before upsampling): acquisition scores computed
    there cost 16x less and the bilinear upsampling adds no information. An ensemble of K heads gives
    the mean of their probabilities and ``T = K x mc_samples`` draws (each member's dropout draws).
    """
    for start in range(0, len(index), batch_size):
        part = index[start:start + batch_size]
        x = bank.inputs(part)
        total, draws, k = None, [], 0
        for member in members(head):
            h = member.trunk(x, training=False)
            probs = softmax(np.asarray(member.tail(h, training=False)))
            total, k = (probs if total is None else total + probs), k + 1
            if mc_samples:  # all T dropout draws in one call: [T*B, ...] -> [T, B, ...]
                tiled = np.asarray(member.tail(np.concatenate([np.asarray(h)] * mc_samples), training=True))
                draws.append(softmax(tiled.reshape((mc_samples, len(part)) + tiled.shape[1:])))
        yield part, total / k, (np.concatenate(draws) if draws else None)


def evaluate_head(head: Head | HeadEnsemble, bank: FeatureBank, num_classes: int,
                  batch_size: int = 64) -> dict[str, float]:
    """Validation mean IoU (classes present, background included) and damage (foreground) IoU at full input size."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    for start in range(0, len(bank.paths), batch_size):
        part = np.arange(start, min(start + batch_size, len(bank.paths)))
        probs = head_probs(head, bank.inputs(part))
        cm += confusion_matrix(bank.masks[part], probs.argmax(-1), num_classes)
    iou = iou_per_class(cm)
    tp = cm[1:, 1:].sum()
    fg = cm.sum() - cm[0, 0]
    return {"mean_iou": float(np.nanmean(iou)), "damage_iou": float(tp / fg) if fg else 0.0}
