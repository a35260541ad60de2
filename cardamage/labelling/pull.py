"""Pull finished labels from Label Studio into the training data.

For every task of the project with annotations: cancelled (skipped) annotations are ignored; the
newest remaining annotation is used (by ``updated_at``, then id), and where a task has several, the
others are compared with it (a different image-level choice or a polygon mask IoU below
``labelstudio.disagreement_iou`` is a disagreement, reported). "no damage" becomes an image with no
instances, "unusable photo" drops the image (reported, ledger status ``unusable``). Polygons
arrive in **percent** and are converted to **pixels** by :mod:`cardamage.data.formats.labelstudio_json`.

Written (each only when its bytes change, so a second pull changes nothing):

* ``<labelled_dir>/images/<name>`` and ``<labelled_dir>/via_region_data.json`` (VIA 2, region
  attribute ``name``, file attribute ``cardamage_id``, and ``reviewed_boxes`` for a photo labelled
  through region tasks, :mod:`cardamage.labelling.regions`): the split the training pipeline reads;
* ``<exports_dir>/project_<id>_coco.json`` and ``project_<id>_via.json``: this project's labels,
  image names relative to ``labelled_dir``;
* ``labelstudio.report_csv``: mask IoU of each label against the model's pre-annotation, and
  ``annotation_disagreements.csv`` beside it;
* the ledger: entries marked ``labelled`` / ``unusable``;
* the label audit (:mod:`cardamage.labelling.audit`): ``labelstudio.audit.csv`` and its summary.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from cardamage.config import Params
from cardamage.data.annotations import Dataset, ImageRecord, Instance
from cardamage.data.dedup import file_sha256
from cardamage.data.images import image_size
from cardamage.data.masks import instance_mask
from cardamage.labelling.client import LabelStudioClient
from cardamage.labelling.label_config import NO_DAMAGE
from cardamage.labelling.label_config import UNUSABLE as UNUSABLE_CHOICE
from cardamage.labelling.ledger import LABELLED, PUSHED, UNUSABLE, load_ledger, mark, save_ledger
from cardamage.labelling.via_file import load_via, replace_entry, sha_of, write_csv, write_if_changed

log = logging.getLogger(__name__)

DAMAGE, EMPTY, CONFLICT = "damage", "empty", "conflict"
REPORT_COLUMNS = ["id", "image", "task_id", "verdict", "model_version", "predicted_instances",
                  "labelled_instances", "predicted_px", "labelled_px", "iou"]
DISAGREEMENT_COLUMNS = ["id", "task_id", "used_annotation", "other_annotation", "used_choices", "other_choices", "iou"]


@dataclass
class Pulled:
    """One task's outcome: ``verdict`` is damage, no damage, unusable photo, empty or conflict."""

    task: dict[str, Any]
    sha256: str | None
    verdict: str
    record: ImageRecord
    annotation_id: int | None = None
    image_name: str | None = None
    #: the annotation used (newest first of the usable ones) and the task's other usable annotations,
    #: each with its record (pixels): for the disagreement report and the label audit.
    annotation: dict[str, Any] = field(default_factory=dict)
    others: list[tuple[dict[str, Any], ImageRecord]] = field(default_factory=list)
    #: a photo merged from region tasks: their task ids (:mod:`cardamage.labelling.regions`)
    regions: list[int] = field(default_factory=list)


@dataclass
class PullSummary:
    """What a pull did; :meth:`text` is the summary shown to the user."""

    project_id: int
    tasks: int = 0
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0
    no_damage: int = 0
    skipped: int = 0
    unusable: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    disagreements: int = 0
    seconds: float = 0.0
    audit: str | None = None

    def text(self) -> str:
        """Human-readable summary, one fact per line."""
        lines = [f"pulled {self.tasks} annotated task(s) from Label Studio project {self.project_id} "
                 f"in {self.seconds:.1f} s",
                 f"training data: {self.added} added, {self.changed} changed, {self.unchanged} unchanged, "
                 f"{self.removed} removed ({self.no_damage} labelled 'no damage')",
                 f"skipped: {self.skipped} (cancelled or skipped by the annotator)"]
        if self.unusable:
            lines.append(f"unusable photos, left out: {len(self.unusable)} ({', '.join(self.unusable[:10])})")
        if self.disagreements:
            lines.append(f"tasks where annotators disagree: {self.disagreements} (see annotation_disagreements.csv)")
        lines += [f"not used: {p}" for p in self.problems]
        if self.audit:
            lines.append(self.audit)
        return "\n".join(lines)


# --- reading annotations ---------------------------------------------------------------------


def _stamp(annotation: dict[str, Any]) -> tuple[str, int]:
    return str(annotation.get("updated_at") or annotation.get("created_at") or ""), int(annotation.get("id") or 0)


def usable_annotations(task: dict[str, Any]) -> list[dict[str, Any]]:
    """The task's annotations that were not cancelled/skipped, newest first."""
    kept = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    return sorted(kept, key=_stamp, reverse=True)


def convert(task: dict[str, Any], results: list[dict[str, Any]], classes: Sequence[str]) -> ImageRecord:
    """One annotation's (or prediction's) results -> a record with pixel polygons and ``choices``.

    Categories outside ``classes`` are dropped with a warning.
    """
    from cardamage.data.formats import Issues, restrict_categories
    from cardamage.data.formats.labelstudio_json import parse_labelstudio

    source = f"Label Studio task {task.get('id')}"
    one = {"id": task.get("id"), "data": task.get("data") or {}, "annotations": [{"result": results}]}
    dataset = parse_labelstudio([one], source)
    restrict_categories(dataset, classes, Issues(source, log))
    return dataset.images[0] if dataset.images else ImageRecord(path=f"task-{task.get('id')}", labelled=False)


def verdict_of(record: ImageRecord) -> str:
    """damage / no damage / unusable photo / empty / conflict ("no damage" with polygons drawn)."""
    choices = set(record.attributes.get("choices") or [])
    if UNUSABLE_CHOICE in choices:
        return UNUSABLE_CHOICE
    if NO_DAMAGE in choices:
        return CONFLICT if record.instances else NO_DAMAGE
    return DAMAGE if record.instances else EMPTY


def damage_mask(instances: Sequence[Instance], width: int, height: int) -> np.ndarray:
    """Union of the instances' masks, ``bool [height, width]``."""
    mask = np.zeros((height, width), dtype=bool)
    for inst in instances:
        mask |= instance_mask(inst, height, width).astype(bool)
    return mask


def mask_iou(a: Sequence[Instance], b: Sequence[Instance], width: int, height: int) -> float:
    """IoU of the two instance sets' union masks (pixels); 1.0 when both are empty."""
    ma, mb = damage_mask(a, width, height), damage_mask(b, width, height)
    union = int((ma | mb).sum())
    return 1.0 if union == 0 else int((ma & mb).sum()) / union


# --- locating the photo ----------------------------------------------------------------------------


def image_bytes(client: LabelStudioClient, pulled: Pulled, ledger: dict[str, dict[str, Any]],
                data_key: str) -> bytes:
    """The photo's bytes: the local file named in the ledger or task data when its sha256 matches,
    else downloaded from Label Studio."""
    data = pulled.task.get("data") or {}
    candidates = [ledger.get(pulled.sha256 or "", {}).get("path"), data.get("cardamage_path")]
    for name in (c for c in candidates if c and isinstance(c, str)):
        path = Path(name)
        if path.is_file() and (pulled.sha256 is None or file_sha256(path) == pulled.sha256):
            return path.read_bytes()
    return client.download(str(data.get(data_key) or ""))


def _image_name(pulled: Pulled, taken: dict[str, str]) -> str:
    """``images/<file name>``; ``<stem>-<sha8><suffix>`` when another photo already has that name."""
    original = PurePosixPath(str(pulled.record.path)).name
    name = f"images/{original}"
    if taken.get(name, pulled.sha256) != pulled.sha256:
        stem, suffix = PurePosixPath(original).stem, PurePosixPath(original).suffix
        name = f"images/{stem}-{(pulled.sha256 or '')[:8]}{suffix}"
    return name


# --- the pull ----------------------------------------------------------------------------------------


def _latest_predictions(predictions: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    latest: dict[int, dict[str, Any]] = {}
    for pred in sorted(predictions, key=lambda p: (str(p.get("created_at") or ""), int(p.get("id") or 0))):
        latest[int(pred["task"])] = pred
    return latest


def _disagreements(task: dict[str, Any], used: dict[str, Any], record: ImageRecord,
                   others: list[tuple[dict[str, Any], ImageRecord]], threshold: float) -> list[dict[str, Any]]:
    rows = []
    width, height = record.width or 1, record.height or 1
    for other, rec in others:
        iou = mask_iou(record.instances, rec.instances, width, height)
        mine, theirs = record.attributes.get("choices") or [], rec.attributes.get("choices") or []
        if sorted(mine) != sorted(theirs) or iou < threshold:
            rows.append({"task_id": task.get("id"), "used_annotation": used.get("id"),
                         "other_annotation": other.get("id"), "used_choices": "|".join(mine),
                         "other_choices": "|".join(theirs), "iou": round(iou, 4)})
    return rows


def read_tasks(tasks: list[dict[str, Any]], ledger: dict[str, dict[str, Any]], project_id: int,
               params: Params, summary: PullSummary, disagreements: list[dict[str, Any]]) -> list[Pulled]:
    """Pick, convert and classify the newest usable annotation of each exported task."""
    by_task = {e.get("task_id"): sha for sha, e in ledger.items() if e.get("project_id") == project_id}
    classes, out = params.data.classes, []
    for task in sorted(tasks, key=lambda t: int(t["id"])):
        annotations = usable_annotations(task)
        if not annotations:
            summary.skipped += 1
            continue
        record = convert(task, annotations[0].get("result") or [], classes)
        sha = (task.get("data") or {}).get("cardamage_id") or by_task.get(task["id"])
        others = [(a, convert(task, a.get("result") or [], classes)) for a in annotations[1:]]
        pulled = Pulled(task, sha, verdict_of(record), record, annotations[0].get("id"), annotation=annotations[0],
                        others=others)
        rows = _disagreements(task, annotations[0], record, others, params.labelstudio.disagreement_iou)
        disagreements += [{"id": sha, **r} for r in rows]
        out.append(pulled)
    return out


def pull_project(client: LabelStudioClient, project_id: int, params: Params) -> PullSummary:
    """Export the project's annotations and update training data, exports, report and ledger.

    Raises:
        LabelStudioError: server errors (nothing is written before the export has been read).
    """
    from cardamage.labelling.label_config import parse_label_config

    start = time.monotonic()
    ls = params.labelstudio
    summary = PullSummary(project_id=project_id)
    tasks = client.export_tasks(project_id)
    predictions = _latest_predictions(client.list_predictions(project_id))
    data_key = parse_label_config(client.get_label_config(project_id)).data_key
    ledger = load_ledger(ls.ledger)
    summary.tasks = len(tasks)
    disagreements: list[dict[str, Any]] = []
    from cardamage.labelling.regions import merge_regions

    pulled, region_items = merge_regions(read_tasks(tasks, ledger, project_id, params, summary, disagreements),
                                         summary)
    summary.disagreements = len({d["task_id"] for d in disagreements})
    labelled = update_training_data(client, pulled, ledger, Path(ls.labelled_dir), data_key, summary)
    write_exports(labelled, params, project_id)
    write_report(labelled, predictions, params, Path(ls.report_csv))
    write_csv(Path(ls.report_csv).with_name("annotation_disagreements.csv"), DISAGREEMENT_COLUMNS, disagreements)
    if _update_ledger(ledger, [p for p in pulled if not p.regions] + region_items, project_id):
        save_ledger(ls.ledger, ledger)
    from cardamage.labelling.audit import audit_pull

    summary.audit = audit_pull(labelled, params)
    summary.seconds = time.monotonic() - start
    return summary


# --- training data ------------------------------------------------------------------------------------


def _via_entry(pulled: Pulled, name: str, size: int, project_id: int) -> tuple[str, dict[str, Any]]:
    from cardamage.data.formats.via import to_via

    record = ImageRecord(path=name, width=pulled.record.width, height=pulled.record.height,
                         instances=pulled.record.instances, file_size=size, reviewed=pulled.record.reviewed,
                         attributes={"cardamage_id": pulled.sha256, "labelstudio_project": project_id,
                                     "labelstudio_task": pulled.task.get("id")})
    return next(iter(to_via(Dataset(images=[record]), version=2, category_key="name").items()))




def update_training_data(client: LabelStudioClient, pulled: list[Pulled], ledger: dict[str, dict[str, Any]],
                         root: Path, data_key: str, summary: PullSummary) -> list[Pulled]:
    """Copy labelled photos into ``root/images`` and merge their VIA entries; return the labelled ones."""
    via_path = root / "via_region_data.json"
    via = load_via(via_path)
    key_of = {sha_of(e): k for k, e in via.items() if sha_of(e)}
    taken = {e["filename"]: sha_of(e) for e in via.values() if "filename" in e}
    labelled = []
    for item in pulled:
        if item.verdict in (UNUSABLE_CHOICE, EMPTY, CONFLICT) or item.sha256 is None:
            _drop(item, via, key_of, root, summary)
            continue
        old_key = key_of.get(item.sha256)
        name = via[old_key]["filename"] if old_key else _image_name(item, taken)
        data = image_bytes(client, item, ledger, data_key)
        write_if_changed(root / name, data)
        if not (item.record.width and item.record.height):
            item.record.width, item.record.height = image_size(root / name)
        key, entry = _via_entry(item, name, len(data), summary.project_id)
        _count(summary, item, old_key is None, old_key == key and via.get(old_key) == entry)
        via = replace_entry(via, old_key, key, entry)
        key_of[item.sha256], taken[name], item.image_name = key, item.sha256, name
        labelled.append(item)
    write_if_changed(via_path, (json.dumps(via, ensure_ascii=False) + "\n").encode("utf-8"))
    return labelled


def _count(summary: PullSummary, item: Pulled, new: bool, same: bool) -> None:
    if new:
        summary.added += 1
    elif same:
        summary.unchanged += 1
    else:
        summary.changed += 1
    if item.verdict == NO_DAMAGE:
        summary.no_damage += 1


def _drop(item: Pulled, via: dict[str, Any], key_of: dict[str | None, str], root: Path,
          summary: PullSummary) -> None:
    """Report a photo that is not used; remove it from the training data if an earlier pull added it."""
    who = (item.task.get("data") or {}).get("cardamage_path") or f"task {item.task.get('id')}"
    if item.verdict == UNUSABLE_CHOICE:
        summary.unusable.append(str(who))
    elif item.sha256 is None:
        summary.problems.append(f"{who}: task has no cardamage_id and is not in the ledger")
    else:
        reason = ("'no damage' chosen but polygons drawn" if item.verdict == CONFLICT
                  else "no polygon and no choice (choose 'no damage' explicitly)")
        summary.problems.append(f"{who}: {reason}")
    old_key = key_of.pop(item.sha256, None)
    if old_key is not None:
        (root / via.pop(old_key)["filename"]).unlink(missing_ok=True)
        summary.removed += 1




# --- exports, report, ledger --------------------------------------------------------------------------


def _dataset(labelled: list[Pulled], params: Params) -> Dataset:
    records = [ImageRecord(path=p.image_name or "", width=p.record.width, height=p.record.height,
                           instances=p.record.instances, attributes={"cardamage_id": p.sha256},
                           reviewed=p.record.reviewed)
               for p in labelled]
    return Dataset(images=records, categories=list(params.data.classes), root=Path(params.labelstudio.labelled_dir))


def write_exports(labelled: list[Pulled], params: Params, project_id: int) -> None:
    """COCO and VIA 2 files of this project's labels under ``labelstudio.exports_dir`` (only when changed)."""
    from cardamage.data.formats.coco import to_coco
    from cardamage.data.formats.via import to_via

    dataset = _dataset(labelled, params)
    out = Path(params.labelstudio.exports_dir)
    for suffix, content in (("coco", to_coco(dataset)), ("via", to_via(dataset, 2, "name"))):
        text = json.dumps(content, ensure_ascii=False) + "\n"
        write_if_changed(out / f"project_{project_id}_{suffix}.json", text.encode("utf-8"))


def _report_row(item: Pulled, prediction: dict[str, Any] | None, classes: Sequence[str]) -> dict[str, Any]:
    width, height = item.record.width or 1, item.record.height or 1
    labelled = damage_mask(item.record.instances, width, height)
    row = {"id": item.sha256, "image": item.image_name, "task_id": item.task.get("id"), "verdict": item.verdict,
           "labelled_instances": len(item.record.instances), "labelled_px": int(labelled.sum())}
    if prediction is None:
        return {**row, "model_version": "", "predicted_instances": "", "predicted_px": "", "iou": ""}
    predicted = convert(item.task, prediction.get("result") or [], classes).instances
    return {**row, "model_version": prediction.get("model_version") or "", "predicted_instances": len(predicted),
            "predicted_px": int(damage_mask(predicted, width, height).sum()),
            "iou": round(mask_iou(item.record.instances, predicted, width, height), 4)}


def write_report(labelled: list[Pulled], predictions: dict[int, dict[str, Any]], params: Params, path: Path) -> None:
    """``annotation_vs_model.csv``: per labelled photo, the mask IoU of the label vs the pre-annotation."""
    rows = [_report_row(p, None if p.regions else predictions.get(int(p.task["id"])), params.data.classes)
            for p in labelled]
    write_csv(path, REPORT_COLUMNS, sorted(rows, key=lambda r: str(r["image"])))



def _update_ledger(ledger: dict[str, dict[str, Any]], pulled: list[Pulled], project_id: int) -> bool:
    """Mark returned photos ``labelled`` / ``unusable``; a task whose label is not usable (empty, conflicting)
    stays or becomes pending (``pushed``), also when the ledger had lost it."""
    changed = False
    for item in pulled:
        if item.sha256 is None:
            continue
        status = {UNUSABLE_CHOICE: UNUSABLE, EMPTY: PUSHED, CONFLICT: PUSHED}.get(item.verdict, LABELLED)
        path = (item.task.get("data") or {}).get("cardamage_path")
        fields = {"task_id": item.task.get("id"), "project_id": project_id}
        if item.sha256 not in ledger:
            fields["path"] = path
        changed |= mark(ledger, item.sha256, status, **fields)
    return changed
