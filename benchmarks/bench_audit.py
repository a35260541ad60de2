"""Benchmark: the label audit of a pull, per 1,000 labelled photos, beside the model's own predict.

    .venv/bin/python benchmarks/bench_audit.py [--n 1000] [--size 256] [--model FILE] [--grid 64]

Photos and labels: bilgi `train` (COCO, ../shared/datasets/bilgi-car-damage) when present, else the
embedded sample repeated. The model is untrained (params.yaml's model section at ``--size`` px)
unless ``--model`` is given: the figures are time, not audit quality. Printed, per 1,000 photos:
the peer (decode + ``model.predict`` of each photo), the audit's model part (decode, predict, label
and probability grids), cleanlab's part (quality scores, issue pixels, swapped pairs), the pictures,
and the whole audit as a ratio to the peer.
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
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from bench_service import build_model  # noqa: E402

from cardamage.config import load_params  # noqa: E402
from cardamage.labelling.audit import AuditItem, audit_grids, model_grids  # noqa: E402

BILGI = REPO.parent / "shared" / "datasets" / "bilgi-car-damage" / "train" / "_annotations.coco.json"


def labelled_items(n: int) -> tuple[list[AuditItem], str]:
    """``n`` labelled photos as audit items (binary ``damage`` labels) and where they come from."""
    from cardamage.data.dataset import load_dataset

    source = BILGI if BILGI.is_file() else REPO / "data" / "sample"
    data = load_dataset(source, splits=None if BILGI.is_file() else ["train", "val", "test"])
    records = [r for r in data.images if r.labelled]
    items = []
    for i in range(n):
        r = records[i % len(records)]
        instances = [type(inst)("damage", inst.polygons) for inst in r.instances]
        items.append(AuditItem(f"{i:064x}", Path(data.root) / r.path, instances, r.width or 1, r.height or 1, i,
                               i, f"annotator {i % 3}", "2026-12-03T12:00:00+00:00"))
    return items, f"{source} ({len(records)} labelled photos)"


def peer_seconds(loaded, items: list[AuditItem]) -> float:
    from cardamage.data.images import load_image
    from cardamage.model.inputs import prepare_image

    info = loaded.info
    t0 = time.perf_counter()
    for item in items:
        x = prepare_image(load_image(item.image, max_side=max(256, info.input_size)), info.input_size, info.resize)[0]
        loaded.model.predict(x[None], verbose=0)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--model", default=None)
    parser.add_argument("--grid", type=int, default=64)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    from cardamage.labelling.audit_overlays import write_overlays
    from cardamage.model.io import load_model
    from cardamage.model.predict import LoadedModel

    tmp = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    model_path = args.model or build_model(tmp, args.size)
    params = load_params(REPO / "params.yaml")
    params.labelstudio.audit.grid = args.grid
    loaded = LoadedModel(*load_model(model_path), model_path)
    items, source = labelled_items(args.n)
    print(f"{len(items)} labelled photos from {source}; model at {loaded.info.input_size} px, grid {args.grid}")
    loaded.model.predict(np.zeros((1, loaded.info.input_size, loaded.info.input_size, 3), np.float32), verbose=0)
    peer = peer_seconds(loaded, items)
    t0 = time.perf_counter()
    kept, labels, probs, _ = model_grids(items, params, loaded)
    grids = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = audit_grids(kept, labels, probs, list(loaded.info.classes), "bench", "2026-12-01T00:00:00+00:00",
                         params)
    clean = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_overlays(kept[:params.report.thumbnails], loaded, params.predict.threshold, tmp / "overlays")
    pictures = time.perf_counter() - t0
    per = 1000 / len(items)
    total = grids + clean + pictures
    print(f"\n{'per 1,000 photos':52s} {'s':>8s} {'x peer':>7s}")
    for name, seconds in (("peer: decode + model.predict", peer), ("audit: decode, predict, grids", grids),
                          ("audit: cleanlab (quality, issues, pairs)", clean),
                          (f"audit: {params.report.thumbnails} pictures", pictures), ("audit in all", total)):
        print(f"{name:52s} {seconds * per:8.1f} {seconds / peer:7.2f}")
    print(f"\n{len(result.rows)} photos audited, {len(result.flagged)} flagged (an untrained model flags at random), "
          f"peak grids {labels.nbytes / 1e6 + probs.nbytes / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
