"""Labelling configuration, ledger and push helpers: no server needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from cardamage.config import load_params
from cardamage.data.annotations import Instance
from cardamage.labelling.label_config import (
    NO_DAMAGE,
    LabelConfigError,
    check_label_config,
    check_label_config_file,
    generate_label_config,
    parse_label_config,
)
from cardamage.labelling.label_config import UNUSABLE as UNUSABLE_CHOICE
from cardamage.labelling.ledger import LABELLED, PUSHED, UNUSABLE, load_ledger, mark, pending, record_push, save_ledger
from cardamage.labelling.push import local_file_url, prediction_result, read_selection

REPO = Path(__file__).resolve().parents[2]


def test_generated_config_lists_classes_and_choices():
    config = parse_label_config(generate_label_config(["dent", "scratch"]))
    assert config.labels == ["dent", "scratch"]
    assert config.choices == [NO_DAMAGE, UNUSABLE_CHOICE]
    assert (config.polygon_from_name, config.to_name, config.data_key) == ("label", "image", "image")


def test_committed_config_agrees_with_params():
    params = load_params(REPO / "params.yaml")
    assert check_label_config_file(REPO / params.labelstudio.label_config, params.data.classes) == []


def test_check_reports_disagreement():
    xml = generate_label_config(["damage"])
    assert check_label_config(xml, ["damage"]) == []
    assert "differ from data.classes" in check_label_config(xml, ["dent"])[0]
    assert "missing" in check_label_config(xml.replace(NO_DAMAGE, "fine"), ["damage"])[0]


@pytest.mark.parametrize("classes", [[], ["a", "a"], [""], [NO_DAMAGE]])
def test_bad_classes_are_rejected(classes):
    with pytest.raises(LabelConfigError):
        generate_label_config(classes)


def test_class_names_are_escaped():
    config = parse_label_config(generate_label_config(['dent "deep" & <wide>']))
    assert config.labels == ['dent "deep" & <wide>']


def test_ledger_round_trip_and_pending(tmp_path):
    path = tmp_path / "ledger.json"
    assert load_ledger(path) == {}
    ledger = {}
    record_push(ledger, "a" * 64, "pool/1.jpg", 7, 1, "2026-01-01T00:00:00Z")
    record_push(ledger, "b" * 64, "pool/2.jpg", 8, 1, "2026-01-01T00:00:00Z")
    assert mark(ledger, "b" * 64, LABELLED)
    assert not mark(ledger, "b" * 64, LABELLED)  # second mark changes nothing
    save_ledger(path, ledger)
    first = path.read_bytes()
    save_ledger(path, load_ledger(path))
    assert path.read_bytes() == first
    assert pending(load_ledger(path)) == {"a" * 64}
    assert load_ledger(path)["a" * 64]["status"] == PUSHED
    mark(ledger, "a" * 64, UNUSABLE)
    assert pending(ledger) == set()


def test_ledger_rejects_garbage(tmp_path):
    path = tmp_path / "ledger.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="ledger"):
        load_ledger(path)


def test_prediction_result_is_in_percent_with_config_labels():
    config = parse_label_config(generate_label_config(["damage"]))
    dropped = {}
    instances = [Instance("damage", [[(100, 50), (300, 50), (200, 150)]], score=0.9),
                 Instance("rust", [[(0, 0), (10, 0), (10, 10)]])]
    result = prediction_result(instances, 400, 200, config, dropped)
    assert dropped == {"rust": 1}
    assert len(result) == 1
    value = result[0]["value"]
    assert value["points"] == [[25.0, 25.0], [75.0, 25.0], [50.0, 75.0]]
    assert value["polygonlabels"] == ["damage"]
    assert (result[0]["from_name"], result[0]["to_name"]) == ("label", "image")
    assert (result[0]["original_width"], result[0]["original_height"]) == (400, 200)


def test_local_file_url_needs_a_sub_folder(tmp_path):
    (tmp_path / "pool").mkdir()
    photo = tmp_path / "pool" / "a b.jpg"
    photo.write_bytes(b"x")
    url, storage = local_file_url(photo, tmp_path.resolve())
    assert url == "/data/local-files/?d=pool/a%20b.jpg"
    assert storage == tmp_path.resolve() / "pool"
    (tmp_path / "top.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="sub-folders"):
        local_file_url(tmp_path / "top.jpg", tmp_path.resolve())
    with pytest.raises(ValueError, match="not under"):
        local_file_url(photo, (tmp_path / "elsewhere").resolve())


def test_read_selection(tmp_path, sample):
    csv = tmp_path / "selection.csv"
    photo = sample / "test" / "11.jpg"
    csv.write_text(f"id,path,score,rank,strategy,reason\nstale,{photo},0.5,1,entropy,x\n")
    [row] = read_selection(csv)
    assert len(row.sha256) == 64 and row.score == 0.5 and row.path == photo
    csv.write_text("id,path,score\nx,missing.jpg,1\n")
    with pytest.raises(ValueError, match="not found: missing.jpg"):
        read_selection(csv)
