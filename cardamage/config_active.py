"""The active-learning sections of ``params.yaml``: ``score``, ``select`` and ``simulate``.
Re-exported by :mod:`cardamage.config`, which reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class ScoreParams:
    """Acquisition scores of the unlabelled pool (``cardamage score``)."""

    model_path: str = "models/model.keras"
    out: str = "reports/scores.parquet"
    batch_size: int = 8
    reduction: Literal["mean", "topk", "damage"] = "topk"
    topk_percent: float = 10.0
    mc_samples: int = 8
    random_seed: int = 0
    min_instance_px: int = 16
    region_grid: int = 3
    hash_cache: str = "reports/hash_cache.json"
    labelled_embeddings: str = "reports/labelled_embeddings.npz"


@dataclass
class SelectParams:
    """Which pool photos to send for labelling next (``cardamage select``)."""

    budget: int = 5
    strategy: str = field(default="hybrid", metadata={"choices": "strategies"})
    seed: int = 0
    hybrid_factor: float = 5.0
    hybrid_score: str = field(default="entropy", metadata={"choices": "uncertainty strategies"})
    skip_near_duplicates: bool = True
    clusters: int = 8  # k-means clusters of the pool's embeddings, pushed as each task's cardamage_cluster; 0: none
    stochastic: Literal["none", "power", "softmax"] = "none"
    temperature: float = 1.0
    cold_start_below: int = 0
    max_per_claim: int = 2
    class_balance: bool = False
    unit: Literal["photo", "region"] = "photo"
    max_regions_per_photo: int = 2
    out: str = "reports/selection.csv"


@dataclass
class SimulateParams:
    """Simulated active learning on a fully labelled pool (``cardamage simulate``)."""

    strategies: list[str] = field(default_factory=lambda: ["random", "entropy", "bald", "hybrid"],
                                  metadata={"choices": "strategies"})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    initial: int = 50
    rounds: int = 5
    budget: int = 50
    input_size: int = 128
    backbone: str | None = None
    backbone_width: float | None = None
    backbone_preset: str | None = None
    head_filters: int = 64
    head_restarts: int = 1
    tune_stages: int = 0
    dropout: float = 0.3
    epochs: int = 30
    min_steps: int = 200
    batch_size: int = 16
    learning_rate: float = 0.001
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    mc_samples: int = 8
    target_fraction: float = 0.95
    target_metric: Literal["damage_iou", "mean_iou"] = "damage_iou"
    region_strategies: list[str] = field(default_factory=list, metadata={"choices": "strategies"})
    task_cost: float = 0.1
    pseudo_arms: list[str] = field(default_factory=list)
    pseudo_threshold: float = 0.9
    pseudo_ratio: float = 1.0
    pseudo_ramp_rounds: int = 3
    pseudo_generations: int = 1
    max_pool: int | None = None
    max_val: int | None = None
    cache_dir: str = "reports/simulate_cache"
    state_file: str = "reports/active_learning_state.json"
    out: str = "reports/active_learning.json"
    plot: str = "reports/active_learning.png"
