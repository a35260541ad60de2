"""The local engine: the model runs in this process, one batch of ``score.batch_size`` photos at a time."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from cardamage.active.pool import PoolPhoto
from cardamage.active.scorer import Scorer, iter_batches, load_scorer, score_batch
from cardamage.active.scoring import ScoredBatch
from cardamage.config import ScoreParams


class LocalEngine:
    """Decode, predict and score batches with a :class:`Scorer` (MC samples when it has a sampler)."""

    def __init__(self, scorer: Scorer, params: ScoreParams) -> None:
        self.scorer = scorer
        self.params = params
        self.mc_samples = params.mc_samples if scorer.sample is not None else 0

    def map(self, photos: Sequence[PoolPhoto], unreadable: dict[str, str]) -> Iterator[ScoredBatch]:
        """Yield one :class:`ScoredBatch` per batch of readable photos (unreadable ones are reported)."""
        s, mc = self.scorer, self.mc_samples
        for batch, images, valid in iter_batches(photos, s.input_size, s.resize, self.params.batch_size, unreadable):
            probs, emb = s.predict(images)
            samples = s.sample(images, mc) if mc > 0 and s.sample is not None else None
            cols = score_batch(probs, valid, self.params, samples, [p.sha256 for p in batch])
            yield ScoredBatch(batch, cols, emb)


def from_model(model_path: str | os.PathLike, params: ScoreParams) -> LocalEngine:
    """The local engine over a model saved by ``cardamage train``."""
    return LocalEngine(load_scorer(model_path, params.batch_size), params)
