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
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text().strip().endswith("}") and list(tmp_path.iterdir()) == [target]


def _disagreements(yaml_node, default_node, key: str = "") -> list[str]:
    """Dotted keys where ``params.yaml`` and the dataclass defaults differ, or that only one of them has."""
    if isinstance(yaml_node, dict) and isinstance(default_node, dict):
        out = []
        for k in sorted(set(yaml_node) | set(default_node), key=str):
            full = f"{key}.{k}" if key else str(k)
            if k not in default_node:
                out.append(f"{full}: in params.yaml, not in the dataclass defaults")
            elif k not in yaml_node:
                out.append(f"{full}: in the dataclass defaults, not in params.yaml")
            else:
                out += _disagreements(yaml_node[k], default_node[k], full)
        return out
    if isinstance(yaml_node, list) and isinstance(default_node, list) and len(yaml_node) == len(default_node):
        return [d for i, (a, b) in enumerate(zip(yaml_node, default_node))
                for d in _disagreements(a, b, f"{key}[{i}]")]
    # 1 and 1.0 agree (the loader turns YAML ints into floats); True and 1 do not
    if yaml_node != default_node or isinstance(yaml_node, bool) != isinstance(default_node, bool):
        return [f"{key}: params.yaml {yaml_node!r} != dataclass default {default_node!r}"]
    return []


def test_params_yaml_and_dataclass_defaults_are_one_source():
    """Every key of params.yaml equals its dataclass default, and each side has every key of the other."""
    import dataclasses

    import yaml

    from cardamage.config import Params

    on_disk = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    problems = _disagreements(on_disk, dataclasses.asdict(Params()))
    assert not problems, "params.yaml and cardamage/config.py disagree:\n" + "\n".join(problems)


def test_disagreements_name_the_dotted_key():
    assert _disagreements({"a": {"b": 1, "c": [1, 2]}}, {"a": {"b": 1.0, "c": [1, 2]}}) == []
    assert _disagreements({"a": {"b": 1}}, {"a": {"b": 2}}) == ["a.b: params.yaml 1 != dataclass default 2"]
    assert _disagreements({"a": {"b": True}}, {"a": {"b": 1}})[0].startswith("a.b:")
    assert _disagreements({"a": {"x": {"y": 1}}}, {"a": {"x": {}}}) == [
        "a.x.y: in params.yaml, not in the dataclass defaults"]
    assert _disagreements({"a": {}}, {"a": {"z": None}}) == ["a.z: in the dataclass defaults, not in params.yaml"]
    assert _disagreements({"a": [1, 3]}, {"a": [1, 2]}) == ["a[1]: params.yaml 3 != dataclass default 2"]


@pytest.mark.parametrize("content, needle", [
    ("data:\n  root: donn\xe9es\n".encode("latin-1"), "not UTF-8"),
    (b"- data\n- model\n", "expected a mapping"),
])
def test_params_file_of_the_wrong_encoding_or_shape_is_named(tmp_path, content, needle):
    bad = tmp_path / "params.yaml"
    bad.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_params(bad)
    assert str(bad) in str(info.value) and needle in str(info.value)


def test_pixel_budget_is_set_by_the_params():
    from cardamage.data import images

    try:
        load_params(None, ["data.max_pixels=1234"])
        assert images.pixel_limit() == 1234
        with pytest.raises(ConfigError, match="data.max_pixels"):
            load_params(None, ["data.max_pixels=0"])
    finally:
        load_params(None)
    assert images.pixel_limit() == images.MAX_PIXELS
