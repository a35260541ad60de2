"""Issue 13: how much does averaging K simulation heads (``simulate.head_restarts``) lift the learner at fixed labels?

Takes the labels one run of a saved simulation had at one round (``--run entropy@region+pseudo/2
--round 9``), or the whole pool (``--run full``), retrains the round's head K times from different
seeds exactly as the simulation does (teacher and student for a ``+pseudo`` arm) and prints each
restart's validation damage IoU and that of the running ensemble (the mean of the members'
probabilities). The picks stay the ones the single-head run made, so this isolates the learner:
the spread of single restarts is the learner's own noise at those labels, the ensemble's lead over
their mean is what averaging buys.

    python benchmarks/head_restarts_probe.py --state reports/al_bilgi/state.json \
        --preset reports/al_bilgi/lite0_imagenet --run entropy@region+pseudo/2 --round 9 --restarts 3

``--no-pseudo`` trains a ``+pseudo`` run's labels alone (what the pseudo-labels add at those picks);
``--set simulate.pseudo_threshold=0.8`` or ``--set simulate.pseudo_generations=2`` tries another
pseudo-labelling at them (neither changes the whole-pool reference or random, which use none).

Uses the run's feature cache (``--cache``, default: the state's folder ``cache``). Needs
``../shared/datasets/bilgi-car-damage``. About 5 min a restart for a region + pseudo-label round on
2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_pretrained import DATASET, data_overrides  # noqa: E402


def labels_of(state: dict, run: str, round_no: int, n_pool: int) -> tuple[list[int], list, str]:
    """``(photos, regions, arm)`` labelled by ``run`` at ``round_no`` (``full``: every pool photo)."""
    if run == "full":
        return list(range(n_pool)), [], "random"
    saved = state["runs"][run]
    h = saved["history"][round_no]
    return saved["labelled"][:h["labelled"]], saved["regions"][:h["regions"]], saved["strategy"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--state", type=Path, required=True, help="a simulation's state.json")
    ap.add_argument("--preset", type=Path, required=True, help="the ImageNet Lite0 preset the run used")
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--run", default="entropy@region+pseudo/2", help="'<arm>/<seed>' or 'full' (the whole pool)")
    ap.add_argument("--round", type=int, default=9)
    ap.add_argument("--restarts", type=int, default=3)
    ap.add_argument("--dataset", type=Path, default=DATASET)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a params override for the retrained learner, e.g. simulate.tune_stages=1 (repeatable)")
    ap.add_argument("--no-pseudo", action="store_true",
                    help="train a '+pseudo' run's labels without pseudo-labels (unreviewed pixels stay ignored)")
    args = ap.parse_args(argv)

    from cardamage.active.pseudo import base_arm
    from cardamage.active.simulate import fit_run
    from cardamage.config import load_params
    from cardamage.model.frozen import RESTART_SEED_STEP, HeadEnsemble, HeadTrainer, evaluate_head, load_bank

    state = json.loads(args.state.read_text())
    if args.run != "full":
        history = state["runs"].get(args.run, {}).get("history", [])
        if not 0 <= args.round < len(history):
            runs = ", ".join(f"{k} ({len(r['history'])} rounds)" for k, r in state["runs"].items())
            raise SystemExit(f"{args.state}: no round {args.round} of run {args.run!r} (runs: {runs})")
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml", data_overrides(args.dataset) + [
        "simulate.backbone=efficientnetlite_b0", f"simulate.backbone_preset={args.preset}",
        f"simulate.cache_dir={args.cache or args.state.parent / 'cache'}", *args.set])
    pool, val = load_bank(params, params.data.train_splits, None), load_bank(params, params.data.val_splits, None)
    photos, regions, arm = labels_of(state, args.run, args.round, len(pool.paths))
    if args.no_pseudo:
        arm = base_arm(arm)
    run = {"labelled": photos, "regions": regions, "strategy": arm}
    seed = 999 if args.run == "full" else int(args.run.rsplit("/", 1)[1]) * 1000 + args.round
    print(f"{args.run} round {args.round}: {len(photos)} photos, {len(regions)} regions; seed {seed}"
          + (f"; {' '.join(args.set)}" if args.set else "") + ("; no pseudo-labels" if args.no_pseudo else ""))
    trainer, weights, singles = HeadTrainer(params, pool), [], []
    for i in range(args.restarts):
        start, s = time.perf_counter(), seed + i * RESTART_SEED_STEP
        head = fit_run(params, trainer, pool, run, s, args.round)
        weights.append(head.model.get_weights())
        singles.append(evaluate_head(head, val, trainer.num_classes)["damage_iou"])
        ensemble = evaluate_head(HeadEnsemble(head, weights), val, trainer.num_classes)["damage_iou"]
        print(f"restart {i} (seed {s}): damage IoU {singles[-1]:.4f}; ensemble of {i + 1}: "
              f"{ensemble:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    print(f"single restarts: mean {np.mean(singles):.4f}, max-min {np.ptp(singles):.4f}; ensemble of "
          f"{args.restarts} - mean of singles: {ensemble - np.mean(singles):+.4f}")


if __name__ == "__main__":
    main()
