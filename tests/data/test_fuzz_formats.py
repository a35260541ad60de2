"""Seeded fuzzing of the annotation readers and ``convert`` (damaged photos: ``test_fuzz_images.py``).

Malformed VIA 1/2 (the sample's real file, cut down), VIA projects, VIA CSV, COCO and Label Studio
files are made by mutating valid documents (deleted keys, swapped types, huge/negative/NaN numbers,
deep nesting, huge RLE headers, truncated JSON, non-UTF-8 bytes) and read through the public API,
then written to three random formats and read back, the way ``cardamage convert`` does. Each case must
succeed or raise a :class:`~cardamage.errors.CardamageError`; any other exception fails the test
with the seed and case number, and so does a case whose traced allocations pass a bound.

The cases run in a child process (:mod:`fuzz_support`), so a native crash fails the test too.
Reproduce a failure with ``CARDAMAGE_FUZZ_SEED=<seed> pytest tests/data/test_fuzz_formats.py``; the
message gives the seed, the case number and its mutations.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import random
import traceback
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
from click.testing import CliRunner
from conftest import SAMPLE
from fuzz_support import fuzz_in_child, max_rss, report
from PIL import Image

from cardamage.data.formats import format_names, read_annotations, write_annotations
from cardamage.data.formats.detect import detect_format
from cardamage.data.formats.labelstudio_json import mask_to_brush_rle
from cardamage.data.masks import encode_rle
from cardamage.errors import CardamageError

SEED = int(os.environ.get("CARDAMAGE_FUZZ_SEED", "20250611"))
#: Annotation cases per run (a few hundred, well under a minute together).
CASES = 240
#: Largest Python-traced allocation peak of one case (numpy arrays included).
MAX_CASE_PEAK = 300 * 1024 ** 2

ODD_VALUES: list[Any] = [None, True, False, "", "wide", "../up.jpg", "/etc/passwd", "a\x00b", [], {}, [1, 2],
                         {"a": 1}, [[1, 2]], 0, -1, 0.5, -7.25, 1e308, -1e308, float("nan"), float("inf"),
                         float("-inf"), 2 ** 31, 2 ** 63, 10 ** 30, "9" * 40, "\u00fc", "\ud800", "x" * 5000]
NUMBERS: list[Any] = [0, -1, -1e9, 1e9, 4e8, 2 ** 32, 2 ** 64, 1e308, float("nan"), float("inf"), 0.5, 10 ** 25]


# --- base documents ------------------------------------------------------------------------------


def _sample_entries(rng: random.Random, n: int = 3) -> dict[str, Any]:
    data = json.loads((SAMPLE / "train" / "via_region_data.json").read_text())
    keys = rng.sample(sorted(data), n)
    return {k: data[k] for k in keys}


def _via2(rng: random.Random) -> Any:
    return _sample_entries(rng)


def _via1(rng: random.Random) -> Any:
    entries = _sample_entries(rng)
    for entry in entries.values():
        entry["regions"] = {str(i): r for i, r in enumerate(entry["regions"])}
        entry.update(fileref="", base64_img_data="")
    return entries


def _via_project(rng: random.Random) -> Any:
    return {"_via_settings": {"project": {"name": "p"}}, "_via_img_metadata": _sample_entries(rng),
            "_via_attributes": {"region": {"name": {"type": "dropdown", "options": {"damage": ""}}}, "file": {}}}


def _coco(rng: random.Random) -> Any:
    mask = np.zeros((48, 64), dtype=np.uint8)
    mask[5:20, 10:40] = 1
    flat = mask.ravel(order="F")
    runs = np.diff(np.r_[0, np.flatnonzero(np.diff(flat)) + 1, flat.size]).tolist()
    return {"info": {"v": 1}, "licenses": [],
            "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48},
                       {"id": 2, "file_name": "2.jpg", "width": 1024, "height": 1024},
                       {"id": 3, "file_name": "3.jpg"}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 30, 2, 25, 40, 3, 30]],
                 "iscrowd": 0},
                {"id": 2, "image_id": 1, "category_id": 2, "segmentation": encode_rle(mask), "iscrowd": 1},
                {"id": 3, "image_id": 1, "category_id": 2, "segmentation": {"size": [48, 64], "counts": runs}},
                {"id": 4, "image_id": 2, "category_id": 1, "bbox": [10, 10, 200, 100], "score": 0.5},
                {"id": 5, "image_id": 3, "category_id": 1, "segmentation": [[5, 5, 50, 5, 50, 50]]}],
            "categories": [{"id": 1, "name": "dent", "supercategory": "damage"}, {"id": 2, "name": "scratch"}]}


def _brush(width: int = 64, height: int = 48) -> list[int]:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[3:30, 4:50] = 1
    return mask_to_brush_rle(mask)


def _labelstudio(rng: random.Random) -> Any:
    size = {"original_width": 64, "original_height": 48}
    return [{"id": 1, "data": {"image": "/data/local-files/?d=fuzz/a.png"},
             "annotations": [{"id": 10, "result": [
                 {"id": "p1", "type": "polygonlabels", **size,
                  "value": {"points": [[5, 5], [60, 8], [40, 90]], "polygonlabels": ["dent"]}},
                 {"id": "r1", "type": "rectanglelabels", **size,
                  "value": {"x": 10, "y": 10, "width": 30, "height": 20, "rotation": 15,
                            "rectanglelabels": ["scratch"]}},
                 {"id": "b1", "type": "brushlabels", **size,
                  "value": {"format": "rle", "rle": _brush(), "brushlabels": ["dent"]}},
                 {"id": "p1", "type": "textarea", "from_name": "note", "value": {"text": ["deep"]}},
                 {"id": "c1", "type": "choices", "value": {"choices": ["front"]}}]}]},
            {"id": 2, "data": {"image": "/data/upload/3/1a2b3c4d-2.jpg"},
             "predictions": [{"score": 0.4, "result": [
                 {"id": "q", "type": "polygonlabels", "original_width": 1024, "original_height": 1024,
                  "value": {"points": [[1, 1], [50, 1], [50, 50]], "polygonlabels": ["dent"]}}]}]}]


JSON_BASES = {"via2": _via2, "via1": _via1, "via-project": _via_project, "coco": _coco, "labelstudio": _labelstudio}


# --- mutations -----------------------------------------------------------------------------------


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys/indices) to a value inside ``obj`` (at most 20 deep), the root included."""
    out = [prefix]
    if len(prefix) >= 20:
        return out
    if isinstance(obj, dict):
        for key, value in obj.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(obj, list) and len(obj) < 400:
        for i, value in enumerate(obj):
            out += _paths(value, (*prefix, i))
    return out


def _get(obj: Any, path: tuple) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value] if depth % 2 else {"a": value}
    return value


def _brush_bomb(rng: random.Random) -> list[int]:
    count = rng.choice([2 ** 31, 2 ** 32 - 1, 64 * 48 * 4 + 4, rng.randrange(2 ** 20, 2 ** 32)])
    header = f"{count:032b}{7:05b}" + "".join(f"{s - 1:04b}" for s in (3, 4, 8, 16))
    body = "".join(rng.choice("01") for _ in range(rng.randrange(0, 400)))
    bits = header + body
    bits += "0" * (-len(bits) % 8)
    return [int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)]


def _replacement(rng: random.Random, old: Any) -> tuple[str, Any]:
    roll = rng.random()
    if roll < 0.45:
        return "odd", copy.deepcopy(rng.choice(ODD_VALUES))
    if roll < 0.7:
        return "number", rng.choice(NUMBERS)
    if roll < 0.78:
        return "deep", _deep(rng.choice([60, 400, 700]))
    if roll < 0.86 and isinstance(old, list) and old:
        return "repeat", [copy.deepcopy(old[0]) for _ in range(rng.choice([50, 3000]))]
    if roll < 0.93:
        return "brush bomb", _brush_bomb(rng)
    return "points", [rng.uniform(-1e6, 1e6) for _ in range(rng.choice([10, 6001]))]


def mutate(doc: Any, rng: random.Random) -> list[str]:
    """Apply 1-4 random structural mutations to ``doc`` in place; return their descriptions."""
    ops = []
    for _ in range(rng.randint(1, 4)):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = rng.choice(paths)
        parent, key = _get(doc, path[:-1]), path[-1]
        if rng.random() < 0.25:
            del parent[key]
            ops.append(f"delete {path}")
        elif isinstance(parent, dict) and rng.random() < 0.1:
            parent[f"{key}_x"] = parent.pop(key)
            ops.append(f"rename {path}")
        else:
            what, value = _replacement(rng, parent[key])
            parent[key] = value
            ops.append(f"{what} at {path}")
    return ops


def damage_bytes(raw: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Byte-level damage: truncation, non-UTF-8 bytes, NULs, a BOM, deep brackets, or nothing."""
    roll = rng.random()
    if roll < 0.12:
        return raw[:rng.randrange(0, max(1, len(raw)))], "truncated"
    if roll < 0.18:
        at = rng.randrange(0, len(raw) + 1)
        return raw[:at] + bytes([rng.choice([0xFF, 0xC3, 0x80, 0xED])]) + raw[at:], "non-UTF-8 byte"
    if roll < 0.21:
        at = rng.randrange(0, len(raw) + 1)
        return raw[:at] + b"\x00" + raw[at:], "NUL byte"
    if roll < 0.23:
        return b"[" * 50_000 + b"]" * 50_000, "50000 nested brackets"
    if roll < 0.25:
        return b"\xef\xbb\xbf" + raw, "BOM"
    if roll < 0.27:
        return b"", "empty"
    return raw, ""


def _csv_text(rng: random.Random) -> tuple[str, list[str]]:
    """A VIA CSV export of some sample entries, with JSON-level and row-level mutations."""
    entries = _sample_entries(rng, 2)
    rows = [["filename", "file_size", "file_attributes", "region_count", "region_id", "region_shape_attributes",
             "region_attributes"]]
    for entry in entries.values():
        for i, region in enumerate(entry["regions"]):
            rows.append([entry["filename"], entry["size"], "{}", len(entry["regions"]), i,
                         json.dumps(region["shape_attributes"]), json.dumps(region["region_attributes"])])
    ops = []
    for _ in range(rng.randint(1, 3)):
        row = rng.choice(rows[1:])
        col = rng.randrange(len(row))
        roll = rng.random()
        if roll < 0.35 and col >= 5 and row[col].startswith("{") and len(row[col]) < 10_000:
            try:
                cell = json.loads(row[col])
            except ValueError:
                continue
            ops += [f"line {rows.index(row) + 1} col {col}: {op}" for op in mutate(cell, rng)]
            row[col] = json.dumps(cell)
        elif roll < 0.5:
            row[col] = rng.choice(['{"type":undefined}', "{name: oops", "[1,2]", "9" * 5000, "x" * 200_000,
                                   '{"name":"polygon","all_points_x":[0,"wide",9],"all_points_y":[0,0,9]}'])
            ops.append(f"line {rows.index(row) + 1} col {col}: odd cell")
        elif roll < 0.7:
            row[col] = str(rng.choice(ODD_VALUES))
            ops.append(f"line {rows.index(row) + 1} col {col}: odd value")
        else:
            del row[col]
            ops.append(f"line {rows.index(row) + 1}: column {col} deleted")
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue(), ops


def make_case(i: int, folder: Path) -> tuple[Path, str, dict[str, Any]]:
    """Write case ``i`` (deterministic for the seed) into ``folder``; return its path, description, read options."""
    rng = random.Random(f"{SEED}-{i}")
    kind = rng.choice([*JSON_BASES, "via-csv"])
    if kind == "via-csv":
        text, ops = _csv_text(rng)
        raw, damage = text.encode("utf-8", "surrogatepass"), ""
        if rng.random() < 0.3:
            raw, damage = damage_bytes(raw, rng)
        suffix = ".csv"
    else:
        doc = JSON_BASES[kind](rng)
        ops = mutate(doc, rng)
        raw = json.dumps(doc, ensure_ascii=rng.random() < 0.8).encode("utf-8", "surrogatepass")
        raw, damage = damage_bytes(raw, rng)
        suffix = ".json"
    path = folder / f"case{i}{suffix}"
    path.write_bytes(raw)
    options: dict[str, Any] = {}
    if rng.random() < 0.1:
        options["classes"] = ["damage", "dent"]
    if rng.random() < 0.05:
        options["category_key"] = rng.choice(["name", "type", "nothing"])
    if kind == "labelstudio" and rng.random() < 0.5:
        options["predictions"] = True
    return path, f"{kind}: {'; '.join(ops + [damage] if damage else ops)}", options


# --- the cases, run in a child process ------------------------------------------------------------


def make_folder(folder: Path) -> Path:
    """A dataset folder with the sample's train photos (linked) and a small ``a.png`` (also under ``fuzz/``)."""
    for photo in (SAMPLE / "train").glob("*.jpg"):
        (folder / photo.name).symlink_to(photo)
    Image.new("RGB", (64, 48), "gray").save(folder / "a.png")
    (folder / "fuzz").mkdir()
    Image.new("RGB", (64, 48), "gray").save(folder / "fuzz" / "a.png")
    return folder


def _run_case(path: Path, options: dict[str, Any], out: Path, rng: random.Random) -> None:
    """What ``cardamage convert`` does, to three random writable formats, plus reading each output back."""
    if path.suffix == ".json" and rng.random() < 0.3:
        detect_format(path)
    dataset = read_annotations(path, **options)
    for fmt in rng.sample(format_names(writable=True), 3):
        target = out / f"out-{fmt}{'.csv' if fmt == 'via-csv' else '.json'}"
        try:
            write_annotations(dataset, target, fmt)
        except CardamageError:
            continue
        try:
            read_annotations(target)
        except CardamageError:
            pass


def api_cases(folder: Path, out: Path) -> None:
    """Child: every annotation case through the public read/detect/write API."""
    rss_before = max_rss()
    tracemalloc.start()
    for i in range(CASES):
        path, description, options = make_case(i, folder)
        report(start=i, description=description)
        tracemalloc.reset_peak()
        try:
            _run_case(path, options, out, random.Random(f"{SEED}-{i}-run"))
        except CardamageError:
            pass
        except Exception as exc:  # noqa: BLE001 - any other exception is the bug being hunted
            report(failure=f"case {i} ({description}): {type(exc).__name__}: {exc}\n"
                            f"{''.join(traceback.format_exception(exc)[-4:])}")
        peak = tracemalloc.get_traced_memory()[1]
        if peak > MAX_CASE_PEAK:
            report(failure=f"case {i} ({description}): {peak / 2 ** 20:.0f} MiB allocated")
        path.unlink()
    tracemalloc.stop()
    report(rss_growth=max_rss() - rss_before)


def cli_cases(folder: Path, out: Path) -> None:
    """Child: a few cases through ``cardamage convert`` itself (click's CliRunner, one process)."""
    from cardamage.cli import main

    params = out / "params.yaml"
    params.write_text("{}\n")
    runner = CliRunner()
    for i in range(CASES, CASES + 12):
        path, description, _ = make_case(i, folder)
        fmt = random.Random(f"{SEED}-{i}-cli").choice(format_names(writable=True))
        report(start=i, description=f"{description} --to {fmt}")
        result = runner.invoke(main, ["convert", str(path), str(out / f"out{i}.json"), "--to", fmt,
                                      "--params", str(params)])
        if "this is a bug" in result.output or (result.exception is not None
                                                 and not isinstance(result.exception, SystemExit)):
            report(failure=f"case {i} ({description}) --to {fmt}: {result.exception!r}\n{result.output[-800:]}")
    report(rss_growth=0)


def _run(function: str, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "out").mkdir()
    fuzz_in_child("test_fuzz_formats", function, SEED, make_folder(tmp_path / "data"), tmp_path / "out")


def test_fuzz_readers_and_convert(tmp_path):
    _run("api_cases", tmp_path)


def test_fuzz_convert_command(tmp_path):
    """A few cases through the real command line: one-line errors, never the 'this is a bug' traceback."""
    _run("cli_cases", tmp_path)
