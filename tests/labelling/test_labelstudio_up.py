"""``cardamage labelstudio up`` / ``down`` for real: a second Label Studio server and the ML backend
as detached processes, the stored connection (mode 0600) used by the other commands, reuse, stop."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from labelstudio_server import find_executable, free_port

from cardamage.cli import main

pytestmark = pytest.mark.slow
SAMPLE_TEST = Path(__file__).resolve().parents[2] / "data" / "sample" / "test"


def test_up_stores_the_connection_connects_the_backend_and_down_stops_both(tmp_path, monkeypatch,
                                                                          tiny_model_file):
    from cardamage.config import load_params
    from cardamage.labelling.push import connect_params
    from cardamage.labelling.server import pid_alive

    exe = find_executable()
    if exe is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true: no label-studio executable")
        pytest.skip("no label-studio executable (.venv-ls or CARDAMAGE_LABEL_STUDIO)")
    monkeypatch.setenv("CARDAMAGE_LABEL_STUDIO", exe)
    for name in ("LABEL_STUDIO_API_KEY", "LABEL_STUDIO_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    sets = [f"labelstudio.server_port={free_port()}", f"labelstudio.backend.port={free_port()}",
            f"labelstudio.backend.model_path={tiny_model_file}", "model.input_size=64", "predict.threshold=0.05",
            f"score.out={tmp_path / 'none.parquet'}"]
    args = [a for s in sets for a in ("--set", s)]
    params = load_params(None, sets)
    conn_file = tmp_path / ".cardamage" / "labelstudio.json"
    try:
        up = CliRunner().invoke(main, ["labelstudio", "up", "--no-install", *args])
        assert up.exit_code == 0, up.output
        stored = json.loads(conn_file.read_text())
        assert stat.S_IMODE(conn_file.stat().st_mode) == 0o600
        assert "Label Studio started at" in up.output and "ML backend at" in up.output
        assert stored["password"] not in up.output and stored["api_key"] not in up.output

        client = connect_params(params)  # no key in the environment: the stored connection
        assert client.whoami() == stored["username"]
        project = client.find_project(params.labelstudio.project_title)
        (url,) = client.upload_files(project, [SAMPLE_TEST / "11.jpg"])
        (task_id,) = client.import_tasks(project, [{"data": {"image": url}}])
        client.retrieve_predictions(project)
        assert [p["task"] for p in client.list_predictions(project)] == [task_id]

        again = CliRunner().invoke(main, ["labelstudio", "up", "--no-install", *args])
        assert again.exit_code == 0 and "Label Studio reused" in again.output, again.output
        assert json.loads(conn_file.read_text())["server_pid"] == stored["server_pid"]
    finally:
        down = CliRunner().invoke(main, ["labelstudio", "down", *args])
    assert down.exit_code == 0 and "stopped ML backend and Label Studio" in down.output, down.output
    assert not pid_alive(stored["server_pid"]) and not pid_alive(stored["backend_pid"])
    kept = json.loads(conn_file.read_text())
    assert kept["server_pid"] == 0 and kept["api_key"] == stored["api_key"]
