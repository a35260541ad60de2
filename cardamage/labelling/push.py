"""Push selected photos to Label Studio as tasks, with the model's polygons as pre-annotations.

One task per photo: task data holds the image URL, ``cardamage_id`` (the photo's sha256) and
``cardamage_path``; the model's instances of the photo go into ONE prediction (polygons in
**percent** of the image size, label names from the project's labelling configuration,
``model_version``, and the acquisition score as the prediction ``score`` so annotators can sort by
it). Images reach the server by upload, or as ``/data/local-files/?d=<path relative to the
document root>`` (``labelstudio.image_access``).

Idempotence: the ledger (:mod:`cardamage.labelling.ledger`) is saved after every batch; photos already in
it are not pushed again, and photos the ledger lost are found on the server by ``cardamage_id``
before anything is imported. A push that failed half-way is resumed by running it again.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cardamage.config import LabelStudioParams, Params
from cardamage.data.annotations import Dataset, ImageRecord, Instance
from cardamage.data.images import image_size
from cardamage.errors import BadParameterError
from cardamage.labelling.client import LabelStudioClient, LabelStudioTimeout
from cardamage.labelling.label_config import LabelConfig, parse_label_config
from cardamage.labelling.ledger import LABELLED, UNUSABLE, load_ledger, now_iso, record_push, save_ledger
from cardamage.labelling.photos import Photo, photos_from_paths, read_selection  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

#: sha256 -> the model's instances for that photo (polygons in pixels, ``score`` = confidence).
Predictions = Mapping[str, Sequence[Instance]]


@dataclass
class PushSummary:
    """What a push did; :meth:`text` is the one-paragraph summary shown to the user."""

    project_id: int
    pushed: int = 0
    already_pushed: int = 0
    found_on_server: int = 0
    with_predictions: int = 0
    batches: int = 0
    seconds: float = 0.0
    model_version: str | None = None
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        """Human-readable summary."""
        lines = [f"pushed {self.pushed} photo(s) to Label Studio project {self.project_id} in {self.batches} "
                 f"batch(es), {self.seconds:.1f} s; {self.already_pushed} already pushed (ledger), "
                 f"{self.found_on_server} found on the server"]
        if self.model_version and self.pushed:
            lines.append(f"{self.with_predictions} with pre-annotations from model {self.model_version}")
        return "\n".join(lines + self.notes)

    __str__ = text


# --- building tasks ------------------------------------------------------------------------------


def prediction_result(instances: Sequence[Instance], width: int, height: int, config: LabelConfig,
                      dropped: dict[str, int]) -> list[dict[str, Any]]:
    """Label Studio ``polygonlabels`` results (percent) for pixel instances; unknown labels counted in ``dropped``."""
    from cardamage.data.formats.labelstudio_json import to_labelstudio

    usable = []
    for inst in instances:
        if inst.category in config.labels and inst.polygons:
            usable.append(Instance(category=inst.category, polygons=inst.polygons, score=inst.score))
        else:
            dropped[inst.category] = dropped.get(inst.category, 0) + 1
    record = ImageRecord(path="photo", width=width, height=height, instances=usable)
    task = to_labelstudio(Dataset(images=[record]), from_name=config.polygon_from_name, to_name=config.to_name,
                          predictions=True)[0]
    return task["predictions"][0]["result"]


def build_task(photo: Photo, url: str, config: LabelConfig, predictions: Predictions | None,
               model_version: str | None, dropped: dict[str, int]) -> dict[str, Any]:
    """One Label Studio task: data (image URL, ``cardamage_id``, ``cardamage_path``, ``cardamage_cluster``
    when the selection has clusters: sort or filter by it in the Data Manager, a region task's
    ``cardamage_region``), optional prediction."""
    task: dict[str, Any] = {"data": {config.data_key: url, "cardamage_id": photo.sha256,
                                     "cardamage_path": photo.name, **photo.extra}}
    if photo.cluster is not None:
        # in the task's data: Label Studio 1.23's bulk import drops a prediction's own ``cluster`` field
        task["data"]["cardamage_cluster"] = photo.cluster
    if predictions is not None and photo.sha256 in predictions:
        width, height = image_size(photo.path)
        result = prediction_result(predictions[photo.sha256], width, height, config, dropped)
        task["predictions"] = [{"model_version": model_version or "cardamage", "result": result,
                                "score": photo.score}]
    return task


# --- image access ----------------------------------------------------------------------------------


def local_files_root(ls: LabelStudioParams) -> Path:
    """The server's document root for local files: ``labelstudio.local_files_root`` or the env variable.

    Raises:
        ValueError: neither is set.
    """
    root = ls.local_files_root or os.environ.get("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT")
    if not root:
        raise BadParameterError("labelstudio.image_access is local-files but neither labelstudio.local_files_root nor "
                         "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT is set")
    return Path(root).resolve()


def local_file_url(path: Path, root: Path) -> tuple[str, Path]:
    """``(task URL, storage folder)`` for a photo under ``root``; the storage is the first sub-folder.

    Raises:
        ValueError: the photo is outside ``root`` or directly in it (Label Studio needs a sub-folder).
    """
    try:
        rel = path.resolve().relative_to(root)
    except ValueError:
        raise BadParameterError(f"{path} is not under the local-files root {root}; move it there or use "
                         "labelstudio.image_access=upload") from None
    if len(rel.parts) < 2:
        raise BadParameterError(f"{path} is directly in the local-files root {root}; Label Studio serves only "
                         "files in its sub-folders")
    return f"/data/local-files/?d={quote(rel.as_posix())}", root / rel.parts[0]


def image_urls(client: LabelStudioClient, project_id: int, photos: Sequence[Photo], ls: LabelStudioParams,
               storages: set[Path]) -> list[str]:
    """Task URLs of ``photos``: uploads them, or maps them under the local-files root (adding storages)."""
    if ls.image_access == "upload":
        return client.upload_files(project_id, [p.path for p in photos])
    root = local_files_root(ls)
    urls = []
    for photo in photos:
        url, storage = local_file_url(photo.path, root)
        if storage not in storages:
            client.ensure_local_storage(project_id, str(storage))
            storages.add(storage)
        urls.append(url)
    return urls


# --- the push ----------------------------------------------------------------------------------------


def _to_push(photos: Sequence[Photo], ledger: dict[str, dict[str, Any]], project_id: int,
             summary: PushSummary) -> list[Photo]:
    """Photos not yet in this project and never labelled (first occurrence of each sha256)."""
    todo, seen = [], set()
    for photo in photos:
        entry = ledger.get(photo.sha256)
        if photo.sha256 in seen:
            continue
        seen.add(photo.sha256)
        if entry and (entry.get("status") in (LABELLED, UNUSABLE) or entry.get("project_id") == project_id):
            summary.already_pushed += 1
            continue
        if entry:
            log.warning("%s was pushed to project %s; pushing it to project %d as well", photo.name,
                        entry.get("project_id"), project_id)
        todo.append(photo)
    return todo


def server_ids(client: LabelStudioClient, project_id: int) -> dict[str, int]:
    """``cardamage_id -> task id`` of the project's tasks (the lowest id where a photo has several)."""
    found: dict[str, int] = {}
    for task_id, data in client.list_task_data(project_id):
        sha = data.get("cardamage_id")
        if isinstance(sha, str):
            found.setdefault(sha, task_id)
    return found


def _recover(client: LabelStudioClient, project_id: int, todo: list[Photo], ledger: dict[str, dict[str, Any]],
             summary: PushSummary) -> list[Photo]:
    """Record photos that already have a task on the server (lost ledger); return the others."""
    on_server = server_ids(client, project_id)
    rest = []
    for photo in todo:
        if photo.sha256 in on_server:
            record_push(ledger, photo.sha256, photo.name, on_server[photo.sha256], project_id)
            summary.found_on_server += 1
        else:
            rest.append(photo)
    return rest


def _import(client: LabelStudioClient, project_id: int, tasks: list[dict[str, Any]]) -> list[int]:
    """Import a batch; after a timeout, import only the tasks the server does not have yet."""
    try:
        return client.import_tasks(project_id, tasks)
    except LabelStudioTimeout as exc:
        log.warning("%s; checking which tasks of the batch exist before importing the rest", exc)
    existing = server_ids(client, project_id)
    missing = [t for t in tasks if t["data"]["cardamage_id"] not in existing]
    new_ids = iter(client.import_tasks(project_id, missing))
    return [existing[t["data"]["cardamage_id"]] if t["data"]["cardamage_id"] in existing else next(new_ids)
            for t in tasks]


def push_photos(client: LabelStudioClient, project_id: int, photos: Sequence[Photo], ls: LabelStudioParams,
                predictions: Predictions | None = None, model_version: str | None = None) -> PushSummary:
    """Create one task per photo not pushed yet, in batches of ``ls.batch_size``; update the ledger.

    Args:
        client: connection (see :func:`cardamage.labelling.client.connect`).
        project_id: the Label Studio project (see :meth:`LabelStudioClient.ensure_project`).
        photos: what to push, e.g. from :func:`read_selection`.
        ls: the ``labelstudio`` params (image access, batch size, ledger path).
        predictions: sha256 -> the model's instances (pixels); ``None`` pushes no pre-annotations.
            A photo missing from the mapping gets no prediction.
        model_version: the prediction's ``model_version``.

    Raises:
        LabelStudioError: server errors (the ledger keeps every batch done before).
    """
    start = time.monotonic()
    summary = PushSummary(project_id=project_id, model_version=model_version if predictions is not None else None)
    ledger = load_ledger(ls.ledger)
    todo = _to_push(photos, ledger, project_id, summary)
    if todo:
        todo = _recover(client, project_id, todo, ledger, summary)
        save_ledger(ls.ledger, ledger)
    config = parse_label_config(client.get_label_config(project_id)) if todo else None
    storages: set[Path] = set()
    dropped: dict[str, int] = {}
    size = max(1, int(ls.batch_size))
    for at in range(0, len(todo), size):
        batch = todo[at:at + size]
        urls = image_urls(client, project_id, batch, ls, storages)
        tasks = [build_task(p, u, config, predictions, model_version, dropped) for p, u in zip(batch, urls)]
        ids = _import(client, project_id, tasks)
        pushed_at = now_iso()
        for photo, task_id in zip(batch, ids):
            record_push(ledger, photo.sha256, photo.name, task_id, project_id, pushed_at)
        save_ledger(ls.ledger, ledger)
        summary.pushed += len(batch)
        summary.with_predictions += sum(1 for t in tasks if "predictions" in t)
        summary.batches += 1
        log.info("batch %d: %d task(s) imported (%d/%d)", summary.batches, len(batch), at + len(batch), len(todo))
    if dropped:
        summary.notes.append(f"predicted instances left out (label not in the project's config): {dropped}")
    summary.seconds = time.monotonic() - start
    return summary


# --- entry points ------------------------------------------------------------------------------------


def model_predictions(photos: Sequence[Photo], params: Params) -> tuple[dict[str, list[Instance]], str] | None:
    """The model's instances (pixels, ``score`` = confidence) per sha256 and its version; ``None``
    when ``predict.model_path`` does not exist. Unreadable photos get no prediction."""
    model_path = Path(params.predict.model_path)
    if not model_path.is_file():
        return None
    from cardamage.data.images import ImageLoadError, load_image
    from cardamage.model.io import load_model
    from cardamage.model.predict import LoadedModel, assess, full_res_probs

    loaded = LoadedModel(*load_model(model_path), str(model_path))
    out: dict[str, list[Instance]] = {}
    for photo in photos:
        try:
            image = load_image(photo.path)
        except ImageLoadError as exc:
            log.warning("no pre-annotation: %s", exc)
            continue
        result, _ = assess(image, full_res_probs(loaded, [image])[0], loaded, params)
        out[photo.sha256] = [Instance(category=d["class"], score=d["confidence"],
                                      polygons=[[(float(x), float(y)) for x, y in poly] for poly in d["polygons"]])
                             for d in result["instances"]]
    return out, loaded.info.model_version or model_path.name


def open_project(client: LabelStudioClient, params: Params) -> int:
    """Id of the project titled ``labelstudio.project_title``; created from ``data.classes`` when missing."""
    from cardamage.labelling.label_config import generate_label_config

    title = params.labelstudio.project_title
    project_id = client.find_project(title)
    if project_id is None:
        project_id = client.create_project(title, generate_label_config(params.data.classes))
        log.info("created Label Studio project %d %r", project_id, title)
    return project_id


def connect_params(params: Params) -> LabelStudioClient:
    """A client from ``labelstudio.url`` (or ``$LABEL_STUDIO_URL``) and ``$LABEL_STUDIO_API_KEY``; without
    that key, from the connection ``cardamage labelstudio up`` stored (``labelstudio.connection_file``)."""
    from cardamage.labelling.client import connect
    from cardamage.labelling.connection import stored_credentials

    ls = params.labelstudio
    stored = stored_credentials(ls.connection_file)
    url, key = (ls.url or stored[0], stored[1]) if stored else (ls.url, None)
    return connect(url, key, timeout_s=ls.timeout_s, max_retries=ls.max_retries, deadline_s=ls.deadline_s)


def push_selection(selection: str | os.PathLike, params: Params, client: LabelStudioClient | None = None,
                   predictions: Predictions | None = None, model_version: str | None = None) -> PushSummary:
    """Push the photos of a selection CSV (``cardamage push`` and ``cardamage select --push``).

    Pre-annotations come from ``predictions`` when given (sha256 -> instances in pixels), else from
    the model at ``predict.model_path``; without a model, tasks are pushed without them (noted in
    the summary). Rows with a ``region`` become region tasks (:mod:`cardamage.labelling.regions`).
    """
    from cardamage.labelling.regions import region_photos, region_predictions, source_photos

    photos = region_photos(read_selection(selection), params)
    client = client or connect_params(params)
    project_id = open_project(client, params)
    note = None
    if predictions is None:
        found = model_predictions(source_photos(_unpushed(photos, params)), params)
        if found is None:
            note = (f"no model at {params.predict.model_path}: tasks pushed without pre-annotations "
                    "(train a model, or pass predictions)")
        else:
            predictions, model_version = found
    if predictions is not None:
        predictions = region_predictions(predictions, photos)
    summary = push_photos(client, project_id, photos, params.labelstudio, predictions, model_version)
    if note and summary.pushed:
        summary.notes.append(note)
    return summary


def _unpushed(photos: Sequence[Photo], params: Params) -> list[Photo]:
    """Photos without a ledger entry (the model only runs on those)."""
    ledger = load_ledger(params.labelstudio.ledger)
    return [p for p in photos if p.sha256 not in ledger]
