"""Against a real Label Studio server: keys, projects, the ``labelstudio init`` command."""

from __future__ import annotations

import logging
import traceback

import pytest
from click.testing import CliRunner

from cardamage.cli import main
from cardamage.labelling.client import LabelStudioAuthError, connect
from cardamage.labelling.label_config import generate_label_config, parse_label_config

pytestmark = pytest.mark.slow


def test_legacy_token_works(ls_client, ls_server):
    assert ls_client.whoami() == ls_server.username


def test_wrong_key_gives_401_message_without_the_key(ls_server, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-api-key-" + "x" * 26  # not a prefix of any file name other tests log
    client = connect(ls_server.url, wrong, max_retries=2, backoff_s=0.01)
    with pytest.raises(LabelStudioAuthError) as info:
        client.find_project("anything")
    text = "".join(traceback.format_exception(info.value)) + caplog.text
    assert str(info.value).startswith("Label Studio rejected the API key (401)")
    assert wrong not in text


def test_personal_access_token_is_exchanged_by_the_sdk(ls_client, ls_server, caplog):
    caplog.set_level(logging.DEBUG)
    token = ls_client.create_access_token()
    assert token.count(".") == 2  # a JWT refresh token
    client = connect(ls_server.url, token)
    assert client.whoami() == ls_server.username
    assert token not in caplog.text
    broken = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    with pytest.raises(LabelStudioAuthError) as info:
        connect(ls_server.url, broken).whoami()
    assert broken not in str(info.value)


def test_ensure_project_creates_finds_and_updates(ls_client):
    title = "ensure project test"
    first, what = ls_client.ensure_project(title, generate_label_config(["damage"]))
    assert what == "created"
    assert ls_client.ensure_project(title, generate_label_config(["damage"])) == (first, "found")
    assert ls_client.ensure_project(title, generate_label_config(["damage", "rust"])) == (first, "updated")
    assert parse_label_config(ls_client.get_label_config(first)).labels == ["damage", "rust"]


def test_cli_init(ls_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LABEL_STUDIO_URL", ls_server.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", ls_server.api_key)
    args = ["labelstudio", "init", "--set", "labelstudio.project_title=cli init test",
            "--set", "data.classes=[dent, scratch]"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert first.output.startswith("created project")
    again = CliRunner().invoke(main, args)
    assert again.output.startswith("found project")
    assert ls_server.api_key not in first.output + again.output
