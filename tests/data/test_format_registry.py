"""The format registry: a format defined here (JSON lines) plugs into read, write, convert and errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import SAMPLE

from cardamage.cli import main
from cardamage.data.annotations import AnnotationError, Dataset, ImageRecord, Instance
from cardamage.data.formats import (
    Format,
    ReadRequest,
    format_names,
    get_format,
    read_annotations,
    register_format,
    unregister_format,
    write_annotations,
)
from cardamage.data.formats.detect import detect_json
from cardamage.fileio import write_text

NAME = "jsonl-test"
DESCRIPTION = "JSON lines (test format)"
TRAIN = SAMPLE / "train" / "via_region_data.json"
BUILTIN = ("coco", "labelstudio", "via-project", "via", "via1", "via-csv")


# --- a tiny format: one JSON object per image and line -----------------------------------------


def _is_jsonl(path: Path) -> bool:
    return path.suffix == ".jsonl"


def _read_jsonl(request: ReadRequest) -> Dataset:
    images = []
    for line in request.path.read_text().splitlines():
        row: dict[str, Any] = json.loads(line)
        instances = [Instance(category=i["category"], polygons=[[tuple(p) for p in poly] for poly in i["polygons"]])
                     for i in row["instances"]]
        images.append(ImageRecord(path=row["image"], instances=instances))
    dataset = Dataset(images=images)
    dataset.ensure_categories()
    return dataset


def _write_jsonl(dataset: Dataset, path: Path, **options: Any) -> Path:
    rows = [{"image": r.path, "instances": [{"category": i.category, "polygons": i.polygons} for i in r.instances]}
            for r in dataset.images]
    return write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture
def jsonl_format():
    """Register the JSON-lines format for one test; unregister it afterwards."""
    fmt = register_format(Format(NAME, DESCRIPTION, detect=_is_jsonl, read=_read_jsonl, write=_write_jsonl,
                                 suffix=".jsonl", detects="file"))
    yield fmt
    unregister_format(NAME)


def _counts(dataset: Dataset) -> tuple[int, int]:
    return len(dataset.images), sum(len(r.instances) for r in dataset.images)


# --- tests ------------------------------------------------------------------------------------


def test_builtin_formats_are_registered():
    assert format_names() == BUILTIN
    assert format_names(writable=True) == BUILTIN
    assert NAME not in CliRunner().invoke(main, ["convert", "--help"]).output


def test_format_registered_after_import_shows_in_convert_help(jsonl_format):
    result = CliRunner().invoke(main, ["convert", "--help"])
    assert result.exit_code == 0, result.output
    assert NAME in result.output and "via-csv" in result.output


def test_convert_writes_the_new_format_and_read_annotations_reads_it_back(jsonl_format, tmp_path):
    out = tmp_path / "train.jsonl"
    result = CliRunner().invoke(main, ["convert", str(TRAIN), str(out), "--to", NAME])
    assert result.exit_code == 0, result.output
    original = read_annotations(TRAIN)
    assert _counts(original) == (62, 152)
    lines = out.read_text().splitlines()
    assert len(lines) == 62 and json.loads(lines[0])["image"] == original.images[0].path
    back = read_annotations(out)
    assert back.meta["format"] == NAME and back.root == tmp_path
    assert _counts(back) == _counts(original)
    assert [r.path for r in back.images] == [r.path for r in original.images]
    assert back.categories == ["damage"]
    assert back.images[0].instances[0].polygons == original.images[0].instances[0].polygons


def test_formats_tried_error_lists_the_new_format(jsonl_format, tmp_path):
    bad = tmp_path / "what.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(AnnotationError, match="formats tried") as err:
        read_annotations(bad)
    assert DESCRIPTION in str(err.value) and "COCO JSON" in str(err.value)
    result = CliRunner().invoke(main, ["convert", str(bad), str(tmp_path / "o.json"), "--to", NAME])
    assert result.exit_code != 0 and DESCRIPTION in result.output


def test_unregistered_format_is_gone(tmp_path):
    fmt = register_format(Format(NAME, DESCRIPTION, detect=_is_jsonl, read=_read_jsonl, write=_write_jsonl))
    assert unregister_format(NAME) is fmt
    assert NAME not in format_names()
    result = CliRunner().invoke(main, ["convert", str(TRAIN), str(tmp_path / "o.jsonl"), "--to", NAME])
    assert result.exit_code != 0 and "Invalid value for '--to'" in result.output


def test_duplicate_name_is_rejected(jsonl_format):
    with pytest.raises(ValueError, match=f"{NAME!r} is already registered"):
        register_format(Format(NAME, "again", write=_write_jsonl))
    with pytest.raises(ValueError, match="'coco' is already registered"):
        register_format(Format("coco", "another COCO", write=_write_jsonl))
    assert get_format(NAME) is jsonl_format and get_format("coco").description == "COCO JSON"


def test_unknown_format_error_names_the_known_ones(jsonl_format):
    with pytest.raises(AnnotationError, match="unknown annotation format 'yaml'") as err:
        get_format("yaml")
    assert all(name in str(err.value) for name in (*BUILTIN, NAME))
    with pytest.raises(AnnotationError, match="unknown output format 'yaml'; choose one of coco, "):
        write_annotations(Dataset(), "x.yaml", "yaml")


def test_read_only_format_is_not_offered_for_writing():
    register_format(Format("read-only-test", "read only", detect=_is_jsonl, read=_read_jsonl))
    try:
        assert "read-only-test" in format_names() and "read-only-test" not in format_names(writable=True)
        assert "read-only-test" not in CliRunner().invoke(main, ["convert", "--help"]).output
    finally:
        unregister_format("read-only-test")


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "", "description": "x", "write": _write_jsonl}, "non-empty word"),
    ({"name": "a b", "description": "x", "write": _write_jsonl}, "non-empty word"),
    ({"name": "x", "description": "x"}, "a reader, a writer"),
    ({"name": "x", "description": "x", "read": _read_jsonl}, "detect function"),
    ({"name": "x", "description": "x", "write": _write_jsonl, "detects": "yaml"}, "'json' or 'file'"),
])
def test_format_entry_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Format(**kwargs)


@pytest.mark.parametrize("data, name", [({}, "via"), ([], "labelstudio"), ({"data": {"image": "a.jpg"}}, "labelstudio"),
                                        ({"images": [], "annotations": []}, "coco"),
                                        ({"_via_img_metadata": {}}, "via-project"),
                                        ({"a.jpg1": {"filename": "a.jpg", "regions": {}}}, "via1"),
                                        ([{"filename": "a.jpg", "regions": []}], "via"), ({"hello": 1}, None)])
def test_detection_order_of_the_builtin_formats(data, name):
    assert detect_json(data) == name
