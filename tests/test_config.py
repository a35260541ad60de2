"""The typed params loader: defaults, overrides, and errors that name the key."""

from pathlib import Path

import pytest

from cardamage.config import ConfigError, load_params, parse_override

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_file_is_valid():
    params = load_params(REPO / "params.yaml")
    assert params.data.classes == ["damage"]
    assert params.data.root == "data/sample"


def test_override_changes_one_value(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("data:\n  root: x\n")
    params = load_params(p, ["data.near_duplicate_distance=3", "data.classes=[a, b]"])
    assert params.data.root == "x"
    assert params.data.near_duplicate_distance == 3
    assert params.data.classes == ["a", "b"]


@pytest.mark.parametrize("text, needle", [
    ("data:\n  rooot: x\n", "data.rooot"),
    ("dta:\n  root: x\n", "dta"),
    ("data:\n  near_duplicate_distance: six\n", "data.near_duplicate_distance"),
    ("data:\n  classes: damage\n", "data.classes"),
    ("data:\n  near_duplicate_distance: true\n", "data.near_duplicate_distance"),
])
def test_unknown_or_mistyped_key_is_named(tmp_path, text, needle):
    p = tmp_path / "p.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_params(p)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("nodots")
    with pytest.raises(ConfigError, match="unknown parameter 'data.nope'"):
        load_params(REPO / "params.yaml", ["data.nope=1"])


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "absent.yaml")


def test_atomic_write_leaves_no_temp_file_and_keeps_old_content_on_error(tmp_path):
    from cardamage.fileio import atomic_path, write_json

    target = write_json(tmp_path / "out.json", {"a": 1})
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text().strip().endswith("}") and list(tmp_path.iterdir()) == [target]
