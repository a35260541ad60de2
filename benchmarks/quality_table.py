"""Issue 14: damage IoU against CPU minutes, one row per lever, on the same bilgi split.

Each variant runs ``cardamage train`` then ``cardamage evaluate`` on bilgi (``train`` -> model,
``valid`` -> validation and the evaluated split; every damage type mapped to one ``damage`` class)
and the table gives damage IoU, mean IoU, mask AP, training minutes and the model's predict time
per photo relative to the first variant (the baseline), all measured in this run. A variant with
``tta`` evaluates the model of the variant it names with ``predict.tta: flip`` (no training).
Every command is printed before it runs, so a figure can be reproduced by hand.

    python benchmarks/quality_table.py --out /tmp/quality --variants lite0_128 lite0_256 lite0_256_tta
    python benchmarks/quality_table.py --out /tmp/quality --preset models/pretrained/efficientnet-lite0 \
        --variants lite0_128 lite1_128 lite2_128

Finished variants are kept in ``OUT/summary.json`` and skipped on the next run (``--redo`` to rerun).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_pretrained import BIN, CATEGORIES, DATASET, _sets, data_overrides, run  # noqa: E402

#: name -> (``--set`` pairs, model of another variant to evaluate with TTA or None)
VARIANTS: dict[str, tuple[list[str], str | None]] = {
    "lite0_128": (["model.input_size=128", "train.epochs=10", "train.early_stopping_patience=10"], None),
    "lite0_256": (["model.input_size=256", "train.epochs=8", "train.early_stopping_patience=10"], None),
    "lite0_256_tta": (["model.input_size=256", "predict.tta=flip"], "lite0_256"),
    "lite0_384": (["model.input_size=384", "train.epochs=8", "train.early_stopping_patience=10"], None),
    # the 8 bilgi damage types as 8 classes (damage IoU = any type against background)
    # schedule and loss, one lever each: twice the epochs with a 2-epoch warm-up; a Lovasz-softmax term
    "lite0_128_long": (["model.input_size=128", "train.epochs=20", "train.warmup_epochs=2",
                        "train.early_stopping_patience=20"], None),
    "lite0_128_lovasz": (["model.input_size=128", "train.epochs=10", "train.early_stopping_patience=10",
                          "train.lovasz_weight=1.0"], None),
    # deeper ImageNet backbones (same recipe as lite0_128; presets imported next to --preset's)
    "lite1_128": (["model.backbone_preset={presets}/efficientnet-lite1", "model.input_size=128", "train.epochs=10",
                   "train.early_stopping_patience=10"], None),
    "lite2_128": (["model.backbone_preset={presets}/efficientnet-lite2", "model.input_size=128", "train.epochs=10",
                   "train.early_stopping_patience=10"], None),
    "lite0_128_types": (["data.classes=[" + ", ".join(CATEGORIES) + "]", "data.class_map={}", "model.input_size=128",
                         "train.epochs=10", "train.early_stopping_patience=10"], None),
    # the same with class-balanced photos (repeat-factor sampling: types on < 30 % of the photos repeated)
    "lite0_128_types_rfs": (["data.classes=[" + ", ".join(CATEGORIES) + "]", "data.class_map={}",
                             "model.input_size=128", "train.epochs=10", "train.early_stopping_patience=10",
                             "train.repeat_threshold=0.3"], None),
}


def predict_ms(model: Path, photos: list[Path], tta: bool = False, repeats: int = 2) -> float:
    """Milliseconds per photo of the model's forward pass at batch 1 (decoded, letterboxed photos);
    with ``tta`` the photo and its mirror image, one after the other, as ``predict.tta: flip`` does."""
    import numpy as np

    from cardamage.data.images import load_image
    from cardamage.model.inference import predict_probs
    from cardamage.model.inputs import prepare_image
    from cardamage.model.io import load_model

    net, info = load_model(model)
    arrays = [prepare_image(load_image(p), int(info.input_size), info.resize)[0] for p in photos]
    predict_probs(net, np.stack(arrays[:1]))  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        for a in arrays:
            predict_probs(net, a[None], tta="flip" if tta else "none")
    return 1000 * (time.perf_counter() - start) / (repeats * len(arrays))


def speed_table(sizes: list[int], photos: list[Path], out: Path) -> str:
    """Predict ms/photo of the default network (DeepLabV3+ on Lite0, random weights: speed does not
    depend on them) at each input size, relative to the first, timed in this one process."""
    from cardamage.config import ModelParams
    from cardamage.model.heads import build_model
    from cardamage.model.io import ModelInfo, save_model

    rows = ["| input px | predict ms/photo | vs first |", "|---|---|---|"]
    first = None
    for size in sizes:
        path = out / f"speed_{size}.keras"
        if not path.is_file():
            net = build_model(ModelParams(backbone="efficientnetlite_b0", backbone_preset=None, input_size=size), 2)
            save_model(net, path, ModelInfo(classes=["damage"], input_size=size))
        ms = predict_ms(path, photos)
        first = first or ms
        rows.append(f"| {size} | {ms:.1f} | {ms / first:.2f}x |")
    return "\n".join(rows)


def presets_dir(args: argparse.Namespace) -> Path:
    """The folder holding the Lite1 / Lite2 presets: beside ``--preset`` (Lite0's)."""
    return args.preset.parent


def ensure_presets(args: argparse.Namespace) -> None:
    """Import every ImageNet preset the chosen variants name (Lite0 at ``--preset``), once."""
    wanted = {"efficientnet-lite0": args.preset}
    for name in args.variants:
        for pair in VARIANTS[name][0]:
            if pair.startswith("model.backbone_preset={presets}/"):
                source = pair.rsplit("/", 1)[1]
                wanted[source] = presets_dir(args) / source
    for source, folder in wanted.items():
        if not (folder / "config.json").is_file():
            run([str(BIN), "backbone", "import", source, str(folder)], args.out / f"import_{source}.log")


def variant_pairs(name: str, args: argparse.Namespace) -> list[str]:
    """The ``--set`` pairs of one variant's train and evaluate commands (later pairs win)."""
    sets, base = VARIANTS[name]
    folder = args.out / (base or name)
    return data_overrides(args.dataset) + ["data.test_splits=[valid]", "model.backbone=efficientnetlite_b0",
                                           f"model.backbone_preset={args.preset}", f"train.seed={args.seed}",
                                           f"train.history_csv={folder / 'history.csv'}",
                                           f"evaluate.plots_dir={args.out / name / 'plots'}",
                                           *(s.replace("{presets}", str(presets_dir(args))) for s in sets)]


def run_variant(name: str, args: argparse.Namespace) -> dict:
    """Train (unless a TTA variant) and evaluate one variant; its metrics, minutes and model path."""
    _, base = VARIANTS[name]
    folder = args.out / (base or name)
    model, metrics = folder / "model.keras", args.out / name / "metrics.json"
    metrics.parent.mkdir(parents=True, exist_ok=True)
    pairs = variant_pairs(name, args)
    log = args.out / f"{name}.log"
    minutes = 0.0
    if base is None:
        minutes = run([str(BIN), "train", "--model", str(model)] + _sets(pairs), log) / 60
    run([str(BIN), "evaluate", "--model", str(model), "--out", str(metrics)] + _sets(pairs), log)
    result = json.loads(metrics.read_text())
    return {"damage_iou": result["damage_iou"], "mean_iou": result["mean_iou"],
            "mask_ap": (result.get("mask_ap") or {}).get("mask_ap"), "train_minutes": round(minutes, 1),
            "model": str(model), "tta": base is not None, "iou": result.get("iou"),
            "mask_ap_per_class": (result.get("mask_ap") or {}).get("per_class")}


def class_table(results: dict[str, dict]) -> str:
    """Per-class IoU and mask AP of the variants with several damage classes (empty when there is none)."""
    rows = []
    for name, m in results.items():
        iou = {k: v for k, v in (m.get("iou") or {}).items() if k != "background"}
        if len(iou) < 2:
            continue
        ap = m.get("mask_ap_per_class") or {}
        rows += [f"\n{name}: per damage type", "| type | IoU | mask AP |", "|---|---|---|"]
        for cls, value in iou.items():
            a = ap.get(cls)
            rows.append(f"| {cls} | {value:.4f} | {f'{a:.3f}' if a is not None else '-'} |")
    return "\n".join(rows)


def table(results: dict[str, dict], baseline_ms: float | None) -> str:
    """Markdown table of the headline figures; predict time relative to the first variant's."""
    rows = ["| variant | damage IoU | mean IoU | mask AP | train min | predict ms/photo | vs baseline |",
            "|---|---|---|---|---|---|---|"]
    for name, m in results.items():
        ms = m.get("predict_ms")
        ratio = f"{ms / baseline_ms:.2f}x" if ms and baseline_ms else "-"
        ap = f"{m['mask_ap']:.3f}" if m.get("mask_ap") is not None else "-"
        rows.append(f"| {name} | {m['damage_iou']:.4f} | {m['mean_iou']:.4f} | {ap} | {m['train_minutes']} "
                    f"| {ms if ms else '-'} | {ratio} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/quality_table"))
    p.add_argument("--dataset", type=Path, default=DATASET)
    p.add_argument("--preset", type=Path, default=None, help="imported Lite0 preset (default: OUT/lite0_imagenet)")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["lite0_128", "lite0_256", "lite0_256_tta"])
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--timing-photos", type=int, default=16, help="valid photos timed for predict ms/photo")
    p.add_argument("--redo", action="store_true", help="rerun variants already in OUT/summary.json")
    p.add_argument("--speed-sizes", default=None,
                   help="only time predict at these input sizes (e.g. 128,160,256), untrained models, no training")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.speed_sizes:
        photos = sorted((args.dataset / "valid").glob("*.jpg"))[:args.timing_photos]
        print(speed_table([int(v) for v in args.speed_sizes.split(",")], photos, args.out))
        return 0
    args.preset = args.preset or args.out / "lite0_imagenet"
    ensure_presets(args)
    summary = args.out / "summary.json"
    results = json.loads(summary.read_text()) if summary.is_file() else {}
    for name in args.variants:
        if name not in results or args.redo:
            results[name] = run_variant(name, args)
            summary.write_text(json.dumps(results, indent=2))
    photos = sorted((args.dataset / "valid").glob("*.jpg"))[:args.timing_photos]
    for name in args.variants:  # timed together, in one process, after training: comparable figures
        results[name]["predict_ms"] = round(predict_ms(Path(results[name]["model"]), photos, results[name]["tta"]), 1)
    summary.write_text(json.dumps(results, indent=2))
    print(table({n: results[n] for n in args.variants}, results[args.variants[0]].get("predict_ms")))
    print(class_table({n: results[n] for n in args.variants}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
