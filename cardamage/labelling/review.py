"""``cardamage labelstudio review``: send the labels the audit flagged back to Label Studio for review.

For each photo flagged in ``labelstudio.audit.csv`` (:mod:`cardamage.labelling.audit`), a new task is
imported into the project: the same photo and task data, plus ``cardamage_review_of`` (the task
whose label is in doubt), ``cardamage_review_annotation``, ``cardamage_audit_quality`` and
``cardamage_audit_reason``, with the doubted label as the pre-annotation (``score`` = 1 - quality,
so "sort by prediction score" shows the worst first). The reviewer corrects it and submits; the next
``cardamage pull`` uses the newest label of the photo, which is the reviewed one, and audits it
again. Running ``review`` twice creates nothing new for the same label.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from cardamage.config import Params
from cardamage.labelling.audit import flagged_rows
from cardamage.labelling.client import LabelStudioClient

log = logging.getLogger(__name__)


@dataclass
class ReviewSummary:
    """What ``review`` did; :meth:`text` is the summary line."""

    project_id: int
    flagged: int = 0
    created: int = 0
    already: int = 0
    missing: list[str] = field(default_factory=list)

    def text(self) -> str:
        line = (f"{self.flagged} flagged label(s): {self.created} review task(s) created in project "
                f"{self.project_id}, {self.already} already under review")
        return line + "".join(f"\nnot found on the server: {m}" for m in self.missing)


def review_task(task: dict[str, Any], row: dict[str, str]) -> dict[str, Any] | None:
    """The review task of a flagged ``row`` of ``task`` (exported, with annotations); ``None`` without that label."""
    annotation = next((a for a in task.get("annotations") or [] if str(a.get("id")) == row.get("annotation_id")),
                      None)
    if annotation is None:
        return None
    quality = float(row.get("quality") or 0.0)
    data = {**(task.get("data") or {}), "cardamage_review_of": int(task["id"]),
            "cardamage_review_annotation": int(annotation["id"]), "cardamage_audit_quality": quality,
            "cardamage_audit_reason": f"label quality {quality:.2f}, issues on {float(row.get('issue_share') or 0):.0%}"
                                      " of the pixels (model " + str(row.get("model_version")) + ")"}
    prediction = {"model_version": f"label under review (annotation {annotation['id']})",
                  "result": annotation.get("result") or [], "score": round(1.0 - quality, 4)}
    return {"data": data, "predictions": [prediction]}


def push_reviews(client: LabelStudioClient, project_id: int, params: Params) -> ReviewSummary:
    """Import one review task per flagged label not under review yet (see the module doc)."""
    rows = flagged_rows(params.labelstudio.audit.csv, ("id", "task_id", "flagged"))
    summary = ReviewSummary(project_id, flagged=len(rows))
    if not rows:
        return summary
    existing = {(d.get("cardamage_review_of"), d.get("cardamage_review_annotation"))
                for _, d in client.list_task_data(project_id) if d.get("cardamage_review_of")}
    tasks = {str(t["id"]): t for t in client.export_tasks(project_id)}
    new = []
    for row in rows:
        task = tasks.get(str(row.get("task_id")))
        built = review_task(task, row) if task else None
        if built is None:
            summary.missing.append(f"task {row.get('task_id')} annotation {row.get('annotation_id')} "
                                   f"({row.get('image')})")
        elif (built["data"]["cardamage_review_of"], built["data"]["cardamage_review_annotation"]) in existing:
            summary.already += 1
        else:
            new.append(built)
    for at in range(0, len(new), max(1, params.labelstudio.batch_size)):
        summary.created += len(client.import_tasks(project_id, new[at:at + params.labelstudio.batch_size]))
    return summary
