"""The label audit (cleanlab) on the sample's real polygons.

The "model" of the first tests is the sample's own labels made into confident probabilities
(a stand-in for a well-trained model, so that which labels are wrong is known); then a few labels
are spoiled the way annotators spoil them (a dent missed, a whole panel painted, a shifted
polygon) and must come out flagged. The pull test runs the real Label Studio server with a random
64 px Keras model (the plumbing: files, out-of-sample rule, review tasks, prepare.exclude_flagged).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cardamage.config import Params
from cardamage.data.annotations import Instance
from cardamage.labelling.audit import AuditItem, audit_grids, label_grid

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"
GRID = 64


def sample_items(n: int = 16) -> list[AuditItem]:
    from cardamage.data.dataset import load_dataset

    data = load_dataset(SAMPLE, splits=["train"])
    records = [r for r in data.images if r.instances][:n]
    return [AuditItem(f"{i:064x}", Path(data.root) / r.path, list(r.instances), r.width, r.height, task_id=i,
                      annotator=f"annotator {i % 2}", labelled_at="2026-12-03T10:00:00+00:00")
            for i, r in enumerate(records)]


def oracle_probs(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Confident probabilities ``[N, 2, g, g]`` that agree with ``labels`` (0.9 / 0.1, a little noise)."""
    rng = np.random.default_rng(seed)
    p_damage = np.where(labels != 0, 0.9, 0.1) + rng.normal(0, 0.03, labels.shape)
    p_damage = np.clip(p_damage, 0.01, 0.99).astype(np.float32)
    return np.stack([1 - p_damage, p_damage], axis=1)


def spoil(item: AuditItem, how: str) -> AuditItem:
    w, h = item.width, item.height
    if how == "missed":
        instances: list[Instance] = []
    elif how == "painted":
        instances = [Instance("damage", [[(0, 0), (w, 0), (w, h), (0, h)]])]
    else:  # shifted by a third of the photo
        instances = [Instance(i.category, [[((x + w / 3) % w, y) for x, y in p] for p in i.polygons])
                     for i in item.instances]
    return AuditItem(item.sha256, item.image, instances, w, h, item.task_id, item.annotation_id, item.annotator,
                     item.labelled_at)


@pytest.fixture(scope="module")
def audited():
    items = sample_items()
    truth = np.stack([label_grid(i.instances, ["damage"], i.width, i.height, GRID) for i in items])
    bad = {3: "missed", 7: "painted", 11: "shifted"}
    given = [spoil(item, bad[k]) if k in bad else item for k, item in enumerate(items)]
    labels = np.stack([label_grid(i.instances, ["damage"], i.width, i.height, GRID) for i in given])
    params = Params()
    params.labelstudio.audit.grid = GRID
    result = audit_grids(given, labels, oracle_probs(truth), ["damage"], "v1", "2026-12-01T00:00:00+00:00", params)
    return result, {given[k].sha256 for k in bad}, given


def test_spoiled_labels_are_the_flagged_ones_and_rank_lowest(audited):
    result, spoiled, _ = audited
    assert {r["id"] for r in result.flagged} == spoiled
    assert {r["id"] for r in result.rows[:3]} == spoiled  # lowest quality first
    clean = [r for r in result.rows if r["id"] not in spoiled]
    assert max(r["issue_share"] for r in clean) < 0.05 and min(r["model_iou"] for r in clean) > 0.8


def test_swapped_pairs_and_annotators_are_reported(audited):
    result, _, given = audited
    pairs = {(p["given"], p["predicted"]) for p in result.class_pairs}
    assert pairs == {("background", "damage"), ("damage", "background")}  # missed and painted
    assert [a["annotator"] for a in result.annotators] == ["annotator 0", "annotator 1"]
    assert sum(a["photos"] for a in result.annotators) == len(given)
    assert sum(a["flagged"] for a in result.annotators) == 3


def test_labels_older_than_the_model_are_scored_but_never_flagged(audited):
    _, spoiled, given = audited
    labels = np.stack([label_grid(i.instances, ["damage"], i.width, i.height, GRID) for i in given])
    params = Params()
    params.labelstudio.audit.grid = GRID
    later_model = audit_grids(given, labels, oracle_probs(labels * 0), ["damage"], "v2",
                              "2026-12-04T00:00:00+00:00", params)
    assert not later_model.flagged and not any(r["out_of_sample"] for r in later_model.rows)
    assert len(later_model.rows) == len(given)


def test_two_annotations_of_a_task_give_their_agreement():
    items = sample_items(4)
    params = Params()
    params.labelstudio.audit.grid = GRID
    labels = np.stack([label_grid(i.instances, ["damage"], i.width, i.height, GRID) for i in items])
    others = {items[0].task_id: [("annotator 9", items[0].instances)],
              items[1].task_id: [("annotator 9", [])]}
    result = audit_grids(items, labels, oracle_probs(labels), ["damage"], "v1", "2026-12-01T00:00:00+00:00",
                         params, others)
    by_pair = {tuple(p["annotators"]): p for p in result.annotator_pairs}
    assert by_pair[("annotator 0", "annotator 9")]["mean_iou"] == 1.0
    assert by_pair[("annotator 1", "annotator 9")]["mean_iou"] == 0.0


def read_audit(params: Params) -> list[dict[str, str]]:
    with open(params.labelstudio.audit.csv, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_a_pull_audits_the_labels_and_review_sends_flagged_ones_back(ls_client, ls_project, ls_photos, tmp_path,
                                                                     tiny_model_file):
    from test_push_pull import DRAWN, make_params, polygon, task_of

    from cardamage.data.images import image_size
    from cardamage.labelling.pull import pull_project
    from cardamage.labelling.push import photos_from_paths, push_photos
    from cardamage.labelling.review import push_reviews

    params = make_params(tmp_path)
    params.model.input_size = 64
    params.labelstudio.audit.flag_quality = 1.01  # a random model: flag every out-of-sample label
    params.labelstudio.audit.csv = str(tmp_path / "audit.csv")
    params.labelstudio.audit.summary = str(tmp_path / "audit.json")
    push_photos(ls_client, ls_project, photos_from_paths(ls_photos[:2]), params.labelstudio)
    for photo in ls_photos[:2]:
        size = image_size(photo)
        ls_client.create_annotation(task_of(params, photo), [polygon(p, size, rid) for rid, p in DRAWN.items()])
    params.predict.model_path = str(tmp_path / "no-model.keras")
    assert "no model at" in pull_project(ls_client, ls_project, params).text()
    params.predict.model_path = str(tiny_model_file)
    summary = pull_project(ls_client, ls_project, params).text()
    assert "label audit (model" in summary and "2 flagged" in summary, summary
    rows = read_audit(params)
    assert len(rows) == 2 and all(r["out_of_sample"] == "True" and r["flagged"] == "True" for r in rows)
    audit = json.loads(Path(params.labelstudio.audit.summary).read_text())
    assert audit["photos"] == 2 and len(audit["overlays"]) == 2
    assert all(Path(p).is_file() and Path(p).parent == tmp_path / "audit" for p in audit["overlays"].values())

    from cardamage.monitoring.report import build_report

    params.report.out_file, params.report.assets_dir = str(tmp_path / "report.html"), str(tmp_path / "assets")
    build_report(params)
    page = (tmp_path / "report.html").read_text()
    assert "Label audit (2 flagged)" in page and 'src="audit/' in page and "cardamage labelstudio review" in page

    first = push_reviews(ls_client, ls_project, params)
    again = push_reviews(ls_client, ls_project, params)
    assert (first.created, again.created, again.already) == (2, 0, 2)
    reviews = [(i, d) for i, d in ls_client.list_task_data(ls_project) if d.get("cardamage_review_of")]
    assert len(reviews) == 2 and {d["cardamage_id"] for _, d in reviews} == {r["id"] for r in rows}
    predictions = [p for p in ls_client.list_predictions(ls_project) if p["task"] in {i for i, _ in reviews}]
    assert len(predictions) == 2 and all(len(p["result"]) == len(DRAWN) for p in predictions)


def test_model_grids_batch_the_photos_and_skip_an_unreadable_one_by_name(tmp_path, tiny_model_file):
    from cardamage.labelling.audit import model_grids
    from cardamage.model.io import load_model
    from cardamage.model.predict import LoadedModel

    items = sample_items(5)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    items.insert(2, AuditItem("f" * 64, tmp_path / "broken.jpg", [], 10, 10))
    loaded = LoadedModel(*load_model(tiny_model_file), str(tiny_model_file))
    params = Params()
    params.labelstudio.audit.grid = 32
    kept, labels, probs, skipped = model_grids(items, params, loaded, batch_size=2)
    assert [k.sha256 for k in kept] == [i.sha256 for i in items if i.sha256 != "f" * 64]
    assert labels.shape == (5, 32, 32) and probs.shape == (5, 2, 32, 32)
    assert np.allclose(probs.sum(1), 1.0, atol=1e-4)
    assert len(skipped) == 1 and "broken.jpg" in skipped[0]
