"""The claim service's ``params.yaml`` sections: ``serve`` (with its ``batch``, ``storage``, ``reuse``
and ``ray`` sub-sections) and ``settlement``. Re-exported by :mod:`cardamage.config`, which reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class BatchParams:
    """Dynamic micro-batching of the claim service (:mod:`cardamage.service.batcher`).

    Photos of concurrent requests are queued and predicted together: a batch starts when
    ``max_batch`` photos wait or the oldest has waited ``max_wait_ms``. At most ``max_queue`` photos
    wait; at most ``max_inflight`` requests are admitted at once, more get ``503`` with
    ``Retry-After: retry_after_s`` before their body is read.
    """

    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 64
    max_inflight: int = 32
    retry_after_s: int = 1
    workers: int = 2


@dataclass
class StorageParams:
    """Size and age limits of what the service keeps (:mod:`cardamage.service.store`); oldest removed first.

    Incoming photos are removed only once they are in the pool's score table (``score.out``) or
    labelled: a photo waiting to be scored is never removed. ``0`` turns a limit off.
    """

    splash_max_mb: float = 512.0
    splash_max_age_h: float = 168.0
    incoming_max_mb: float = 20480.0
    incoming_max_age_days: float = 365.0
    prune_every_s: float = 60.0


@dataclass
class ReuseParams:
    """Reused photos (:mod:`cardamage.service.reuse`): a photo seen before under another claim id.

    Exact: the same sha256. Near: perceptual hash within ``max_hamming`` bits (of 64), confirmed by
    the model embeddings' cosine distance at most ``max_embedding_distance``.
    """

    enabled: bool = True
    index_path: str | None = None  # null: <serve.incoming_dir>/reuse.sqlite
    max_hamming: int = 8
    max_embedding_distance: float = 0.05


@dataclass
class RayServeParams:
    """``cardamage serve --engine ray``: the same app as a Ray Serve deployment (:mod:`cardamage.service.ray_serve`)."""

    address: str | None = None  # null: $RAY_ADDRESS, else a local Ray instance
    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: int = 16
    num_cpus: float = 1.0


@dataclass
class ServeParams:
    """The claim service (``cardamage serve``): HTTP, uploads, the photo quality gate, model reload.

    Quality measures come from :mod:`cardamage.monitoring.features` on the photo downsized to
    ``drift.max_side`` pixels, so they compare with the drift report.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    model_path: str | None = "models/production.keras"
    part_model_path: str | None = None
    max_upload_mb: float = 20.0
    max_photos_per_request: int = 10
    max_request_pixels: int = 130_000_000
    max_side: int = 1024
    incoming_dir: str = "data/incoming"
    splash_dir: str = "reports/service/splash"
    min_side_px: int = 320
    min_brightness: float = 35.0
    max_brightness: float = 230.0
    min_contrast: float = 8.0
    min_sharpness: float = 12.0
    min_colours: int = 1000
    max_flat_share: float = 0.75
    reload_check_s: float = 10.0
    log_format: Literal["json", "text"] = "json"
    work_side: int = 512
    batch: BatchParams = field(default_factory=BatchParams)
    storage: StorageParams = field(default_factory=StorageParams)
    reuse: ReuseParams = field(default_factory=ReuseParams)
    ray: RayServeParams = field(default_factory=RayServeParams)


@dataclass
class SettlementParams:
    """Repair-cost proposal of a claim from the damage found (price table and hand-over rules)."""

    currency: str = "EUR"
    band_edges: list[float] = field(default_factory=lambda: [0.02, 0.10])
    prices: dict[str, dict[str, list[float]]] = field(default_factory=lambda: {
        "damage": {"small": [150.0, 400.0], "medium": [400.0, 1200.0], "large": [1200.0, 3500.0]}})
    part_prices: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=lambda: {
        "headlamp": {"damage": {"small": [250.0, 600.0], "medium": [600.0, 1400.0], "large": [1400.0, 2500.0]}}})
    combine_photos: Literal["max", "sum"] = "max"
    max_uncertainty: float = 0.35
    max_damaged_share: float = 0.35
    max_total: float = 5000.0
    refer_on_quality_failure: bool = True
