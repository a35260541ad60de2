"""Throughput of the configured model on this machine, next to raw Keras on the same arrays.

    python benchmarks/bench_model.py [--params params.yaml] [--set section.key=value ...]
                                     [--photos 32] [--epochs 2] [--batch-sizes 1,4,8,16] [--out FILE]

Prints, for one process:

* training images/s through the project's tf.data pipeline (cached decode + augmentation) and
  through ``model.fit`` on the same photos as in-memory NumPy arrays;
* prediction images/s of :func:`cardamage.model.inference.predict_probs` and of ``model.predict`` on the
  same letterboxed arrays, at batch 1 and at the best batch size, and with flip test-time
  augmentation (``predict.tta: flip``);
* end-to-end ``predict_files`` (decode, letterbox, model, polygons, JSON, splash) images/s with
  the model loaded once, and the post-processing (``assess``) alone;
* peak resident memory (``resource.getrusage``, MiB);
* pipeline overhead ratios ``raw_rate / pipeline_rate - 1`` (target < 0.15).
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cardamage.config import load_params  # noqa: E402
from cardamage.data.images import load_image  # noqa: E402
from cardamage.fileio import write_json  # noqa: E402
from cardamage.model.heads import build_model  # noqa: E402
from cardamage.model.inference import count_params, predict_probs  # noqa: E402
from cardamage.model.inputs import Augment, base_dataset, batched, load_records, pixel_counts  # noqa: E402
from cardamage.model.io import ModelInfo, load_model, save_model  # noqa: E402
from cardamage.model.losses import ConfusionIoU, SegmentationLoss  # noqa: E402
from cardamage.model.predict import LoadedModel, assess, full_res_probs, predict_files  # noqa: E402


def _rate(n: int, fn) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def bench_training(model, base, arrays, n: int, params, epochs: int) -> dict[str, float]:
    """Images/s of ``model.fit`` through the pipeline and on NumPy arrays (after a warm-up epoch each)."""
    t = params.train
    model.compile(optimizer=keras.optimizers.AdamW(t.learning_rate), loss=SegmentationLoss(model.num_classes),
                  metrics=[ConfusionIoU(model.num_classes, name="mean_iou")])
    ds = batched(base, t.batch_size, training=True, augment=Augment.from_params(t) if t.augment else None, count=n)
    x, y = arrays
    model.fit(ds, epochs=1, verbose=0)
    model.fit(x, y, batch_size=t.batch_size, epochs=1, verbose=0, shuffle=False)
    pipe = _rate(n * epochs, lambda: model.fit(ds, epochs=epochs, verbose=0))
    raw = _rate(n * epochs, lambda: model.fit(x, y, batch_size=t.batch_size, epochs=epochs, verbose=0, shuffle=False))
    return {"pipeline_images_per_s": pipe, "raw_fit_images_per_s": raw, "overhead": raw / pipe - 1}


def bench_prediction(model, x: np.ndarray, batch_sizes: list[int]) -> dict[str, dict[str, float]]:
    """Images/s of ``predict_probs`` and raw ``model.predict`` per batch size (after a warm-up call)."""
    out = {}
    for b in batch_sizes:
        predict_probs(model, x[:b], batch_size=b)
        model.predict(x[:b], batch_size=b, verbose=0)
        ours = _rate(len(x), lambda: predict_probs(model, x, batch_size=b))
        raw = _rate(len(x), lambda: model.predict(x, batch_size=b, verbose=0))
        flip = _rate(len(x), lambda: predict_probs(model, x, batch_size=b, tta="flip"))
        out[str(b)] = {"predict_probs_images_per_s": ours, "raw_predict_images_per_s": raw, "overhead": raw / ours - 1,
                       "tta_flip_images_per_s": flip}
    return out


def bench_end_to_end(model, info: ModelInfo, files: list[Path], params, x: np.ndarray) -> dict[str, float]:
    """``predict_files`` (decode, letterbox, model, polygons, JSON, splash) against raw ``model.predict``.

    The model is loaded once and warmed up, as a service would keep it.
    """
    b = params.predict.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        save_model(model, path, info)
        loaded = LoadedModel(*load_model(path), str(path))
        predict_files(files[:b], loaded, params, Path(tmp) / "warm")
        e2e = _rate(len(files), lambda: predict_files(files, loaded, params, Path(tmp) / "out"))
        images, probs = _decoded(files, loaded)
        post = _rate(len(files), lambda: [assess(img, pr, loaded, params) for img, pr in zip(images, probs)])
    raw = _rate(len(x), lambda: model.predict(x, batch_size=b, verbose=0))
    return {"batch_size": b, "predict_files_images_per_s": e2e, "raw_predict_images_per_s": raw,
            "overhead": raw / e2e - 1, "postprocess_only_images_per_s": post}


def _decoded(files: list[Path], loaded) -> tuple[list[np.ndarray], list[np.ndarray]]:
    images = [load_image(f) for f in files]
    return images, [pr for i in range(0, len(images), 8) for pr in full_res_probs(loaded, images[i:i + 8])]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--photos", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-sizes", default="1,4,8,16")
    ap.add_argument("--out", default=None, help="also write the figures as JSON")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    params = load_params(args.params, args.overrides)
    keras.utils.set_random_seed(params.train.seed)
    data, size = params.data, params.model.input_size
    records, root = load_records(data, data.train_splits)
    records = records[: args.photos]
    base = base_dataset(records, root, data.classes, data.class_map, size, params.model.resize)
    start = time.perf_counter()
    _, n = pixel_counts(base, len(data.classes) + 1)
    decode = n / (time.perf_counter() - start)
    x = np.stack([img for img, _, _ in base.as_numpy_iterator()]).astype(np.float32)
    y = np.stack([m for _, m, _ in base.as_numpy_iterator()]).astype(np.int32)
    model = build_model(params.model, len(data.classes) + 1)
    info = ModelInfo(classes=list(data.classes), input_size=size, resize=params.model.resize,
                     architecture=params.model.architecture, backbone=params.model.backbone)
    result = {
        "config": {"architecture": params.model.architecture, "backbone": params.model.backbone,
                   "input_size": size, "weights": count_params(model), "photos": n,
                   "train_batch_size": params.train.batch_size, "cpus": os.cpu_count()},
        "decode_resize_images_per_s": decode,
        "training": bench_training(model, base, (x, y), n, params, args.epochs),
        "prediction": bench_prediction(model, x, [int(b) for b in args.batch_sizes.split(",")]),
    }
    files = [root / r.path for r in records]
    result["end_to_end"] = bench_end_to_end(model, info, files, params, x)
    result["peak_memory_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    _print(result)
    if args.out:
        write_json(args.out, result)
    return result


def _print(r: dict) -> None:
    c = r["config"]
    print(f"config: {c['architecture']} / {c['backbone']}, {c['input_size']} px, {c['weights']:,} weights, "
          f"{c['photos']} photos, {c['cpus']} CPUs")
    print(f"decode + letterbox + mask (first pass, cached after): {r['decode_resize_images_per_s']:.1f} img/s")
    t = r["training"]
    print(f"training  pipeline {t['pipeline_images_per_s']:.1f} img/s   raw fit {t['raw_fit_images_per_s']:.1f} img/s"
          f"   overhead {t['overhead']:+.1%}")
    best = max(r["prediction"].items(), key=lambda kv: kv[1]["predict_probs_images_per_s"])
    for label, (b, p) in (("batch 1", ("1", r["prediction"].get("1"))), ("best", best)):
        if p:
            print(f"predict {label:7s} (b={b:>2}) predict_probs {p['predict_probs_images_per_s']:.1f} img/s   "
                  f"raw predict {p['raw_predict_images_per_s']:.1f} img/s   overhead {p['overhead']:+.1%}   "
                  f"with predict.tta=flip {p['tta_flip_images_per_s']:.1f} img/s "
                  f"({p['predict_probs_images_per_s'] / p['tta_flip_images_per_s']:.2f}x the time)")
    e = r["end_to_end"]
    print(f"end-to-end predict_files (b={e['batch_size']}) {e['predict_files_images_per_s']:.1f} img/s   "
          f"raw predict {e['raw_predict_images_per_s']:.1f} img/s   overhead {e['overhead']:+.1%}   "
          f"(post-processing alone: {e['postprocess_only_images_per_s']:.1f} img/s)")
    print(f"peak memory {r['peak_memory_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
