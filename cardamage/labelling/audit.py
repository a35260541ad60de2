"""The label audit of every ``cardamage pull``: which returned labels are likely wrong (cleanlab).

Each labelled photo's label (polygons -> class per pixel, 0 = background) and the model's
probabilities (``predict.model_path``) are put on the same ``labelstudio.audit.grid`` pixel grid
(the photo stretched to a square), and cleanlab's segmentation module scores them:
``cleanlab.segmentation.rank.get_label_quality_scores`` gives each photo a label quality score
(0-1, low = likely wrong) and ``cleanlab.segmentation.filter.find_label_issues`` the pixels whose
label the model contradicts confidently; the
class pairs most often swapped (given ``background``, predicted ``dent``: a dent the annotator missed),
counted as ``cleanlab.segmentation.summary.common_label_issues`` counts them.

Out of sample only: a label made (``updated_at``) after the model was created cannot have trained
it, so only those can be flagged (``issue_share >= flag_issue_share`` or ``quality < flag_quality``);
older labels are scored and reported with ``out_of_sample = false``. Annotators: each one's mean
damage IoU with the model, and for tasks with several annotations, each pair's mean IoU.

Written atomically: ``labelstudio.audit.csv`` (one row per photo, lowest quality first) and
``labelstudio.audit.summary`` (JSON). ``cardamage labelstudio review`` sends the flagged photos back to
Label Studio; ``prepare.exclude_flagged`` keeps them out of training.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cardamage.config import Params
from cardamage.data.annotations import Instance
from cardamage.data.masks import rasterize_polygons
from cardamage.fileio import write_json
from cardamage.labelling.via_file import write_csv

log = logging.getLogger(__name__)

AUDIT_COLUMNS = ["id", "image", "task_id", "annotation_id", "annotator", "labelled_at", "model_version",
                 "out_of_sample", "quality", "issue_share", "model_iou", "flagged"]


@dataclass
class AuditItem:
    """One labelled photo: its file, label (pixels), task, annotation and annotator."""

    sha256: str
    image: Path
    instances: list[Instance]
    width: int
    height: int
    task_id: int | None = None
    annotation_id: int | None = None
    annotator: str = ""
    labelled_at: str = ""


@dataclass
class AuditResult:
    """Rows of ``audit.csv``, the swapped class pairs, the annotators' agreement, and what was skipped."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    class_pairs: list[dict[str, Any]] = field(default_factory=list)
    annotators: list[dict[str, Any]] = field(default_factory=list)
    overlays: dict[str, str] = field(default_factory=dict)
    annotator_pairs: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    model_version: str = ""
    seconds: float = 0.0

    @property
    def flagged(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["flagged"]]

    def text(self) -> str:
        """One line for the pull summary."""
        oos = sum(1 for r in self.rows if r["out_of_sample"])
        return (f"label audit (model {self.model_version}): {len(self.rows)} photo(s), {oos} out of sample, "
                f"{len(self.flagged)} flagged for review ({self.seconds:.1f} s)"
                + (f"; {len(self.skipped)} skipped" if self.skipped else ""))


def label_grid(instances: Sequence[Instance], classes: Sequence[str], width: int, height: int,
               grid: int) -> np.ndarray:
    """Class per pixel ``uint8 [grid, grid]`` (0 background, ``1..K`` in ``classes`` order) of a label in
    pixels of a ``width x height`` photo; later instances are drawn over earlier ones."""
    out = np.zeros((grid, grid), np.uint8)
    sx, sy = grid / max(width, 1), grid / max(height, 1)
    for inst in instances:
        if inst.category not in classes or not inst.polygons:
            continue
        polys = [[(x * sx, y * sy) for x, y in poly] for poly in inst.polygons]
        out[rasterize_polygons(polys, grid, grid).astype(bool)] = classes.index(inst.category) + 1
    return out


def prob_grid(probs: np.ndarray, grid: int) -> np.ndarray:
    """``[H, W, C]`` probabilities -> ``float32 [C, grid, grid]`` (area-averaged), rows summing to 1."""
    import cv2

    small = cv2.resize(np.asarray(probs, np.float32), (grid, grid), interpolation=cv2.INTER_AREA)
    small = small.reshape(grid, grid, -1)
    small /= np.maximum(small.sum(-1, keepdims=True), 1e-6)
    return np.ascontiguousarray(small.transpose(2, 0, 1))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _parse_time(text: str | None) -> _dt.datetime | None:
    try:
        stamp = _dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=_dt.timezone.utc)


def model_grids(items: Sequence[AuditItem], params: Params, loaded: Any,
                batch_size: int = 8) -> tuple[list[AuditItem], np.ndarray, np.ndarray, list[str]]:
    """The items whose photo loads, their labels ``uint8 [N, g, g]`` and probabilities ``float32 [N, K, g, g]``.

    Photos are decoded to at most ``max(4 x grid, input size)`` px and predicted ``batch_size`` at a time.
    """
    from cardamage.data.images import ImageLoadError, load_image
    from cardamage.model.predict import full_res_probs

    grid, classes = params.labelstudio.audit.grid, list(loaded.info.classes)
    kept, labels, probs, skipped = [], [], [], []
    batch: list[tuple[AuditItem, np.ndarray]] = []

    def flush() -> None:
        for (item, _), p in zip(batch, full_res_probs(loaded, [image for _, image in batch])):
            probs.append(prob_grid(p, grid))
            labels.append(label_grid(item.instances, classes, item.width, item.height, grid))
            kept.append(item)
        batch.clear()

    for item in items:
        try:
            batch.append((item, load_image(item.image, max_side=max(4 * grid, loaded.info.input_size))))
        except ImageLoadError as exc:
            skipped.append(str(exc))  # names the file
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    k = loaded.info.num_outputs
    return (kept, np.stack(labels) if labels else np.zeros((0, grid, grid), np.uint8),
            np.stack(probs) if probs else np.zeros((0, k, grid, grid), np.float32), skipped)


def cleanlab_scores(labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> tuple[
        np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """cleanlab's label quality ``[N]``, issue share ``[N]`` and the swapped class pairs (see the module doc)."""
    from cleanlab.segmentation.filter import find_label_issues
    from cleanlab.segmentation.rank import get_label_quality_scores

    quality, _ = get_label_quality_scores(labels, probs, verbose=False)
    try:
        issues = find_label_issues(labels, probs, verbose=False, n_jobs=1)
    except (ValueError, IndexError, ZeroDivisionError) as exc:  # too few photos or a class never labelled
        log.warning("label audit: cleanlab found no per-pixel issues (%s); quality scores only", exc)
        return quality, np.zeros(len(labels)), []
    # what cleanlab.segmentation.summary.common_label_issues counts, without its per-pixel Python loop
    given, predicted = labels[issues], probs.argmax(1)[issues]
    pairs, counts = np.unique(np.stack([given, predicted], 1), axis=0, return_counts=True) if issues.any() else \
        (np.zeros((0, 2), int), np.zeros(0, int))
    rows = [{"given": class_names[g], "predicted": class_names[p], "pixels": int(c),
             "share": round(float(c) / issues.size, 6)}
            for (g, p), c in sorted(zip(pairs.tolist(), counts.tolist()), key=lambda t: -t[1])]
    return quality, issues.mean(axis=(1, 2)), rows


def audit_items(items: Sequence[AuditItem], params: Params, loaded: Any,
                others: dict[int, list[tuple[str, list[Instance]]]] | None = None) -> AuditResult:
    """Audit ``items`` against ``loaded`` (a :class:`~cardamage.model.predict.LoadedModel`).

    Args:
        others: task id -> ``(annotator, instances)`` of its other annotations (for agreement between annotators).
    """
    start = time.monotonic()
    kept, labels, probs, skipped = model_grids(items, params, loaded)
    info = loaded.info
    result = audit_grids(kept, labels, probs, list(info.classes), info.model_version or Path(loaded.path).name,
                         info.created, params, others)
    result.skipped, result.seconds = skipped, time.monotonic() - start
    return result


def audit_grids(items: Sequence[AuditItem], labels: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                model_version: str, model_created: str, params: Params,
                others: dict[int, list[tuple[str, list[Instance]]]] | None = None) -> AuditResult:
    """The audit of ``N`` items from their labels ``uint8 [N, g, g]`` and the model's ``float32 [N, K, g, g]``.

    ``model_created`` (ISO time) decides which labels are out of sample (made after it).
    """
    ap = params.labelstudio.audit
    result = AuditResult(model_version=model_version)
    if not len(items):
        return result
    quality, issue_share, result.class_pairs = cleanlab_scores(labels, probs, ["background", *classes])
    created = _parse_time(model_created)
    model_damage = probs.argmax(1) != 0
    for i, item in enumerate(items):
        at = _parse_time(item.labelled_at)
        oos = bool(created is not None and at is not None and at > created)
        flagged = oos and (issue_share[i] >= ap.flag_issue_share or quality[i] < ap.flag_quality)
        result.rows.append({
            "id": item.sha256, "image": item.image.name, "task_id": item.task_id, "annotation_id": item.annotation_id,
            "annotator": item.annotator, "labelled_at": item.labelled_at, "model_version": model_version,
            "out_of_sample": oos, "quality": round(float(quality[i]), 4),
            "issue_share": round(float(issue_share[i]), 4),
            "model_iou": round(_iou(labels[i] != 0, model_damage[i]), 4), "flagged": bool(flagged)})
    result.rows.sort(key=lambda r: (r["quality"], str(r["id"])))
    result.annotators = _annotators(result.rows)
    result.annotator_pairs = _annotator_pairs(items, others or {}, classes, ap.grid)
    return result


def _annotators(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[r["annotator"] or "unknown"].append(r)
    return [{"annotator": name, "photos": len(rs),
             "mean_model_iou": round(float(np.mean([r["model_iou"] for r in rs])), 4),
             "mean_quality": round(float(np.mean([r["quality"] for r in rs])), 4),
             "flagged": sum(1 for r in rs if r["flagged"])} for name, rs in sorted(by.items())]


def _annotator_pairs(items: Sequence[AuditItem], others: dict[int, list[tuple[str, list[Instance]]]],
                     classes: Sequence[str], grid: int) -> list[dict[str, Any]]:
    """Mean damage IoU of each pair of annotators over the tasks both annotated."""
    ious: dict[tuple[str, str], list[float]] = defaultdict(list)
    for item in items:
        labels = [(item.annotator or "unknown", item.instances)] + list(others.get(item.task_id, []))
        masks = [(who, label_grid(inst, classes, item.width, item.height, grid) != 0) for who, inst in labels]
        for (a, ma), (b, mb) in itertools.combinations(masks, 2):
            ious[tuple(sorted((a, b)))].append(_iou(ma, mb))  # type: ignore[arg-type]
    return [{"annotators": list(pair), "tasks": len(v), "mean_iou": round(float(np.mean(v)), 4)}
            for pair, v in sorted(ious.items())]


def write_audit(result: AuditResult, params: Params) -> None:
    """``audit.csv`` and ``audit.summary`` (atomically)."""
    ap = params.labelstudio.audit
    write_csv(Path(ap.csv), AUDIT_COLUMNS, result.rows)
    write_json(ap.summary, {"model_version": result.model_version, "photos": len(result.rows),
                            "out_of_sample": sum(1 for r in result.rows if r["out_of_sample"]),
                            "flagged": [r["id"] for r in result.flagged], "class_pairs": result.class_pairs,
                            "annotators": result.annotators, "annotator_pairs": result.annotator_pairs,
                            "skipped": result.skipped, "seconds": round(result.seconds, 2),
                            "overlays": result.overlays,
                            "thresholds": {"flag_issue_share": ap.flag_issue_share, "flag_quality": ap.flag_quality,
                                           "grid": ap.grid}})


def overlay_folder(params: Params) -> Path:
    """Where the audit's pictures go: ``labelstudio.audit.csv`` without its suffix (``reports/label_audit/``)."""
    return Path(params.labelstudio.audit.csv).with_suffix("")


def flagged_rows(path: str | Path, columns: Sequence[str] = ("id", "flagged")) -> list[dict[str, str]]:
    """The flagged rows of an audit CSV (``cardamage labelstudio review``, ``prepare.exclude_flagged``).

    Raises:
        BadInputError: no audit file (run ``cardamage pull`` with a model first), or a file without ``columns``.
    """
    import csv

    from cardamage.errors import BadInputError

    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"{p}: no label audit yet (`cardamage pull` writes it when a model exists)")
    with open(p, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and not set(columns) <= set(rows[0]):
        raise BadInputError(f"{p}: not a label audit (columns {', '.join(columns)} missing)")
    return [r for r in rows if str(r.get("flagged")).lower() == "true"]


def flagged_ids(params: Params) -> set[str]:
    """sha256 of the photos the last audit flagged (empty without an audit file)."""
    path = Path(params.labelstudio.audit.csv)
    return {r["id"] for r in flagged_rows(path)} if path.is_file() else set()


def annotator_name(annotation: dict[str, Any]) -> str:
    """``completed_by`` of an exported annotation: its e-mail when the export has it, else ``user <id>``."""
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        return str(who.get("email") or f"user {who.get('id')}")
    return f"user {who}" if who is not None else ""


def items_from_pull(labelled: Sequence[Any], params: Params) -> tuple[list[AuditItem],
                                                                      dict[int, list[tuple[str, list[Instance]]]]]:
    """Audit items of pulled photos (:class:`~cardamage.labelling.pull.Pulled` with a file in
    ``labelled_dir/images``) and each task's other annotations (converted once, by the pull).

    Photos labelled through region tasks (only part reviewed) are not audited."""
    root = Path(params.labelstudio.labelled_dir)  # image names are relative to it (images/<name>)
    items, others = [], {}
    for p in labelled:
        if p.record.reviewed is not None:
            continue  # labelled through region tasks: pixels outside them are unknown, not background
        used, task_id = p.annotation, int(p.task["id"])
        items.append(AuditItem(p.sha256, root / p.image_name, list(p.record.instances), p.record.width or 1,
                               p.record.height or 1, task_id, p.annotation_id, annotator_name(used),
                               str(used.get("updated_at") or used.get("created_at") or "")))
        others[task_id] = [(annotator_name(a), rec.instances) for a, rec in p.others]
    return items, others


def audit_pull(labelled: Sequence[Any], params: Params) -> str | None:
    """Audit the pulled photos and write the files; the line for the pull summary (``None``: audit off).

    Never fails the pull: no model, a model for other classes or cleanlab missing is one line saying so.
    """
    from cardamage.errors import CardamageError
    from cardamage.labelling.audit_overlays import write_overlays

    if not params.labelstudio.audit.enabled or not labelled:
        return None
    model_path = Path(params.predict.model_path)
    if not model_path.is_file():
        return f"label audit: no model at {model_path} yet (train one; the next pull audits the labels)"
    try:
        from cardamage.model.io import load_model
        from cardamage.model.predict import LoadedModel

        loaded = LoadedModel(*load_model(model_path, params.data.classes), str(model_path))
        items, others = items_from_pull(labelled, params)
        result = audit_items(items, params, loaded, others)
        worst = {r["id"] for r in result.rows[:params.report.thumbnails]}
        result.overlays = write_overlays([i for i in items if i.sha256 in worst], loaded, params.predict.threshold,
                                         overlay_folder(params))
        write_audit(result, params)
    except ImportError as exc:
        return f"label audit skipped: {exc} (pip install cleanlab)"
    except CardamageError as exc:
        return f"label audit skipped: {exc}"
    return result.text() + f" -> {params.labelstudio.audit.csv}"
