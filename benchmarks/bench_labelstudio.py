"""Benchmark: push N tasks with pre-annotations and pull N annotations against a local Label Studio.

    .venv/bin/python benchmarks/bench_labelstudio.py [--n 1000] [--batch-size 100] [--baseline-n 200]

Starts a server like the tests do (``tests/labelstudio_server.py``: ``$CARDAMAGE_LABEL_STUDIO`` or
``.venv-ls/bin/label-studio``), unless ``--url`` and ``$LABEL_STUDIO_API_KEY`` name a running one.
Photos are small generated JPEGs served as local files (the import path is measured, not the
disk). Printed: seconds and tasks/s for the batched push, the baseline push (one task per request,
same run), uploads (``--upload-n``), the simulated annotation, the first pull and a second pull
that changes nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from cardamage.config import LabelStudioParams, Params  # noqa: E402
from cardamage.data.annotations import Instance  # noqa: E402
from cardamage.labelling.client import LabelStudioClient, connect  # noqa: E402
from cardamage.labelling.label_config import (
    generate_label_config,  # noqa: E402
    parse_label_config,  # noqa: E402
)
from cardamage.labelling.ledger import load_ledger  # noqa: E402
from cardamage.labelling.pull import pull_project  # noqa: E402
from cardamage.labelling.push import Photo, build_task, local_file_url, photos_from_paths, push_photos  # noqa: E402

WIDTH, HEIGHT = 320, 240


def make_photos(folder: Path, n: int) -> list[Path]:
    """``n`` distinct JPEGs (``WIDTH x HEIGHT``), a gradient plus per-photo noise."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = np.linspace(0, 200, WIDTH, dtype=np.float32)[None, :, None].repeat(HEIGHT, 0).repeat(3, 2)
    paths = []
    for i in range(n):
        pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        path = folder / f"photo_{i:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=80)
        paths.append(path)
    return paths


def predictions_for(photos: list[Photo]) -> dict[str, list[Instance]]:
    """Two polygons per photo (pixels), like a model's output."""
    a = [(20.0, 20.0), (120.0, 25.0), (100.0, 110.0), (30.0, 90.0)]
    b = [(200.0, 150.0), (300.0, 160.0), (250.0, 230.0)]
    return {p.sha256: [Instance("damage", [a], score=0.8), Instance("damage", [b], score=0.6)] for p in photos}


def params_in(work: Path, name: str, root: Path, access: str, batch_size: int) -> Params:
    params = Params()
    params.labelstudio = LabelStudioParams(
        project_title=name, image_access=access, local_files_root=str(root), batch_size=batch_size,
        ledger=str(work / name / "ledger.json"), exports_dir=str(work / name / "exports"),
        labelled_dir=str(work / name / "labelled"), report_csv=str(work / name / "annotation_vs_model.csv"))
    return params


def timed_push(client: LabelStudioClient, name: str, photos: list[Photo], work: Path, root: Path, access: str,
               batch_size: int) -> tuple[float, int, Params]:
    params = params_in(work, name, root, access, batch_size)
    project = client.create_project(name, generate_label_config(["damage"]))
    start = time.perf_counter()
    summary = push_photos(client, project, photos, params.labelstudio, predictions_for(photos), "bench-model")
    seconds = time.perf_counter() - start
    assert summary.pushed == len(photos), summary.text()
    return seconds, project, params


RESULT = [{"id": "a", "type": "polygonlabels", "from_name": "label", "to_name": "image",
           "original_width": WIDTH, "original_height": HEIGHT,
           "value": {"points": [[10, 10], [40, 12], [30, 45]], "closed": True, "polygonlabels": ["damage"]}}]


def annotated_project(client: LabelStudioClient, photos: list[Photo], root: Path, batch_size: int) -> int:
    """Setup for the pull: a project whose tasks (same data and predictions as a push) come with an
    annotation each, imported in batches (the community edition has no bulk-annotate endpoint)."""
    project = client.create_project("bench pull", generate_label_config(["damage"]))
    config = parse_label_config(generate_label_config(["damage"]))
    predictions = predictions_for(photos)
    for at in range(0, len(photos), batch_size):
        tasks = [build_task(p, local_file_url(p.path, root.resolve())[0], config, predictions, "bench-model", {})
                 for p in photos[at:at + batch_size]]
        for task in tasks:
            task["annotations"] = [{"result": RESULT}]
        client.import_tasks(project, tasks)
    return project


def annotate_one_by_one(client: LabelStudioClient, params: Params, count: int) -> float:
    """``count`` annotations, one request each (how annotators' submissions reach the server)."""
    entries = list(load_ledger(params.labelstudio.ledger).values())[:count]
    start = time.perf_counter()
    for entry in entries:
        client.create_annotation(entry["task_id"], RESULT)
    return time.perf_counter() - start


def row(label: str, n: int, seconds: float) -> str:
    return f"{label:<44} {n:>6} {seconds:>9.2f} {n / seconds:>10.1f}"


def run(client: LabelStudioClient, root: Path, n: int, batch_size: int, baseline_n: int, upload_n: int,
        annotate_n: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-ls-"))
    try:
        _steps(client, root, work, n, batch_size, baseline_n, upload_n, annotate_n)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(root / "bench", ignore_errors=True)


def _steps(client: LabelStudioClient, root: Path, work: Path, n: int, batch_size: int, baseline_n: int,
           upload_n: int, annotate_n: int) -> None:
    photos = photos_from_paths(make_photos(root / "bench" / "pool", n))
    rows = []
    push_s, _, params = timed_push(client, "bench batched", photos, work, root, "local-files", batch_size)
    rows.append(row(f"push, batches of {batch_size} (local files)", n, push_s))
    base_s, _, _ = timed_push(client, "bench baseline", photos[:baseline_n], work, root, "local-files", 1)
    rows.append(row("baseline push, 1 task per request", baseline_n, base_s))
    if upload_n:
        up_s, _, _ = timed_push(client, "bench upload", photos[:upload_n], work, root, "upload", batch_size)
        rows.append(row(f"push with upload, batches of {batch_size}", upload_n, up_s))
    if annotate_n:
        rows.append(row("annotations, 1 request each (annotators)", annotate_n,
                        annotate_one_by_one(client, params, annotate_n)))
    start = time.perf_counter()
    project = annotated_project(client, photos, root, batch_size)
    rows.append(row("setup: import annotated tasks for the pull", n, time.perf_counter() - start))
    pull_params = params_in(work, "bench pull", root, "local-files", batch_size)
    start = time.perf_counter()
    summary = pull_project(client, project, pull_params)
    pull_s = time.perf_counter() - start
    assert summary.added == n, summary.text()
    rows.append(row("pull (export, convert, copy, write)", n, pull_s))
    start = time.perf_counter()
    again = pull_project(client, project, pull_params)
    rows.append(row("pull again (nothing changes)", n, time.perf_counter() - start))
    assert again.unchanged == n, again.text()
    print(f"{'step':<44} {'tasks':>6} {'seconds':>9} {'tasks/s':>10}")
    print("\n".join(rows))
    ratio = (n / push_s) / (baseline_n / base_s)
    print(f"batched push is {ratio:.1f}x faster per task than one task per request")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="tasks to push and annotations to pull")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--baseline-n", type=int, default=200, help="tasks for the one-per-request baseline")
    parser.add_argument("--upload-n", type=int, default=200, help="tasks pushed by upload (0: skip)")
    parser.add_argument("--annotate-n", type=int, default=50, help="annotations created one request each (0: skip)")
    parser.add_argument("--url", default=None, help="a running server (its LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT "
                        "must be --root); default: start one")
    parser.add_argument("--root", default=None, help="local-files document root of --url")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.url:
        run(connect(args.url), Path(args.root or os.environ["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"]),
            args.n, args.batch_size, args.baseline_n, args.upload_n, args.annotate_n)
        return
    from labelstudio_server import start_server

    server = start_server(Path(tempfile.mkdtemp(prefix="bench-ls-root-")))
    print(f"Label Studio started in {server.start_seconds:.1f} s at {server.url}")
    try:
        run(connect(server.url, server.api_key, timeout_s=120), server.document_root, args.n, args.batch_size,
            args.baseline_n, args.upload_n, args.annotate_n)
    finally:
        server.stop()
        shutil.rmtree(server.data_dir, ignore_errors=True)
        shutil.rmtree(server.document_root, ignore_errors=True)


if __name__ == "__main__":
    main()
