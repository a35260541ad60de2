"""Simulated active learning: does a strategy reach a good model with fewer labels than random?

A fully labelled pool plays the oracle. For every strategy and seed::

    label `initial` random photos (the same ones for every strategy of a seed)
    repeat `rounds` times: train -> evaluate on the validation split -> score the unlabelled pool
                           -> select `budget` photos -> "label" them (reveal their masks)
    train and evaluate once more

The result (``simulate.out``) holds every curve, a model trained on the whole pool as the
reference, and per strategy the labelling effort at which the mean curve first reaches
``target_fraction`` of the whole-pool model's ``target_metric`` (damage IoU by default);
``simulate.plot`` draws that metric against effort, one line per strategy with a min-max band over
the seeds (:mod:`cardamage.active.simulate_results`).

Affordable on 2 CPU cores because the backbone is FROZEN (the learner is
:mod:`cardamage.model.frozen`): its feature pyramid (strides 4, 8, 16, 32) and pooled embedding
(spatial mean of the stride-32 map, as :func:`cardamage.model.inference.predict_with_embeddings`)
are computed once per photo at ``simulate.input_size`` (default 128 px, letterboxed as in
:mod:`cardamage.model.inputs`) and cached to ``.npz`` in ``simulate.cache_dir``. Each round retrains
from scratch only a small FPN-style decoder head (:func:`cardamage.model.heads.build_light_head`:
1x1 lateral convs summed top-down to stride 8, one 3x3 conv-BN-ReLU, a 1x1 fusion with the
stride-4 map, dropout, 1x1 classifier, bilinear upsampling to the input size; loss =
:class:`cardamage.model.losses.SegmentationLoss`, class-weighted cross-entropy + Dice as in
training; Adam, per-epoch cosine decay by default). MC-dropout (BALD)
samples only the head's dropout and classifier; acquisition scores are computed on the head's
stride-4 probabilities. The backbone is ``simulate.backbone`` (default: ``model.backbone``) with
``simulate.backbone_preset`` (default: ``model.backbone_preset``; ``null`` = random init, which
makes weak features; ``cardamage backbone import efficientnet-lite0 DIR`` makes an ImageNet one).

Every finished round is saved to ``simulate.state_file`` (JSON, atomic): running the command again
resumes where it stopped; ``max_rounds`` stops each run after that round.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cardamage.active.pseudo import PSEUDO_SUFFIX, fit_with_pseudo, is_pseudo_arm
from cardamage.active.selection import select_batch
from cardamage.active.simulate_regions import (
    REGION_SUFFIX,
    arm_strategy,
    effort_of,
    is_region_arm,
    labelled_masks,
    select_regions_round,
)
from cardamage.active.simulate_results import check_fraction, plot_curves, summarise
from cardamage.active.strategies import MC_SAMPLES, ScoreBatch, SelectContext, get_strategy, strategy_names
from cardamage.config import Params
from cardamage.data.reviewed import IGNORE_INDEX
from cardamage.errors import BadInputError, BadParameterError
from cardamage.fileio import write_json
from cardamage.model.frozen import FeatureBank, HeadTrainer, backbone_config, evaluate_head, load_bank, predict_head

if TYPE_CHECKING:
    from cardamage.model.heads import Head

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- one round

def pool_scores(params: Params, head: Head, bank: FeatureBank, unlabelled: np.ndarray,
                strategy: str) -> pd.DataFrame:
    """A scores table (as ``cardamage score`` writes) for the unlabelled pool photos ``unlabelled``.

    Only the score columns that ``strategy``'s selection reads are computed (its own, or the
    ``select.hybrid_score`` column for ``hybrid``), with MC samples when one of them needs them.
    """
    table = pd.DataFrame({"id": [f"{i:08d}" for i in unlabelled], "path": [bank.paths[i] for i in unlabelled],
                          "embedding": list(bank.embeddings[unlabelled])})
    sel = params.select
    ctx = SelectContext(params.simulate.budget, hybrid_factor=sel.hybrid_factor, hybrid_score=sel.hybrid_score)
    scorers = [get_strategy(name) for name in get_strategy(strategy).requires(ctx)]
    if not scorers:
        return table
    mc = params.simulate.mc_samples if any(MC_SAMPLES in s.needs for s in scorers) else 0
    parts: list[dict[str, np.ndarray]] = []
    for index, probs, samples in predict_head(head, bank, unlabelled, mc):
        stride = bank.masks.shape[1] // probs.shape[1]  # probabilities at stride 4: padding from the masks
        valid = bank.masks[index][:, ::stride, ::stride] != IGNORE_INDEX
        batch = ScoreBatch(probs, valid, samples, [f"{i:08d}" for i in index], params.score)
        parts.append({c: v for s in scorers for c, v in s.score(batch).items()})
    for column in parts[0]:
        values = np.concatenate([p[column] for p in parts])
        table[column] = list(values) if values.ndim == 2 else values
    return table


def select_round(params: Params, strategy: str, seed: int, round_no: int, head: Head, bank: FeatureBank,
                 labelled: list[int]) -> list[int]:
    """Indices of the next ``simulate.budget`` pool photos to "label" for one run."""
    taken = set(labelled)
    unlabelled = np.array([i for i in range(len(bank.paths)) if i not in taken], np.int64)
    if not len(unlabelled):
        return []
    table = pool_scores(params, head, bank, unlabelled, strategy)
    picked = select_batch(table, strategy, params.simulate.budget, seed=seed * 1000 + round_no,
                          labelled_embeddings=bank.embeddings[labelled],
                          hybrid_factor=params.select.hybrid_factor, hybrid_score=params.select.hybrid_score,
                          stochastic=params.select.stochastic, temperature=params.select.temperature,
                          cold_start_below=params.select.cold_start_below)
    return [int(i) for i in picked["id"]]


# ----------------------------------------------------------------------------- state

def _config(params: Params, n_pool: int, n_val: int) -> dict[str, Any]:
    sim = params.simulate
    keys = ("initial", "rounds", "budget", "input_size", "head_filters", "head_restarts", "tune_stages", "dropout",
            "epochs", "min_steps", "batch_size", "learning_rate", "lr_schedule", "mc_samples", "max_pool", "max_val")
    return {**{k: getattr(sim, k) for k in keys}, "backbone": backbone_config(params),
            "data_root": str(params.data.root), "train_splits": params.data.train_splits,
            "val_splits": params.data.val_splits, "classes": params.data.classes,
            "class_map": params.data.class_map, "reduction": params.score.reduction,
            "topk_percent": params.score.topk_percent, "hybrid_factor": params.select.hybrid_factor,
            "hybrid_score": params.select.hybrid_score, "n_pool": n_pool, "n_val": n_val,
            "task_cost": sim.task_cost, "region_grid": params.score.region_grid,
            "region_margin": params.labelstudio.region_margin,
            "max_regions_per_photo": params.select.max_regions_per_photo,
            "pseudo": [sim.pseudo_threshold, sim.pseudo_ratio, sim.pseudo_ramp_rounds],
            "pseudo_generations": sim.pseudo_generations}


#: Config keys that may change between runs of one state: more rounds extend the finished runs.
_EXTENDABLE = ("rounds",)
#: Keys newer than some saved states, with the value such a state was run with.
NEWER_KEYS = {"head_restarts": 1, "tune_stages": 0, "pseudo_generations": 1}


def saved_config(state: dict[str, Any]) -> dict[str, Any]:
    """A saved state's configuration, with :data:`NEWER_KEYS` it predates filled in as it ran."""
    return {**NEWER_KEYS, **(state.get("config") or {})}


def differing_keys(a: dict[str, Any], b: dict[str, Any], ignore: Sequence[str] = _EXTENDABLE) -> list[str]:
    """The configuration keys (sorted) whose values differ between ``a`` and ``b``, apart from ``ignore``."""
    return sorted(k for k in set(a) | set(b) if k not in ignore and a.get(k) != b.get(k))


def load_state(path: Path, config: dict[str, Any], fresh: bool) -> dict[str, Any]:
    """The saved state for ``config`` (a new one when absent or ``fresh``).

    Strategies and seeds may be added, and ``rounds`` raised, without starting over. A state saved
    by an older version, without a newer configuration key, counts as run with the value it had then
    (:data:`NEWER_KEYS`, e.g. one head per fit), so it resumes only when that value is kept.

    Raises:
        ValueError: the file was written for another configuration.
    """
    if fresh or not path.is_file():
        return {"config": config, "runs": {}, "full_pool": None}
    state = json.loads(path.read_text(encoding="utf-8"))
    saved = saved_config(state)  # a key the saved state lacks came with a newer version: its default applied
    now = {k: v for k, v in json.loads(json.dumps(config)).items() if k in saved}
    differ = differing_keys(now, saved)
    if differ:
        raise BadInputError(f"{path}: saved for another simulation configuration (differs in {', '.join(differ)}); "
                            "run with --fresh or set simulate.state_file to another file")
    state["config"] = config
    log.info("resuming from %s", path)
    return state


def merge_states(states: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """One state from several runs of the same simulation (e.g. seeds run on different machines).

    The configurations must match apart from ``rounds``; runs and whole-pool reference fits are
    joined (the reference's means over the union of its seeds), and a run or reference seed held by
    two states must hold the same figures; a reference saved as its mean only must be the mean of the
    per-seed fits the others hold. ``names`` name the states in errors (their files).

    Raises:
        BadInputError: the states are of different simulations, or disagree on a run.
    """
    if len(states) == 1:
        return states[0]
    merged = {"config": states[0].get("config"), "runs": {}, "full_pool": None}
    refs: dict[int, dict[str, Any]] = {}
    for state, name in zip(states, names):
        differ = differing_keys(saved_config(state), saved_config(states[0]))
        if differ:
            raise BadInputError(f"{name}: another simulation than {names[0]} (differs in {', '.join(differ)})")
        for key, run in state["runs"].items():
            if merged["runs"].setdefault(key, run) != run:
                raise BadInputError(f"{name}: run {key} differs from the one in an earlier state")
        full = state.get("full_pool")
        for ref in (full or {}).get("runs", []):
            if refs.setdefault(ref["seed"], ref) != ref:
                raise BadInputError(f"{name}: the whole-pool fit of seed {ref['seed']} differs from an earlier state's")
        if full and not full.get("runs"):  # a reference without per-seed fits: it must be the same one
            if (merged["full_pool"] or full) != full:
                raise BadInputError(f"{name}: its whole-pool reference differs from an earlier state's")
            merged["full_pool"] = full
    if refs:
        runs = [refs[seed] for seed in sorted(refs)]
        labelled = next(s["full_pool"]["labelled"] for s in states if s.get("full_pool"))
        joined = {"runs": runs, "labelled": labelled,
                  **{m: float(np.mean([r[m] for r in runs])) for m in ("mean_iou", "damage_iou")}}
        mean_only = merged["full_pool"]
        if mean_only and any(not np.isclose(mean_only.get(m, np.nan), joined[m]) for m in ("mean_iou", "damage_iou")):
            raise BadInputError(f"the whole-pool reference of {', '.join(names)}: one state holds only its mean "
                                f"(damage IoU {mean_only.get('damage_iou')}), which is not the mean of the others' "
                                f"per-seed fits ({joined['damage_iou']:.4f})")
        merged["full_pool"] = joined
    return merged


def run_one(params: Params, state: dict[str, Any], state_path: Path, trainer: HeadTrainer, strategy: str,
            seed: int, pool: FeatureBank, val: FeatureBank, max_rounds: int | None) -> dict[str, Any]:
    """Advance one (arm, seed) run as far as allowed, saving the state after every round.

    A round trains on what is labelled, evaluates, and (unless it is the last) selects the next
    photos (or regions, for a ``<strategy>@region`` arm). A run that ended at a smaller ``rounds``
    first retrains its last model (same seed; models are not saved) to select, then goes on.
    """
    sim = params.simulate
    num_classes = len(params.data.classes) + 1
    run = state["runs"].setdefault(f"{strategy}/{seed}", {"strategy": strategy, "seed": seed, "history": [],
                                                          "labelled": _initial(len(pool.paths), sim.initial, seed)})
    run.setdefault("regions", [])
    last = sim.rounds if max_rounds is None else min(sim.rounds, max_rounds)
    history = run["history"]
    if history and _tasks(run) == history[-1].get("tasks", history[-1]["labelled"]) and len(history) <= last:
        prev = len(history) - 1
        _select(params, run, prev, fit_run(params, trainer, pool, run, seed * 1000 + prev, prev), pool)
        write_json(state_path, state)
    while len(history) <= last:
        round_no = len(history)
        start = time.perf_counter()
        head = fit_run(params, trainer, pool, run, seed * 1000 + round_no, round_no)
        metrics = evaluate_head(head, val, num_classes)
        effort, tasks = effort_of(pool, run["labelled"], run["regions"], params.score.region_grid,
                                  params.labelstudio.region_margin, sim.task_cost)
        history.append({"round": round_no, "labelled": len(run["labelled"]), "regions": len(run["regions"]),
                        "effort": round(effort, 3), "tasks": tasks, **metrics,
                        "seconds": round(time.perf_counter() - start, 2)})
        if round_no < sim.rounds:
            _select(params, run, round_no, head, pool)
        write_json(state_path, state)
        log.info("%s seed %d round %d: effort %.1f (%d tasks), val mean IoU %.4f", strategy, seed, round_no,
                 effort, tasks, metrics["mean_iou"])
    return run


def _tasks(run: dict[str, Any]) -> int:
    return len(run["labelled"]) + len(run["regions"])


def fit_run(params: Params, trainer: HeadTrainer, pool: FeatureBank, run: dict[str, Any], seed: int,
            round_no: int) -> Head:
    """Train a head on what ``run`` has labelled (whole photos, and crops of the others); a ``+pseudo``
    arm adds confident pseudo-labels (:mod:`cardamage.active.pseudo`).

    ``run``: ``{"labelled": [photo], "regions": [[photo, cell]], "strategy": arm}`` (a saved run's
    keys); ``seed``: the fit's seed, ``round_no``: the round (it ramps the pseudo-labels up)."""
    if not run["regions"] and not is_pseudo_arm(run["strategy"]):
        return trainer.fit(pool, np.array(run["labelled"]), seed)
    index, masks = labelled_masks(pool, run["labelled"], run["regions"], params.score.region_grid,
                                  params.labelstudio.region_margin)
    if is_pseudo_arm(run["strategy"]):
        return fit_with_pseudo(params, trainer, pool, index, masks, seed, round_no)
    return trainer.fit(pool, index, seed, masks)


def _select(params: Params, run: dict[str, Any], round_no: int, head: Head, pool: FeatureBank) -> None:
    """Add the next round's picks to ``run`` (photos, or regions for a region arm)."""
    arm, seed = run["strategy"], run["seed"]
    if is_region_arm(arm):
        run["regions"] = run["regions"] + select_regions_round(params, arm, seed, round_no, head, pool,
                                                               run["labelled"], run["regions"])
    else:
        run["labelled"] = run["labelled"] + select_round(params, arm_strategy(arm), seed, round_no, head, pool,
                                                         run["labelled"])


def _initial(n: int, k: int, seed: int) -> list[int]:
    """The seed labels of a run: the same ``k`` random pool photos for every strategy of a seed."""
    return sorted(int(i) for i in np.random.default_rng(seed).choice(n, size=min(k, n), replace=False))


def full_pool_reference(params: Params, state: dict[str, Any], state_path: Path, trainer: HeadTrainer,
                        pool: FeatureBank, val: FeatureBank) -> dict[str, Any]:
    """Mean IoU of heads trained on the whole pool (one per seed), cached in the state."""
    ref = state.get("full_pool") or {"runs": []}
    num_classes = len(params.data.classes) + 1
    for seed in params.simulate.seeds[len(ref["runs"]):]:
        head = trainer.fit(pool, np.arange(len(pool.paths)), seed * 1000 + 999)
        ref["runs"].append({"seed": seed, **evaluate_head(head, val, num_classes)})
        ref["mean_iou"] = float(np.mean([r["mean_iou"] for r in ref["runs"]]))
        ref["damage_iou"] = float(np.mean([r["damage_iou"] for r in ref["runs"]]))
        ref["labelled"] = len(pool.paths)
        state["full_pool"] = ref
        write_json(state_path, state)
    return ref


# ----------------------------------------------------------------------------- the simulation

def run_simulation(params: Params, max_rounds: int | None = None, fresh: bool = False) -> dict[str, Any]:
    """``cardamage simulate``: run (or resume) every strategy x seed, write the JSON and the plot.

    Returns:
        The result written to ``simulate.out``.
    """
    sim = params.simulate
    arms = list(sim.strategies) + [s + REGION_SUFFIX for s in sim.region_strategies]
    arms += [a + PSEUDO_SUFFIX for a in sim.pseudo_arms]
    bad = [s for s in map(arm_strategy, arms) if s not in strategy_names()]
    if bad or not arms or not sim.seeds:
        raise BadParameterError(f"simulate.strategies: need strategies from {', '.join(strategy_names())} and "
                                f"seeds, got {sim.strategies} / {sim.seeds}")
    if sim.initial < 1 or sim.budget < 1 or sim.rounds < 0 or sim.head_restarts < 1:
        raise BadParameterError(f"simulate: initial, budget and head_restarts must be >= 1 and rounds >= 0, got "
                         f"{sim.initial} / {sim.budget} / {sim.head_restarts} / {sim.rounds}")
    if sim.tune_stages < 0 or sim.pseudo_generations < 1:
        raise BadParameterError(f"simulate: tune_stages must be >= 0 (0: the backbone stays frozen) and "
                                f"pseudo_generations >= 1, got {sim.tune_stages} / {sim.pseudo_generations}")
    check_fraction(sim.target_fraction)  # before hours of training, not at the summary
    pool = load_bank(params, params.data.train_splits, sim.max_pool)
    val = load_bank(params, params.data.val_splits, sim.max_val)
    if sim.initial + sim.rounds * sim.budget > len(pool.paths):
        needed = sim.initial + sim.rounds * sim.budget
        raise BadParameterError(f"simulate: initial + rounds x budget = {needed} photos, "
                         f"but the pool has {len(pool.paths)}")
    state_path = Path(sim.state_file)
    state = load_state(state_path, _config(params, len(pool.paths), len(val.paths)), fresh)
    trainer = HeadTrainer(params, pool)
    full_pool_reference(params, state, state_path, trainer, pool, val)  # first: a stopped run knows its target
    for seed in sim.seeds:
        for arm in arms:
            run_one(params, state, state_path, trainer, arm, seed, pool, val, max_rounds)
    complete = max_rounds is None or max_rounds >= sim.rounds
    strategies = list(dict.fromkeys([*arms, *(r["strategy"] for r in state["runs"].values())]))
    result = summarise(state, strategies, sim.target_fraction, complete, metric=sim.target_metric)
    write_json(sim.out, result)
    plot_curves(result, sim.plot)
    return result
