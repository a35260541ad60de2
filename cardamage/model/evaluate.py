"""Evaluate a saved model on the fixed test split: ``cardamage evaluate``.

Splits: ``evaluate.splits``, else ``data.test_splits`` when they hold labelled photos (the prepared
dataset always has one, see :mod:`cardamage.data.prepare`), else ``data.val_splits`` with a warning.
Besides the metrics, every photo's confusion matrix goes to ``evaluate.per_photo`` (with its sha256,
so ``cardamage publish`` can reuse it and check that two models saw the same photos), and the
headline figures get bootstrap intervals over photos (:mod:`cardamage.model.bootstrap`).

Pixel metrics are computed at the network input resolution over labelled pixels (letterbox
padding excluded). Image-level "is there damage": the damage score of a photo is either the
highest damage probability of any pixel (``max_prob``, with damage probability
``1 - P(background)``) or the predicted damaged share of the photo (``damaged_share``); the photo
counts as damaged when the score reaches ``evaluate.image_threshold``. Instance count error: mean
absolute difference between the connected regions of the prediction (each class separately,
regions under ``evaluate.min_instance_px`` input pixels ignored) and the labelled instances.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cardamage.config import Params
from cardamage.data.annotations import category_mapper
from cardamage.data.dedup import file_sha256
from cardamage.data.images import ImageLoadError, load_image
from cardamage.errors import BadParameterError, CardamageError
from cardamage.fileio import finite_json, write_json
from cardamage.model.bootstrap import summarize
from cardamage.model.inference import predict_probs
from cardamage.model.inputs import (
    base_dataset,
    fit_geometry,
    fit_image,
    fit_mask,
    inference_mode,
    load_records,
    true_instance_count,
)
from cardamage.model.io import load_model
from cardamage.model.losses import (
    IGNORE_INDEX,
    binary_prf,
    confusion_matrix,
    dice_per_class,
    foreground_precision_recall,
    iou_per_class,
    precision_recall_curve,
)
from cardamage.model.mask_ap import MaskInstances, mask_ap
from cardamage.model.plots import OverlayItem, overlay_grid, plot_pr_curve, plot_training_curves
from cardamage.model.regions import count_regions

log = logging.getLogger(__name__)


@dataclass
class ImageResult:
    """Per-photo evaluation numbers (``index`` into the records)."""

    index: int
    path: str
    score: float
    has_damage: bool
    damage_iou: float
    true_instances: int
    predicted_instances: int
    sha256: str = ""
    cm: np.ndarray | None = None


@dataclass
class PhotoEval:
    """Per-photo results of one model on one test set (what ``evaluate.per_photo`` holds).

    Attributes:
        photos: ``{"path", "sha256", "cm"}`` per photo, ``cm`` the ``[C, C]`` confusion matrix
            (rows truth, columns prediction, input pixels, letterbox padding excluded).
        classes: the ``C`` class names, background first.
    """

    model_version: str
    classes: list[str]
    input_size: int
    splits: list[str]
    photos: list[dict[str, Any]]

    @property
    def shas(self) -> list[str]:
        return [p["sha256"] for p in self.photos]

    @property
    def fingerprint(self) -> str:
        """First 12 hex of the sha256 of the sorted photo hashes: the identity of the test set."""
        return photo_set_fingerprint(self.shas)

    def cms(self, order: list[str] | None = None) -> np.ndarray:
        """``int64 [N, C, C]``, in ``order`` of sha256 when given."""
        by_sha = {p["sha256"]: p["cm"] for p in self.photos}
        return np.asarray([by_sha[s] for s in (order or self.shas)], dtype=np.int64)

    def to_json(self) -> dict[str, Any]:
        return {"model_version": self.model_version, "classes": self.classes, "input_size": self.input_size,
                "splits": self.splits, "test_set": {"n_photos": len(self.photos), "fingerprint": self.fingerprint},
                "photos": self.photos}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PhotoEval:
        """Raises ``KeyError`` / ``TypeError`` on a malformed mapping."""
        return cls(str(data["model_version"]), list(data["classes"]), int(data["input_size"]), list(data["splits"]),
                   [{"path": str(p["path"]), "sha256": str(p["sha256"]), "cm": p["cm"]} for p in data["photos"]])


def photo_set_fingerprint(shas: list[str]) -> str:
    """12 hex characters identifying a set of photos (order-free)."""
    return hashlib.sha256("\n".join(sorted(shas)).encode()).hexdigest()[:12]


@dataclass
class _Accumulator:
    num_classes: int
    cm: np.ndarray = field(init=False)
    images: list[ImageResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    instances: MaskInstances = field(default_factory=MaskInstances)

    def __post_init__(self) -> None:
        self.cm = np.zeros((self.num_classes, self.num_classes), np.int64)


def image_score(probs: np.ndarray, valid: np.ndarray, kind: str) -> float:
    """Damage score of one photo from ``probs [S, S, C]`` over ``valid [S, S]`` pixels (see module doc)."""
    if not valid.any():
        return 0.0
    damage = 1.0 - probs[..., 0][valid]
    if kind == "max_prob":
        return float(damage.max())
    if kind == "damaged_share":
        return float((probs[valid].argmax(-1) > 0).mean())
    raise BadParameterError(f"evaluate.image_score: expected max_prob or damaged_share, got {kind!r}")


def _foreground_iou(truth: np.ndarray, pred: np.ndarray) -> float:
    valid = truth != IGNORE_INDEX
    t, p = (truth > 0) & valid, (pred > 0) & valid
    union = (t | p).sum()
    return float((t & p).sum() / union) if union else 1.0


def evaluation_records(params: Params) -> tuple[list[str], list, Path]:
    """The splits to evaluate, their labelled records and the root they are relative to.

    ``evaluate.splits``, else ``data.test_splits`` when they hold labelled photos, else ``data.val_splits``.
    """
    e, data = params.evaluate, params.data
    if e.splits:
        return list(e.splits), *load_records(data, e.splits)
    if data.test_splits and all((Path(data.root) / s).is_dir() for s in data.test_splits):
        try:
            return list(data.test_splits), *load_records(data, data.test_splits)
        except CardamageError:
            pass
    log.warning("no labelled test split %s in %s (run `cardamage prepare`): evaluating on %s", data.test_splits,
                data.root, data.val_splits)
    return list(data.val_splits), *load_records(data, data.val_splits)


def run_model(params: Params, model: Any, info: Any, selected: tuple[list[str], list, Path]
              ) -> tuple[_Accumulator, dict, list, Path]:
    """Predict every record of ``selected`` (from :func:`evaluation_records`): per-photo results,
    predictions ``{index: uint8 [S, S]}``, the records and their root."""
    e, data = params.evaluate, params.data
    splits, records, root = selected
    category_of = category_mapper(info.classes, data.class_map)
    mode = inference_mode(info.resize)
    skipped: list[str] = []
    base = base_dataset(records, root, info.classes, data.class_map, info.input_size, mode, skipped, cache=False)
    acc = _Accumulator(info.num_outputs)
    preds: dict[int, np.ndarray] = {}
    for images, masks, indices in base.batch(e.batch_size).as_numpy_iterator():
        probs = predict_probs(model, images, batch_size=e.batch_size, tta=params.predict.tta)
        for probs_i, mask, idx in zip(probs, masks, indices):
            pred = probs_i.argmax(-1).astype(np.uint8)
            preds[int(idx)] = pred
            acc.instances.add(mask, pred, probs_i, info.num_outputs, IGNORE_INDEX, e.min_instance_px)
            cm = confusion_matrix(mask, pred, info.num_outputs)
            acc.cm += cm
            valid = mask != IGNORE_INDEX
            record = records[int(idx)]
            n_true = true_instance_count(record, category_of)
            acc.images.append(ImageResult(int(idx), record.path, image_score(probs_i, valid, e.image_score),
                                          n_true > 0 or bool(((mask > 0) & valid).any()),
                                          _foreground_iou(mask, pred), n_true,
                                          count_regions(np.where(valid, pred, 0), info.num_outputs, e.min_instance_px),
                                          file_sha256(root / record.path), cm))
    if not acc.images:
        raise ValueError(f"evaluate: no readable labelled photos in splits {splits} of {data.root}")
    acc.skipped = sorted(set(skipped))
    return acc, preds, records, root


def photo_eval(acc: _Accumulator, info: Any, splits: list[str]) -> PhotoEval:
    """The :class:`PhotoEval` of one :func:`run_model` pass."""
    ordered = sorted(acc.images, key=lambda r: r.path)
    photos = [{"path": r.path, "sha256": r.sha256, "cm": r.cm.tolist()} for r in ordered]
    return PhotoEval(info.model_version, ["background", *info.classes], int(info.input_size), splits, photos)


def evaluate_photos(params: Params, model_path: str | Path) -> PhotoEval:
    """Per-photo results of the model at ``model_path`` on :func:`evaluation_records` (nothing written).

    Raises:
        ModelMismatchError: the model's classes differ from ``data.classes``.
    """
    model, info = load_model(model_path, expect_classes=params.data.classes)
    selected = evaluation_records(params)
    acc = run_model(params, model, info, selected)[0]
    return photo_eval(acc, info, selected[0])


def evaluate(params: Params, model_path: str | Path | None = None, metrics_file: str | Path | None = None,
             plots_dir: str | Path | None = None) -> dict[str, Any]:
    """Compute the metrics of ``evaluate.model_path`` on :func:`evaluation_records`.

    Writes ``metrics_file`` (JSON), ``evaluate.per_photo`` and the plots into ``plots_dir``;
    returns the metrics dict.

    Raises:
        ModelMismatchError: the model's classes differ from ``data.classes``.
    """
    e, data = params.evaluate, params.data
    model_path = Path(model_path or e.model_path)
    metrics_file = Path(metrics_file or e.metrics_file)
    plots_dir = Path(plots_dir or e.plots_dir)
    model, info = load_model(model_path, expect_classes=data.classes)
    selected = evaluation_records(params)
    splits = selected[0]
    acc, preds, records, root = run_model(params, model, info, selected)
    per_photo = photo_eval(acc, info, splits)
    metrics = _metrics(acc, info.classes, e.image_score, e.image_threshold)
    metrics.update({"model": str(model_path), "model_version": info.model_version, "splits": splits,
                    "n_images": len(acc.images), "skipped": acc.skipped, "input_size": info.input_size,
                    "test_set": {"n_photos": len(per_photo.photos), "fingerprint": per_photo.fingerprint},
                    "intervals": summarize(per_photo.cms(), per_photo.classes, e.bootstrap, e.confidence)})
    plots, skipped_plots = _plots(acc, preds, records, root, info, data.class_map, e, plots_dir,
                                  params.train.history_csv, splits)
    metrics["plots_skipped"] = skipped_plots
    write_json(metrics_file, finite_json(metrics))
    write_json(e.per_photo, per_photo.to_json(), indent=None)
    metrics["plots"] = [str(p) for p in plots]
    log.info("mean IoU %.3f, damage IoU %.3f, image F1 %.3f on %d photos", metrics["mean_iou"],
             metrics["damage_iou"], metrics["image"]["f1"], len(acc.images))
    return metrics


def _metrics(acc: _Accumulator, classes: list[str], score_kind: str, threshold: float) -> dict[str, Any]:
    names = ["background"] + list(classes)
    iou, dice = iou_per_class(acc.cm), dice_per_class(acc.cm)
    precision, recall = foreground_precision_recall(acc.cm)
    fg = acc.cm[1:, 1:].sum() / max(acc.cm.sum() - acc.cm[0, 0], 1)
    scores = [r.score for r in acc.images]
    labels = [r.has_damage for r in acc.images]
    image = binary_prf(scores, labels, threshold)
    p_curve, r_curve, _ = precision_recall_curve(scores, labels)
    image.update({"score": score_kind, "positives": int(sum(labels)), "negatives": int(len(labels) - sum(labels)),
                  "average_precision": _average_precision(p_curve, r_curve)})
    errors = [abs(r.predicted_instances - r.true_instances) for r in acc.images]
    return {
        "mean_iou": float(np.nanmean(iou)),
        "damage_iou": float(fg),
        "iou": dict(zip(names, iou.tolist())),
        "dice": dict(zip(names, dice.tolist())),
        "pixel_precision": precision,
        "pixel_recall": recall,
        "image": image,
        "instance_count_mae": float(np.mean(errors)),
        "instances_true_mean": float(np.mean([r.true_instances for r in acc.images])),
        "instances_predicted_mean": float(np.mean([r.predicted_instances for r in acc.images])),
        "confusion_matrix": acc.cm.tolist(),
        "mask_ap": mask_ap(acc.instances, list(classes)),
    }


def _average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the step precision-recall curve (sum of precision times recall increments)."""
    if not len(recall):
        return 0.0
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def pr_curve_problem(labels: list[bool]) -> str | None:
    """Why an image-level precision-recall curve of these photos would be degenerate; ``None`` if it is not."""
    n, pos = len(labels), sum(labels)
    if pos == n:
        return (f"every evaluated photo shows damage ({pos} of {n}): precision is 1 at every threshold, so "
                "the curve is a flat line; it needs photos without damage")
    if pos == 0:
        return f"no evaluated photo shows damage (0 of {n}): recall is undefined"
    return None


def _plots(acc: _Accumulator, preds: dict[int, np.ndarray], records: list, root: Path, info: Any,
           class_map: dict[str, str], e: Any, plots_dir: Path, history_csv: str,
           splits: list[str]) -> tuple[list[Path], dict[str, str]]:
    """The figures, and ``{name: reason}`` for those left out (a stale file of that name is removed)."""
    written = [plot_training_curves(history_csv, plots_dir / "training_curves.png")]
    scores = [r.score for r in acc.images]
    labels = [r.has_damage for r in acc.images]
    skipped = {}
    problem = pr_curve_problem(labels)
    if problem:
        skipped["pr_curve"] = problem
        (plots_dir / "pr_curve.png").unlink(missing_ok=True)
        log.info("precision-recall curve left out: %s", problem)
    else:
        precision, recall, _ = precision_recall_curve(scores, labels)
        op = binary_prf(scores, labels, e.image_threshold)
        title = f"image-level damage ({e.image_score}); {sum(labels)} damaged / {len(labels)} photos"
        written.append(plot_pr_curve(precision, recall, plots_dir / "pr_curve.png", (op["recall"], op["precision"]),
                                     title))
    ranked = sorted(acc.images, key=lambda r: (r.damage_iou, r.path))
    k = max(0, min(e.overlay_count, len(ranked)))
    for name, chosen in (("worst", ranked[:k]), ("best", ranked[::-1][:k])):
        items = [_overlay_item(r, preds[r.index], records, root, info, class_map) for r in chosen]
        written.append(overlay_grid([i for i in items if i is not None], plots_dir / f"overlays_{name}.png",
                                    f"{name} {'/'.join(splits)} photos by damage IoU"))
    return [p for p in written if p is not None], skipped


def _overlay_item(result: ImageResult, pred: np.ndarray, records: list, root: Path, info: Any,
                  class_map: dict[str, str]) -> OverlayItem | None:
    record = records[result.index]
    try:
        image = load_image(root / record.path)
    except ImageLoadError as exc:
        log.warning("overlay: %s", exc)
        return None
    fit = fit_geometry(image.shape[1], image.shape[0], info.input_size, inference_mode(info.resize))
    truth = fit_mask(record.instances, info.classes, fit, category_mapper(info.classes, class_map), record.reviewed)
    return OverlayItem(f"{record.path} IoU {result.damage_iou:.2f}", fit_image(image, fit), truth, pred)
