"""Benchmark the streaming scorer against the raw network on the same photos, in the same run.

* raw: ``model.predict`` on photos already decoded and letterboxed (the network alone);
* scorer: :func:`cardamage.active.scoring.score_photos` end to end (decode, letterbox, forward pass with
  embeddings, acquisition scores, damage regions, Parquet) without and with MC-dropout;
* MC-dropout cost per pass = (scorer with T samples - scorer without) / T, per photo, also as a
  share of one full forward pass.

The model is ``--model FILE`` or, by default, an untrained network built from ``params.yaml``'s
``model`` section at ``--size`` (the weights do not change the cost).

Usage::

    .venv/bin/python benchmarks/bench_score.py [--photos data/sample/train] [--limit 32] [--size 256]
        [--model models/model.keras] [--mc 8] [--batch 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", default="data/sample/train")
    ap.add_argument("--limit", type=int, default=32)
    ap.add_argument("--model", default=None)
    ap.add_argument("--size", type=int, default=256, help="input size of the untrained default model")
    ap.add_argument("--mc", type=int, default=8, help="MC-dropout samples")
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()

    from cardamage.active.pool import PoolPhoto
    from cardamage.active.scorer import load_scorer
    from cardamage.active.scoring import score_photos
    from cardamage.config import ScoreParams, load_params
    from cardamage.data.dedup import file_sha256
    from cardamage.data.images import list_images, load_image
    from cardamage.model.heads import build_model
    from cardamage.model.inputs import prepare_image
    from cardamage.model.io import ModelInfo, save_model

    tmp = Path(tempfile.mkdtemp(prefix="bench_score_"))
    model_path = args.model
    if model_path is None:
        params = load_params()
        mp = dataclasses.replace(params.model, input_size=args.size)
        model_path = str(tmp / "model.keras")
        save_model(build_model(mp, len(params.data.classes) + 1), model_path,
                   ModelInfo(classes=list(params.data.classes), input_size=args.size, backbone=mp.backbone))
    files = list_images(args.photos)[:args.limit]
    photos = [PoolPhoto(f, str(f), file_sha256(f), "0" * 16) for f in files]
    scorer = load_scorer(model_path, args.batch)
    size = scorer.input_size
    from cardamage.model.io import load_model

    model, info = load_model(model_path)
    batch = np.stack([prepare_image(load_image(f), size, info.resize)[0] for f in files])
    model.predict(batch[:args.batch], batch_size=args.batch, verbose=0)  # warm-up (tracing)
    score_photos(photos[:args.batch], scorer, ScoreParams(batch_size=args.batch, mc_samples=args.mc),
                 tmp / "warm.parquet", progress=False)

    t0 = time.perf_counter()
    model.predict(batch, batch_size=args.batch, verbose=0)
    t_raw = time.perf_counter() - t0
    timings = {}
    for mc in (0, args.mc):
        t0 = time.perf_counter()
        score_photos(photos, scorer, ScoreParams(batch_size=args.batch, mc_samples=mc), tmp / f"s{mc}.parquet",
                     progress=False)
        timings[mc] = time.perf_counter() - t0
    n = len(files)
    print(f"{n} photos from {args.photos}, model {info.backbone or Path(model_path).name} at {size} px, "
          f"batch {args.batch}")
    print(f"raw model.predict (pre-letterboxed): {n / t_raw:7.2f} photos/s")
    print(f"scorer, no MC:                       {n / timings[0]:7.2f} photos/s "
          f"({t_raw / timings[0]:.0%} of raw throughput; includes decode + letterbox + scores + Parquet)")
    print(f"scorer, {args.mc} MC-dropout samples:      {n / timings[args.mc]:7.2f} photos/s")
    per_pass = (timings[args.mc] - timings[0]) / max(args.mc, 1) / n
    print(f"MC-dropout: {per_pass * 1000:.2f} ms per photo per pass = {per_pass / (t_raw / n):.1%} of one "
          f"forward pass ({t_raw / n * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
