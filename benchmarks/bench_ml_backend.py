"""Benchmark: the Label Studio ML backend's ``/predict`` against the model's own predict, same run.

    .venv/bin/python benchmarks/bench_ml_backend.py [--n 20] [--size 256] [--model FILE]

Starts a real Label Studio like the tests do (``tests/labelstudio_server.py``), uploads ``--n``
sample photos as tasks without predictions, and serves an untrained model from params.yaml's model
section at ``--size`` px (or ``--model``) with ``cardamage.service.ml_backend`` on uvicorn.
Printed, in seconds and as ratios to the peer:

- peer: decode + letterbox + ``model.predict`` of each photo from disk (batch 1), and the same 20
  photos decoded and predicted in one ``predict_on_batch``;
- backend ``/predict``: one task per request (``n`` requests), and all ``n`` tasks in one request
  (photos fetched from Label Studio, regions traced, percent polygons, score, cluster);
- Label Studio's "Retrieve predictions" for the ``n`` tasks end to end (server -> backend -> database).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "service"), str(REPO / "benchmarks")]

from bench_service import build_model  # noqa: E402
from labelstudio_server import start_server  # noqa: E402
from test_service_support import running  # noqa: E402

from cardamage.config import load_params  # noqa: E402
from cardamage.labelling.client import connect  # noqa: E402
from cardamage.labelling.label_config import generate_label_config  # noqa: E402
from cardamage.model.io import read_model_info  # noqa: E402


def peer_times(model_path: str, files: list[Path]) -> dict[str, float]:
    """Seconds per photo of decode + letterbox + ``model.predict`` (batch 1), and of one batch of all."""
    from cardamage.data.images import load_image
    from cardamage.model.inputs import prepare_image
    from cardamage.model.io import load_model

    model, info = load_model(model_path)
    model.predict(np.zeros((1, info.input_size, info.input_size, 3), np.float32), verbose=0)
    t0 = time.perf_counter()
    for f in files:
        model.predict(prepare_image(load_image(f, max_side=1024), info.input_size, info.resize)[0][None], verbose=0)
    single = (time.perf_counter() - t0) / len(files)
    t0 = time.perf_counter()
    batch = np.stack([prepare_image(load_image(f, max_side=1024), info.input_size, info.resize)[0] for f in files])
    model.predict_on_batch(batch)
    return {"per_photo_s": single, "batch_s": time.perf_counter() - t0}


def backend_times(url: str, tasks: list[dict], label_config: str) -> dict[str, float]:
    """Seconds per task of ``/predict`` one task at a time, and of one request with every task."""
    import httpx

    with httpx.Client(timeout=300) as http:
        http.post(f"{url}/predict", json={"tasks": tasks[:1], "label_config": label_config})  # warm-up
        t0 = time.perf_counter()
        for task in tasks:
            answer = http.post(f"{url}/predict", json={"tasks": [task], "label_config": label_config}).json()
            assert "result" in answer["results"][0], answer
        single = (time.perf_counter() - t0) / len(tasks)
        t0 = time.perf_counter()
        answer = http.post(f"{url}/predict", json={"tasks": tasks, "label_config": label_config}).json()
        batch = time.perf_counter() - t0
    assert sum("result" in r for r in answer["results"]) == len(tasks), answer
    return {"per_task_s": single, "batch_s": batch}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--model", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from cardamage.service.ml_backend import create_backend_app

    tmp = Path(tempfile.mkdtemp(prefix="bench-ml-backend-"))
    files = sorted((REPO / "data" / "sample" / "train").glob("*.jpg"))[:args.n]
    model_path = args.model or build_model(tmp, args.size)
    params = load_params(REPO / "params.yaml")
    params.serve.model_path = model_path
    params.model.input_size = read_model_info(model_path).input_size
    params.labelstudio.backend.retrain_after = 0
    params.labelstudio.backend.state_file = str(tmp / "state.json")
    print(f"{len(files)} sample photos, model {model_path} at {params.model.input_size} px; starting Label Studio...")
    (tmp / "ls-data").mkdir()
    server = start_server(tmp / "docroot", data_dir=tmp / "ls-data")
    try:
        client = connect(server.url, server.api_key, timeout_s=120, deadline_s=300)
        config = generate_label_config(params.data.classes)
        project = client.create_project("bench ml backend", config)
        client.import_tasks(project, [{"data": {"image": u}} for u in client.upload_files(project, files)])
        tasks = [{"id": i, "data": d} for i, d in client.list_task_data(project)]
        peer = peer_times(model_path, files)
        app = create_backend_app(params, client=client)
        with running(app) as url:
            ours = backend_times(url, tasks, config)
            client.connect_ml_backend(project, url)
            t0 = time.perf_counter()
            client.retrieve_predictions(project)
            retrieve = time.perf_counter() - t0
            got = len(client.list_predictions(project))
    finally:
        server.stop()
    n = len(files)
    rows = [("peer: decode + model.predict, per photo", peer["per_photo_s"], 1.0),
            (f"peer: decode + predict_on_batch of {n}, per photo", peer["batch_s"] / n,
             peer["batch_s"] / n / peer["per_photo_s"]),
            ("backend /predict, 1 task per request", ours["per_task_s"], ours["per_task_s"] / peer["per_photo_s"]),
            (f"backend /predict, {n} tasks in one request, per task", ours["batch_s"] / n,
             ours["batch_s"] / n / peer["per_photo_s"]),
            (f"Label Studio 'Retrieve predictions' of {n} tasks, per task", retrieve / n,
             retrieve / n / peer["per_photo_s"])]
    print(f"\n{'':58s} {'ms':>8s} {'x peer':>7s}")
    for name, seconds, ratio in rows:
        print(f"{name:58s} {seconds * 1000:8.1f} {ratio:7.2f}")
    print(f"\n{n} tasks in one request: {ours['batch_s']:.2f} s (Label Studio waits 100 s); "
          f"{got} predictions stored by Label Studio")


if __name__ == "__main__":
    main()
