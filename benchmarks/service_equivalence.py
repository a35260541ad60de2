"""Does post-processing on the working grid change the answer? The claim service's path against the
full-resolution path, on the same network output.

For each sample photo (``data/sample/{train,val,test}``, labelled; the first ``--limit``): the
network's output at its input size is either a model's (``--model FILE``) or, by default, the
photo's own labels letterboxed to the network size and blurred (a stand-in for a good model:
region shapes like real damage, soft edges).
That one output goes through

* the *work-grid* path of :mod:`cardamage.service.claims`: the photo decoded to ``serve.work_side``
  (512 px), probabilities undone onto that grid, regions there, polygons scaled to the photo;
* the *full-resolution* path of the service before micro-batching: the photo at ``serve.max_side``
  (1024 px), probabilities upsampled to it, regions there.

Reported per photo and in total: region count, damaged share, total damaged area (photo px), the
settlement decision and estimate, and the relative difference of each; the mean post-processing
time of each path. The tolerance stated in the README is checked: ``--tolerance`` (default 0.05)
relative on the damaged area of photos with at least 1 % damage, the same decision on every photo.

Usage::

    .venv/bin/python benchmarks/service_equivalence.py [--model FILE] [--size 256] [--out FILE]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def label_probs(rgb: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, Any]:
    """A blurred copy of ``mask`` (``bool [H, W]``) at network resolution: ``float32 [S, S, 2]`` and its fit."""
    from cardamage.model.inputs import prepare_image

    _, fit = prepare_image(rgb, size)
    small, _ = prepare_image(np.repeat(mask[..., None].astype(np.uint8) * 255, 3, axis=2), size)
    p = cv2.GaussianBlur(small[..., 0] / 255.0, (0, 0), max(1.0, size / 128)).astype(np.float32)
    return np.stack([1 - p, p], -1), fit


def one_path(rgb: np.ndarray, probs: np.ndarray, fit: Any, photo_wh: tuple[int, int], params: Any,
             loaded: Any) -> tuple[dict[str, Any], float]:
    """Assess ``rgb`` (already at the path's grid) from network ``probs``; answer on the photo's pixels."""
    from cardamage.model.inputs import unfit
    from cardamage.model.predict import assess
    from cardamage.service.claims import encode_jpeg, to_photo_grid

    t0 = time.perf_counter()
    grid = unfit(probs, fit)
    result, splash = assess(rgb, grid, loaded, params)
    encode_jpeg(splash)
    h, w = rgb.shape[:2]
    to_photo_grid(result, photo_wh[0], photo_wh[1], photo_wh[0] / w, photo_wh[1] / h)
    return result, time.perf_counter() - t0


def compare(args: argparse.Namespace) -> dict[str, Any]:
    from cardamage.config import load_params
    from cardamage.data.dataset import load_dataset
    from cardamage.data.images import load_image
    from cardamage.data.masks import class_mask
    from cardamage.model.inputs import prepare_image
    from cardamage.model.io import ModelInfo
    from cardamage.model.predict import LoadedModel
    from cardamage.service.settlement import PhotoDamage, propose

    params = load_params(REPO / "params.yaml")
    model = None
    if args.model:
        from cardamage.model.io import load_model

        model = LoadedModel(*load_model(args.model), args.model)
    loaded = model or LoadedModel(None, ModelInfo(classes=list(params.data.classes), input_size=args.size), "labels")
    ds = load_dataset(params.data.root, annotation_file=params.data.annotation_file, splits=["train", "val", "test"])
    rows, times = [], {"work": [], "full": []}
    for rec in [r for r in ds.images if r.labelled][: args.limit]:
        path = Path(params.data.root) / rec.path
        full = load_image(path, max_side=params.serve.max_side)
        work = load_image(path, max_side=min(params.serve.work_side, params.serve.max_side))
        wh = (rec.width, rec.height) if rec.width else (full.shape[1], full.shape[0])
        if model is None:
            mask = class_mask(rec.instances, params.data.classes, wh[1], wh[0], category_of=lambda i: "damage")
            mask = cv2.resize(mask, (full.shape[1], full.shape[0]), interpolation=cv2.INTER_NEAREST) > 0
            probs, fit_full = label_probs(full, mask, args.size)
        else:
            from cardamage.model.inference import predict_probs

            x, fit_full = prepare_image(full, loaded.info.input_size, loaded.info.resize)
            probs = predict_probs(loaded.model, x[None])[0]
        _, fit_work = prepare_image(work, loaded.info.input_size, loaded.info.resize)
        out = {}
        for name, rgb, fit in (("full", full, fit_full), ("work", work, fit_work)):
            result, seconds = one_path(rgb, probs, fit, wh, params, loaded)
            times[name].append(seconds)
            settle = propose([PhotoDamage(path.name, True, result["damaged_share"], result["instances"])],
                             params.settlement)
            out[name] = {"regions": result["instance_count"], "damaged_share": result["damaged_share"],
                         "area_px": sum(i["area_px"] for i in result["instances"]),
                         "decision": settle["decision"], "estimate": settle["estimate"]}
        rows.append({"photo": path.name, **out})
    return summarise(rows, times, args.tolerance)


def summarise(rows: list[dict[str, Any]], times: dict[str, list[float]], tolerance: float) -> dict[str, Any]:
    """Differences of the work-grid path against the full-resolution one, and the verdict."""
    damaged = [r for r in rows if r["full"]["damaged_share"] >= 0.01]
    rel = [abs(r["work"]["area_px"] - r["full"]["area_px"]) / max(r["full"]["area_px"], 1) for r in damaged]
    share = [abs(r["work"]["damaged_share"] - r["full"]["damaged_share"]) for r in rows]
    same_decision = sum(r["work"]["decision"] == r["full"]["decision"] for r in rows)
    same_estimate = sum(r["work"]["estimate"] == r["full"]["estimate"] for r in rows)
    regions = [r["work"]["regions"] - r["full"]["regions"] for r in rows]
    return {
        "photos": len(rows), "damaged_photos": len(damaged), "tolerance": tolerance,
        "area_rel_diff_max": round(max(rel, default=0.0), 4),
        "area_rel_diff_mean": round(float(np.mean(rel or [0])), 4),
        "damaged_share_abs_diff_max": round(max(share, default=0.0), 5),
        "regions_diff": {"max_abs": max(map(abs, regions), default=0), "total_full": sum(r["full"]["regions"]
                         for r in rows), "total_work": sum(r["work"]["regions"] for r in rows)},
        "same_decision": f"{same_decision}/{len(rows)}", "same_estimate": f"{same_estimate}/{len(rows)}",
        "postprocess_ms": {k: round(1000 * float(np.mean(v)), 1) for k, v in times.items()},
        "within_tolerance": bool(max(rel, default=0.0) <= tolerance and same_decision == len(rows)),
        "rows": rows,
    }


def print_summary(s: dict[str, Any]) -> None:
    """The headline lines of :func:`summarise`."""
    print(f"work grid vs full resolution, {s['photos']} sample photos ({s['damaged_photos']} with >= 1% damage):")
    print(f"  damaged area: max relative difference {s['area_rel_diff_max']:.2%}, mean {s['area_rel_diff_mean']:.2%}"
          f" (tolerance {s['tolerance']:.0%}); damaged share max abs difference {s['damaged_share_abs_diff_max']}")
    r = s["regions_diff"]
    print(f"  regions: {r['total_work']} vs {r['total_full']} (max {r['max_abs']} per photo); same decision "
          f"{s['same_decision']}, same estimate {s['same_estimate']}")
    pp = s["postprocess_ms"]
    print(f"  post-processing: {pp['work']} ms (work grid) vs {pp['full']} ms (full resolution) per photo: "
          f"{pp['full'] / max(pp['work'], 1e-9):.1f}x faster; within tolerance: {s['within_tolerance']}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a trained model (default: the photos' labels, blurred)")
    ap.add_argument("--size", type=int, default=256, help="network size of the label stand-in")
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    summary = compare(args)
    print_summary(summary)
    if args.out:
        from cardamage.fileio import write_json

        write_json(args.out, summary)
    return summary


if __name__ == "__main__":
    main()
