"""Typed project parameters read from ``params.yaml``.

One dataclass per ``params.yaml`` section (one section per pipeline stage). Unknown keys and
values of the wrong type are rejected with a message naming the key. ``--set a.b=value``
overrides are parsed as YAML scalars and checked the same way.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from cardamage.config_active import ScoreParams, SelectParams, SimulateParams  # noqa: F401  (re-exported)
from cardamage.config_labelstudio import AuditParams, BackendParams, LabelStudioParams  # noqa: F401  (re-exported)
from cardamage.config_serve import (  # noqa: F401  (re-exported: cardamage.config is where params live)
    BatchParams,
    RayServeParams,
    ReuseParams,
    ServeParams,
    SettlementParams,
    StorageParams,
)
from cardamage.errors import BadParameterError

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(BadParameterError):
    """A params file or override that does not match the schema; the message names the key."""


@dataclass
class DataParams:
    """Where the labelled data lives and how its labels are read."""

    root: str = "data/sample"
    annotation_file: str = "via_region_data.json"
    category_key: str | None = None
    classes: list[str] = field(default_factory=lambda: ["damage"])
    class_map: dict[str, str] = field(default_factory=dict)
    train_splits: list[str] = field(default_factory=lambda: ["train"])
    val_splits: list[str] = field(default_factory=lambda: ["val"])
    test_splits: list[str] = field(default_factory=lambda: ["test"])
    pool: str = "data/sample/test"
    near_duplicate_distance: int = 6
    max_pixels: int = 50_000_000


@dataclass
class ModelParams:
    """The segmentation network (``cardamage train`` builds it; the saved file remembers it)."""

    architecture: Literal["deeplabv3plus", "segformer"] = "deeplabv3plus"
    backbone: str = "efficientnetlite_b0"
    backbone_preset: str | None = "models/pretrained/efficientnet-lite0"
    width: float = 1.0
    input_size: int = 160
    resize: Literal["letterbox", "crop", "stretch"] = "letterbox"
    head_filters: int = 128
    projection_filters: int = 48
    aspp_dilation_rates: list[int] = field(default_factory=lambda: [2, 4, 6])
    dropout: float = 0.1
    bn_momentum: float = 0.9


@dataclass
class TrainParams:
    """Training loop, loss, schedule and augmentation."""

    model_path: str = "models/model.keras"
    history_csv: str = "reports/train_history.csv"
    epochs: int = 12
    batch_size: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    lr_schedule: Literal["cosine", "plateau", "constant"] = "cosine"
    early_stopping_patience: int = 4
    dice_weight: float = 1.0
    focal_gamma: float = 0.0
    class_weighting: Literal["inverse_sqrt", "median_frequency", "none"] = "inverse_sqrt"
    max_class_weight: float = 10.0
    seed: int = 42
    max_images: int | None = None
    mixed_precision: Literal["auto", "on", "off"] = "auto"
    augment: bool = True
    hflip: float = 0.5
    scale_range: list[float] = field(default_factory=lambda: [0.8, 1.25])
    rotation_degrees: float = 10.0
    color_jitter: float = 0.2
    checkpoint_every_s: float = 60.0
    pseudo_teacher: str | None = None
    pseudo_threshold: float = 0.9
    pseudo_ratio: float = 1.0
    pseudo_max_photos: int = 500
    pseudo_ramp_epochs: int = 3
    repeat_threshold: float = 0.0
    lovasz_weight: float = 0.0
    warmup_epochs: int = 0


@dataclass
class EvaluateParams:
    """Validation metrics and report plots."""

    model_path: str = "models/model.keras"
    metrics_file: str = "reports/metrics.json"
    plots_dir: str = "reports"
    splits: list[str] | None = None
    batch_size: int = 8
    image_score: Literal["max_prob", "damaged_share"] = "max_prob"
    image_threshold: float = 0.5
    min_instance_px: int = 16
    overlay_count: int = 4
    per_photo: str = "reports/eval_photos.json"
    bootstrap: int = 1000
    confidence: float = 0.9


@dataclass
class PredictParams:
    """Damage assessment of new photos."""

    model_path: str = "models/production.keras"
    part_model_path: str | None = None
    out_dir: str = "reports/predictions"
    threshold: float = 0.5
    min_area_share: float = 0.0002
    polygon_epsilon: float = 1.5
    splash_format: Literal["jpg", "png"] = "jpg"
    batch_size: int = 4
    tta: Literal["none", "flip"] = "none"


@dataclass
class PrepareParams:
    """Merge the sample and the Label Studio labels into one dataset (``cardamage prepare``)."""

    out_dir: str = "data/prepared"
    split: Literal["keep", "hash"] = "keep"
    val_percent: int = 15
    test_percent: int = 10
    test_from_labelled: bool = False
    drop_exact_duplicates: bool = True
    exclude_flagged: bool = False
    summary: str = "reports/prepare_summary.json"


@dataclass
class DriftParams:
    """Evidently drift report of new photos against the training photos (``cardamage drift``)."""

    reference: str | None = None
    current: str | None = None
    model_outputs: bool = True
    html: str = "reports/drift.html"
    summary: str = "reports/drift_summary.json"
    details: str = "reports/drift_details.json"
    features_csv: str = "reports/drift_features.csv"
    stattest_threshold: float = 0.01
    drift_share: float = 0.2
    embedding: Literal["auto", "model", "histogram", "none"] = "auto"
    histogram_bins: int = 4
    max_side: int = 512


@dataclass
class ReportParams:
    """The HTML page people read (``cardamage report``)."""

    reports_dir: str = "reports"
    out_file: str = "reports/index.html"
    title: str = "Car damage model report"
    assets_dir: str = "reports/report_assets"
    thumbnails: int = 6


@dataclass
class PublishParams:
    """The promotion gate (``cardamage publish``): candidate against production on the fixed test split."""

    production_path: str = "models/production.keras"
    card: str = "models/production.json"
    decision: str = "reports/publish.json"
    history: str = "reports/history.jsonl"
    archive_dir: str = "models/archive"
    keep_archived: int = 3
    tolerance_iou: float = 0.02
    class_tolerance: dict[str, float] = field(default_factory=dict)
    default_class_tolerance: float = 0.05


@dataclass
class Params:
    """All sections of ``params.yaml``. Later stages add their own section here."""

    data: DataParams = field(default_factory=DataParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    publish: PublishParams = field(default_factory=PublishParams)
    predict: PredictParams = field(default_factory=PredictParams)
    prepare: PrepareParams = field(default_factory=PrepareParams)
    drift: DriftParams = field(default_factory=DriftParams)
    report: ReportParams = field(default_factory=ReportParams)
    score: ScoreParams = field(default_factory=ScoreParams)
    select: SelectParams = field(default_factory=SelectParams)
    simulate: SimulateParams = field(default_factory=SimulateParams)
    labelstudio: LabelStudioParams = field(default_factory=LabelStudioParams)
    serve: ServeParams = field(default_factory=ServeParams)
    settlement: SettlementParams = field(default_factory=SettlementParams)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _check(value: Any, tp: Any, key: str) -> Any:
    """Validate (and lightly coerce) ``value`` against the annotation ``tp``; raise naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {args}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping (section), got {type(value).__name__}")
        return _build(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return [_check(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return {_check(k, args[0], key): _check(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got a boolean {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _registry_names(kind: str) -> list[str]:
    """Names a registry-backed parameter accepts (read when validating, so plug-ins count)."""
    from cardamage.active import strategies

    if kind == "strategies":
        return strategies.strategy_names()
    if kind == "uncertainty strategies":
        return strategies.uncertainty_names()
    raise KeyError(kind)


def _check_choices(value: Any, kind: str, key: str) -> None:
    """Reject a value (or list item) that is not registered, naming the key and the known names."""
    known = _registry_names(kind)
    for item in value if isinstance(value, list) else [value]:
        if item not in known:
            raise ConfigError(f"{key}: {item!r} is not one of the {kind} {known}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown parameter {full!r} (known in this section: {known})")
        kwargs[key] = _check(value, hints[key], full)
        if "choices" in fields[key].metadata:
            _check_choices(kwargs[key], fields[key].metadata["choices"], full)
    return cls(**kwargs)


def params_from_dict(data: dict[str, Any]) -> Params:
    """Build :class:`Params` from a plain mapping, rejecting unknown or mistyped keys."""
    if not isinstance(data, dict):
        raise ConfigError("params: the top level must be a mapping of sections")
    return _build(Params, data)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``"section.key=value"``; the value is read as a YAML scalar/list (``1``, ``true``, ``[a, b]``)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or "." not in key:
        raise ConfigError(f"--set {text!r}: the key must name a section and a key, e.g. train.epochs=3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML (e.g. "{split}_multiclass.json"): take the text as a string
    return key, value


def load_params(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Params:
    """Read a params file (default ``params.yaml`` if it exists) and apply ``--set`` overrides.

    Raises:
        ConfigError: unreadable file, unknown key, wrong type, malformed override.
    """
    data: dict[str, Any] = {}
    p = Path(path) if path is not None else DEFAULT_PARAMS
    if path is not None and not p.is_file():
        raise ConfigError(f"{p}: params file not found")
    if p.is_file():
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML ({exc})") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a mapping of sections (data:, model:, ...), "
                              f"got {type(data).__name__}")
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
    try:
        params = params_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None
    from cardamage.data.images import set_pixel_limit

    if params.data.max_pixels < 1:
        raise ConfigError(f"{p}: data.max_pixels: must be >= 1, got {params.data.max_pixels}")
    set_pixel_limit(params.data.max_pixels)  # the one pixel budget of every image read in this run
    return params


def params_to_dict(params: Params) -> dict[str, Any]:
    """Plain-dict view of the params (for reports and model metadata)."""
    return dataclasses.asdict(params)
