"""Model tier: ``cardamage train`` and ``cardamage evaluate`` end to end on a few sample photos."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from cardamage.cli import main
from cardamage.config import load_params
from cardamage.model.inputs import load_records
from cardamage.model.io import read_model_info

TRAIN = ["2.jpg", "10.jpg", "13.jpg", "14.jpg", "15.jpg"]
VAL = ["1.jpg", "31.jpg", "4.jpg"]


def _subset(src: Path, dst: Path, names: list[str], broken: str | None = None) -> None:
    """Copy photos and their VIA entries; ``broken`` is a truncated copy of the first photo, still annotated."""
    dst.mkdir(parents=True)
    via = json.loads((src / "via_region_data.json").read_text())
    by_name = {entry["filename"]: entry for entry in via.values()}
    out = {}
    for name in names:
        shutil.copy(src / name, dst / name)
        out[name] = by_name[name]
    if broken:
        (dst / broken).write_bytes((src / names[0]).read_bytes()[:2000])
        out[broken] = {**by_name[names[0]], "filename": broken}
    (dst / "via_region_data.json").write_text(json.dumps(out))


@pytest.fixture(scope="module")
def run(tmp_path_factory, request, tiny_model_file, unlabelled_pool) -> dict:
    """One tiny training run (1 epoch, 64 px) shared by the tests of this module, with pseudo-labels of an
    (untrained) teacher on the unlabelled pool."""
    sample = Path(request.config.rootpath) / "data" / "sample"
    tmp = tmp_path_factory.mktemp("train")
    _subset(sample / "train", tmp / "data" / "train", TRAIN, broken="broken.jpg")
    _subset(sample / "val", tmp / "data" / "val", VAL)
    params = {
        "data": {"root": str(tmp / "data"), "pool": str(unlabelled_pool)},
        "score": {"hash_cache": str(tmp / "hashes.json")},
        "labelstudio": {"ledger": str(tmp / "ledger.json")},
        "model": {"backbone": "mobilenetv3_small", "width": 0.5, "input_size": 64, "head_filters": 16,
                  "projection_filters": 8},
        "train": {"epochs": 1, "batch_size": 3, "model_path": str(tmp / "models" / "model.keras"),
                  "pseudo_threshold": 0.49, "pseudo_ratio": 2.0,  # two classes: every photo pixel kept
                  "repeat_threshold": 1.0,  # class-balanced sampling on (every sample photo has damage: x1)
                  "history_csv": str(tmp / "reports" / "train_history.csv")},
        "evaluate": {"model_path": str(tmp / "models" / "model.keras"),
                     "metrics_file": str(tmp / "reports" / "metrics.json"), "plots_dir": str(tmp / "reports"),
                     "per_photo": str(tmp / "reports" / "eval_photos.json"), "overlay_count": 2, "bootstrap": 200},
    }
    params_file = tmp / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(main, ["train", "--params", str(params_file), "--pseudo-teacher", str(tiny_model_file)])
    return {"tmp": tmp, "params": str(params_file), "result": result, "teacher": str(tiny_model_file)}


def test_train_writes_model_and_history(run):
    result, tmp = run["result"], run["tmp"]
    assert result.exit_code == 0, result.output
    assert "saved" in result.output and "val mean IoU" in result.output
    info = read_model_info(tmp / "models" / "model.keras")
    assert info.classes == ["damage"] and info.input_size == 64 and info.model_version
    assert info.extra["n_train"] == 5 and "class_weights" in info.extra
    with open(tmp / "reports" / "train_history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and {"loss", "val_loss", "val_mean_iou", "learning_rate"} <= set(rows[0])
    timing = {k: float(rows[0][k]) for k in ("seconds", "train_seconds", "val_seconds", "save_seconds")}
    assert 0 < timing["train_seconds"] <= timing["seconds"] and timing["val_seconds"] >= 0
    assert timing["train_seconds"] + timing["val_seconds"] + timing["save_seconds"] <= timing["seconds"] + 0.05
    assert not list((tmp / "models").glob(".*"))  # no temporary file left behind


def test_a_broken_training_photo_is_skipped_by_name(run):
    assert "skipped 1 unreadable photo(s): train/broken.jpg" in run["result"].output


def test_train_with_a_pseudo_teacher_records_the_pseudo_labels(run):
    output = run["result"].output
    assert "4 candidate(s), 0 excluded, 1 unreadable" in output, "the pool reports the broken photo"
    assert "pseudo-labels: 4 pool photo(s)" in output and "100% of their pixels" in output
    card = read_model_info(run["tmp"] / "models" / "model.keras").extra
    assert card["n_train"] == 5, "the human-labelled photos; pseudo-labelled ones are counted apart"
    assert card["pseudo"]["photos"] == 4 and card["pseudo"]["teacher"] == run["teacher"]
    assert card["pseudo"]["threshold"] == 0.49 and card["pseudo"]["kept_share"] > 0.999


def test_train_with_repeat_factor_sampling_records_it(run):
    card = read_model_info(run["tmp"] / "models" / "model.keras").extra
    assert card["sampling"] == {"method": "repeat_factor", "photos_per_epoch": 5,
                                "class_photo_share": {"damage": 1.0}, "class_factor": {"damage": 1.0}}
    assert "repeat-factor sampling (train.repeat_threshold 1): 5 photos -> 5 per epoch" in run["result"].output


def test_evaluate_writes_all_metrics_and_plots(run):
    tmp = run["tmp"]
    result = CliRunner().invoke(main, ["evaluate", "--params", run["params"]])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp / "reports" / "metrics.json").read_text())
    assert {"mean_iou", "iou", "dice", "damage_iou", "pixel_precision", "pixel_recall", "image",
            "instance_count_mae", "model_version", "n_images"} <= set(metrics)
    assert set(metrics["iou"]) == {"background", "damage"} and set(metrics["dice"]) == {"background", "damage"}
    assert {"precision", "recall", "f1", "threshold", "score"} <= set(metrics["image"])
    assert metrics["n_images"] == 3 and 0 <= metrics["mean_iou"] <= 1
    ap = metrics["mask_ap"]  # COCO mask AP of the connected regions (pycocotools)
    assert set(ap["per_class"]) == {"damage"} and ap["gt_instances"] > 0
    assert ap["mask_ap"] is not None and 0 <= ap["mask_ap"] <= ap["mask_ap50"] <= 1
    assert metrics["splits"] == ["val"], "no test split in this data: evaluated on val"
    for name in ("training_curves.png", "overlays_worst.png", "overlays_best.png"):
        assert (tmp / "reports" / name).stat().st_size > 1000, name
    # every photo shows damage: the precision-recall curve would be a flat line, so it is left out, saying why
    assert not (tmp / "reports" / "pr_curve.png").exists()
    assert "every evaluated photo shows damage (3 of 3)" in metrics["plots_skipped"]["pr_curve"]
    ci = metrics["intervals"]["damage_iou"]
    assert ci["value"] == pytest.approx(metrics["damage_iou"]) and ci["ci"][0] <= ci["value"] <= ci["ci"][1]
    per_photo = json.loads((tmp / "reports" / "eval_photos.json").read_text())
    assert per_photo["model_version"] == metrics["model_version"] and len(per_photo["photos"]) == 3
    total = sum(np.asarray(p["cm"]) for p in per_photo["photos"])
    assert total.tolist() == metrics["confusion_matrix"], "per-photo matrices add up to the metrics"
    assert {len(p["sha256"]) for p in per_photo["photos"]} == {64}


def test_evaluate_with_other_classes_names_both_lists(run):
    result = CliRunner().invoke(main, ["evaluate", "--params", run["params"], "--set", "data.classes=[dent]"])
    assert result.exit_code != 0
    assert "['damage']" in result.output and "['dent']" in result.output


def test_part_labels_use_a_per_split_annotation_pattern(sample, tmp_path):
    (tmp_path / "params.yaml").write_text("{}\n")
    # YAML reads a bare {split}... as a mapping: the value is quoted on the command line too
    overrides = [f"data.root={sample}", 'data.annotation_file="{split}_multiclass.json"',
                 "data.classes=[headlamp, door, front_bumper, hood, rear_bumper]"]
    params = load_params(tmp_path / "params.yaml", overrides=overrides)
    records, _ = load_records(params.data, ["val"])
    assert len(records) == 8
    assert {i.category for r in records for i in r.instances} <= set(params.data.classes)


def test_train_argument_checks(tmp_path):
    (tmp_path / "params.yaml").write_text("{}\n")
    result = CliRunner().invoke(main, ["train", "--params", str(tmp_path / "params.yaml"), "--set", "train.epochs=0",
                                       "--set", f"data.root={tmp_path}"])
    assert result.exit_code != 0 and "train.epochs: must be >= 1, got 0" in result.output


def test_best_checkpoint_keeps_the_best_weights_and_writes_them_late(tmp_path):
    import numpy as np

    from cardamage.config import ModelParams
    from cardamage.model.heads import build_model
    from cardamage.model.io import ModelInfo, load_model
    from cardamage.model.train import BestCheckpoint

    model = build_model(ModelParams(backbone="mobilenetv3_small", width=0.25, input_size=64, head_filters=16,
                                    projection_filters=8, backbone_preset=None), 2)
    path = tmp_path / "best.keras"
    ckpt = BestCheckpoint(path, ModelInfo(classes=["damage"], input_size=64), {}, "val_mean_iou", every_s=3600)
    ckpt.set_model(model)
    base = model.get_weights()
    kernel = next(i for i, w in enumerate(base) if w.ndim == 4)
    for epoch, (score, bump) in enumerate([(0.5, 1.0), (0.7, 2.0), (0.6, 3.0)]):
        model.set_weights([w + bump if i == kernel else w for i, w in enumerate(base)])
        ckpt.on_epoch_end(epoch, {"val_mean_iou": score})
    assert not path.exists()  # nothing written within every_s
    ckpt.on_train_end()
    saved, info = load_model(path)
    assert np.allclose(saved.get_weights()[kernel], base[kernel] + 2.0)  # epoch 2, the best
    assert np.allclose(model.get_weights()[kernel], base[kernel] + 3.0)  # the model keeps its weights
    assert ckpt.best_epoch == 2 and info.extra["epoch"] == 2
    eager = BestCheckpoint(tmp_path / "eager.keras", ModelInfo(classes=["damage"], input_size=64), {},
                           "val_mean_iou", every_s=0)
    eager.set_model(model)
    eager.on_epoch_end(0, {"val_mean_iou": 0.1})
    assert (tmp_path / "eager.keras").is_file()  # every_s 0: each improvement is written at once


def test_cosine_schedule_with_warm_up_rises_linearly_then_decays():
    from cardamage.model.train import lr_schedule

    params = load_params(None, ["train.epochs=5", "train.learning_rate=0.001", "train.warmup_epochs=2"])
    schedule = lr_schedule(params, steps_per_epoch=10)
    values = [float(schedule(step)) for step in (0, 10, 20, 35, 49)]
    assert values[0] == pytest.approx(1e-5, rel=1e-3) and values[1] == pytest.approx(0.000505, rel=1e-3)
    assert values[2] == pytest.approx(1e-3, rel=1e-3) and values[2] > values[3] > values[4] > 1e-5
    plain = lr_schedule(load_params(None, ["train.epochs=5", "train.learning_rate=0.001"]), 10)
    assert float(plain(0)) == pytest.approx(1e-3, rel=1e-3), "no warm-up by default"
    long = lr_schedule(load_params(None, ["train.epochs=3", "train.warmup_epochs=9"]), 10)
    assert float(long(20)) == pytest.approx(1e-3, rel=1e-3), "warm-up capped at epochs - 1"
