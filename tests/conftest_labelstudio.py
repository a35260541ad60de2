"""Pytest plugin: one real Label Studio server per test session (``ls_server``) and helpers.

Registered in ``tests/conftest.py`` with ``pytest_plugins = ["conftest_labelstudio"]``. Without a
``label-studio`` executable the server tests are skipped, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from labelstudio_server import LabelStudioServer, find_executable, start_server

SAMPLE_TEST = Path(__file__).resolve().parents[1] / "data" / "sample" / "test"
_titles = itertools.count(1)


@pytest.fixture(scope="session")
def ls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """A running Label Studio server (started once per session, stopped at the end)."""
    exe = find_executable()
    if exe is None:
        reason = ("Label Studio server tests need the label-studio executable: set CARDAMAGE_LABEL_STUDIO "
                  "or create .venv-ls (python -m venv .venv-ls && .venv-ls/bin/pip install label-studio)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {reason}")
        pytest.skip(reason)
    server = start_server(tmp_path_factory.mktemp("ls-docroot"), exe,
                          data_dir=tmp_path_factory.mktemp("ls-data"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ls_client(ls_server: LabelStudioServer):
    """A client logged in with the server admin's legacy token (fast retries for tests)."""
    from cardamage.labelling.client import connect

    return connect(ls_server.url, ls_server.api_key, timeout_s=30, max_retries=2, backoff_s=0.05)


@pytest.fixture
def ls_project(ls_client) -> int:
    """A new, empty project (default classes) with a unique title."""
    from cardamage.labelling.label_config import generate_label_config

    return ls_client.create_project(f"test project {next(_titles)}", generate_label_config(["damage"]))


@pytest.fixture
def ls_photos(ls_server: LabelStudioServer, request: pytest.FixtureRequest) -> list[Path]:
    """Copies of three sample test photos in a fresh sub-folder of the server's local-files root."""
    name = re.sub(r"[^A-Za-z0-9_]+", "_", request.node.name)[:40]
    folder = ls_server.document_root / f"photos_{name}_{next(_titles)}" / "pool"
    folder.mkdir(parents=True)
    return [Path(shutil.copy2(SAMPLE_TEST / name, folder / name)) for name in ("11.jpg", "12.jpg", "28.jpg")]
