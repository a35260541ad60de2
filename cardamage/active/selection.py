"""Batch selection: which photos of the scored pool to send for labelling next.

The strategies themselves live in the registry (:mod:`cardamage.active.strategies`); this module
holds what they share:

* :func:`select_batch`: checks, sorting by id, budget capping and ranks around a strategy's pick;
* :func:`ranked`: the highest values first (ties broken by id), skipping a photo whose perceptual
  hash is within ``near_duplicate_distance`` of a photo already in the batch;
* :func:`k_center_greedy` (Sener & Savarese 2018) on L2-normalised embeddings, starting from the
  embeddings of the photos that are already labelled, used by ``coreset`` and ``hybrid``
  (uncertainty first, then diversity: the top ``M = hybrid_factor * budget`` photos by
  ``hybrid_score``, then k-center greedy inside those ``M``);
* the ``select`` stage, :func:`run_select`.

All deterministic for a given seed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cardamage.active import acquisition as acq
from cardamage.active.balance import balanced_order
from cardamage.active.claims import with_claims
from cardamage.active.clusters import with_clusters
from cardamage.active.strategies import EMBEDDINGS, SelectContext, get_strategy
from cardamage.data.dedup import hamming_matrix
from cardamage.errors import BadInputError, BadParameterError, EmptyInputError
from cardamage.fileio import atomic_path

if TYPE_CHECKING:
    from cardamage.config import Params

log = logging.getLogger(__name__)
#: The one-line message of a selection from an empty pool.
EMPTY_POOL = "the pool has no photo left to select (all excluded, unreadable or none found)"

SELECTION_COLUMNS = ["id", "path", "score", "rank", "strategy", "reason"]

#: Raised when nothing is left to select (kept under this name for callers).
EmptyPoolError = EmptyInputError


# ----------------------------------------------------------------------------- k-center greedy

def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows of ``x [N, D]`` scaled to unit L2 norm, as C-contiguous ``float32`` (zero rows stay zero)."""
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"embeddings: expected [N, D], got shape {list(arr.shape)}")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.maximum(norms, 1e-12)


def min_sq_distances(x: np.ndarray, centres: np.ndarray, max_elements: int = 1 << 24) -> np.ndarray:
    """Squared L2 distance ``float32 [N]`` from each unit row of ``x [N, D]`` to its nearest unit ``centres [M, D]``.

    Uses ``|a - b|^2 = 2 - 2 a.b`` and processes the centres in chunks so that the temporary
    ``[N, chunk]`` product holds at most ``max_elements`` values.
    """
    best = np.full(len(x), -np.inf, np.float32)
    chunk = max(1, max_elements // max(len(x), 1))
    for start in range(0, len(centres), chunk):
        np.maximum(best, (x @ centres[start:start + chunk].T).max(axis=1), out=best)
    return np.maximum(2.0 - 2.0 * best, 0.0).astype(np.float32)


def k_center_greedy(embeddings: np.ndarray, budget: int, centres: np.ndarray | None = None,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-center selection, vectorised: O(N * (budget + M)) time, O(N) extra memory.

    A running ``min_dist [N]`` array holds each point's squared distance to its nearest centre;
    each step picks its argmax and lowers it with one matrix-vector product.

    Args:
        embeddings: ``[N, D]`` pool embeddings (L2-normalised here, float32).
        budget: number of points to pick (capped at ``N``).
        centres: ``[M, D]`` embeddings already labelled (the initial centres), or ``None``.
        seed: picks the first point when there are no initial centres.

    Returns:
        ``(indices int64 [budget], distances float32 [budget])``: picks in order and each one's
        L2 distance to its nearest centre at the time it was picked.
    """
    x = l2_normalise(embeddings)
    n = len(x)
    budget = min(int(budget), n)
    has_centres = centres is not None and len(centres) > 0
    min_dist = min_sq_distances(x, l2_normalise(centres)) if has_centres else np.full(n, np.inf, np.float32)
    picks = np.empty(budget, np.int64)
    dists = np.empty(budget, np.float32)
    rng = np.random.default_rng(seed)
    for step in range(budget):
        i = int(rng.integers(n)) if step == 0 and not has_centres else int(np.argmax(min_dist))
        picks[step], dists[step] = i, min_dist[i]
        # einsum, not BLAS: a BLAS matrix-vector call between other numpy ops pays the wake-up of its
        # thread pool each time (~5 ms on 2 busy cores, more than the product itself on small pools)
        np.minimum(min_dist, np.maximum(2.0 - 2.0 * np.einsum("ij,j->i", x, x[i]), 0.0), out=min_dist)
        min_dist[i] = -np.inf  # never picked twice, even among exact duplicates
    return picks, np.sqrt(np.where(np.isfinite(dists), dists, 4.0)).astype(np.float32)


# ----------------------------------------------------------------------------- strategies

def embedding_matrix(scores: pd.DataFrame) -> np.ndarray:
    """The ``embedding`` list column of a scores table as ``float32 [N, D]``."""
    if "embedding" not in scores.columns:
        raise BadInputError("scores: no 'embedding' column (rerun `cardamage score`)")
    if not len(scores):
        return np.zeros((0, 0), np.float32)
    return np.stack([np.asarray(e, np.float32) for e in scores["embedding"]])


def select_batch(scores: pd.DataFrame, strategy: str, budget: int, seed: int = 0,
                 labelled_embeddings: np.ndarray | None = None, hybrid_factor: float = 5.0,
                 hybrid_score: str = "entropy", near_duplicate_distance: int | None = None,
                 stochastic: str = "none", temperature: float = 1.0, cold_start_below: int = 0,
                 max_per_claim: int = 0, class_balance: bool = False) -> pd.DataFrame:
    """Choose ``budget`` photos from a scores table with a registered strategy.

    Args:
        scores: one row per candidate photo, with ``id``, ``path``, the score columns, ``embedding``
            (for strategies that need embeddings) and optionally ``phash``.
        strategy: a name from :func:`cardamage.active.strategies.strategy_names`.
        budget: photos to select; more than the pool selects the whole pool (with a warning).
        seed: for ``random`` and for the first k-center pick without labelled photos.
        labelled_embeddings: ``[M, D]`` embeddings of the labelled photos (coreset / hybrid).
        hybrid_factor: ``M = hybrid_factor * budget`` uncertain candidates for ``hybrid``.
        hybrid_score: the uncertainty column ``hybrid`` ranks by.
        near_duplicate_distance: dHash distance under which ranked picks skip near-duplicates.
        stochastic, temperature: a seeded draw weighted by the scores instead of the top scores
            (``select.stochastic``; see :func:`ranking_keys`).
        cold_start_below: with fewer labelled photos than this, ``typiclust`` picks instead of ``strategy``.
        max_per_claim: ranked picks take at most this many photos of one claim (``scores.claim``; 0: any).
        class_balance: ranked picks take turns over predicted damage types (``scores.class_shares``;
            :mod:`cardamage.active.balance`).

    Returns:
        A table with :data:`SELECTION_COLUMNS`, rank 1 first.

    Raises:
        EmptyInputError: no candidate; BadParameterError: unknown strategy, budget < 1;
        BadInputError: a score column the strategy needs is missing.
    """
    n_labelled = 0 if labelled_embeddings is None else len(labelled_embeddings)
    if n_labelled < cold_start_below and strategy != "typiclust":
        log.info("%d labelled photo(s), under select.cold_start_below=%d: typiclust instead of %s", n_labelled,
                 cold_start_below, strategy)
        strategy = "typiclust"
    chosen = get_strategy(strategy)
    if budget < 1:
        raise BadParameterError(f"select.budget: must be >= 1, got {budget}")
    if not len(scores):
        raise EmptyInputError(EMPTY_POOL)
    table = scores.sort_values("id", kind="stable").reset_index(drop=True)
    if budget > len(table):
        log.warning("budget %d is larger than the pool (%d photos): selecting all of them", budget, len(table))
        budget = len(table)
    ctx = SelectContext(budget, seed, labelled_embeddings, hybrid_factor, hybrid_score, near_duplicate_distance,
                        stochastic, temperature, max_per_claim, class_balance)
    picked = chosen.select(table, ctx).reset_index(drop=True)
    picked.insert(3, "rank", np.arange(1, len(picked) + 1))
    picked["strategy"] = strategy
    return picked[SELECTION_COLUMNS].reset_index(drop=True)


def score_column(table: pd.DataFrame, name: str) -> np.ndarray:
    """The score column ``name`` as ``float64 [N]``; :class:`BadInputError` when it is missing or empty."""
    if name not in table.columns or table[name].isna().all():
        hint = " (set score.mc_samples > 0 and rescore)" if name == "bald" else " (rescore with `cardamage score`)"
        raise BadInputError(f"scores: no {name!r} scores{hint}")
    return table[name].to_numpy(np.float64)


def ranking_keys(values: np.ndarray, ids: list[str], ctx: SelectContext | None) -> np.ndarray:
    """What :func:`ranked` sorts by (highest first): ``values [N]``, or with ``ctx.stochastic`` a
    Gumbel-perturbed key, so that taking the top ``k`` keys draws ``k`` photos without replacement
    with ``P ~ score^temperature`` (``power``) or ``exp(temperature * score)`` (``softmax``), the
    stochastic batch acquisition of Kirsch et al. (2023). The noise is a hash of ``(seed, id)``:
    the same seed and pool give the same batch, whatever the pool's order.
    """
    clean = np.nan_to_num(np.asarray(values, np.float64), nan=-np.inf)
    mode = "none" if ctx is None else ctx.stochastic
    if mode == "none":
        return clean
    if ctx.temperature <= 0:
        raise BadParameterError(f"select.temperature: must be > 0, got {ctx.temperature}")
    u = np.clip(acq.random_scores(ids, ctx.seed), 1e-12, 1 - 1e-12)
    gumbel = -np.log(-np.log(u))
    if mode == "power":
        return ctx.temperature * np.log(np.maximum(clean, 1e-12)) + gumbel
    if mode == "softmax":
        return ctx.temperature * clean + gumbel
    raise BadParameterError(f"select.stochastic: one of none, power, softmax, got {mode!r}")


def ranked(table: pd.DataFrame, values: np.ndarray, budget: int, near_duplicate_distance: int | None,
           reason: Callable[[float, int, int], str], ctx: SelectContext | None = None) -> pd.DataFrame:
    """The ``budget`` rows with the highest ``values [N]`` (ties by id), skipping near-duplicates;
    with ``ctx.stochastic``, a seeded draw weighted by the values instead (:func:`ranking_keys`).

    ``reason(value, position in the ranking (1-based), N)`` writes each pick's reason.
    """
    keys = ranking_keys(values, table["id"].tolist(), ctx)
    order = np.lexsort((table["id"].to_numpy(), -keys))
    order = balanced_order(order, table, ctx is not None and ctx.class_balance)
    chosen, skipped = skip_similar(order, table, budget, near_duplicate_distance,
                                   ctx.max_per_claim if ctx is not None else 0)
    out = table.iloc[chosen][["id", "path"]].copy()
    out["score"] = values[chosen]
    pos = {int(i): r for r, i in enumerate(order)}
    out["reason"] = [reason(float(values[i]), pos[int(i)] + 1, len(table)) for i in chosen]
    if skipped:
        log.info("skipped %d near-duplicate(s) of photos already in the batch, or photo(s) of a claim that has "
                 "select.max_per_claim photos in it", skipped)
    return out


def skip_similar(order: np.ndarray, table: pd.DataFrame, budget: int, max_distance: int | None,
                 max_per_claim: int = 0, groups: list[str] | None = None,
                 max_per_group: int = 1) -> tuple[list[int], int]:
    """Walk ``order`` and keep photos whose dHash is farther than ``max_distance`` from those kept, and
    at most ``max_per_claim`` photos of one claim (``table.claim``; ``0``: no limit).

    ``groups``: one key per row when several rows show one photo (the cells of region units, keyed
    by photo id): at most ``max_per_group`` rows of a group, and the duplicate and claim checks
    apply to a group's first row only. Without it every row is its own photo.

    Returns:
        ``(kept rows, rows skipped)``; when the checks leave the batch short, it is filled with the
        best skipped rows (still at most ``max_per_group`` of a group).
    """
    hashes = table["phash"].tolist() if max_distance is not None and "phash" in table.columns else None
    claims = table["claim"].tolist() if max_per_claim > 0 and "claim" in table.columns else None
    if hashes is None and claims is None and groups is None:
        return [int(i) for i in order[:budget]], 0
    keys = groups if groups is not None else list(range(len(table)))
    chosen: list[int] = []
    kept_hashes: list[str] = []
    per_claim: dict[str, int] = {}
    per_group: dict[object, int] = {}
    skipped = 0
    for i in (int(j) for j in order):
        if per_group.get(keys[i], 0) >= max_per_group:
            continue
        if keys[i] not in per_group:
            h = hashes[i] if hashes is not None else None
            claim = claims[i] if claims is not None else ""
            if (h and kept_hashes and int(hamming_matrix([h], kept_hashes).min()) <= max_distance) or \
                    (claim and per_claim.get(claim, 0) >= max_per_claim):
                skipped += 1
                continue
            if h:
                kept_hashes.append(h)
            if claim:
                per_claim[claim] = per_claim.get(claim, 0) + 1
        per_group[keys[i]] = per_group.get(keys[i], 0) + 1
        chosen.append(i)
        if len(chosen) == budget:
            return chosen, skipped
    taken = set(chosen)  # too many near-duplicates or one claim only: fill up with the best skipped ones
    for i in (int(j) for j in order):
        if len(chosen) == budget:
            break
        if i not in taken and per_group.get(keys[i], 0) < max_per_group:
            per_group[keys[i]] = per_group.get(keys[i], 0) + 1
            chosen.append(i)
    return chosen, skipped


def coreset(table: pd.DataFrame, budget: int, labelled: np.ndarray | None, seed: int) -> pd.DataFrame:
    """k-center greedy over the whole table (the ``coreset`` strategy)."""
    emb = embedding_matrix(table)
    picks, dists = k_center_greedy(emb, budget, labelled, seed)
    out = table.iloc[picks][["id", "path"]].copy()
    out["score"] = dists
    start = f"{len(labelled)} labelled" if labelled is not None and len(labelled) else "no labelled photos"
    out["reason"] = [f"k-center: distance {d:.4f} to nearest labelled/picked photo (from {start})" for d in dists]
    return out


def hybrid(table: pd.DataFrame, budget: int, labelled: np.ndarray | None, seed: int,
           factor: float, score_name: str, ctx: SelectContext | None = None) -> pd.DataFrame:
    """k-center greedy inside the ``factor x budget`` highest ``score_name`` rows (the ``hybrid`` strategy);
    with ``ctx.stochastic`` those rows are drawn (:func:`ranking_keys`)."""
    if factor < 1:
        raise BadParameterError(f"select.hybrid_factor: must be >= 1, got {factor}")
    values = score_column(table, score_name)
    m = min(len(table), max(budget, int(round(factor * budget))))
    top = np.lexsort((table["id"].to_numpy(), -ranking_keys(values, table["id"].tolist(), ctx)))[:m]
    picks, dists = k_center_greedy(embedding_matrix(table.iloc[top]), budget, labelled, seed)
    rows = top[picks]
    out = table.iloc[rows][["id", "path"]].copy()
    out["score"] = values[rows]
    rank_in_top = {int(r): k + 1 for k, r in enumerate(top)}
    out["reason"] = [f"{score_name} {values[r]:.4f} (#{rank_in_top[int(r)]} of top {m}), k-center distance {d:.4f}"
                     for r, d in zip(rows, dists)]
    return out


def region_batch(scores: pd.DataFrame, pool, strategy: str, budget: int, ctx: SelectContext,
                 max_per_photo: int) -> pd.DataFrame:
    """:data:`SELECTION_COLUMNS` plus ``cell`` and ``region`` (``"x,y,w,h"``, photo pixels) for ``--unit region``."""
    from cardamage.active.regions import grid_of, select_regions, with_boxes

    if not len(scores):
        raise EmptyInputError(EMPTY_POOL)
    picked = select_regions(scores, strategy, budget, ctx, max_per_photo)
    picked = with_boxes(picked, {p.sha256: p.path for p in pool.photos}, grid_of(scores))
    picked.insert(3, "rank", np.arange(1, len(picked) + 1))
    picked["strategy"] = strategy
    return picked[SELECTION_COLUMNS + ["cell", "region"]].reset_index(drop=True)


# ----------------------------------------------------------------------------- output

def write_selection(selection: pd.DataFrame, path: str) -> None:
    """Write the selection as CSV (:data:`SELECTION_COLUMNS`, then ``cell``, ``region`` and ``cluster``
    where it has them), atomically."""
    columns = SELECTION_COLUMNS + [c for c in ("cell", "region", "cluster") if c in selection.columns]
    with atomic_path(path, suffix=".csv") as tmp:
        selection[columns].to_csv(tmp, index=False)


def format_table(selection: pd.DataFrame, max_rows: int = 50) -> str:
    """A plain-text table of the selection for the terminal."""
    shown = selection.head(max_rows)
    regions = "region" in selection.columns
    lines = [f"{'rank':>4}  {'score':>8}  path" + ("  region (x,y,w,h)" if regions else "")]
    for _, row in shown.iterrows():
        lines.append(f"{int(row['rank']):>4}  {float(row['score']):8.4g}  {row['path']}"
                     + (f"  {row['region']}" if regions else ""))
    if len(selection) > max_rows:
        lines.append(f"... {len(selection) - max_rows} more in the CSV")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the select stage

def run_select(params: Params, budget: int | None = None, strategy: str | None = None, seed: int | None = None,
               scores_path: str | None = None, source: str | None = None, model_path: str | None = None,
               out: str | None = None, progress: bool = True) -> tuple[pd.DataFrame, str]:
    """``cardamage select``: (re)score the pool where needed, pick a batch, write the CSV.

    Returns:
        ``(selection, path of the CSV)``.

    Raises:
        CardamageError: empty pool, unreadable pool, bad strategy or budget (one-line messages).
    """
    from cardamage.active.scorer import load_scorer
    from cardamage.active.scoring import checked_model_version, labelled_embeddings, run_score

    sp = params.select
    strategy = strategy or sp.strategy
    budget = sp.budget if budget is None else budget
    seed = sp.seed if seed is None else seed
    chosen = get_strategy(strategy)
    if budget < 1:
        raise BadParameterError(f"--budget: must be >= 1, got {budget}")
    model_path = model_path or params.score.model_path
    pool, scores = run_score(params, source, model_path, scores_path, progress=progress)
    labelled = None
    if sp.unit != "region" and (EMBEDDINGS in chosen.needs or sp.cold_start_below > 0):
        files = [(k.sha256, k.file) for k in pool.known if k.file is not None]
        labelled = labelled_embeddings(files, lambda: load_scorer(model_path, params.score.batch_size),
                                       checked_model_version(model_path, params),
                                       params.score.labelled_embeddings, params.score.batch_size)
    near = params.data.near_duplicate_distance if sp.skip_near_duplicates else None
    if sp.max_per_claim > 0:
        scores = with_claims(scores)
    if sp.unit == "region":
        selection = region_batch(scores, pool, strategy, budget, SelectContext(
            budget, seed, None, near_duplicate_distance=near, stochastic=sp.stochastic, temperature=sp.temperature,
            max_per_claim=sp.max_per_claim, class_balance=sp.class_balance), sp.max_regions_per_photo)
    else:
        selection = select_batch(scores, strategy, budget, seed, labelled, sp.hybrid_factor, sp.hybrid_score, near,
                                 sp.stochastic, sp.temperature, sp.cold_start_below, sp.max_per_claim,
                                 sp.class_balance)
    selection = with_clusters(selection, scores, sp.clusters, seed)
    out = out or sp.out
    write_selection(selection, out)
    return selection, out
