"""Region units: score the cells of each photo and pick the most informative regions.

``cardamage score`` splits each photo (scoring always sees the whole photo, whatever
``model.resize``) into a ``score.region_grid x score.region_grid`` grid of cells and writes, for every pixel-uncertainty
strategy, a ``<strategy>_cells`` column: ``G*G`` scores per photo, row-major (cell ``k`` is row
``k // G``, column ``k % G``), each cell reduced like the photo score (``score.reduction``).

``cardamage select --unit region`` ranks all cells of the pool by that column (or draws them,
``select.stochastic``), takes at most ``select.max_regions_per_photo`` cells of one photo, skips
cells of near-duplicates of a photo already in the batch and caps photos per claim as photo
selection does. Each picked row names its cell as ``region = "x,y,width,height"`` in the photo's
pixels; ``cardamage push`` turns it into a region task (:mod:`cardamage.labelling.regions`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cardamage.active import acquisition as acq
from cardamage.active.strategies import SelectContext, get_strategy
from cardamage.errors import BadInputError, BadParameterError

log = logging.getLogger(__name__)

#: Suffix of the per-cell score column of a pixel-uncertainty strategy.
CELLS = "_cells"


def cell_bounds(lo: int, hi: int, grid: int) -> np.ndarray:
    """``grid + 1`` integer edges splitting ``[lo, hi)`` into ``grid`` near-equal parts."""
    return np.round(np.linspace(lo, hi, grid + 1)).astype(int)


def cell_scores(pixel_map: np.ndarray, valid: np.ndarray | None, grid: int, reduction: str = "mean",
                topk_percent: float = 10.0, damage: np.ndarray | None = None) -> np.ndarray:
    """Per-cell scores of a pixel uncertainty map: ``float32 [B, grid * grid]``.

    Args:
        pixel_map: ``[B, S, S]``; valid: ``bool [B, S, S]`` photo pixels (``None``: all); the grid
            divides the bounding box of each photo's valid pixels.
        damage: ``bool [B, S, S]`` predicted damage, for ``reduction="damage"``.
    """
    if grid < 1:
        raise BadParameterError(f"score.region_grid: must be >= 1, got {grid}")
    m = np.asarray(pixel_map, np.float32)
    keep = np.ones(m.shape, bool) if valid is None else np.asarray(valid, bool)
    out = np.zeros((len(m), grid * grid), np.float32)
    for b in range(len(m)):
        rows, cols = np.flatnonzero(keep[b].any(axis=1)), np.flatnonzero(keep[b].any(axis=0))
        if not len(rows):
            continue
        ys, xs = cell_bounds(rows[0], rows[-1] + 1, grid), cell_bounds(cols[0], cols[-1] + 1, grid)
        for k in range(grid * grid):
            r, c = divmod(k, grid)
            window = np.s_[b:b + 1, ys[r]:ys[r + 1], xs[c]:xs[c + 1]]
            dmg = None if damage is None else damage[window]
            out[b, k] = acq.reduce_pixels(m[window], reduction, topk_percent, dmg, keep[window])[0]
    return out


def cell_box(cell: int, grid: int, width: int, height: int) -> tuple[int, int, int, int]:
    """``(x, y, w, h)`` in whole pixels of cell ``cell`` of the ``grid x grid`` split of a ``width x height`` photo."""
    r, c = divmod(cell, grid)
    x0, x1 = round(width * c / grid), round(width * (c + 1) / grid)
    y0, y1 = round(height * r / grid), round(height * (r + 1) / grid)
    return x0, y0, max(1, x1 - x0), max(1, y1 - y0)


def region_table(scores: pd.DataFrame, strategy: str, seed: int) -> pd.DataFrame:
    """One row per (photo, cell): ``id``, ``path``, ``cell``, ``value`` (+ ``phash``, ``claim``).

    Raises:
        BadParameterError: ``strategy`` does not score cells; BadInputError: the scores lack its cells.
    """
    column = strategy + CELLS
    if strategy == "random":
        n = _grid_cells(scores)
        cells = [acq.random_scores([f"{i}:{k}" for k in range(n)], seed) for i in scores["id"]]
    else:
        if column not in get_strategy(strategy).columns:
            raise BadParameterError(f"--unit region ranks cells by a pixel-uncertainty score; strategy {strategy!r} "
                                    f"picks whole photos (use one of {', '.join(cell_strategies())}, random)")
        if column not in scores.columns or scores[column].isna().all():
            raise BadInputError(f"scores: no {column!r} (rescore with `cardamage score`)")
        cells = [np.asarray(v, np.float64) for v in scores[column]]
    lengths = {len(v) for v in cells}
    if len(lengths) > 1:
        raise BadInputError(f"scores: {column!r} has rows of {sorted(lengths)} cells; rescore with one "
                            "score.region_grid")
    n = lengths.pop() if lengths else 0
    base = scores.loc[scores.index.repeat(n)].reset_index(drop=True)
    base["cell"] = np.tile(np.arange(n), len(scores))
    base["value"] = np.concatenate(cells) if cells else np.zeros(0)
    return base


def _grid_cells(scores: pd.DataFrame) -> int:
    """Cells per photo in ``scores`` (from any ``*_cells`` column)."""
    for column in scores.columns:
        if column.endswith(CELLS) and len(scores) and scores[column].notna().all():
            return len(scores[column].iloc[0])
    raise BadInputError("scores: no per-cell column (rescore with `cardamage score`)")


def cell_strategies() -> list[str]:
    """Strategies with a ``*_cells`` score column."""
    from cardamage.active.strategies import strategy_names

    return [n for n in strategy_names() if n + CELLS in get_strategy(n).columns]


def select_regions(scores: pd.DataFrame, strategy: str, budget: int, ctx: SelectContext,
                   max_per_photo: int) -> pd.DataFrame:
    """The ``budget`` best cells of the pool: ``id``, ``path``, ``cell``, ``score``, ``reason``, best first.

    A budget larger than the cells available (photos x ``min(cells, max_per_photo)``) selects all
    of them, with a warning that says so.
    """
    from cardamage.active.balance import balanced_order
    from cardamage.active.selection import ranking_keys, skip_similar

    if max_per_photo < 1:
        raise BadParameterError(f"select.max_regions_per_photo: must be >= 1, got {max_per_photo}")
    table = region_table(scores.sort_values("id", kind="stable").reset_index(drop=True), strategy, ctx.seed)
    n_cells = int(table["cell"].max()) + 1 if len(table) else 0
    available = scores["id"].nunique() * min(n_cells, max_per_photo)
    if budget > available:
        log.warning("budget %d regions is larger than the pool's regions (%d photos x %d cells, at most %d per "
                    "photo = %d): selecting all of them", budget, scores["id"].nunique(), n_cells, max_per_photo,
                    available)
        budget = available
    keys = ranking_keys(table["value"].to_numpy(), [f"{i}:{c}" for i, c in zip(table["id"], table["cell"])], ctx)
    order = balanced_order(np.lexsort((table["cell"].to_numpy(), table["id"].to_numpy(), -keys)), table,
                           ctx.class_balance)
    chosen, _ = skip_similar(order, table, budget, ctx.near_duplicate_distance, ctx.max_per_claim,
                             table["id"].tolist(), max_per_photo)
    out = table.iloc[chosen][["id", "path", "cell"]].copy()
    out["score"] = table["value"].to_numpy()[chosen]
    grid = int(round(np.sqrt(n_cells)))
    out["reason"] = [f"{strategy} {v:.4f} in cell ({c // grid}, {c % grid}) of {grid}x{grid}"
                     for v, c in zip(out["score"], out["cell"])]
    return out.reset_index(drop=True)


def with_boxes(picked: pd.DataFrame, files: dict[str, Path], grid: int) -> pd.DataFrame:
    """``picked`` with ``region = "x,y,w,h"`` (photo pixels, from each photo's header).

    Raises:
        BadInputError: a picked photo has no file or an unreadable header (named).
    """
    from cardamage.data.images import ImageLoadError, image_size

    boxes = []
    for sha, cell, path in zip(picked["id"], picked["cell"], picked["path"]):
        try:
            width, height = image_size(files[sha])
        except (KeyError, ImageLoadError, OSError) as exc:
            raise BadInputError(f"{path}: cannot read its size for the region box ({exc})") from None
        boxes.append(",".join(str(v) for v in cell_box(int(cell), grid, width, height)))
    out = picked.copy()
    out["region"] = boxes
    return out


def grid_of(scores: pd.DataFrame) -> int:
    """The grid side of the cells in ``scores``."""
    return int(round(np.sqrt(_grid_cells(scores))))


__all__: Sequence[str] = ("cell_box", "cell_scores", "select_regions", "with_boxes")
