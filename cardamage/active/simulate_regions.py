"""Region arms of the simulation and the labelling effort every arm is measured in.

**Effort** (issue 13): a whole photo costs 1.0 plus ``simulate.task_cost`` (0.1: opening a task,
looking at the picture); a region task costs its crop's share of the photo's area plus the same
``task_cost``, so many tiny tasks are not free. The seed photos of a run cost the same in every arm.

A **region arm** (``simulate.region_strategies``, named ``<strategy>@region``) labels cells
instead of photos, as ``cardamage select --unit region`` and region tasks do: every round it
spends about the effort a photo arm spends on ``simulate.budget`` photos. Cells are a
``score.region_grid`` grid of each photo's area (letterbox padding excluded), scored by the
strategy's ``<strategy>_cells`` column on the head's stride-4 probabilities, at most
``select.max_regions_per_photo`` per photo per round; the "annotator" reveals the mask inside the
cell grown by ``labelstudio.region_margin`` (the crop), and training ignores every pixel of a photo
outside its crops (:data:`~cardamage.data.reviewed.IGNORE_INDEX`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cardamage.active.pseudo import base_arm
from cardamage.data.reviewed import IGNORE_INDEX

if TYPE_CHECKING:
    from cardamage.config import Params
    from cardamage.model.frozen import FeatureBank
    from cardamage.model.heads import Head

REGION_SUFFIX = "@region"
#: ``(y0, y1, x0, x1)`` in mask pixels.
Window = tuple[int, int, int, int]


def is_region_arm(arm: str) -> bool:
    """Whether ``arm`` labels regions (``<strategy>@region``, also with ``+pseudo``)."""
    return base_arm(arm).endswith(REGION_SUFFIX)


def arm_strategy(arm: str) -> str:
    """The selection strategy of an arm (``entropy@region+pseudo`` -> ``entropy``)."""
    arm = base_arm(arm)
    return arm[:-len(REGION_SUFFIX)] if arm.endswith(REGION_SUFFIX) else arm


def photo_window(mask: np.ndarray) -> Window:
    """The bounding box of a photo's pixels (not letterbox padding) in its ``uint8 [S, S]`` mask."""
    rows = np.flatnonzero((mask != IGNORE_INDEX).any(axis=1))
    cols = np.flatnonzero((mask != IGNORE_INDEX).any(axis=0))
    if not len(rows):
        return 0, mask.shape[0], 0, mask.shape[1]
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def crop_window(photo: Window, cell: int, grid: int, margin: float) -> Window:
    """Cell ``cell`` of the ``grid x grid`` split of ``photo``, grown by ``margin`` x its size, clipped."""
    y0, y1, x0, x1 = photo
    r, c = divmod(cell, grid)
    cy0, cy1 = y0 + (y1 - y0) * r / grid, y0 + (y1 - y0) * (r + 1) / grid
    cx0, cx1 = x0 + (x1 - x0) * c / grid, x0 + (x1 - x0) * (c + 1) / grid
    my, mx = (cy1 - cy0) * margin, (cx1 - cx0) * margin
    return (max(y0, round(cy0 - my)), min(y1, round(cy1 + my)), max(x0, round(cx0 - mx)), min(x1, round(cx1 + mx)))


def region_effort(photo: Window, crop: Window, task_cost: float) -> float:
    """Effort of one region task: the crop's share of the photo's area plus ``task_cost``."""
    area = max(1, (photo[1] - photo[0]) * (photo[3] - photo[2]))
    return (crop[1] - crop[0]) * (crop[3] - crop[2]) / area + task_cost


def labelled_masks(bank: FeatureBank, photos: Sequence[int], regions: Sequence[Sequence[int]], grid: int,
                   margin: float) -> tuple[np.ndarray, np.ndarray]:
    """``(index [n], masks uint8 [n, S, S])`` of what a run has labelled.

    Whole ``photos`` keep their masks; a photo with only ``regions`` (``[photo, cell]`` pairs) is
    :data:`IGNORE_INDEX` outside the union of its crops.
    """
    whole = sorted(set(int(p) for p in photos))
    by_photo: dict[int, list[int]] = {}
    for photo, cell in regions:
        if int(photo) not in whole:
            by_photo.setdefault(int(photo), []).append(int(cell))
    index = np.array(whole + sorted(by_photo), np.int64)
    masks = bank.masks[index].copy()
    for k, photo in enumerate(sorted(by_photo), start=len(whole)):
        window = photo_window(bank.masks[photo])
        seen = np.zeros(masks.shape[1:], bool)
        for cell in by_photo[photo]:
            y0, y1, x0, x1 = crop_window(window, cell, grid, margin)
            seen[y0:y1, x0:x1] = True
        masks[k][~seen] = IGNORE_INDEX
    return index, masks


def effort_of(bank: FeatureBank, photos: Sequence[int], regions: Sequence[Sequence[int]], grid: int, margin: float,
              task_cost: float) -> tuple[float, int]:
    """``(effort, tasks)`` of a run's labels (see the module docstring)."""
    effort = len(photos) * (1.0 + task_cost)
    for photo, cell in regions:
        window = photo_window(bank.masks[int(photo)])
        effort += region_effort(window, crop_window(window, int(cell), grid, margin), task_cost)
    return effort, len(photos) + len(regions)


def select_regions_round(params: Params, arm: str, seed: int, round_no: int, head: Head, bank: FeatureBank,
                         photos: Sequence[int], regions: Sequence[Sequence[int]]) -> list[list[int]]:
    """The next ``[photo, cell]`` pairs of a region arm: about ``simulate.budget x (1 + task_cost)`` effort."""
    from cardamage.active.regions import select_regions
    from cardamage.active.simulate import pool_scores
    from cardamage.active.strategies import SelectContext

    sim, grid = params.simulate, params.score.region_grid
    margin, cap = params.labelstudio.region_margin, params.select.max_regions_per_photo
    done = {(int(p), int(c)) for p, c in regions}
    candidates = np.array(sorted(set(range(len(bank.paths))) - set(int(p) for p in photos)), np.int64)
    table = pool_scores(params, head, bank, candidates, arm_strategy(arm))
    column = arm_strategy(arm) + "_cells"
    if column in table:
        table[column] = [_masked(v, i, done) for v, i in zip(table[column], candidates)]
    else:  # random: a seeded draw per cell (region_table), labelled cells can still come up: skipped below
        table["entropy_cells"] = [np.zeros(grid * grid)] * len(table)
    spend = sim.budget * (1.0 + sim.task_cost)
    wanted = math.ceil(spend / sim.task_cost)  # an upper bound: every task costs at least task_cost
    ctx = SelectContext(wanted, seed * 1000 + round_no, stochastic=params.select.stochastic,
                        temperature=params.select.temperature)
    picked = select_regions(table, arm_strategy(arm), wanted, ctx, cap)
    out: list[list[int]] = []
    photo_of = {f"{i:08d}": int(i) for i in candidates}
    for sha, cell, value in zip(picked["id"], picked["cell"], picked["score"]):
        key = (photo_of[sha], int(cell))
        if key in done or not np.isfinite(value) or spend <= 0:
            continue
        window = photo_window(bank.masks[key[0]])
        spend -= region_effort(window, crop_window(window, key[1], grid, margin), sim.task_cost)
        done.add(key)
        out.append([key[0], key[1]])
    return out


def _masked(cells: Any, photo: int, done: set[tuple[int, int]]) -> np.ndarray:
    values = np.array(cells, np.float64)
    for k in range(len(values)):
        if (int(photo), k) in done:
            values[k] = -np.inf
    return values
