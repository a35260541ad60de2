"""Model tier: ``cardamage predict`` (JSON + colour splash per photo, parts, unreadable photos)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cardamage.cli import main
from cardamage.config import ModelParams
from cardamage.data.masks import mask_to_instances
from cardamage.model.heads import build_model
from cardamage.model.inputs import fit_geometry, unfit
from cardamage.model.io import ModelInfo, save_model
from cardamage.model.predict import damage_labels, find_instances, part_damage
from cardamage.model.regions import find_regions, remove_small_regions

PARTS = ["headlamp", "door", "front_bumper", "hood", "rear_bumper"]


def _tiny_model(path: Path, classes: list[str]) -> Path:
    params = ModelParams(backbone="mobilenetv3_small", width=0.5, input_size=64, head_filters=16, projection_filters=8)
    save_model(build_model(params, len(classes) + 1), path, ModelInfo(classes=classes, input_size=64))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("models")
    return {"damage": _tiny_model(tmp / "damage.keras", ["damage"]), "parts": _tiny_model(tmp / "parts.keras", PARTS)}


@pytest.fixture
def params_file(tmp_path) -> str:
    """Defaults only: the tests do not depend on the working directory's params.yaml."""
    (tmp_path / "params.yaml").write_text("{}\n")
    return str(tmp_path / "params.yaml")


@pytest.fixture
def photos(sample, tmp_path) -> Path:
    folder = tmp_path / "claim"
    folder.mkdir()
    shutil.copy(sample / "test" / "11.jpg", folder / "11.jpg")
    Image.open(sample / "test" / "12.jpg").resize((160, 96)).save(folder / "wide.png")
    (folder / "truncated.jpg").write_bytes((sample / "test" / "28.jpg").read_bytes()[:2000])
    return folder


def test_predict_writes_json_and_splash_per_photo(models, photos, params_file, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["predict", str(photos), "--params", params_file,
                                       "--model", str(models["damage"]), "--out", str(out),
                                       "--part-model", str(models["parts"]),
                                       "--set", "predict.threshold=0.3"])
    assert result.exit_code == 0, result.output
    assert "truncated.jpg" in result.output and "wrote 2 assessment(s)" in result.output
    wide = json.loads((out / "wide.json").read_text())
    assert (wide["width"], wide["height"]) == (160, 96)
    assert {"instances", "instance_count", "damaged_share", "model", "parts", "splash"} <= set(wide)
    assert wide["model"]["classes"] == ["damage"] and wide["model"]["version"]
    assert wide["instance_count"] == len(wide["instances"])
    for inst in wide["instances"]:
        assert {"class", "confidence", "area_px", "area_share", "bbox", "polygons"} <= set(inst)
        pts = np.asarray([p for poly in inst["polygons"] for p in poly])
        assert pts[:, 0].max() <= 160 and pts[:, 1].max() <= 96
    for part in wide["parts"]:
        assert part["part"] in PARTS and 0 <= part["damaged_share"] <= 1
    splash = cv2.imread(str(out / wide["splash"]))
    assert splash.shape == (96, 160, 3)
    assert (out / "11.json").is_file() and (out / "11_splash.jpg").is_file()


def test_a_folder_of_unreadable_photos_fails(models, params_file, tmp_path, sample):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes((sample / "test" / "28.jpg").read_bytes()[:2000])
    result = CliRunner().invoke(main, ["predict", str(bad), "--params", params_file,
                                       "--model", str(models["damage"]), "--out", str(tmp_path / "out")])
    assert result.exit_code != 0 and "a.jpg" in result.output


def test_regions_are_reported_in_original_pixels():
    """A damaged square in the letterboxed 64 px input maps back to the 200 x 100 photo."""
    fit = fit_geometry(200, 100, 64, "letterbox")  # scale 0.32, 16 px bands above and below
    probs = np.zeros((64, 64, 2), np.float32)
    probs[..., 0] = 1.0
    probs[24:40, 16:32] = (0.1, 0.9)  # x 16..32, y 24..40 in input pixels
    full = unfit(probs, fit)
    labels = damage_labels(full, 0.5)
    instances = find_instances(labels, full, ["damage"], min_area_px=10, epsilon=1.0)
    assert len(instances) == 1
    x, y, w, h = instances[0]["bbox"]
    assert abs(x - 50) <= 2 and abs(y - 25) <= 2 and abs(w - 50) <= 3 and abs(h - 50) <= 3
    assert instances[0]["confidence"] > 0.8 and instances[0]["area_share"] == pytest.approx(0.125, abs=0.02)


def test_small_regions_and_part_shares():
    labels = np.zeros((20, 20), np.uint8)
    labels[0:2, 0:2] = 1
    labels[10:20, 10:20] = 1
    kept = np.zeros(labels.shape, bool)  # the one-pass mask of the regions find_instances keeps
    instances = find_instances(labels, np.ones((20, 20, 2), np.float32), ["damage"], min_area_px=5, epsilon=1.0,
                               kept=kept)
    assert len(instances) == 1 and not kept[0:2, 0:2].any() and kept[10:20, 10:20].all()
    assert np.array_equal(kept, remove_small_regions(labels, 2, min_area_px=5) > 0)
    part_probs = np.zeros((20, 20, 3), np.float32)
    part_probs[..., 0] = 1
    part_probs[:, 10:, 1] = 2  # left half background, right half part 1 ("door")
    shares = part_damage(part_probs, kept > 0, ["door", "hood"], min_area_px=1)
    assert shares == [{"part": "door", "visible_px": 200, "visible_share": 0.5, "damaged_px": 100,
                       "damaged_share": 0.5}]


def test_instances_traced_in_their_box_match_tracing_the_whole_photo():
    """Polygons traced inside each region's box (plus 1 px) are those traced on the whole mask, shifted back."""
    rng = np.random.default_rng(3)
    blobs = cv2.GaussianBlur(rng.random((90, 130)).astype(np.float32), (0, 0), 4)
    labels = (blobs > np.quantile(blobs, 0.7)).astype(np.uint8)
    labels[0:6, 0:9] = 1  # a region on the photo's corner
    probs = np.stack([1 - labels, labels], -1).astype(np.float32)
    found = find_instances(labels, probs, ["damage"], min_area_px=3, epsilon=1.0)
    regions = find_regions(labels == 1)
    whole = {}
    for k in np.flatnonzero(regions.areas >= 3) + 1:
        polys = [q for inst in mask_to_instances(regions.mask(k).astype(np.uint8), "damage", 1.0, 1.0)
                 for q in inst.polygons]
        whole[tuple(int(v) for v in regions.boxes[k - 1])] = [[[round(x, 1), round(y, 1)] for x, y in q] for q in polys]
    assert len(found) == len(whole) > 3
    for inst in found:
        assert inst["polygons"] == whole[tuple(inst["bbox"])]


def test_flip_tta_is_the_mean_of_the_photo_and_its_mirror(tmp_path):
    import numpy as np

    from cardamage.config import ModelParams
    from cardamage.errors import BadParameterError
    from cardamage.model.heads import build_model
    from cardamage.model.inference import predict_probs

    model = build_model(ModelParams(backbone="mobilenetv3_small", width=0.25, input_size=64, head_filters=16,
                                    projection_filters=8, backbone_preset=None), 2)
    x = np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 3)).astype(np.float32)
    plain, tta = predict_probs(model, x), predict_probs(model, x, tta="flip")
    mirror = predict_probs(model, np.ascontiguousarray(x[:, :, ::-1]))[:, :, ::-1]
    assert np.allclose(tta, (plain + mirror) / 2, atol=1e-5) and not np.allclose(tta, plain, atol=1e-4)
    assert np.allclose(tta.sum(-1), 1.0, atol=1e-4)
    sym = np.concatenate([x[:, :, :32], x[:, :, :32][:, :, ::-1]], axis=2)  # a mirror-symmetric photo
    assert np.allclose(predict_probs(model, sym, tta="flip"), predict_probs(model, sym, tta="flip")[:, :, ::-1],
                       atol=1e-5)
    with pytest.raises(BadParameterError, match="predict.tta"):
        predict_probs(model, x, tta="rotate")
