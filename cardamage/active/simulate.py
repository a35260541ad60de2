"""Simulated active learning: does a strategy reach a good model with fewer labels than random?

A fully labelled pool plays the oracle. For every strategy and seed::

    label `initial` random photos (the same ones for every strategy of a seed)
    repeat `rounds` times: train -> evaluate on the validation split -> score the unlabelled pool
                           -> select `budget` photos -> "label" them (reveal their masks)
    train and evaluate once more

The result (``simulate.out``) holds every curve, a model trained on the whole pool as the
reference, and per strategy the number of labels at which the mean curve first reaches
``target_fraction`` of the whole-pool mean IoU; ``simulate.plot`` draws mean IoU against labelled
photos, one line per strategy with a min-max band over the seeds.

Affordable on 2 CPU cores because the backbone is FROZEN: its feature pyramid (strides 4, 8, 16,
32) and pooled embedding (spatial mean of the stride-32 map, as
:func:`cardamage.model.network.predict_with_embeddings`) are computed once per photo at
``simulate.input_size`` (default 128 px, letterboxed as in :mod:`cardamage.model.inputs`) and cached to
``.npz`` in ``simulate.cache_dir``. Each round retrains from scratch only a small FPN-style decoder
head (1x1 lateral convs summed top-down to stride 8, one 3x3 conv-BN-ReLU, a 1x1 fusion with the
stride-4 map, dropout, 1x1 classifier, bilinear upsampling to the input size; loss = class-weighted
cross-entropy + Dice as in training; Adam, per-epoch cosine decay by default). MC-dropout (BALD)
samples only the head's dropout and classifier; acquisition scores are computed on the head's
stride-4 probabilities. The backbone is ``simulate.backbone`` (default: ``model.backbone``) with
``simulate.backbone_preset`` (default: ``model.backbone_preset``; ``null`` = random init, which
makes weak features; ``cardamage backbone import efficientnet-lite0 DIR`` makes an ImageNet one).

Every finished round is saved to ``simulate.state_file`` (JSON, atomic): running the command again
resumes where it stopped; ``max_rounds`` stops each run after that round.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from cardamage.active.acquisition import image_scores
from cardamage.config import Params
from cardamage.fileio import atomic_path, write_json
from cardamage.model.losses import IGNORE_INDEX, class_weights_from_counts, confusion_matrix, iou_per_class
from cardamage.active.selection import UNCERTAINTY, select_batch

log = logging.getLogger(__name__)

STRATEGIES = ("random",) + UNCERTAINTY + ("coreset", "hybrid")
STRIDES = (4, 8, 16, 32)


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
    cfg = backbone_config(params)
    preset = Path(cfg["preset"]) if cfg["preset"] else None
    stamp = []
    if preset is not None and preset.is_dir():  # a re-imported preset must not reuse old features
        stamp = [(p.name, p.stat().st_mtime_ns) for p in sorted(preset.rglob("*")) if p.is_file()]
    blob = json.dumps([cfg, stamp, params.data.classes, params.data.class_map, str(params.data.root),
                       list(split_paths)], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _extractor(params: Params):
    """A Keras model ``image [N,S,S,3] (RGB 0-255) -> [stride 4, 8, 16, 32 maps]`` of the frozen backbone."""
    import keras

    from cardamage.model.network import build_backbone

    cfg = backbone_config(params)
    backbone = build_backbone(cfg["backbone"], cfg["input_size"], cfg["width"], cfg["preset"])
    size = cfg["input_size"]
    by_stride = {}
    for layer_name in backbone.pyramid_level_inputs.values():
        out = backbone.get_layer(layer_name).output
        by_stride[size // int(out.shape[1])] = out
    missing = [s for s in STRIDES if s not in by_stride]
    if missing:
        raise ValueError(f"simulate.backbone: {cfg['backbone']} has no feature map at stride(s) {missing}")
    return keras.Model(backbone.input, [by_stride[s] for s in STRIDES])


def extract_features(params: Params, records: Sequence[Any], root: Path, batch_size: int = 32) -> FeatureBank:
    """Run the frozen backbone over ``records`` letterboxed to ``simulate.input_size``; skip unreadable photos."""
    from tqdm import tqdm

    from cardamage.data.images import ImageLoadError, load_image
    from cardamage.model.inputs import category_mapper, fit_geometry, fit_image, fit_mask

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
        masks.append(fit_mask(record.instances, params.data.classes, fit, category_of))
        paths.append(record.path)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if not paths:
        raise ValueError(f"simulate: no readable photo among {len(records)} record(s)")
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


# ----------------------------------------------------------------------------- head

@dataclass
class Head:
    """A decoder head in three views sharing weights.

    ``trunk``: ``[stride 4, 8, 16, 32 maps] -> h [N, S/4, S/4, filters]`` (convs + batch norm);
    ``tail``: ``h -> logits [N, S/4, S/4, C]`` (dropout + 1x1 classifier, no batch norm, so
    ``tail(h, training=True)`` is pure MC dropout); ``model``: features -> softmax of the logits
    bilinearly upsampled to ``[N, S, S, C]`` (trained and evaluated at full input resolution).
    """

    trunk: Any
    tail: Any
    model: Any


def build_head(shapes: Sequence[tuple[int, ...]], num_classes: int, filters: int, dropout: float, size: int) -> Head:
    """FPN-style decoder over cached features: 1x1 laterals summed top-down to stride 8, a 3x3
    conv-BN-ReLU there, then upsampled, concatenated with the stride-4 lateral and fused by a 1x1
    conv-BN-ReLU (a 3x3 conv at stride 4 would cost 9x more on 2 cores for little gain)."""
    import keras
    from keras import layers

    inputs = [keras.Input(shape) for shape in shapes]
    x = layers.Conv2D(filters, 1)(inputs[3])
    for feat in (inputs[2], inputs[1]):
        x = layers.UpSampling2D(2, interpolation="bilinear")(x)
        x = layers.Add()([x, layers.Conv2D(filters, 1)(feat)])
    x = _conv_bn_relu(x, filters, 3)
    x = layers.UpSampling2D(2, interpolation="bilinear")(x)
    x = layers.Concatenate()([x, layers.Conv2D(max(8, filters // 2), 1)(inputs[0])])
    trunk = keras.Model(inputs, _conv_bn_relu(x, filters, 1), name="trunk")
    h = keras.Input(trunk.output.shape[1:])
    tail = keras.Model(h, layers.Conv2D(num_classes, 1)(layers.Dropout(dropout)(h)), name="tail")
    logits = layers.Resizing(size, size, interpolation="bilinear")(tail(trunk(inputs)))
    return Head(trunk, tail, keras.Model(inputs, layers.Softmax()(logits), name="head"))


def _conv_bn_relu(x: Any, filters: int, kernel: int) -> Any:
    from keras import layers

    x = layers.Conv2D(filters, kernel, padding="same", use_bias=False)(x)
    return layers.ReLU()(layers.BatchNormalization()(x))


def _head_loss(num_classes: int, class_weights: Any, dice_weight: float):
    """Class-weighted cross-entropy + ``dice_weight`` x soft Dice (as :class:`cardamage.model.losses.SegmentationLoss`).

    ``class_weights`` is a Keras variable, so new weights for a new labelled set need no retracing.
    """
    from keras import ops

    def loss(y_true: Any, y_pred: Any) -> Any:
        probs = ops.clip(y_pred, 1e-6, 1.0 - 1e-6)
        labels = ops.cast(ops.reshape(y_true, ops.shape(probs)[:-1]), "int32")
        valid = ops.cast(ops.not_equal(labels, IGNORE_INDEX), "float32")
        onehot = ops.one_hot(ops.where(labels == IGNORE_INDEX, 0, labels), num_classes) * valid[..., None]
        pixel_w = ops.sum(onehot * class_weights, axis=-1)
        ce = ops.sum(pixel_w * -ops.log(ops.sum(onehot * probs, axis=-1) + 1e-6)) / ops.maximum(ops.sum(pixel_w), 1e-6)
        p = probs * valid[..., None]
        inter = ops.sum(p * onehot, axis=(0, 1, 2))[1:]
        total = ops.sum(p, axis=(0, 1, 2))[1:] + ops.sum(onehot, axis=(0, 1, 2))[1:]
        return ce + dice_weight * (1.0 - ops.mean((2.0 * inter + 1.0) / (total + 1.0)))

    return loss


class HeadTrainer:
    """Trains heads of one shape many times, compiling once (a fresh Keras model per round costs seconds).

    Each :meth:`fit` starts from the initial weights a newly built head would get for its seed, with
    a reset optimizer and class weights from the labelled pixels (``train.class_weighting``).
    """

    def __init__(self, params: Params, bank: FeatureBank):
        import keras

        sim = params.simulate
        self.params = params
        self.num_classes = len(params.data.classes) + 1
        self.shapes = [tuple(bank.features[s].shape[1:]) for s in STRIDES]
        self.head = self._build()
        self.model = self.head.model
        self.class_weights = keras.Variable(np.ones(self.num_classes, np.float32), trainable=False,
                                            name="class_weights")
        optimizer = keras.optimizers.Adam(sim.learning_rate)
        self.model.compile(optimizer=optimizer,
                           loss=_head_loss(self.num_classes, self.class_weights, params.train.dice_weight))
        optimizer.build(self.model.trainable_variables)
        self._optimizer_start = [np.array(v.numpy()) for v in optimizer.variables]

    def _build(self):
        sim = self.params.simulate
        return build_head(self.shapes, self.num_classes, sim.head_filters, sim.dropout, sim.input_size)

    def fit(self, bank: FeatureBank, index: np.ndarray, seed: int) -> Head:
        """Train on the photos ``index`` of ``bank`` from a fresh start; returns the trained :class:`Head`."""
        import keras

        sim, train = self.params.simulate, self.params.train
        keras.utils.set_random_seed(seed)
        self.model.set_weights(self._build().model.get_weights())
        for var, value in zip(self.model.optimizer.variables, self._optimizer_start):
            var.assign(value)
        masks = bank.masks[index]
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


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def predict_head(head: Head, bank: FeatureBank, index: np.ndarray, mc_samples: int = 0, batch_size: int = 64):
    """Yield ``(batch index, probs [B,S/4,S/4,C], samples [T,B,S/4,S/4,C] or None)`` over ``index``.

    Probabilities at the head's native stride 4 (before upsampling): acquisition scores computed
    there cost 16x less and the bilinear upsampling adds no information.
    """
    for start in range(0, len(index), batch_size):
        part = index[start:start + batch_size]
        h = head.trunk(bank.inputs(part), training=False)
        probs = _softmax(np.asarray(head.tail(h, training=False)))
        samples = None
        if mc_samples:  # all T dropout draws in one call: [T*B, ...] -> [T, B, ...]
            tiled = np.asarray(head.tail(np.concatenate([np.asarray(h)] * mc_samples), training=True))
            samples = _softmax(tiled.reshape((mc_samples, len(part)) + tiled.shape[1:]))
        yield part, probs, samples


def evaluate_head(head: Head, bank: FeatureBank, num_classes: int, batch_size: int = 64) -> dict[str, float]:
    """Validation mean IoU (classes present, background included) and damage (foreground) IoU at full input size."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    for start in range(0, len(bank.paths), batch_size):
        part = np.arange(start, min(start + batch_size, len(bank.paths)))
        probs = np.asarray(head.model(bank.inputs(part), training=False))
        cm += confusion_matrix(bank.masks[part], probs.argmax(-1), num_classes)
    iou = iou_per_class(cm)
    tp = cm[1:, 1:].sum()
    fg = cm.sum() - cm[0, 0]
    return {"mean_iou": float(np.nanmean(iou)), "damage_iou": float(tp / fg) if fg else 0.0}


# ----------------------------------------------------------------------------- one round

def pool_scores(params: Params, head: Head, bank: FeatureBank, unlabelled: np.ndarray,
                strategy: str) -> pd.DataFrame:
    """A scores table (as ``cardamage score`` writes) for the unlabelled pool photos ``unlabelled``."""
    sc = params.score
    table = pd.DataFrame({"id": [f"{i:08d}" for i in unlabelled], "path": [bank.paths[i] for i in unlabelled],
                          "embedding": list(bank.embeddings[unlabelled])})
    if strategy in ("random", "coreset"):
        return table
    method = params.select.hybrid_score if strategy == "hybrid" else strategy
    mc = params.simulate.mc_samples if method == "bald" else 0
    values = []
    for _, probs, samples in predict_head(head, bank, unlabelled, mc):
        values.append(image_scores(probs, [method], sc.reduction, sc.topk_percent, samples=samples)[method])
    table[method] = np.concatenate(values)
    return table


def select_round(params: Params, strategy: str, seed: int, round_no: int, head: Head, bank: FeatureBank,
                 labelled: list[int]) -> list[int]:
    """Indices of the next ``simulate.budget`` pool photos to "label" for one run."""
    taken = set(labelled)
    unlabelled = np.array([i for i in range(len(bank.paths)) if i not in taken], np.int64)
    if not len(unlabelled):
        return []
    table = pool_scores(params, head, bank, unlabelled, strategy)
    picked = select_batch(table, strategy, params.simulate.budget, seed=seed * 1000 + round_no,
                          labelled_embeddings=bank.embeddings[labelled],
                          hybrid_factor=params.select.hybrid_factor, hybrid_score=params.select.hybrid_score)
    return [int(i) for i in picked["id"]]


# ----------------------------------------------------------------------------- state

def _config(params: Params, n_pool: int, n_val: int) -> dict[str, Any]:
    sim = params.simulate
    keys = ("initial", "rounds", "budget", "input_size", "head_filters", "dropout", "epochs", "min_steps",
            "batch_size", "learning_rate", "lr_schedule", "mc_samples", "max_pool", "max_val")
    return {**{k: getattr(sim, k) for k in keys}, "backbone": backbone_config(params),
            "data_root": str(params.data.root), "train_splits": params.data.train_splits,
            "val_splits": params.data.val_splits, "classes": params.data.classes,
            "class_map": params.data.class_map, "reduction": params.score.reduction,
            "topk_percent": params.score.topk_percent, "hybrid_factor": params.select.hybrid_factor,
            "hybrid_score": params.select.hybrid_score, "n_pool": n_pool, "n_val": n_val}


#: Config keys that may change between runs of one state: more rounds extend the finished runs.
_EXTENDABLE = ("rounds",)


def load_state(path: Path, config: dict[str, Any], fresh: bool) -> dict[str, Any]:
    """The saved state for ``config`` (a new one when absent or ``fresh``).

    Strategies and seeds may be added, and ``rounds`` raised, without starting over.

    Raises:
        ValueError: the file was written for another configuration.
    """
    if fresh or not path.is_file():
        return {"config": config, "runs": {}, "full_pool": None}
    state = json.loads(path.read_text(encoding="utf-8"))
    saved = {k: v for k, v in (state.get("config") or {}).items() if k not in _EXTENDABLE}
    if {k: v for k, v in json.loads(json.dumps(config)).items() if k not in _EXTENDABLE} != saved:
        raise ValueError(f"{path}: saved for another simulation configuration; run with --fresh "
                         "or set simulate.state_file to another file")
    state["config"] = config
    log.info("resuming from %s", path)
    return state


def run_one(params: Params, state: dict[str, Any], state_path: Path, trainer: HeadTrainer, strategy: str,
            seed: int, pool: FeatureBank, val: FeatureBank, max_rounds: int | None) -> dict[str, Any]:
    """Advance one (strategy, seed) run as far as allowed, saving the state after every round.

    A round trains on the labelled photos, evaluates, and (unless it is the last) selects the next
    ones. A run that ended at a smaller ``rounds`` first retrains its last model (same seed; models
    are not saved) to select, then goes on.
    """
    sim = params.simulate
    num_classes = len(params.data.classes) + 1
    run = state["runs"].setdefault(f"{strategy}/{seed}", {"strategy": strategy, "seed": seed, "history": [],
                                                          "labelled": _initial(len(pool.paths), sim.initial, seed)})
    last = sim.rounds if max_rounds is None else min(sim.rounds, max_rounds)
    history = run["history"]
    if history and len(run["labelled"]) == history[-1]["labelled"] and len(history) <= last:
        prev = len(history) - 1
        head = trainer.fit(pool, np.array(run["labelled"]), seed * 1000 + prev)
        run["labelled"] = run["labelled"] + select_round(params, strategy, seed, prev, head, pool, run["labelled"])
        write_json(state_path, state)
    while len(history) <= last:
        round_no = len(history)
        start = time.perf_counter()
        head = trainer.fit(pool, np.array(run["labelled"]), seed * 1000 + round_no)
        metrics = evaluate_head(head, val, num_classes)
        history.append({"round": round_no, "labelled": len(run["labelled"]), **metrics,
                        "seconds": round(time.perf_counter() - start, 2)})
        if round_no < sim.rounds:
            run["labelled"] = run["labelled"] + select_round(params, strategy, seed, round_no, head, pool,
                                                             run["labelled"])
        write_json(state_path, state)
        log.info("%s seed %d round %d: %d labelled, val mean IoU %.4f", strategy, seed, round_no,
                 history[-1]["labelled"], metrics["mean_iou"])
    return run


def _initial(n: int, k: int, seed: int) -> list[int]:
    """The seed labels of a run: the same ``k`` random pool photos for every strategy of a seed."""
    return sorted(int(i) for i in np.random.default_rng(seed).choice(n, size=min(k, n), replace=False))


def full_pool_reference(params: Params, state: dict[str, Any], state_path: Path, trainer: HeadTrainer,
                        pool: FeatureBank, val: FeatureBank) -> dict[str, Any]:
    """Mean IoU of heads trained on the whole pool (one per seed), cached in the state."""
    ref = state.get("full_pool") or {"runs": []}
    num_classes = len(params.data.classes) + 1
    for seed in params.simulate.seeds[len(ref["runs"]):]:
        head = trainer.fit(pool, np.arange(len(pool.paths)), seed * 1000 + 999)
        ref["runs"].append({"seed": seed, **evaluate_head(head, val, num_classes)})
        ref["mean_iou"] = float(np.mean([r["mean_iou"] for r in ref["runs"]]))
        ref["damage_iou"] = float(np.mean([r["damage_iou"] for r in ref["runs"]]))
        ref["labelled"] = len(pool.paths)
        state["full_pool"] = ref
        write_json(state_path, state)
    return ref


# ----------------------------------------------------------------------------- the simulation

def run_simulation(params: Params, max_rounds: int | None = None, fresh: bool = False) -> dict[str, Any]:
    """``cardamage simulate``: run (or resume) every strategy x seed, write the JSON and the plot.

    Returns:
        The result written to ``simulate.out``.
    """
    sim = params.simulate
    bad = [s for s in sim.strategies if s not in STRATEGIES]
    if bad or not sim.strategies or not sim.seeds:
        raise ValueError(f"simulate.strategies: need strategies from {', '.join(STRATEGIES)} and seeds, "
                         f"got {sim.strategies} / {sim.seeds}")
    if sim.initial < 1 or sim.budget < 1 or sim.rounds < 0:
        raise ValueError(f"simulate: initial and budget must be >= 1 and rounds >= 0, got "
                         f"{sim.initial} / {sim.budget} / {sim.rounds}")
    pool = load_bank(params, params.data.train_splits, sim.max_pool)
    val = load_bank(params, params.data.val_splits, sim.max_val)
    if sim.initial + sim.rounds * sim.budget > len(pool.paths):
        raise ValueError(f"simulate: initial + rounds x budget = {sim.initial + sim.rounds * sim.budget} photos, "
                         f"but the pool has {len(pool.paths)}")
    state_path = Path(sim.state_file)
    state = load_state(state_path, _config(params, len(pool.paths), len(val.paths)), fresh)
    trainer = HeadTrainer(params, pool)
    for seed in sim.seeds:
        for strategy in sim.strategies:
            run_one(params, state, state_path, trainer, strategy, seed, pool, val, max_rounds)
    complete = max_rounds is None or max_rounds >= sim.rounds
    if complete:
        full_pool_reference(params, state, state_path, trainer, pool, val)
    strategies = list(dict.fromkeys([*sim.strategies, *(r["strategy"] for r in state["runs"].values())]))
    result = summarise(state, strategies, sim.target_fraction, complete)
    write_json(sim.out, result)
    plot_curves(result, sim.plot)
    return result


# ----------------------------------------------------------------------------- results

def summarise(state: dict[str, Any], strategies: Sequence[str], fraction: float,
              complete: bool = True) -> dict[str, Any]:
    """Curves per strategy (mean, std, min, max over seeds) and labels needed to reach the target.

    ``labels_to_target[s]`` is the smallest number of labelled photos at which the seed-mean mean IoU
    of strategy ``s`` is >= ``fraction`` x the whole-pool mean IoU (``None``: not reached).
    """
    ref = state.get("full_pool")
    target = fraction * ref["mean_iou"] if ref else None
    curves, to_target = {}, {}
    for strategy in strategies:
        runs = [r for r in state["runs"].values() if r["strategy"] == strategy and r["history"]]
        if not runs:
            continue
        n_rounds = min(len(r["history"]) for r in runs)
        miou = np.array([[h["mean_iou"] for h in r["history"][:n_rounds]] for r in runs])
        dmg = np.array([[h["damage_iou"] for h in r["history"][:n_rounds]] for r in runs])
        labelled = [h["labelled"] for h in runs[0]["history"][:n_rounds]]
        curves[strategy] = {"labelled": labelled, "mean_iou": _round(miou.mean(0)), "std": _round(miou.std(0)),
                            "min": _round(miou.min(0)), "max": _round(miou.max(0)),
                            "damage_iou": _round(dmg.mean(0)), "seeds": [r["seed"] for r in runs],
                            "per_seed": {str(r["seed"]): _round(m) for r, m in zip(runs, miou)}}
        hit = [n for n, m in zip(labelled, miou.mean(0)) if target is not None and m >= target]
        to_target[strategy] = hit[0] if hit else None
    base = to_target.get("random")
    relative = {s: (round(n / base, 3) if n and base else None) for s, n in to_target.items()}
    return {"config": state["config"], "complete": complete, "full_pool": ref, "target_fraction": fraction,
            "target_mean_iou": round(target, 4) if target is not None else None, "curves": curves,
            "labels_to_target": to_target, "labels_relative_to_random": relative}


def _round(values: np.ndarray) -> list[float]:
    return [round(float(v), 4) for v in values]


def plot_curves(result: dict[str, Any], path: str) -> None:
    """Validation mean IoU against labelled photos: one line + min-max band per strategy (PNG, atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, curve in result["curves"].items():
        x = curve["labelled"]
        (line,) = ax.plot(x, curve["mean_iou"], marker="o", label=f"{name} ({len(curve['seeds'])} seeds)")
        ax.fill_between(x, curve["min"], curve["max"], color=line.get_color(), alpha=0.2)
    ref = result.get("full_pool")
    if ref:
        ax.axhline(ref["mean_iou"], color="black", lw=1, label=f"whole pool ({ref['labelled']} photos)")
        ax.axhline(result["target_mean_iou"], color="grey", ls="--", lw=1,
                   label=f"{result['target_fraction']:.0%} of whole pool")
    ax.set_xlabel("labelled photos")
    ax.set_ylabel("validation mean IoU")
    ax.set_title("Active learning: mean over seeds, band = min-max")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def format_summary(result: dict[str, Any]) -> str:
    """A plain-text table: final mean IoU and labels to reach the target per strategy."""
    ref = result.get("full_pool")
    lines = []
    if ref:
        lines.append(f"whole pool ({ref['labelled']} photos): mean IoU {ref['mean_iou']:.4f}; "
                     f"target {result['target_fraction']:.0%} = {result['target_mean_iou']:.4f}")
    lines.append(f"{'strategy':<17} {'final mIoU':>10} {'labels to target':>17} {'vs random':>10}")
    for name, curve in result["curves"].items():
        n = result["labels_to_target"].get(name)
        rel = result["labels_relative_to_random"].get(name)
        reached = str(n) if n else f"> {curve['labelled'][-1]}"
        lines.append(f"{name:<17} {curve['mean_iou'][-1]:>10.4f} {reached:>17} "
                     f"{(f'{rel:.0%}' if rel else '-'):>10}")
    return "\n".join(lines)
