"""The strategy registry: one object per way of choosing photos to label.

A strategy declares its ``name``, what it ``needs`` from the model (``"mc_samples"``: MC-dropout
probabilities ``[T, B, S, S, C]``; ``"embeddings"``: pooled features ``[N, D]``; the deterministic
probabilities ``[B, S, S, C]`` are always there), the score ``columns`` it adds to the scores
table (name -> NumPy dtype), how it computes them for one batch (:meth:`Strategy.score`) and how
it picks a batch from the table (:meth:`Strategy.select`). Everything else reads this registry:
the CLI's ``--strategy`` choices, config validation (``select.strategy``, ``select.hybrid_score``,
``simulate.strategies``), the Parquet schema and freshness check of ``cardamage score`` (local and
Ray engines), ``cardamage select`` and ``cardamage simulate``.

Adding a strategy is one class (or instance) and one line::

    from cardamage.active.strategies import Strategy, register

    class Typicality(Strategy):
        name = "typicality"
        needs = frozenset({"embeddings"})
        def select(self, table, ctx): ...

    register(Typicality())

Built-ins: ``entropy``, ``margin``, ``least_confidence``, ``bald`` (needs MC samples),
``random``, ``coreset``, ``hybrid`` (see :mod:`cardamage.active.selection`) and ``typiclust``
(:mod:`cardamage.active.typicality`). Every ranked strategy can draw its batch instead of taking the
top scores (``select.stochastic``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from cardamage.active import acquisition as acq
from cardamage.errors import BadParameterError

if TYPE_CHECKING:
    import pandas as pd

    from cardamage.config import ScoreParams

MC_SAMPLES = "mc_samples"
EMBEDDINGS = "embeddings"
#: The ``columns`` dtype of a per-cell score column: a list of ``float32`` per photo (``[B, G*G]`` in a batch).
CELL_DTYPE = "cells"


@dataclass(frozen=True)
class ScoreBatch:
    """What a strategy may read to score one batch of ``B`` photos.

    Attributes:
        probs: ``float32 [B, S, S, C]`` softmax output (channel 0 is background).
        valid: ``bool [B, S, S]`` photo pixels (``False`` on letterbox padding), or ``None`` (all).
        samples: ``float32 [T, B, S, S, C]`` MC-dropout probabilities, or ``None``.
        ids: the photos' ids (sha256), ``B`` strings.
        params: the ``score`` section (reduction, ``topk_percent``, ``random_seed``, ...).
    """

    probs: np.ndarray
    valid: np.ndarray | None
    samples: np.ndarray | None
    ids: Sequence[str]
    params: ScoreParams


@dataclass(frozen=True)
class SelectContext:
    """What a strategy may read to pick a batch.

    Attributes:
        budget: photos to pick (already capped at the pool size, >= 1).
        seed: for random draws and the first k-center pick.
        labelled: ``float32 [M, D]`` embeddings of the labelled photos, or ``None``.
        hybrid_factor, hybrid_score: the ``select`` section's hybrid settings.
        near_duplicate_distance: dHash distance under which ranked picks skip near-duplicates
            (``None``: no skipping).
        stochastic, temperature: ``"none"`` ranks by score; ``"power"`` / ``"softmax"`` draw the
            batch without replacement with ``P ~ score^temperature`` / ``exp(temperature * score)``
            (see :func:`cardamage.active.selection.ranking_keys`).
        max_per_claim: ranked picks take at most this many photos of one claim (``0``: any).
        class_balance: ranked picks take turns over predicted damage types
            (:mod:`cardamage.active.balance`).
    """

    budget: int
    seed: int = 0
    labelled: np.ndarray | None = None
    hybrid_factor: float = 5.0
    hybrid_score: str = "entropy"
    near_duplicate_distance: int | None = None
    stochastic: str = "none"
    temperature: float = 1.0
    max_per_claim: int = 0
    class_balance: bool = False


class Strategy:
    """Base class of a selection strategy (see the module docstring).

    Class attributes:
        name: the name users type (``--strategy NAME``).
        needs: subset of ``{"mc_samples", "embeddings"}``.
        columns: score columns written by ``cardamage score``: ``{column: numpy dtype name}``, or
            :data:`CELL_DTYPE` for a list of float32 per photo.
        uncertainty: ``True`` when the strategy ranks by its own uncertainty column, so that
            ``hybrid`` may use it as ``select.hybrid_score``.
    """

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()
    columns: ClassVar[dict[str, str]] = {}
    uncertainty: ClassVar[bool] = False

    def score(self, batch: ScoreBatch) -> dict[str, np.ndarray]:
        """Score columns of one batch: ``{column: [B]}`` with the keys of :attr:`columns`."""
        return {}

    def requires(self, ctx: SelectContext) -> list[str]:
        """Names of the strategies whose score columns :meth:`select` reads (default: its own, if any)."""
        return [self.name] if self.columns else []

    def select(self, table: pd.DataFrame, ctx: SelectContext) -> pd.DataFrame:
        """Pick ``ctx.budget`` rows of ``table`` (sorted by ``id``).

        Returns:
            A frame with ``id``, ``path``, ``score`` (float) and ``reason`` (text), best first.
        """
        raise NotImplementedError


class PixelUncertainty(Strategy):
    """Rank by a per-pixel uncertainty map reduced to one score per photo (``score.reduction``).

    Also writes ``<name>_cells``: the same reduction per cell of a ``score.region_grid`` grid,
    ``[B, G*G]`` (region units, :mod:`cardamage.active.regions`).
    """

    uncertainty = True

    def __init__(self, name: str, pixel_map: Callable[[np.ndarray], np.ndarray], mc: bool = False) -> None:
        self.name = name  # type: ignore[misc]
        self.pixel_map = pixel_map
        self.needs = frozenset({MC_SAMPLES}) if mc else frozenset()  # type: ignore[misc]
        self.columns = {name: "float32", name + "_cells": CELL_DTYPE}  # type: ignore[misc]

    def score(self, batch: ScoreBatch) -> dict[str, np.ndarray]:
        if MC_SAMPLES in self.needs and batch.samples is None:
            raise BadParameterError(f"strategy {self.name!r} needs MC-dropout samples (score.mc_samples > 0)")
        p = batch.params
        pixel = self.pixel_map(batch.samples if MC_SAMPLES in self.needs else batch.probs)
        from cardamage.active.regions import cell_scores

        damage = acq.damage_mask(batch.probs) if p.reduction == "damage" else None
        cells = cell_scores(pixel, batch.valid, p.region_grid, p.reduction, p.topk_percent, damage)
        return {self.name: acq.reduce_pixels(pixel, p.reduction, p.topk_percent, damage, batch.valid),
                self.name + "_cells": cells}

    def select(self, table: pd.DataFrame, ctx: SelectContext) -> pd.DataFrame:
        from cardamage.active.selection import ranked, score_column

        values = score_column(table, self.name)
        drawn = "" if ctx.stochastic == "none" else f", drawn ({ctx.stochastic}, temperature {ctx.temperature:g})"
        return ranked(table, values, ctx.budget, ctx.near_duplicate_distance,
                      lambda v, pos, n: f"{self.name} {v:.4f}, #{pos} of {n}{drawn}", ctx)


class RandomStrategy(Strategy):
    """A seeded draw per photo id, independent of order and batching (the baseline)."""

    name = "random"
    columns = {"random": "float64"}

    def score(self, batch: ScoreBatch) -> dict[str, np.ndarray]:
        return {"random": acq.random_scores(list(batch.ids), batch.params.random_seed)}

    def requires(self, ctx: SelectContext) -> list[str]:
        return []  # select draws with its own seed, not the stored column

    def select(self, table: pd.DataFrame, ctx: SelectContext) -> pd.DataFrame:
        from cardamage.active.selection import ranked

        values = acq.random_scores(table["id"].tolist(), ctx.seed)
        return ranked(table, values, ctx.budget, ctx.near_duplicate_distance,
                      lambda v, pos, n: f"random draw (seed {ctx.seed})")


class CoresetStrategy(Strategy):
    """k-center greedy on the embeddings, from the labelled photos (Sener & Savarese 2018)."""

    name = "coreset"
    needs = frozenset({EMBEDDINGS})

    def select(self, table: pd.DataFrame, ctx: SelectContext) -> pd.DataFrame:
        from cardamage.active.selection import coreset

        return coreset(table, ctx.budget, ctx.labelled, ctx.seed)


class HybridStrategy(Strategy):
    """The ``hybrid_factor x budget`` most uncertain photos, then k-center greedy inside them."""

    name = "hybrid"
    needs = frozenset({EMBEDDINGS})

    def requires(self, ctx: SelectContext) -> list[str]:
        return [ctx.hybrid_score]

    def select(self, table: pd.DataFrame, ctx: SelectContext) -> pd.DataFrame:
        from cardamage.active.selection import hybrid

        return hybrid(table, ctx.budget, ctx.labelled, ctx.seed, ctx.hybrid_factor, ctx.hybrid_score, ctx)


class TypiclustStrategy(Strategy):
    """The most typical photo of each large cluster without labels (cold start, see :mod:`.typicality`)."""

    name = "typiclust"
    needs = frozenset({EMBEDDINGS})

    def select(self, table: pd.DataFrame, ctx: SelectContext) -> pd.DataFrame:
        from cardamage.active.typicality import typiclust_select

        return typiclust_select(table, ctx.budget, ctx.labelled, ctx.seed)


_REGISTRY: dict[str, Strategy] = {}


def register(strategy: Strategy, replace: bool = False) -> Strategy:
    """Add ``strategy`` to the registry (its ``name`` must be new unless ``replace``); returns it."""
    name = strategy.name
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise BadParameterError(f"strategy name {name!r}: use letters, digits, '_' or '-'")
    if name in _REGISTRY and not replace:
        raise BadParameterError(f"strategy {name!r} is already registered")
    clash = [c for s in _REGISTRY.values() if s.name != name for c in s.columns if c in strategy.columns]
    if clash:
        raise BadParameterError(f"strategy {name!r}: score column(s) {clash} already belong to another strategy")
    _REGISTRY[name] = strategy
    return strategy


def unregister(name: str) -> None:
    """Remove a strategy (tests and plug-ins that replace a built-in)."""
    _REGISTRY.pop(name, None)


def get_strategy(name: str) -> Strategy:
    """The registered strategy ``name``; :class:`BadParameterError` naming the known ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BadParameterError(f"strategy {name!r} is not one of {', '.join(_REGISTRY)}") from None


def strategy_names() -> list[str]:
    """Registered strategy names, in registration order."""
    return list(_REGISTRY)


def uncertainty_names() -> list[str]:
    """Strategies that rank by their own uncertainty column (the valid ``select.hybrid_score`` values)."""
    return [s.name for s in _REGISTRY.values() if s.uncertainty]


def scoring_strategies(mc_samples: bool) -> list[Strategy]:
    """Strategies that write score columns, given whether MC samples are computed."""
    return [s for s in _REGISTRY.values() if s.columns and (mc_samples or MC_SAMPLES not in s.needs)]


def score_columns(mc_samples: bool) -> dict[str, str]:
    """``{column: numpy dtype}`` written by ``cardamage score``, in registry order."""
    return {c: t for s in scoring_strategies(mc_samples) for c, t in s.columns.items()}


def needs_mc_samples(names: Sequence[str]) -> bool:
    """Whether any of the strategies ``names`` needs MC-dropout samples."""
    return any(MC_SAMPLES in get_strategy(n).needs for n in names)


# Registration order is the order of the score columns and of the ``--strategy`` choices.
for _builtin in (PixelUncertainty("entropy", acq.entropy_map), PixelUncertainty("margin", acq.margin_map),
                 PixelUncertainty("least_confidence", acq.least_confidence_map),
                 PixelUncertainty("bald", acq.bald_map, mc=True), RandomStrategy(), CoresetStrategy(),
                 HybridStrategy(), TypiclustStrategy()):
    register(_builtin)
