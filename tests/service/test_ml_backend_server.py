"""The real Label Studio server calling the real ML backend (``cardamage labelstudio backend``).

Connect the backend to a project, "Retrieve predictions" for tasks imported without any, an
annotation event through Label Studio's webhook starting a background retrain, and the backend
holding a wrong token (every task logged, no crash). The model is a random 64 px network.
"""

from __future__ import annotations

import logging
import secrets
import sys
import time

import pytest
from test_service_support import SAMPLE_TEST, cached_model, running, service_params

pytestmark = pytest.mark.slow


def _wait(check, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def backend_params(tmp_path):
    params = service_params(tmp_path, cached_model(["damage"]))
    params.predict.threshold = 0.05  # a random model: find some "damage"
    bp = params.labelstudio.backend
    bp.retrain_after, bp.retrain_quiet_s = 1, 0.2
    bp.retrain_commands = [f"{sys.executable} -c \"open('{tmp_path / 'runs.txt'}', 'a').write('run\\n')\""]
    bp.retrain_log, bp.state_file = str(tmp_path / "retrain.log"), str(tmp_path / "state.json")
    params.score.out = str(tmp_path / "no-scores.parquet")
    return params


def test_label_studio_retrieves_predictions_and_sends_annotation_events(ls_client, ls_project, backend_params,
                                                                        tmp_path, caplog):
    from cardamage.service.ml_backend import create_backend_app

    app = create_backend_app(backend_params, client=ls_client)
    urls = ls_client.upload_files(ls_project, [SAMPLE_TEST / "11.jpg", SAMPLE_TEST / "12.jpg"])
    tasks = [{"data": {"image": u}} for u in urls] + [{"data": {"image": f"/data/upload/{ls_project}/gone.jpg"}}]
    ids = ls_client.import_tasks(ls_project, tasks)
    with running(app) as url, caplog.at_level(logging.WARNING):
        assert ls_client.connect_ml_backend(ls_project, url)[1] == "created"
        assert ls_client.connect_ml_backend(ls_project, url)[1] == "updated"
        ls_client.retrieve_predictions(ls_project)
        predictions = {p["task"]: p for p in ls_client.list_predictions(ls_project)}
        version = app.state.backend.version()
        assert set(predictions) == set(ids[:2])  # the photo the server cannot serve gets none
        assert f"task {ids[2]} gets no prediction" in caplog.text
        for p in predictions.values():
            assert p["model_version"] == version and isinstance(p["score"], float)
            assert all(r["type"] == "polygonlabels" and r["to_name"] == "image" for r in p["result"])
        assert sum(len(p["result"]) for p in predictions.values()) > 0
        ls_client.retrieve_predictions(ls_project)  # nothing new for this model version
        assert len(ls_client.list_predictions(ls_project)) == 2

        region = {"type": "polygonlabels", "from_name": "label", "to_name": "image", "original_width": 100,
                  "original_height": 100, "value": {"points": [[10, 10], [40, 10], [40, 40]],
                                                    "polygonlabels": ["damage"]}}
        ls_client.create_annotation(ids[0], [region])
        retrainer = app.state.backend.retrainer
        assert _wait(lambda: retrainer.status()["runs"] >= 1), retrainer.status()
        assert retrainer.status()["last_run"]["status"] == "passed"
        assert (tmp_path / "runs.txt").read_text() == "run\n"


def test_init_connects_the_backend_and_a_wrong_token_is_logged_per_task(ls_server, ls_client, backend_params,
                                                                        tmp_path, monkeypatch, caplog):
    import httpx
    from click.testing import CliRunner

    from cardamage.cli import main
    from cardamage.labelling.client import connect
    from cardamage.service.ml_backend import create_backend_app

    wrong_key = secrets.token_hex(20)
    wrong = connect(ls_server.url, wrong_key, timeout_s=10, max_retries=0)
    app = create_backend_app(backend_params, client=wrong)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LABEL_STUDIO_URL", ls_server.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", ls_server.api_key)
    with running(app) as url, caplog.at_level(logging.WARNING):
        init = CliRunner().invoke(main, ["labelstudio", "init", "--backend", url,
                                         "--set", "labelstudio.project_title=backend cli test"])
        assert init.exit_code == 0, init.output
        assert "created ML backend connection" in init.output and ls_server.api_key not in init.output
        logging.getLogger().addHandler(caplog.handler)  # the command's basicConfig(force=True) removed it
        project = ls_client.find_project("backend cli test")
        (upload,) = ls_client.upload_files(project, [SAMPLE_TEST / "28.jpg"])
        (task_id,) = ls_client.import_tasks(project, [{"data": {"image": upload}}])
        ls_client.retrieve_predictions(project)
        assert ls_client.list_predictions(project) == []
        assert f"task {task_id} gets no prediction" in caplog.text and "401" in caplog.text
        assert wrong_key not in caplog.text and wrong_key[:8] not in caplog.text
        assert httpx.get(f"{url}/health").json()["status"] == "UP"
