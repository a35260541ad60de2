"""Push -> annotate (through the SDK, like a user) -> pull, against a real Label Studio server."""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cardamage.cli import main
from cardamage.config import AuditParams, LabelStudioParams, Params
from cardamage.data.annotations import Instance
from cardamage.data.dataset import load_dataset
from cardamage.data.dedup import file_sha256
from cardamage.data.images import image_size
from cardamage.labelling.client import LabelStudioTimeout
from cardamage.labelling.ledger import LABELLED, PUSHED, UNUSABLE, load_ledger, pending
from cardamage.labelling.pull import pull_project
from cardamage.labelling.push import photos_from_paths, push_photos, push_selection

pytestmark = pytest.mark.slow
_titles = itertools.count(1)


# --- helpers -------------------------------------------------------------------------------------


def make_params(tmp_path: Path, image_access: str = "upload", root: Path | None = None, batch_size: int = 50) -> Params:
    """Params with every output under ``tmp_path`` and no model file."""
    params = Params()
    params.predict.model_path = str(tmp_path / "models" / "absent.keras")
    params.labelstudio = LabelStudioParams(
        project_title=f"push pull test {next(_titles)} {tmp_path.name}", image_access=image_access,
        local_files_root=str(root) if root else None, batch_size=batch_size, timeout_s=30, max_retries=2,
        ledger=str(tmp_path / "annotation" / "ledger.json"), exports_dir=str(tmp_path / "annotation" / "exports"),
        labelled_dir=str(tmp_path / "data" / "labelled"),
        report_csv=str(tmp_path / "reports" / "annotation_vs_model.csv"),
        audit=AuditParams(csv=str(tmp_path / "reports" / "label_audit.csv"),
                          summary=str(tmp_path / "reports" / "label_audit.json")))
    return params


def write_selection(path: Path, photos: list[Path]) -> Path:
    """A ``reports/selection.csv``-like file (scores 0.9, 0.8, ...)."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "path", "score", "rank", "strategy", "reason", "cluster"])
        for rank, photo in enumerate(photos, 1):
            writer.writerow([file_sha256(photo), str(photo), round(1.0 - rank / 10, 2), rank, "entropy", "test",
                             rank % 2])
    return path


def fake_predictions(photos: list[Path]) -> dict[str, list[Instance]]:
    """One triangle per photo at 20-50 % x, 20-60 % y (pixels), confidence 0.77: a stand-in model."""
    out = {}
    for photo in photos:
        w, h = image_size(photo)
        out[file_sha256(photo)] = [Instance("damage", [[(0.2 * w, 0.2 * h), (0.5 * w, 0.2 * h), (0.35 * w, 0.6 * h)]],
                                            score=0.77)]
    return out


def polygon(points_pct: list[list[float]], size: tuple[int, int], rid: str, label: str = "damage") -> dict:
    """A polygon result as the editor submits it (percent of the original size)."""
    return {"id": rid, "type": "polygonlabels", "from_name": "label", "to_name": "image", "original_width": size[0],
            "original_height": size[1], "image_rotation": 0,
            "value": {"points": points_pct, "closed": True, "polygonlabels": [label]}}


def choice(value: str) -> dict:
    return {"id": "verdict", "type": "choices", "from_name": "choice", "to_name": "image",
            "value": {"choices": [value]}}


def task_of(params: Params, photo: Path) -> int:
    return load_ledger(params.labelstudio.ledger)[file_sha256(photo)]["task_id"]


def snapshot(*folders: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and mtime of every file under ``folders``."""
    files = [f for d in folders for f in sorted(d.rglob("*")) if f.is_file()]
    return {str(f): (f.read_bytes(), f.stat().st_mtime_ns) for f in files}


def close(got, expected, atol: float = 1e-4) -> None:
    """Points equal to float rounding (pixels: VIA keeps 4 decimals)."""
    np.testing.assert_allclose(np.asarray(got, float), np.asarray(expected, float), rtol=0, atol=atol)


def server_shas(client, project_id: int) -> list[str]:
    return sorted(data["cardamage_id"] for _, data in client.list_task_data(project_id))


DRAWN = {  # percent coordinates an annotator draws on 11.jpg: two regions
    "a1": [[12.3456789, 20.5], [40.25, 22.125], [33.3333333, 48.75], [15.0, 44.4]],
    "a2": [[60.0, 60.0], [80.5, 61.25], [70.125, 90.0]],
}


# --- tests -----------------------------------------------------------------------------------------


def test_end_to_end_upload(ls_client, ls_photos, tmp_path):
    params = make_params(tmp_path)
    selection = write_selection(tmp_path / "selection.csv", ls_photos)
    summary = push_selection(selection, params, client=ls_client, predictions=fake_predictions(ls_photos),
                             model_version="test-model-1")
    assert (summary.pushed, summary.with_predictions, summary.batches) == (3, 3, 1)
    project_id = summary.project_id
    predictions = sorted(ls_client.list_predictions(project_id), key=lambda p: p["task"])
    assert [p["model_version"] for p in predictions] == ["test-model-1"] * 3
    assert [p["score"] for p in predictions] == [0.9, 0.8, 0.7]  # the acquisition scores
    clusters = {data["cardamage_id"]: data.get("cardamage_cluster") for _, data in ls_client.list_task_data(project_id)}
    assert [clusters[file_sha256(p)] for p in ls_photos] == [1, 0, 1], "the selection's clusters reach Label Studio"
    close(predictions[0]["result"][0]["value"]["points"], [[20, 20], [50, 20], [35, 60]], 1e-9)

    photo11, photo12, photo28 = ls_photos
    size = image_size(photo11)
    ls_client.create_annotation(task_of(params, photo11), [polygon(p, size, rid) for rid, p in DRAWN.items()],
                                lead_time_s=12.5)
    ls_client.create_annotation(task_of(params, photo12), [choice("no damage")])
    ls_client.create_annotation(task_of(params, photo28), [], was_cancelled=True)

    pulled = pull_project(ls_client, project_id, params)
    assert (pulled.added, pulled.changed, pulled.skipped, pulled.no_damage) == (2, 0, 1, 1)

    labelled = Path(params.labelstudio.labelled_dir)
    assert (labelled / "images" / "11.jpg").read_bytes() == photo11.read_bytes()
    dataset = load_dataset(labelled, classes=["damage"])
    records = dataset.by_path()
    assert sorted(records) == ["images/11.jpg", "images/12.jpg"]
    drawn_px = [[(x * size[0] / 100, y * size[1] / 100) for x, y in pts] for pts in DRAWN.values()]
    got = [poly for inst in records["images/11.jpg"].instances for poly in inst.polygons]
    assert len(got) == len(drawn_px)
    for mine, theirs in zip(got, drawn_px):
        close(mine, theirs)
    assert records["images/12.jpg"].labelled and records["images/12.jpg"].instances == []

    ledger = load_ledger(params.labelstudio.ledger)
    assert ledger[file_sha256(photo11)]["status"] == LABELLED
    assert pending(ledger) == {file_sha256(photo28)}

    coco = json.loads((Path(params.labelstudio.exports_dir) / f"project_{project_id}_coco.json").read_text())
    assert (len(coco["images"]), len(coco["annotations"])) == (2, 2)
    with open(params.labelstudio.report_csv) as fh:
        report = {row["image"]: row for row in csv.DictReader(fh)}
    assert report["images/11.jpg"]["model_version"] == "test-model-1"
    assert 0 < float(report["images/11.jpg"]["iou"]) < 1
    assert float(report["images/12.jpg"]["iou"]) == 0.0  # the model saw damage, the annotator none

    before = snapshot(labelled, Path(params.labelstudio.exports_dir), tmp_path / "reports", tmp_path / "annotation")
    again = pull_project(ls_client, project_id, params)
    assert (again.added, again.changed, again.unchanged) == (0, 0, 2)
    assert snapshot(labelled, Path(params.labelstudio.exports_dir), tmp_path / "reports",
                    tmp_path / "annotation") == before

    ls_client.create_annotation(task_of(params, photo11), [polygon(DRAWN["a2"], size, "b1")])  # a second opinion
    changed = pull_project(ls_client, project_id, params)
    assert (changed.added, changed.changed, changed.unchanged, changed.disagreements) == (0, 1, 1, 1)
    [instance] = load_dataset(labelled).by_path()["images/11.jpg"].instances
    close(instance.polygons[0], drawn_px[1])


def test_push_twice_and_lost_ledger_create_no_duplicates(ls_client, ls_server, ls_project, ls_photos, tmp_path):
    params = make_params(tmp_path, "local-files", ls_server.document_root)
    photos = photos_from_paths(ls_photos)
    first = push_photos(ls_client, ls_project, photos, params.labelstudio)
    second = push_photos(ls_client, ls_project, photos, params.labelstudio)
    assert (first.pushed, second.pushed, second.already_pushed) == (3, 0, 3)
    Path(params.labelstudio.ledger).unlink()
    third = push_photos(ls_client, ls_project, photos, params.labelstudio)
    assert (third.pushed, third.found_on_server) == (0, 3)
    assert server_shas(ls_client, ls_project) == sorted(p.sha256 for p in photos)
    assert sorted(load_ledger(params.labelstudio.ledger)) == sorted(p.sha256 for p in photos)
    url = dict(ls_client.list_task_data(ls_project)).popitem()[1]["image"]
    assert url.startswith("/data/local-files/?d=photos_") and ls_client.download(url)[:2] == b"\xff\xd8"


class FlakyImport:
    """Wraps a client; ``import_tasks`` call number ``fail_on`` fails (after importing ``partial`` tasks)."""

    def __init__(self, client, fail_on: int, error: Exception, partial: int = 0) -> None:
        self.client, self.fail_on, self.error, self.partial, self.calls = client, fail_on, error, partial, 0

    def __getattr__(self, name):
        return getattr(self.client, name)

    def import_tasks(self, project_id, tasks):
        self.calls += 1
        if self.calls == self.fail_on:
            self.client.import_tasks(project_id, tasks[:self.partial])
            raise self.error
        return self.client.import_tasks(project_id, tasks)


def test_interrupted_push_resumes_without_duplicates(ls_client, ls_project, ls_photos, tmp_path):
    params = make_params(tmp_path, batch_size=1)
    photos = photos_from_paths(ls_photos)
    flaky = FlakyImport(ls_client, fail_on=2, error=RuntimeError("injected failure after the first batch"))
    with pytest.raises(RuntimeError, match="injected"):
        push_photos(flaky, ls_project, photos, params.labelstudio, fake_predictions(ls_photos), "m")
    assert list(load_ledger(params.labelstudio.ledger)) == [photos[0].sha256]
    resumed = push_photos(ls_client, ls_project, photos, params.labelstudio, fake_predictions(ls_photos), "m")
    assert (resumed.pushed, resumed.already_pushed) == (2, 1)
    assert server_shas(ls_client, ls_project) == sorted(p.sha256 for p in photos)
    assert len(ls_client.list_predictions(ls_project)) == 3


def test_timed_out_import_is_reconciled(ls_client, ls_project, ls_photos, tmp_path):
    params = make_params(tmp_path, batch_size=3)
    photos = photos_from_paths(ls_photos)
    flaky = FlakyImport(ls_client, fail_on=1, error=LabelStudioTimeout("task import timed out"), partial=1)
    summary = push_photos(flaky, ls_project, photos, params.labelstudio)
    assert summary.pushed == 3
    assert server_shas(ls_client, ls_project) == sorted(p.sha256 for p in photos)
    ledger = load_ledger(params.labelstudio.ledger)
    on_server = {data["cardamage_id"]: tid for tid, data in ls_client.list_task_data(ls_project)}
    assert {sha: e["task_id"] for sha, e in ledger.items()} == on_server


def test_unusable_disagreement_and_downloaded_images(ls_client, ls_project, ls_photos, tmp_path):
    params = make_params(tmp_path)
    push_photos(ls_client, ls_project, photos_from_paths(ls_photos), params.labelstudio)
    photo11, photo12, photo28 = ls_photos
    size = image_size(photo11)
    task11 = task_of(params, photo11)
    ls_client.create_annotation(task11, [polygon(DRAWN["a1"], size, "x1")])
    ls_client.create_annotation(task11, [polygon(DRAWN["a2"], size, "y1")])  # newer, elsewhere
    ls_client.create_annotation(task_of(params, photo12), [choice("unusable photo")])
    ls_client.create_annotation(task_of(params, photo28), [choice("no damage"), polygon(DRAWN["a2"], size, "z")])
    originals = {p.name: p.read_bytes() for p in ls_photos}
    shutil.rmtree(photo11.parent)  # uploads only: pull must download the images
    Path(params.labelstudio.ledger).unlink()

    summary = pull_project(ls_client, ls_project, params)
    assert summary.added == 1 and summary.disagreements == 1
    assert summary.unusable == [str(photo12)]
    assert any("'no damage' chosen but polygons drawn" in p for p in summary.problems)
    labelled = Path(params.labelstudio.labelled_dir)
    assert (labelled / "images" / "11.jpg").read_bytes() == originals["11.jpg"]
    [record] = load_dataset(labelled).images
    expected = [(x * size[0] / 100, y * size[1] / 100) for x, y in DRAWN["a2"]]
    close(record.instances[0].polygons[0], expected)  # the newest annotation
    with open(Path(params.labelstudio.report_csv).with_name("annotation_disagreements.csv")) as fh:
        [row] = list(csv.DictReader(fh))
    assert float(row["iou"]) == 0.0 and int(row["task_id"]) == task11
    ledger = load_ledger(params.labelstudio.ledger)
    assert ledger[hashlib.sha256(originals["12.jpg"]).hexdigest()]["status"] == UNUSABLE
    assert ledger[hashlib.sha256(originals["28.jpg"]).hexdigest()]["status"] == PUSHED


def test_cli_push_without_model_then_pull(ls_server, ls_photos, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LABEL_STUDIO_URL", ls_server.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", ls_server.api_key)
    write_selection(tmp_path / "selection.csv", ls_photos)
    sets = ["--set", f"labelstudio.project_title=cli push pull {tmp_path.name}",
            "--set", "predict.model_path=models/absent.keras"]
    pushed = CliRunner().invoke(main, ["push", "selection.csv", *sets])
    assert pushed.exit_code == 0, pushed.output
    assert "pushed 3 photo(s)" in pushed.output and "no model at models/absent.keras" in pushed.output
    pulled = CliRunner().invoke(main, ["pull", *sets])
    assert pulled.exit_code == 0, pulled.output
    assert "0 added" in pulled.output
    assert ls_server.api_key not in pushed.output + pulled.output
    assert len(load_ledger("annotation/ledger.json")) == 3
