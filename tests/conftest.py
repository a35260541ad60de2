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


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory) -> Path:
    """One untrained 64 px MobileNetV3-small (width 0.25) DeepLabV3+ per session, saved with its ModelInfo.

    For tests that need a real saved model but not a trained one (scoring, selection, engines).
    """
    from cardamage.config import ModelParams
    from cardamage.model.heads import build_model
    from cardamage.model.io import ModelInfo, save_model

    path = tmp_path_factory.mktemp("tiny_model") / "tiny.keras"
    params = ModelParams(backbone="mobilenetv3_small", width=0.25, input_size=64, head_filters=16,
                         projection_filters=8, dropout=0.3, backbone_preset=None)
    save_model(build_model(params, 2), path, ModelInfo(classes=["damage"], input_size=64))
    return path


@pytest.fixture(scope="session")
def prepared_sample(tmp_path_factory) -> dict:
    """The sample prepared once per session with the default params (``split: keep``, no Label Studio labels,
    the fixed 10-photo test split): ``{"sample", "tmp", "params", "result"}``. Read it, do not change it."""
    from cardamage.config import Params
    from cardamage.data.prepare import prepare

    tmp = tmp_path_factory.mktemp("prep")
    params = Params()
    params.data.root = str(SAMPLE)
    params.labelstudio.labelled_dir = str(tmp / "labelled")
    params.prepare.out_dir = str(tmp / "prepared")
    return {"sample": SAMPLE, "tmp": tmp, "params": params, "result": prepare(params)}


@pytest.fixture(scope="session")
def unlabelled_pool(tmp_path_factory) -> Path:
    """A pool folder: three sample test photos, a wide crop of one (letterbox padding at any input size)
    and a truncated copy (``broken.jpg``). Read it, do not change it."""
    import shutil

    from PIL import Image

    folder = tmp_path_factory.mktemp("unlabelled_pool")
    names = sorted(p.name for p in (SAMPLE / "test").glob("*.jpg"))[:3]
    for name in names:
        shutil.copy(SAMPLE / "test" / name, folder / name)
    with Image.open(SAMPLE / "test" / names[0]) as im:
        im.crop((0, 0, im.width, im.height // 3)).save(folder / "wide.jpg")
    (folder / "broken.jpg").write_bytes((SAMPLE / "test" / names[0]).read_bytes()[:1500])
    return folder
