"""The command line: --help everywhere, --version, --set/--params, stats, show, convert."""

import json

import pytest
from click.testing import CliRunner
from conftest import REPO, SAMPLE

from cardamage import __version__
from cardamage.cli import main


def _all_commands(group, prefix=()):
    for name, cmd in group.commands.items():
        yield prefix + (name,)
        if hasattr(cmd, "commands"):
            yield from _all_commands(cmd, prefix + (name,))


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


@pytest.mark.parametrize("command", list(_all_commands(main)))
def test_every_command_has_help(command):
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_stats_reports_known_sample_defects(monkeypatch):
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(main, ["stats", "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output[result.output.index("{"):])
    assert stats["images"] == 78 and stats["labelled_images"] == 70
    assert stats["instances_per_category"] == {"damage": 164}
    assert len(stats["unlabelled_images"]) == 8
    dups = {(d["a"], d["b"]) if d["a"] < d["b"] else (d["b"], d["a"]): d for d in stats["duplicates"]}
    assert dups[("test/66.jpg", "train/17.jpg")]["kind"] == "exact"
    assert "annotated differently (5 vs 2" in dups[("train/25.jpg", "train/48.jpg")]["note"]
    assert dups[("train/19.jpg", "train/79.jpg")]["kind"] == "near"
    assert dups[("train/33.jpg", "train/8.jpg")]["kind"] == "near"


def test_stats_text_output_on_one_file():
    result = CliRunner().invoke(main, ["stats", str(SAMPLE / "val" / "via_region_data.json")])
    assert result.exit_code == 0, result.output
    assert "images: 8" in result.output and "damage" in result.output


def test_set_rejects_unknown_key_with_clear_message():
    result = CliRunner().invoke(main, ["stats", str(SAMPLE), "--set", "data.colour=red"])
    assert result.exit_code != 0
    assert "data.colour" in result.output and "Traceback" not in result.output


def test_params_file_option(tmp_path):
    p = tmp_path / "other.yaml"
    p.write_text("data:\n  near_duplicate_distance: 0\n")
    result = CliRunner().invoke(main, ["stats", str(SAMPLE), "--json", "--params", str(p)])
    stats = json.loads(result.output[result.output.index("{"):])
    assert all(d["distance"] == 0 for d in stats["duplicates"])
    assert not any(d["a"].endswith("33.jpg") or d["b"].endswith("33.jpg") for d in stats["duplicates"])


def test_show_writes_pngs_and_grid(tmp_path):
    from PIL import Image

    result = CliRunner().invoke(main, ["show", str(SAMPLE / "val" / "via_region_data.json"),
                                       "--out", str(tmp_path), "--limit", "2"])
    assert result.exit_code == 0, result.output
    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) == 2
    plain = Image.open(SAMPLE / "val" / (pngs[0].stem.split("__")[-1] + ".jpg")).convert("RGB").resize((64, 64))
    drawn = Image.open(pngs[0]).convert("RGB").resize((64, 64))
    assert plain.tobytes() != drawn.tobytes()  # the polygons were drawn
    result = CliRunner().invoke(main, ["show", str(SAMPLE / "val" / "via_region_data.json"),
                                       "--out", str(tmp_path / "g"), "--grid"])
    assert result.exit_code == 0 and (tmp_path / "g" / "grid.png").is_file()


@pytest.mark.parametrize("fmt, check", [("coco", lambda d: len(d["annotations"]) == 12),
                                        ("labelstudio", lambda d: len(d) == 8),
                                        ("via", lambda d: len(d) == 8)])
def test_convert_command(tmp_path, fmt, check):
    out = tmp_path / f"out.{fmt}.json"
    result = CliRunner().invoke(main, ["convert", str(SAMPLE / "val" / "via_region_data.json"), str(out),
                                       "--to", fmt])
    assert result.exit_code == 0, result.output
    assert check(json.loads(out.read_text()))


def test_convert_unknown_json_names_formats_tried(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"hello": 1}')
    result = CliRunner().invoke(main, ["convert", str(bad), str(tmp_path / "o.json"), "--to", "coco"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "COCO" in result.output or "coco" in result.output
    assert not (tmp_path / "o.json").exists()
