"""Shared fixtures: the embedded sample (always there) and ../shared/datasets (optional)."""

from __future__ import annotations

from pathlib import Path

import pytest

#: The real Label Studio server fixtures (ls_server, ls_client, ls_project, ls_photos).
pytest_plugins = ["conftest_labelstudio"]

REPO = Path(__file__).resolve().parents[1]
#: The embedded car-damage-via sample (VIA 2.x, MIT), one folder per split.
SAMPLE = REPO / "data" / "sample"
#: Real datasets beside the repository (coco-car-damage, bilgi-car-damage); tests skip without them.
SHARED = REPO.parent / "shared" / "datasets"


@pytest.fixture
def sample() -> Path:
    """Path of the embedded sample dataset (``data/sample``)."""
    return SAMPLE


@pytest.fixture
def shared_datasets() -> Path:
    """Path of ``../shared/datasets``; skips the test when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"../shared/datasets not found: {SHARED}")
    return SHARED
