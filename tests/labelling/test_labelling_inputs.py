"""Broken files the labelling code reads (ledger, selection, VIA file, label config, export): one clear line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from cardamage.cli import main
from cardamage.config import AuditParams, LabelStudioParams, Params
from cardamage.errors import BadInputError, CardamageError
from cardamage.labelling.label_config import check_label_config_file, generate_label_config
from cardamage.labelling.ledger import load_ledger
from cardamage.labelling.pull import pull_project
from cardamage.labelling.push import read_selection

SHA = "a" * 64
SAMPLE_PHOTO = Path(__file__).resolve().parents[2] / "data" / "sample" / "test" / "11.jpg"
ONE_OF = "status must be one of pushed, labelled, unusable"
GOOD = {"path": "p.jpg", "task_id": 1, "project_id": 1, "pushed_at": "2026-01-01T00:00:00Z", "status": "pushed"}


def write(path: Path, content: object) -> Path:
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


@pytest.mark.parametrize("content, expected", [
    ({SHA: {**GOOD, "status": ["pushed"]}}, f"entry {SHA}: {ONE_OF} (got a list)"),
    ({SHA: {**GOOD, "status": {"a": 1}}}, f"entry {SHA}: {ONE_OF} (got an object)"),
    ({SHA: {**GOOD, "status": "done"}}, f"entry {SHA}: {ONE_OF} (got 'done')"),
    ({SHA: ["not", "an", "object"]},
     f"entry {SHA}: must be an object with path, task_id, project_id, status (got a list)"),
    ({SHA: 7}, f"entry {SHA}: must be an object"),
    ({SHA: {**GOOD, "task_id": "seven"}}, f"entry {SHA}: task_id must be an integer (got a string)"),
    ({SHA: {**GOOD, "path": 3}}, f"entry {SHA}: path must be a string (got a number)"),
    ([GOOD], "the ledger must be an object mapping sha256 to entries (got a list)"),
    ("just text", "the ledger must be an object mapping sha256 to entries (got a string)"),
])
def test_wrong_shape_ledger_is_named(tmp_path, content, expected):
    path = write(tmp_path / "ledger.json", content)
    with pytest.raises(BadInputError) as info:
        load_ledger(path)
    assert str(info.value).startswith(f"{path}: ")
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_a_valid_ledger_still_loads(tmp_path):
    ledger = {SHA: GOOD, "b" * 64: {**GOOD, "status": "labelled", "labelled_at": "2026-01-02T00:00:00Z"},
              "c" * 64: {"status": "pushed"}}
    assert load_ledger(write(tmp_path / "ledger.json", ledger)) == ledger


@pytest.mark.parametrize("data", [b"\xff\xfe{\x00}\x00", '{"é": {"status": "pushed"}}'.encode("latin-1")])
def test_a_ledger_that_is_not_utf8_is_named(tmp_path, data):
    path = tmp_path / "ledger.json"
    path.write_bytes(data)
    with pytest.raises(BadInputError, match="not UTF-8") as info:
        load_ledger(path)
    assert str(info.value).startswith(f"{path}: ") and "byte" in str(info.value)


def test_a_selection_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "selection.csv"
    path.write_bytes("id,path,score\nx,café.jpg,0.5\n".encode("latin-1"))
    with pytest.raises(BadInputError, match="not UTF-8") as info:
        read_selection(path)
    assert str(info.value).startswith(f"{path}: ")


def test_a_selection_with_a_bad_score_names_the_row(tmp_path):
    photo = shutil.copy(SAMPLE_PHOTO, tmp_path / "11.jpg")
    path = tmp_path / "selection.csv"
    path.write_text(f"id,path,score\n,{photo},high\n", encoding="utf-8")
    with pytest.raises(BadInputError, match="row 2: score 'high' is not a number") as info:
        read_selection(path)
    assert str(info.value).startswith(f"{path}: ")


def test_a_label_config_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "label_config.xml"
    path.write_bytes(generate_label_config(["dent"]).replace("dent", "dént").encode("latin-1"))
    [problem] = check_label_config_file(path, ["dent"])
    assert problem.startswith(f"{path}: the labelling configuration is not UTF-8 text (byte ")


class FakeClient:
    """Just enough of :class:`LabelStudioClient` for a pull of one annotated task."""

    url = "http://ls.example"

    def export_tasks(self, project_id):
        return [{"id": 1, "data": {"image": "/data/upload/1/11.jpg", "cardamage_id": SHA,
                                   "cardamage_path": str(SAMPLE_PHOTO)},
                 "annotations": [{"id": 5, "result": [{"type": "choices", "from_name": "choice", "to_name": "image",
                                                       "value": {"choices": ["no damage"]}}]}]}]

    def list_predictions(self, project_id):
        return []

    def get_label_config(self, project_id):
        return generate_label_config(["damage"])

    def download(self, url):
        return SAMPLE_PHOTO.read_bytes()


def pull_params(tmp_path: Path) -> Params:
    """Every output under ``tmp_path``, and no model (a repo's models/production.keras would start an audit)."""
    params = Params()
    params.predict.model_path = str(tmp_path / "models" / "absent.keras")
    params.labelstudio = LabelStudioParams(
        ledger=str(tmp_path / "annotation" / "ledger.json"), exports_dir=str(tmp_path / "annotation" / "exports"),
        labelled_dir=str(tmp_path / "labelled"), report_csv=str(tmp_path / "reports" / "annotation_vs_model.csv"),
        audit=AuditParams(csv=str(tmp_path / "reports" / "label_audit.csv"),
                          summary=str(tmp_path / "reports" / "label_audit.json")))
    return params


@pytest.mark.parametrize("data, expected", [
    (b"[1, 2]", "expected a VIA 2 JSON export"),
    (b"{not json", "not valid JSON"),
    ('{"é": 1}'.encode("latin-1"), "not UTF-8"),
])
def test_pull_names_a_broken_via_file(tmp_path, data, expected):
    params = pull_params(tmp_path)
    via = Path(params.labelstudio.labelled_dir) / "via_region_data.json"
    via.parent.mkdir(parents=True)
    via.write_bytes(data)
    with pytest.raises(BadInputError, match=expected) as info:
        pull_project(FakeClient(), 1, params)
    assert str(info.value).startswith(f"{via}: ")


def test_pull_names_a_broken_ledger(tmp_path):
    params = pull_params(tmp_path)
    ledger = Path(params.labelstudio.ledger)
    ledger.parent.mkdir(parents=True)
    write(ledger, {SHA: {**GOOD, "status": ["x"]}})
    with pytest.raises(CardamageError, match=f"entry {SHA}: status"):
        pull_project(FakeClient(), 1, params)


def test_a_pull_with_the_fake_client_works(tmp_path):
    summary = pull_project(FakeClient(), 1, pull_params(tmp_path))
    assert (summary.added, summary.no_damage) == (1, 1)


def test_cli_shows_a_broken_ledger_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    photo = shutil.copy(SAMPLE_PHOTO, tmp_path / "11.jpg")
    (tmp_path / "selection.csv").write_text(f"id,path,score\n,{photo},0.5\n", encoding="utf-8")
    (tmp_path / "annotation").mkdir()
    (tmp_path / "annotation" / "ledger.json").write_bytes(b"\x80\x81 not utf-8")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "unreachable-server-key-" + "y" * 17)
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:9")
    from cardamage.labelling import push

    monkeypatch.setattr(push, "open_project", lambda client, params: 1)
    monkeypatch.setattr(push, "connect_params", lambda params: object())
    result = CliRunner().invoke(main, ["push", "selection.csv", "--set", "predict.model_path=absent.keras"])
    assert result.exit_code != 0, result.output
    assert "annotation/ledger.json: the ledger is not UTF-8" in result.stderr
    assert "bug" not in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("data, expected", [
    ('[{"id": 1, "data": {"name": "é"}}]'.encode("latin-1"), r"is not UTF-8 \(byte 29"),
    (b"[{", "is not valid JSON"),
    (b'{"detail": "x"}', "is not a list of tasks"),
])
def test_an_export_that_is_not_utf8_json_is_named(data, expected):
    from ls_fakes import Stub

    from cardamage.labelling.client import LabelStudioError, connect

    with Stub([(200, {}, 0)]) as stub:
        client = connect(stub.url, "0123456789abcdef0123456789abcdef01234567")
        with pytest.raises(LabelStudioError, match=expected) as info:
            client._export_json(data, 3)
    assert str(info.value).startswith(f"the JSON export of project 3 from {stub.url} ")


def test_an_export_with_a_bom_is_read():
    from ls_fakes import Stub

    from cardamage.labelling.client import connect

    with Stub([(200, {}, 0)]) as stub:
        client = connect(stub.url, "0123456789abcdef0123456789abcdef01234567")
        assert client._export_json(b'\xef\xbb\xbf[{"id": 1}]', 3) == [{"id": 1}]
