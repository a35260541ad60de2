"""Shared builders for the hostile-input tests (``test_hostile_*.py``): tiny files of each format."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

from PIL import Image

#: Address-space limit of the child processes that probe native crashes (a crash, not the OOM killer).
CHILD_MEMORY = 3 * 1024 ** 3


def write(tmp_path, data, name="a.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def photo(folder, name="a.png", width=100, height=80):
    Image.new("RGB", (width, height), "gray").save(folder / name)
    return folder / name


def via(regions, filename="a.png", **extra):
    return {f"{filename}10": {"filename": filename, "size": 10, "file_attributes": {}, "regions": regions, **extra}}


def poly(xs, ys, label="damage"):
    return {"shape_attributes": {"name": "polygon", "all_points_x": xs, "all_points_y": ys},
            "region_attributes": {"name": label}}


def coco(**changes):
    data = {"images": [{"id": 0, "file_name": "c.jpg", "width": 50, "height": 40}],
            "annotations": [{"id": 7, "image_id": 0, "category_id": 1, "segmentation": [[0, 0, 9, 0, 9, 9]]}],
            "categories": [{"id": 1, "name": "dent"}]}
    for key, value in changes.items():
        section, field = key.split("__")
        data[section][0][field] = value
    return data


def ls(value, **result):
    return [{"id": 3, "data": {"image": "a.jpg"},
             "annotations": [{"result": [{"id": "r1", "type": "polygonlabels", "original_width": 10,
                                          "original_height": 10, "value": value, **result}]}]}]


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def assert_named(path: Path, field: str | None, caplog) -> None:
    """Reading ``path`` either raises an AnnotationError naming the file and ``field``, or warns naming both.

    ``field=None``: the file must read (or fail) without naming a field.
    """
    from cardamage.data.annotations import AnnotationError
    from cardamage.data.formats import read_annotations

    with caplog.at_level(logging.WARNING):
        try:
            read_annotations(path)
        except AnnotationError as exc:
            assert field and str(path) in str(exc) and field in str(exc)
            return
    if field:
        assert any(str(path) in m and field in m for m in warnings(caplog)), warnings(caplog)


def bits(*fields: tuple[int, int]) -> list[int]:
    """Pack ``(value, bit width)`` fields MSB first into bytes (zero padded)."""
    text = "".join(f"{v:0{n}b}" for v, n in fields)
    text += "0" * (-len(text) % 8)
    return [int(text[i:i + 8], 2) for i in range(0, len(text), 8)]


def run_child(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with a memory cap, so that a native crash fails the test only."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))

    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit)


def assert_clean_exit(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (f"child exited with {proc.returncode} (negative: killed by signal)\n"
                                  f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-4000:]}")
