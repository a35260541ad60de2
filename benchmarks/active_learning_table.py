"""Issue 13: labelling effort to reach 95 % of the whole-pool model, per arm, on the bilgi pool.

Runs (or resumes) ``cardamage simulate`` on bilgi (pool = ``train``, validation = ``valid``, every
damage type mapped to one ``damage`` class, frozen ImageNet EfficientNet-Lite0 features at 128 px)
and prints the headline table: per arm the seed-mean effort to the target, the band over seeds
(each seed's own first crossing), the tasks, the ratio to random whole photos, and the noise floor.
The command is printed before it runs, so the figures can be reproduced by hand; every round is
saved, so a killed run resumes where it stopped.

    python benchmarks/active_learning_table.py --out reports/al_bilgi --seeds 0 1 2 --rounds 8

Random whole photos need far more effort than the other arms, and random picks do not depend on the
model, so its curve can be traced further with larger rounds in a run of its own, then used as the
baseline of the table (same configuration apart from ``budget`` and ``rounds``; crossings are
interpolated linearly between rounds, so arms with rounds of different sizes compare fairly)::

    python benchmarks/active_learning_table.py --out reports/al_random --strategies random \
        --region-strategies --budget 150 --rounds 7 --cache reports/al_bilgi/cache
    python benchmarks/active_learning_table.py --out reports/al_bilgi --summary-only \
        --baseline reports/al_random

Seeds run apart (another machine, another ``--out`` started with ``--reference-from FIRST_OUT``, so
the whole-pool reference is taken over instead of fitted again) join in the table with
``--summary-only --also OTHER_OUT``, and several random runs with ``--baseline DIR DIR``. A random
baseline with larger rounds may take the reference too (``--budget`` is the only setting it may change).

Other settings of a run (a variant arm) go in with ``--set KEY=VALUE``, e.g. ``--set score.region_grid=3``.

``--summary-only --fraction 0.9`` prints the same table at another target (90 % of the whole-pool model),
to show how the ratio moves as the target nears an arm's plateau.

Needs ``../shared/datasets/bilgi-car-damage`` and the ``import`` extra (the ImageNet backbone is
imported into ``OUT/lite0_imagenet`` when missing). Several hours on 2 cores for 3 seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_pretrained import BIN, DATASET, _sets, data_overrides, run  # noqa: E402

from cardamage.active.simulate_results import share  # noqa: E402


def _list(values: list) -> str:
    return "[" + ", ".join(str(v) for v in values) + "]"


def overrides(args: argparse.Namespace) -> list[str]:
    """The ``--set`` pairs of the headline run (data, backbone, arms, seeds, rounds, output files)."""
    out = args.out
    return data_overrides(args.dataset) + [
        "simulate.backbone=efficientnetlite_b0", f"simulate.backbone_preset={args.preset}",
        f"simulate.strategies={_list(args.strategies)}", f"simulate.region_strategies={_list(args.region_strategies)}",
        f"simulate.pseudo_arms={_list(args.pseudo_arms)}", f"simulate.seeds={_list(args.seeds)}",
        f"simulate.rounds={args.rounds}", f"simulate.budget={args.budget}",
        f"simulate.head_restarts={args.head_restarts}", f"simulate.tune_stages={args.tune_stages}",
        f"simulate.cache_dir={args.cache or out / 'cache'}",
        f"simulate.state_file={out / 'state.json'}", f"simulate.out={out / 'active_learning.json'}",
        f"simulate.plot={out / 'active_learning.png'}", f"simulate.target_metric={args.metric}", *args.set]


def table(result: dict, baseline: float | None = None) -> str:
    """Markdown table of effort to target per arm, with each seed's crossing as the band.

    "interpolated" is the seed-mean curve's crossing, linear between rounds; its ratio is to this run's
    random arm, or to ``baseline`` (the random arm of a run with larger rounds, :func:`baseline_random`).
    """
    rows = ["| arm | seeds | effort to target (seed mean) | band over seeds | tasks | vs random photos "
            "| interpolated | per seed (interpolated) | vs random (interpolated) |",
            "|---|---:|---:|---|---:|---:|---:|---|---:|"]
    interp = result.get("effort_to_target_interpolated", {})
    base = baseline or interp.get("random")
    per_seed = result.get("effort_to_target_per_seed", {})
    interp_seed = result.get("effort_to_target_interpolated_per_seed", {})
    for arm, curve in result["curves"].items():
        effort = result["effort_to_target"].get(arm)
        last = curve["effort"][-1]
        rel = result["effort_relative_to_random"].get(arm)
        tasks = result["tasks_to_target"].get(arm)
        rows.append(f"| {arm} | {len(curve['seeds'])} | {f'{effort:g}' if effort else '> ' + str(last)} "
                    f"| {_band(per_seed.get(arm, {}), last)} | {f'{tasks:g}' if tasks else '-'} "
                    f"| {f'{rel:.2f}x' if rel else '-'} "
                    f"| {_opt(interp.get(arm), '{:g}')} | {_band(interp_seed.get(arm, {}), last)} "
                    f"| {_opt(interp.get(arm) / base if interp.get(arm) and base else None, '{:.2f}x')} |")
    ref, noise = result.get("full_pool"), result.get("noise_floor")
    metric = result.get("target_metric", "mean_iou")
    if ref:
        rows.append(f"\nwhole pool ({ref['labelled']} photos): {metric} {ref[metric]:.4f}; target "
                    f"{share(result['target_fraction'])} = {result.get('target', result.get('target_mean_iou')):.4f}")
    if baseline:
        rows.append(f"random whole photos, from the baseline run (larger rounds): {baseline:g} effort")
    if noise:
        rows.append(f"noise floor (random over seeds, max-min {metric} per round): mean "
                    f"{noise['mean_seed_spread']:.4f}, largest {noise['max_seed_spread']:.4f}")
    return "\n".join(rows)


def _band(seeds: dict, last: float) -> str:
    """Each seed's crossing, ``seed: effort`` (``> last`` for a seed that never reached the target)."""
    return ", ".join(f"{s}: {e:g}" if e else f"{s}: > {last:g}" for s, e in seeds.items()) or "-"


def _opt(value: float | None, fmt: str) -> str:
    return fmt.format(value) if value else "-"


def load_states(folders: list[Path]) -> dict:
    """The saved states of ``folders`` (runs of one simulation, e.g. seeds run apart) as one state."""
    from cardamage.active.simulate import merge_states
    from cardamage.errors import BadInputError

    paths = [folder / "state.json" for folder in folders]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise SystemExit(f"no saved state: {', '.join(missing)}")
    try:
        return merge_states([json.loads(path.read_text()) for path in paths], [str(path) for path in paths])
    except BadInputError as err:
        raise SystemExit(str(err)) from None


def take_reference(source: Path, out: Path, budget: int | None = None) -> None:
    """Start ``out/state.json`` as ``source/state.json`` with no runs: its whole-pool reference (and
    configuration) without its seeds. ``budget`` (photos per round; ``None``: the source's) may differ,
    since the whole-pool fit does not depend on it: a random baseline with larger rounds shares the
    reference. Refused when ``out`` already holds a state; the simulation then refuses any other
    setting that differs from the source's."""
    from cardamage.fileio import write_json

    src, dest = source / "state.json", out / "state.json"
    if dest.is_file():
        raise SystemExit(f"--reference-from: {dest} exists (it already has a reference); drop the flag to resume")
    state = load_states([source])
    if not state.get("full_pool"):
        raise SystemExit(f"--reference-from: {src} has no whole-pool reference yet")
    config = {**state["config"], **({} if budget is None else {"budget": budget})}
    write_json(dest, {**state, "config": config, "runs": {}})


def baseline_random(state: dict, folders: list[Path], fraction: float, metric: str) -> float | None:
    """Interpolated effort at which the random arm of the run in ``folders`` (one state, or several
    merged: :func:`load_states`) reaches this run's target.

    ``state``: this run's saved state or its result JSON (either has ``config`` and ``full_pool``).

    Random picks do not depend on the model, so a run with larger rounds (``simulate.budget``) traces
    the same curve further for less training; every other setting must match. The target is this
    run's whole-pool reference, so both arms are judged against one figure.
    """
    from cardamage.active.simulate import differing_keys, saved_config
    from cardamage.active.simulate_results import summarise

    other = load_states(folders)
    differ = differing_keys(saved_config(state), saved_config(other), ignore=("rounds", "budget"))
    if differ:
        raise SystemExit(f"{folders[0]}: not the same simulation as this one (differs in {', '.join(differ)})")
    other["full_pool"] = state["full_pool"]
    result = summarise(other, ["random"], fraction, complete=False, metric=metric)
    return result["effort_to_target_interpolated"].get("random")


def summary_only(args: argparse.Namespace) -> int:
    """The table of the saved state (every arm and seed run so far), for ``args.metric``."""
    from cardamage.active.simulate_results import check_fraction, summarise
    from cardamage.config import load_params
    from cardamage.errors import BadParameterError

    fraction = load_params().simulate.target_fraction if args.fraction is None else args.fraction
    try:
        check_fraction(fraction)
    except BadParameterError as err:
        raise SystemExit(f"--fraction: {err}") from None
    state = load_states([args.out, *args.also])
    arms = list(dict.fromkeys(r["strategy"] for r in state["runs"].values()))
    baseline = baseline_random(state, args.baseline, fraction, args.metric) if args.baseline else None
    print(table(summarise(state, arms, fraction, complete=False, metric=args.metric), baseline))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("reports/al_bilgi"))
    p.add_argument("--dataset", type=Path, default=DATASET)
    p.add_argument("--preset", type=Path, default=None, help="imported Lite0 preset (default: OUT/lite0_imagenet)")
    p.add_argument("--strategies", nargs="*", default=["random"], help="whole-photo arms")
    p.add_argument("--region-strategies", nargs="*", default=["entropy"], help="region arms (NAME@region)")
    p.add_argument("--pseudo-arms", nargs="*", default=[], help="arms that also train on pseudo-labels")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--budget", type=int, default=50, help="photos per round (simulate.budget)")
    p.add_argument("--cache", type=Path, default=None, help="feature cache folder (default: OUT/cache)")
    p.add_argument("--head-restarts", type=int, default=1,
                   help="heads averaged per fit (simulate.head_restarts; K x the training time)")
    p.add_argument("--tune-stages", type=int, default=0,
                   help="last backbone stages fine-tuned with the head each fit (simulate.tune_stages)")
    p.add_argument("--reference-from", type=Path, default=None,
                   help="start a new OUT from this run's whole-pool reference (more seeds run apart; "
                        "join them with --summary-only --also)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other params.yaml setting of the run (repeatable), e.g. score.region_grid=3")
    p.add_argument("--max-rounds", type=int, default=None, help="stop every run after this round (resume later)")
    p.add_argument("--metric", choices=["damage_iou", "mean_iou"], default="damage_iou",
                   help="target metric (simulate.target_metric)")
    p.add_argument("--baseline", type=Path, nargs="+", default=None,
                   help="a run of the random arm with larger rounds (--budget) whose "
                        "interpolated crossing is the random baseline (several folders: their seeds joined)")
    p.add_argument("--also", type=Path, nargs="*", default=[],
                   help="with --summary-only: more runs of this simulation (e.g. other seeds, run "
                        "elsewhere) whose seeds join OUT's in the table")
    p.add_argument("--summary-only", action="store_true",
                   help="print the table from OUT/state.json as it stands (no training; any --metric)")
    p.add_argument("--fraction", type=float, default=None,
                   help="with --summary-only: the target as a share of the whole-pool model "
                        "(default simulate.target_fraction, 0.95), to see how the ratio moves with it")
    args = p.parse_args(argv)
    if args.summary_only and args.reference_from:
        p.error("--reference-from starts a run; --summary-only runs nothing")
    if args.summary_only:
        return summary_only(args)
    if args.fraction is not None or args.also:
        p.error("--fraction and --also only apply with --summary-only (a run uses simulate.target_fraction)")
    if not (args.dataset / "train" / "_annotations.coco.json").is_file():
        print(f"{args.dataset}: bilgi-car-damage not found (see ../shared/datasets/README.md)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if args.reference_from:
        take_reference(args.reference_from, args.out, args.budget)
    args.preset = args.preset or args.out / "lite0_imagenet"
    log = args.out / "simulate.log"
    if not (args.preset / "config.json").is_file():
        run([str(BIN), "backbone", "import", "efficientnet-lite0", str(args.preset)], log)
    cmd = [str(BIN), "simulate"] + _sets(overrides(args))
    run(cmd + (["--max-rounds", str(args.max_rounds)] if args.max_rounds is not None else []), log)
    result = json.loads((args.out / "active_learning.json").read_text())  # carries the state's config and full pool
    baseline = baseline_random(result, args.baseline, result["target_fraction"], args.metric) if args.baseline else None
    print(table(result, baseline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
