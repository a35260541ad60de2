"""The Label Studio ML backend (``cardamage labelstudio backend``) in-process, without Label Studio.

``/setup``, ``/predict``, ``/webhook``, basic auth and the retrainer with a random 64 px model. The
photos come from :class:`SampleFiles`, which stands in for Label Studio's file server only here
(the real server calling the real backend is in ``tests/labelling/test_ml_backend_server.py``).
"""

from __future__ import annotations

import base64
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_service_support import SAMPLE_TEST, cached_model, service_params

from cardamage.errors import ServiceError
from cardamage.labelling.label_config import generate_label_config

pytestmark = pytest.mark.slow
CONFIG = generate_label_config(["damage"])


class SampleFiles:
    """``download(url)`` of ``/data/upload/1/<name>``: the sample's test photos; others are a 404."""

    def download(self, url: str) -> bytes:
        path = SAMPLE_TEST / url.rsplit("/", 1)[-1]
        if not path.is_file():
            raise ServiceError(f"file download: Label Studio answered 404 for {url}")
        return path.read_bytes()


def marker_command(path: Path) -> str:
    """A retrain command that appends one line to ``path``."""
    return f"{sys.executable} -c \"open('{path}', 'a').write('run\\n')\""


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    from fastapi.testclient import TestClient

    from cardamage.service.ml_backend import create_backend_app

    tmp = tmp_path_factory.mktemp("backend")
    params = service_params(tmp, cached_model(["damage"]))
    bp = params.labelstudio.backend
    bp.retrain_after, bp.retrain_quiet_s = 20, 0.5
    bp.retrain_commands = [marker_command(tmp / "runs.txt")]
    bp.retrain_log, bp.state_file = str(tmp / "retrain.log"), str(tmp / "state.json")
    params.score.out = str(tmp / "no-scores.parquet")
    app = create_backend_app(params, client=SampleFiles())
    with TestClient(app) as client:
        yield client, params, tmp, app.state.backend


def task(task_id: int, name: str | None) -> dict:
    return {"id": task_id, "data": {"image": f"/data/upload/1/{name}"} if name else {"other": 1}}


def test_health_and_setup_give_the_model_version(backend):
    client, params, _, state = backend
    health = client.get("/health").json()
    assert health["status"] == "UP" and health["model_version"] == state.version()
    answer = client.post("/setup", json={"project": "1.17", "schema": CONFIG, "hostname": "http://x",
                                         "access_token": "t" * 40})
    assert answer.status_code == 200 and answer.json() == {"model_version": state.version()}
    assert client.get("/versions").json() == {"versions": [state.version()]}


def test_setup_refuses_a_label_config_for_other_classes(backend, caplog):
    client = backend[0]
    with caplog.at_level(logging.WARNING):
        answer = client.post("/setup", json={"project": "2.17", "schema": generate_label_config(["dent", "scratch"])})
    assert answer.status_code == 400 and "dent" in answer.json()["error"]
    assert "project 2.17 refused" in caplog.text


def test_predict_answers_every_task_in_order_in_percent(backend):
    client, params, _, state = backend
    params.predict.threshold = 0.05  # a random model: find some "damage"
    answer = client.post("/predict", json={"tasks": [task(1, "11.jpg"), task(2, "12.jpg")], "label_config": CONFIG})
    results = answer.json()["results"]
    assert answer.status_code == 200 and len(results) == 2
    for r in results:
        assert r["model_version"] == state.version() and isinstance(r["score"], float) and r["cluster"] is None
        for item in r["result"]:
            assert item["type"] == "polygonlabels" and item["value"]["polygonlabels"] == ["damage"]
            points = np.array(item["value"]["points"])
            assert points.min() >= 0 and points.max() <= 100
    assert sum(len(r["result"]) for r in results) > 0
    assert all(0.0 <= r["score"] <= np.log(2) + 1e-6 for r in results)  # entropy (select.hybrid_score), nats


def test_a_task_without_image_or_with_a_missing_image_gets_no_result_and_the_rest_do(backend, caplog):
    client = backend[0]
    tasks = [task(1, "11.jpg"), task(2, None), task(3, "gone.jpg"), task(4, "28.jpg")]
    with caplog.at_level(logging.WARNING):
        results = client.post("/predict", json={"tasks": tasks, "label_config": CONFIG}).json()["results"]
    assert ["result" in r for r in results] == [True, False, False, True]
    assert "no image in data.image" in results[1]["error"] and "404" in results[2]["error"]
    assert "task 2 gets no prediction" in caplog.text and "task 3 gets no prediction" in caplog.text


def test_the_time_limit_leaves_the_rest_for_the_next_request(backend):
    client, params = backend[:2]
    params.labelstudio.backend.time_limit_s = 0.0
    try:
        results = client.post("/predict", json={"tasks": [task(1, "11.jpg")], "label_config": CONFIG}).json()
    finally:
        params.labelstudio.backend.time_limit_s = 60.0
    assert results["results"] == [{"error": "time limit reached", "model_version": results["model_version"]}]


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"tasks": "x", "label_config": "<View/>"}',
                                  b'{"tasks": [], "label_config": "<View>"}'])
def test_malformed_predict_requests_are_400_and_the_backend_goes_on(backend, body):
    client = backend[0]
    assert client.post("/predict", content=body, headers={"content-type": "application/json"}).status_code == 400
    assert client.get("/health").status_code == 200


def annotation_event(labels: list[str], action: str = "ANNOTATION_CREATED") -> dict:
    result = [{"type": "polygonlabels", "value": {"points": [[1, 1], [5, 1], [5, 5]], "polygonlabels": labels}}]
    return {"action": action, "annotation": {"id": 7, "result": result}, "task": {"id": 3}}


def test_a_webhook_flood_starts_one_retrain_in_the_background(backend):
    client, _, tmp, state = backend
    start = time.monotonic()
    for _ in range(100):
        assert client.post("/webhook", json=annotation_event(["damage"])).json()["status"] == "counted"
    assert time.monotonic() - start < 10  # never waits for the retrain
    assert not (tmp / "runs.txt").exists()  # not inside the requests
    deadline = time.monotonic() + 30
    while state.retrainer.status()["runs"] < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # a second run would start now if the flood counted twice
    status = client.get("/health").json()["retrain"]
    assert status["runs"] == 1 and status["last_run"]["status"] == "passed" and status["last_run"]["labels"] == 100
    assert (tmp / "runs.txt").read_text() == "run\n"
    assert json.loads((tmp / "state.json").read_text())["pending"] == 0


def test_unknown_labels_and_other_actions_are_not_counted(backend, caplog):
    client, _, _, state = backend
    before = state.retrainer.status()["pending"]
    with caplog.at_level(logging.WARNING):
        answer = client.post("/webhook", json=annotation_event(["dent"])).json()
    assert answer == {"status": "unknown_labels", "labels": ["dent"]}
    assert "label(s) ['dent'] not in data.classes" in caplog.text
    assert client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {}}).json()["status"] == "ignored"
    assert client.post("/webhook", content=b"\xff", headers={"content-type": "application/json"}).status_code == 400
    assert state.retrainer.status()["pending"] == before


def test_basic_auth_is_required_when_configured(tmp_path, monkeypatch, caplog):
    from fastapi.testclient import TestClient

    from cardamage.service.ml_backend import create_backend_app
    from cardamage.service.models import ModelHolder

    params = service_params(tmp_path, cached_model(["damage"]))
    params.labelstudio.backend.basic_auth_user = "ls"
    params.labelstudio.backend.state_file = str(tmp_path / "state.json")
    monkeypatch.delenv("CARDAMAGE_BACKEND_PASSWORD", raising=False)
    with pytest.raises(Exception, match="CARDAMAGE_BACKEND_PASSWORD is empty"):
        create_backend_app(params, client=SampleFiles())
    monkeypatch.setenv("CARDAMAGE_BACKEND_PASSWORD", "s3cret-pass")
    holder = ModelHolder(str(cached_model(["damage"])), check_s=0)
    holder.load()
    app = create_backend_app(params, client=SampleFiles(), holder=holder)
    good = "Basic " + base64.b64encode(b"ls:s3cret-pass").decode()
    bad = "Basic " + base64.b64encode(b"ls:wrong").decode()
    with TestClient(app) as client, caplog.at_level(logging.DEBUG):
        assert client.get("/health").status_code == 401
        assert client.get("/health", headers={"authorization": bad}).status_code == 401
        assert client.get("/health", headers={"authorization": "Basic !!"}).status_code == 401
        assert client.get("/health", headers={"authorization": good}).status_code == 200
    assert "s3cret-pass" not in caplog.text


def test_retrain_count_survives_a_restart_and_a_failing_command_is_reported(tmp_path):
    from cardamage.service.retrain import Retrainer

    state = tmp_path / "state.json"
    first = Retrainer(["false"], 3, 0.0, str(tmp_path / "log"), str(state))
    first.record()
    first.record()
    second = Retrainer(["false", marker_command(tmp_path / "never")], 3, 0.0, str(tmp_path / "log"), str(state))
    assert second.status()["pending"] == 2 and not second.due()
    second.record()
    assert second.due() and second.run_once() != 0
    assert second.status()["last_run"]["status"] == "failed" and not (tmp_path / "never").exists()
    missing = Retrainer(["no-such-command-xyz"], 1, 0.0, str(tmp_path / "log"), str(state))
    assert missing.run_once() == 127 and "cannot run" in (tmp_path / "log").read_text()


def test_pool_clusters_match_select_and_place_new_photos_by_nearest_centroid():
    from cardamage.active.clusters import PoolClusters, cluster_labels

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 5
    emb = np.concatenate([c + rng.normal(size=(10, 16)) * 0.1 for c in centres]).astype(np.float32)
    ids = [f"{i:064x}" for i in range(30)]
    pool = PoolClusters(ids, emb, 3)
    assert pool.assign(emb, ids) == cluster_labels(emb, ids, 3).tolist()
    new = (centres + rng.normal(size=(3, 16)) * 0.1).astype(np.float32)
    assert pool.assign(new, [None] * 3) == [pool.by_id[ids[0]], pool.by_id[ids[10]], pool.by_id[ids[20]]]
    assert pool.assign(np.zeros((1, 8), np.float32), [None]) == [None]


def test_predictions_carry_the_pool_clusters_from_the_scores_table(backend, tmp_path):
    import hashlib

    import pandas as pd

    from cardamage.data.images import load_image
    from cardamage.model.inference import predict_with_embeddings
    from cardamage.model.inputs import prepare_image

    client, params, _, state = backend
    loaded = state.holder.current().main
    names = ["11.jpg", "12.jpg", "28.jpg", "45.jpg", "60.jpg"]
    x = np.stack([prepare_image(load_image(SAMPLE_TEST / n, max_side=1024), 64)[0] for n in names])
    _, emb = predict_with_embeddings(loaded.model, x)
    ids = [hashlib.sha256((SAMPLE_TEST / n).read_bytes()).hexdigest() for n in names]
    pool = pd.DataFrame({"id": ids[:-1], "path": names[:-1], "embedding": [e.tolist() for e in emb[:-1]],
                         "model_version": "v", "reduction": "topk"})
    pool.to_parquet(tmp_path / "scores.parquet")
    old_out, old_k = params.score.out, params.select.clusters
    params.score.out, params.select.clusters = str(tmp_path / "scores.parquet"), 2
    try:
        results = client.post("/predict", json={"tasks": [task(i, n) for i, n in enumerate(names)],
                                                "label_config": CONFIG}).json()["results"]
    finally:
        params.score.out, params.select.clusters = old_out, old_k
    from cardamage.active.clusters import cluster_labels

    expected = cluster_labels(emb[:-1], ids[:-1], 2).tolist()
    assert [r["cluster"] for r in results[:-1]] == expected  # the pool's photos: their select clusters
    assert results[-1]["cluster"] in (0, 1)  # a new photo: the nearest cluster
