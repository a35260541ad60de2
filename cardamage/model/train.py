"""Train the segmentation model: ``cardamage train``.

Loss: class-weighted cross-entropy (or focal) + soft Dice, class weights from the label pixel
frequencies of the training split. AdamW with a cosine (or reduce-on-plateau) schedule, early
stopping on the validation mean IoU, the best epoch saved atomically as one ``.keras`` file,
and the history written as CSV after every epoch. One ``tf.distribute.MirroredStrategy`` over all
GPUs with ``mixed_float16`` when a GPU is present; the default strategy on CPU (same code).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from cardamage.config import Params, params_to_dict
from cardamage.errors import BadParameterError
from cardamage.fileio import write_text
from cardamage.model.heads import build_model
from cardamage.model.inference import count_params
from cardamage.model.inputs import Augment, base_dataset, batched, load_records, pixel_counts
from cardamage.model.io import ModelInfo, save_model
from cardamage.model.losses import ConfusionIoU, SegmentationLoss, class_weights_from_counts
from cardamage.model.sampling import check_threshold, plan_repeats, repeat_dataset
from cardamage.model.self_training import add_pseudo_labels

log = logging.getLogger(__name__)

MONITOR = "val_mean_iou"
HISTORY_COLUMNS = ("epoch", "loss", "mean_iou", "damage_iou", "val_loss", "val_mean_iou", "val_damage_iou",
                   "learning_rate", "seconds", "train_seconds", "val_seconds", "save_seconds")
#: Where an epoch's wall time went (seconds): the training steps (model and input pipeline), the
#: validation pass, and saving the best checkpoint; ``seconds`` is their sum plus the callbacks.
TIMING_COLUMNS = ("train_seconds", "val_seconds", "save_seconds")


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        model_path: the best checkpoint (``.keras``).
        history: one dict per epoch (the CSV rows).
        best_epoch: 1-based epoch of the checkpoint; best_score: its ``val_mean_iou``.
        class_weights: loss weights ``[C]``; pixel_counts: training label pixels ``[C]``.
        n_train, n_val: photos used; skipped: unreadable photos left out.
        model_version: version string stored in the checkpoint.
        pseudo: the pseudo-labels' card (teacher, photos, threshold, kept share) or ``None``.
    """

    model_path: Path
    history: list[dict[str, float]]
    best_epoch: int
    best_score: float
    class_weights: list[float]
    pixel_counts: list[int]
    n_train: int
    n_val: int
    skipped: list[str] = field(default_factory=list)
    model_version: str = ""
    seconds: float = 0.0
    pseudo: dict[str, Any] | None = None


def select_strategy(mixed_precision: str = "auto") -> tuple[tf.distribute.Strategy, bool]:
    """``MirroredStrategy`` over all GPUs (or the default strategy without one) and whether to use fp16."""
    if mixed_precision not in ("auto", "on", "off"):
        raise BadParameterError(f"train.mixed_precision: expected auto, on or off, got {mixed_precision!r}")
    gpus = tf.config.list_physical_devices("GPU")
    strategy = tf.distribute.MirroredStrategy() if gpus else tf.distribute.get_strategy()
    use_fp16 = mixed_precision == "on" or (mixed_precision == "auto" and bool(gpus))
    log.info("%d GPU(s); %d replica(s); mixed precision %s", len(gpus), strategy.num_replicas_in_sync,
             "on" if use_fp16 else "off")
    return strategy, use_fp16


def train(params: Params, model_path: str | Path | None = None, history_csv: str | Path | None = None,
          pool_photos: Sequence[Path] = ()) -> TrainResult:
    """Train on ``data.train_splits``, validate on ``data.val_splits``, keep the best epoch.

    Args:
        params: all parameters (``data``, ``model``, ``train`` sections are read).
        model_path, history_csv: override ``train.model_path`` / ``train.history_csv``.
        pool_photos: unlabelled photos for pseudo-labels (used when ``train.pseudo_teacher`` is set;
            see :mod:`cardamage.model.self_training`).
    """
    t, data = params.train, params.data
    _check_train_params(params)
    started = time.perf_counter()
    keras.utils.set_random_seed(t.seed)
    model_path = Path(model_path or t.model_path)
    history_csv = Path(history_csv or t.history_csv)
    num_classes = len(data.classes) + 1
    size, resize = params.model.input_size, params.model.resize

    train_recs, root = load_records(data, data.train_splits)
    if t.max_images:
        train_recs = train_recs[: t.max_images]
    val_recs, val_root = load_records(data, data.val_splits) if data.val_splits else ([], root)
    skipped: list[str] = []
    base_tr = base_dataset(train_recs, root, data.classes, data.class_map, size, resize, skipped)
    counts, n_train = pixel_counts(base_tr, num_classes)  # decodes every photo once (fills the cache)
    if n_train == 0:
        raise BadParameterError(f"data.train_splits: none of the {len(train_recs)} training photos could be read")
    weights = class_weights_from_counts(counts, t.class_weighting, t.max_class_weight)
    shares = [round(float(c) / max(int(counts.sum()), 1), 4) for c in counts]
    log.info("training photos: %d (%d unreadable); label pixel shares %s; class weights %s",
             n_train, len(skipped), shares, [round(float(w), 3) for w in weights])
    base_va = (base_dataset(val_recs, val_root, data.classes, data.class_map, size, resize, skipped)
               if val_recs else None)
    n_val = pixel_counts(base_va, num_classes)[1] if base_va is not None else 0

    n_labelled, selftrain, repeats = n_train, None, None
    if t.repeat_threshold > 0:
        repeats = plan_repeats(train_recs, data.classes, data.class_map, t.repeat_threshold, t.seed, skipped)
        base_tr, n_train = repeat_dataset(base_tr, repeats.counts), repeats.total
    if t.pseudo_teacher:
        selftrain = add_pseudo_labels(params, base_tr, n_labelled, pool_photos, per_epoch=n_train)
        base_tr, n_train = selftrain.dataset, selftrain.count
    strategy, use_fp16 = select_strategy(t.mixed_precision)
    global_batch = t.batch_size * strategy.num_replicas_in_sync
    steps = max(1, math.ceil(n_train / global_batch))
    augment = Augment.from_params(t) if t.augment else None
    train_ds = batched(base_tr, global_batch, training=True, augment=augment, seed=t.seed, count=n_train,
                       example_map=selftrain.example_map if selftrain else None)
    val_ds = batched(base_va, global_batch, count=n_val) if base_va is not None and n_val else None
    monitor = MONITOR if val_ds is not None else "mean_iou"
    if val_ds is None:
        log.warning("no validation photos: early stopping and checkpoints follow the training mean IoU")

    previous_policy = keras.mixed_precision.global_policy()
    try:
        if use_fp16:
            keras.mixed_precision.set_global_policy("mixed_float16")
        with strategy.scope():
            model = build_model(params.model, num_classes)
            model.compile(optimizer=_optimizer(params, steps),
                          loss=SegmentationLoss(num_classes, weights.tolist(), t.dice_weight, t.focal_gamma,
                                                    lovasz_weight=t.lovasz_weight),
                          metrics=[ConfusionIoU(num_classes, "mean", name="mean_iou"),
                                   ConfusionIoU(num_classes, "foreground", name="damage_iou")])
        log.info("model %s: %d weights, input %dx%d, %d classes", model.name, count_params(model), size, size,
                 num_classes)
        info = ModelInfo(classes=list(data.classes), input_size=size, resize=resize,
                         architecture=params.model.architecture, backbone=params.model.backbone)
        extra = {"params": {k: v for k, v in params_to_dict(params).items() if k in ("data", "model", "train")},
                 "class_weights": weights.tolist(), "pixel_counts": counts.tolist(),
                 "n_train": n_labelled, "n_val": n_val, "pseudo": selftrain.card if selftrain else None,
                 "sampling": repeats.card() if repeats else None}
        checkpoint = BestCheckpoint(model_path, info, extra, monitor, t.checkpoint_every_s)
        history = HistoryCsv(history_csv, t.epochs, checkpoint)
        callbacks: list[keras.callbacks.Callback] = [
            checkpoint, history,  # the checkpoint first: the history row shows this epoch's save time
            keras.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=t.early_stopping_patience),
        ]
        if selftrain:
            callbacks.append(selftrain.callback(t.pseudo_ramp_epochs))
        if t.lr_schedule == "plateau":
            callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode="max", factor=0.5,
                                                               patience=max(1, t.early_stopping_patience // 3)))
        try:
            model.fit(train_ds, validation_data=val_ds, epochs=t.epochs, callbacks=callbacks, verbose=0,
                      shuffle=False)
        finally:
            checkpoint.flush()  # stopped by an error or Ctrl-C: the best epoch so far is on disk
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    if checkpoint.best_epoch == 0:  # no finite score: keep the last weights rather than nothing
        checkpoint.save(len(history.rows), float("nan"))
    return TrainResult(model_path, history.rows, checkpoint.best_epoch, checkpoint.best, weights.tolist(),
                       counts.tolist(), n_labelled, n_val, sorted(set(skipped)), checkpoint.version,
                       time.perf_counter() - started, selftrain.card if selftrain else None)


def _check_train_params(params: Params) -> None:
    t = params.train
    for name, value in (("epochs", t.epochs), ("batch_size", t.batch_size)):
        if value < 1:
            raise BadParameterError(f"train.{name}: must be >= 1, got {value}")
    if t.learning_rate <= 0:
        raise BadParameterError(f"train.learning_rate: must be > 0, got {t.learning_rate}")
    if not params.data.classes:
        raise BadParameterError("data.classes: at least one class is needed")
    check_threshold(t.repeat_threshold)
    if t.lovasz_weight < 0 or t.warmup_epochs < 0:
        raise BadParameterError(f"train.lovasz_weight / train.warmup_epochs: must be >= 0, got {t.lovasz_weight} / "
                                f"{t.warmup_epochs}")
    if len(set(params.data.classes)) != len(params.data.classes):
        raise BadParameterError(f"data.classes: duplicate names in {params.data.classes}")


def lr_schedule(params: Params, steps_per_epoch: int) -> Any:
    """The learning rate: a float (``constant``, ``plateau``) or a Keras schedule by optimizer step (``cosine``:
    from ``train.learning_rate`` to 1 % of it, after ``train.warmup_epochs`` of linear warm-up from 1 %)."""
    t = params.train
    warmup = min(t.warmup_epochs, t.epochs - 1) * steps_per_epoch
    if t.lr_schedule != "cosine":
        return t.learning_rate
    if warmup:
        return keras.optimizers.schedules.CosineDecay(t.learning_rate * 0.01, (t.epochs * steps_per_epoch) - warmup,
                                                      alpha=0.01, warmup_target=t.learning_rate, warmup_steps=warmup)
    return keras.optimizers.schedules.CosineDecay(t.learning_rate, decay_steps=t.epochs * steps_per_epoch, alpha=0.01)


def _optimizer(params: Params, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    return keras.optimizers.AdamW(learning_rate=lr_schedule(params, steps_per_epoch),
                                  weight_decay=params.train.weight_decay)


class BestCheckpoint(keras.callbacks.Callback):
    """Keep the weights of the best epoch by ``monitor`` and save them (atomically, with :class:`ModelInfo`).

    An improving epoch's weights are copied in memory (milliseconds); the file is written when the
    last write is ``every_s`` seconds old, at the end of training, and by :meth:`flush` (``train``
    calls it when training stops early, Ctrl-C included). Writing a ``.keras`` file takes about a
    second for the default model: on short epochs that was a fifth of the epoch.
    """

    def __init__(self, path: Path, info: ModelInfo, extra: dict[str, Any], monitor: str = MONITOR,
                 every_s: float = 60.0):
        super().__init__()
        self.path, self.info, self.extra, self.monitor = Path(path), info, extra, monitor
        self.every_s = float(every_s)
        self.best, self.best_epoch, self.version = -math.inf, 0, ""
        self.save_seconds = 0.0  # of the last epoch: keeping its weights and writing the file
        self._pending: tuple[list[np.ndarray], int, float, dict[str, Any]] | None = None
        self._last_write = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        start = time.perf_counter()
        score = float((logs or {}).get(self.monitor, float("nan")))
        if math.isfinite(score) and score > self.best:
            self.best, self.best_epoch = score, epoch + 1
            self._pending = ([np.array(w, copy=True) for w in self.model.get_weights()], epoch + 1, score,
                             dict(logs or {}))
            if time.monotonic() - self._last_write >= self.every_s:
                self.flush()
        self.save_seconds = time.perf_counter() - start

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.flush()

    def flush(self) -> None:
        """Write the best weights not written yet (the model keeps its current weights)."""
        if self._pending is None:
            return
        weights, epoch, score, logs = self._pending
        current = self.model.get_weights()
        self.model.set_weights(weights)
        try:
            self.save(epoch, score, logs)
        finally:
            self.model.set_weights(current)
        self._pending, self._last_write = None, time.monotonic()

    def save(self, epoch: int, score: float, logs: dict[str, Any] | None = None) -> None:
        metrics = {k: float(v) for k, v in (logs or {}).items() if np.isscalar(v)}
        self.info.extra = {**self.extra, "epoch": epoch, "monitor": self.monitor, "score": score, "metrics": metrics}
        self.version = save_model(self.model, self.path, self.info).model_version
        if not self.best_epoch:
            self.best_epoch = epoch


class HistoryCsv(keras.callbacks.Callback):
    """One CSV row per epoch (rewritten atomically) and one log line per epoch."""

    def __init__(self, path: Path, epochs: int, checkpoint: BestCheckpoint | None = None):
        super().__init__()
        self.path, self.epochs, self.checkpoint = Path(path), epochs, checkpoint
        self.rows: list[dict[str, float]] = []
        self._start = self._train_end = self._val = self._val_start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._start, self._train_end, self._val = time.perf_counter(), 0.0, 0.0

    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._val_start = time.perf_counter()
        self._train_end = self._train_end or self._val_start  # the training steps of this epoch are done

    def on_test_end(self, logs: dict[str, Any] | None = None) -> None:
        self._val += time.perf_counter() - self._val_start

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = dict(logs or {})
        row: dict[str, float] = {"epoch": epoch + 1}
        for key in HISTORY_COLUMNS[1:-5]:
            row[key] = float(logs[key]) if key in logs else float("nan")
        row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row["seconds"] = round(time.perf_counter() - self._start, 2)
        row["train_seconds"] = round(self._train_end - self._start, 2) if self._train_end else row["seconds"]
        row["val_seconds"] = round(self._val, 2)
        row["save_seconds"] = round(self.checkpoint.save_seconds if self.checkpoint else 0.0, 2)
        self.rows.append(row)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.path, buf.getvalue())
        log.info("epoch %d/%d  loss %.4f  mean_iou %.3f  val_loss %.4f  val_mean_iou %.3f  val_damage_iou %.3f"
                 "  lr %.2e  %.0fs (train %.0fs, validation %.0fs, checkpoint %.1fs)", epoch + 1, self.epochs,
                 row["loss"], row["mean_iou"], row["val_loss"], row["val_mean_iou"], row["val_damage_iou"],
                 row["learning_rate"], row["seconds"], row["train_seconds"], row["val_seconds"], row["save_seconds"])


def result_summary(result: TrainResult) -> dict[str, Any]:
    """JSON-friendly view of a :class:`TrainResult` (for the CLI and reports)."""
    out = asdict(result)
    out["model_path"] = str(result.model_path)
    out.pop("history")
    out["epochs_run"] = len(result.history)
    return out
