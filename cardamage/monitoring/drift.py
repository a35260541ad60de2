"""Data drift of new photos against the training photos, with Evidently: ``cardamage drift``.

Reference: the training photos (``<prepare.out_dir>/train``, else the ``data.train_splits``
folders). Current: the unlabelled pool (``data.pool``) or any folder given with ``--current``.
Each photo is described by the image features of :mod:`cardamage.monitoring.features`, by the model's
outputs when a model exists (``entropy`` uncertainty, ``damaged_share``, ``instance_count``) and
by an embedding: the model's pooled backbone features when both sides have them, else a
downsampled joint colour histogram (the summary says which).

Per-feature tests are Evidently's defaults for the sample size (K-S p-value for numbers and
Z-test / chi-square for the 0/1 EXIF flag under 1000 rows, Wasserstein / Jensen-Shannon above)
at ``drift.stattest_threshold``; the embedding test is the Euclidean distance between mean
embeddings, significant when above the 95th percentile of bootstrap resamples of the reference.
Drift is detected when at least ``drift.drift_share`` of the tested columns (features plus the
embedding) drift. This is the only module that imports ``evidently``.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cardamage.config import Params
from cardamage.errors import BadParameterError, EmptyInputError
from cardamage.fileio import atomic_path, write_json, write_text
from cardamage.monitoring.features import CATEGORICAL_FEATURES, FEATURE_COLUMNS, histogram_columns, measure_photos

log = logging.getLogger(__name__)

#: Model-output columns compared when both sides have them (``entropy`` is the uncertainty).
MODEL_COLUMNS = ("entropy", "damaged_share", "instance_count")
EMBEDDING_PREFIX = "emb_"


@dataclass
class DriftResult:
    """Outcome of one comparison: ``summary`` (the JSON metrics) and the Evidently ``snapshot``."""

    summary: dict[str, Any]
    snapshot: Any = None
    table: pd.DataFrame = field(default_factory=pd.DataFrame)


# ----------------------------------------------------------------------------- photos and tables

def reference_files(params: Params) -> tuple[list[Path], str]:
    """Training photos and a label for them: ``drift.reference``, else the prepared train split,
    else the ``data.train_splits`` folders of ``data.root``."""
    from cardamage.data.images import list_images

    if params.drift.reference:
        folders = [Path(params.drift.reference)]
    elif (Path(params.prepare.out_dir) / "train").is_dir():
        folders = [Path(params.prepare.out_dir) / "train"]
    else:
        folders = [Path(params.data.root) / s for s in params.data.train_splits]
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        raise FileNotFoundError(f"drift.reference: photo folder(s) not found: {', '.join(missing)}")
    return [p for f in folders for p in list_images(f)], ", ".join(str(f) for f in folders)


def current_files(params: Params, current: str | os.PathLike | None = None) -> tuple[list[Path], str]:
    """New photos: ``current`` (folder or list file), else ``drift.current``, else ``data.pool``."""
    from cardamage.active.pool import list_pool_files

    source = current or params.drift.current or params.data.pool
    return list_pool_files(source), str(source)


def model_outputs(files: Sequence[Path], shas: Sequence[str], params: Params,
                  known: pd.DataFrame | None = None) -> pd.DataFrame:
    """Model columns (:data:`MODEL_COLUMNS` and ``embedding``) per sha256, in a frame indexed by ``id``.

    Rows of ``known`` (a scores table from ``cardamage score``) made by the current model are
    reused; the other photos are scored here (one forward pass, no MC dropout: the same numbers).
    """
    import dataclasses

    from cardamage.active.pool import PoolPhoto
    from cardamage.active.scorer import iter_batches, load_scorer, reduction_tag, score_batch
    from cardamage.model.io import read_model_info

    version = read_model_info(params.score.model_path).model_version
    cols = ["id", *MODEL_COLUMNS, "embedding"]
    have = pd.DataFrame(columns=cols)
    if known is not None and len(known) and {*cols, "model_version", "reduction"} <= set(known.columns):
        fresh = (known["model_version"] == version) & (known["reduction"] == reduction_tag(params.score))
        have = known[fresh][cols]
    done = set(have["id"])
    todo = [PoolPhoto(Path(f), str(f), s, "") for f, s in zip(files, shas, strict=True) if s not in done]
    rows = []
    if todo:
        scorer = load_scorer(params.score.model_path, params.score.batch_size)
        sp = dataclasses.replace(params.score, mc_samples=0)
        for batch, images, valid in iter_batches(todo, scorer.input_size, scorer.resize, sp.batch_size):
            probs, emb = scorer.predict(images)
            out = score_batch(probs, valid, sp, ids=[p.sha256 for p in batch], only=MODEL_COLUMNS)
            for i, photo in enumerate(batch):
                rows.append({"id": photo.sha256, **{c: float(out[c][i]) for c in MODEL_COLUMNS},
                             "embedding": np.asarray(emb[i], np.float32)})
    table = pd.concat([have, pd.DataFrame(rows, columns=cols)], ignore_index=True)
    return table.drop_duplicates("id").set_index("id")


def photo_table(params: Params, current: str | os.PathLike | None = None) -> tuple[pd.DataFrame, dict[str, str]]:
    """Features of both sides in one frame with a ``side`` column (``reference`` / ``current``).

    Returns:
        The table (model columns and ``emb_*`` columns added when a model is available) and the
        ``{"reference": ..., "current": ...}`` sources.
    """
    ref_files, ref_src = reference_files(params)
    cur_files, cur_src = current_files(params, current)
    kw = {"max_side": params.drift.max_side, "bins": params.drift.histogram_bins}
    ref = measure_photos(ref_files, **kw).assign(side="reference")
    cur = measure_photos(cur_files, **kw).assign(side="current")
    if ref.empty or cur.empty:
        raise EmptyInputError(f"drift: no readable photos in {'the reference ' + ref_src if ref.empty else cur_src}")
    table = pd.concat([ref, cur], ignore_index=True)
    if params.drift.model_outputs or params.drift.embedding == "model":
        table = _add_model_outputs(table, params)
    return table, {"reference": ref_src, "current": cur_src}


def _add_model_outputs(table: pd.DataFrame, params: Params) -> pd.DataFrame:
    """Add :data:`MODEL_COLUMNS` and ``emb_*`` columns when ``score.model_path`` exists."""
    if not Path(params.score.model_path).is_file():
        log.info("no model at %s: drift without model outputs", params.score.model_path)
        return table
    from cardamage.active.scoring import read_scores

    paths = [Path(p) for p in table["path"]]
    outputs = model_outputs(paths, list(table["sha256"]), params, read_scores(params.score.out))
    joined = outputs.reindex(table["sha256"])
    for col in MODEL_COLUMNS:
        table[col] = joined[col].to_numpy(dtype=np.float64)
    emb = [e if isinstance(e, (np.ndarray, list)) else None for e in joined["embedding"]]
    if all(e is not None for e in emb):
        matrix = np.stack([np.asarray(e, np.float64) for e in emb])
        names = [f"{EMBEDDING_PREFIX}{i:04d}" for i in range(matrix.shape[1])]
        table = pd.concat([table, pd.DataFrame(matrix, columns=names, index=table.index)], axis=1)
    return table


# ----------------------------------------------------------------------------- the comparison

def usable_columns(table: pd.DataFrame, columns: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Columns with at least two values on each side; the others with the reason they are skipped."""
    kept, skipped = [], {}
    for col in columns:
        if col not in table.columns:
            continue
        counts = table.groupby("side")[col].count()
        short = [side for side in ("reference", "current") if counts.get(side, 0) < 2]
        if short:
            skipped[col] = f"fewer than 2 values in {' and '.join(short)}"
        else:
            kept.append(col)
    return kept, skipped


def choose_embedding(table: pd.DataFrame, mode: str) -> tuple[list[str], str, str]:
    """Embedding columns, their source (``model`` / ``colour_histogram`` / ``none``) and a note."""
    model_cols = [c for c in table.columns if c.startswith(EMBEDDING_PREFIX)]
    if mode == "none":
        return [], "none", "embedding drift switched off (drift.embedding: none)"
    if model_cols and mode in ("auto", "model"):
        return model_cols, "model", f"pooled backbone features of the model ({len(model_cols)} dims)"
    if mode == "model":
        raise BadParameterError("drift.embedding: model, but no model embeddings are available "
                         "(train a model, or set drift.embedding: auto)")
    hist = histogram_columns(table)
    note = ("model embeddings not available; fallback: joint RGB colour histogram of the downsized photo "
            f"({len(hist)} cells)") if mode == "auto" else f"joint RGB colour histogram ({len(hist)} cells)"
    return hist, "colour_histogram", note


def compare(table: pd.DataFrame, threshold: float = 0.01, drift_share: float = 0.2,
            embedding: str = "auto") -> DriftResult:
    """Run Evidently on a :func:`photo_table` frame and summarise it.

    Args:
        table: one row per photo with ``side`` in ``{"reference", "current"}``.
        threshold: per-feature test threshold (a p-value for the small-sample default tests).
        drift_share: share of drifted columns (features + embedding) from which drift is detected.
        embedding: ``auto`` | ``model`` | ``histogram`` | ``none``.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift
    from evidently.metrics.embeddings import DistanceDriftMethod
    from evidently.presets import DataDriftPreset

    features, skipped = usable_columns(table, [*FEATURE_COLUMNS, *MODEL_COLUMNS])
    if not features:
        counts = table["side"].value_counts().to_dict()
        raise EmptyInputError(f"drift: at least 2 readable photos are needed on each side (reference "
                         f"{counts.get('reference', 0)}, current {counts.get('current', 0)})")
    emb_cols, emb_source, emb_note = choose_embedding(table, embedding)
    categorical = [c for c in features if c in CATEGORICAL_FEATURES]
    numerical = [c for c in features if c not in categorical]
    definition = DataDefinition(numerical_columns=numerical + emb_cols, categorical_columns=categorical,
                                embeddings={"photo": emb_cols} if emb_cols else None)
    frames = {side: table[table["side"] == side][features + emb_cols].reset_index(drop=True)
              for side in ("reference", "current")}
    frames = {k: v.astype({c: "int64" for c in categorical}) for k, v in frames.items()}
    method = DistanceDriftMethod(dist="euclidean", bootstrap=True, quantile_probability=0.95)
    metrics: list[Any] = [DataDriftPreset(columns=features, threshold=threshold, drift_share=drift_share)]
    if emb_cols:
        metrics.append(EmbeddingsDrift(embeddings_name="photo", drift_method=method))
    current, reference = (Dataset.from_pandas(frames[s], data_definition=definition) for s in ("current", "reference"))
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        # constant columns (all photos 1024 px wide) make Evidently's correlation plots divide by 0
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = Report(metrics, include_tests=True).run(current, reference)
    per_feature = feature_results(snapshot.dict())
    emb_result = None
    if emb_cols:
        score, drifted, _ = method(frames["current"][emb_cols].copy(), frames["reference"][emb_cols].copy())
        emb_result = {"source": emb_source, "method": "mean distance (euclidean, bootstrap 95%)",
                      "score": float(score), "drifted": bool(drifted), "note": emb_note}
    summary = summarise(per_feature, emb_result, skipped, threshold, drift_share)
    summary.update(n_reference=len(frames["reference"]), n_current=len(frames["current"]))
    if not emb_cols:
        summary["embedding"] = {"source": emb_source, "note": emb_note}
    return DriftResult(summary=summary, snapshot=snapshot, table=table)


def feature_results(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-column ``{"score", "method", "threshold", "drifted"}`` from a snapshot's ``dict()``."""
    out: dict[str, dict[str, Any]] = {}
    for metric in report.get("metrics", []):
        config = metric.get("config", {})
        if config.get("type", "").endswith(":ValueDrift"):
            out[config["column"]] = {"score": float(metric["value"]), "method": config.get("method"),
                                     "threshold": config.get("threshold"), "drifted": None}
    for test in report.get("tests", []):
        column = test.get("metric_config", {}).get("params", {}).get("column")
        if column in out:
            out[column]["drifted"] = test.get("status") == "FAIL"
    for result in out.values():
        if result["drifted"] is None:  # no test result: decide from the method's kind of score
            score, threshold = result["score"], result["threshold"]
            result["drifted"] = score < threshold if "p_value" in str(result["method"]) else score >= threshold
    return out


def summarise(features: dict[str, dict[str, Any]], embedding: dict[str, Any] | None, skipped: dict[str, str],
              threshold: float, drift_share: float) -> dict[str, Any]:
    """Summary and details: the top-level numbers are the DVC metrics; ``features`` holds every test."""
    drifted = [c for c, r in features.items() if r["drifted"]]
    if embedding and embedding["drifted"]:
        drifted.append("embedding")
    n_tested = len(features) + (1 if embedding else 0)
    share = len(drifted) / n_tested if n_tested else 0.0
    return {"drift_detected": bool(n_tested and share >= drift_share), "share_drifted": round(share, 4),
            "n_drifted": len(drifted), "n_tested": n_tested, "drift_share_threshold": drift_share,
            "stattest_threshold": threshold, "drifted_features": drifted,
            "features": features, **({"embedding": embedding} if embedding else {}),
            "skipped_features": skipped}


#: Keys of the summary kept in the DVC metrics file (the rest goes to the details file).
METRIC_KEYS = ("drift_detected", "share_drifted", "n_drifted", "n_tested", "n_reference", "n_current",
               "drift_share_threshold", "stattest_threshold", "drifted_features")


def metrics_view(summary: dict[str, Any]) -> dict[str, Any]:
    """The compact metrics JSON: :data:`METRIC_KEYS` plus the embedding's source, score and verdict."""
    out = {k: summary[k] for k in METRIC_KEYS if k in summary}
    emb = summary.get("embedding") or {}
    out["embedding"] = {k: emb[k] for k in ("source", "score", "drifted") if k in emb}
    return out


# ----------------------------------------------------------------------------- outputs

def save_html(snapshot: Any, path: str | os.PathLike) -> Path:
    """Write the Evidently HTML report atomically."""
    with atomic_path(path, suffix=".html") as tmp:
        snapshot.save_html(str(tmp))
    return Path(path)


def write_outputs(result: DriftResult, html: str | os.PathLike, summary: str | os.PathLike,
                  details: str | os.PathLike | None = None, features_csv: str | os.PathLike | None = None) -> None:
    """Write the HTML report, the compact metrics JSON, the full details JSON and the per-photo CSV."""
    save_html(result.snapshot, html)
    write_json(summary, metrics_view(result.summary))
    if details:
        write_json(details, result.summary)
    if features_csv:
        cols = ["side", "path", "sha256", *[c for c in (*FEATURE_COLUMNS, *MODEL_COLUMNS) if c in result.table]]
        write_text(features_csv, result.table[cols].to_csv(index=False, float_format="%.6g"))


def run_drift(params: Params, current: str | os.PathLike | None = None, html: str | None = None,
              summary: str | None = None) -> DriftResult:
    """``cardamage drift``: measure both sides, compare, write ``drift.html``/``drift_summary.json``/CSV."""
    table, sources = photo_table(params, current)
    d = params.drift
    result = compare(table, d.stattest_threshold, d.drift_share, d.embedding)
    result.summary.update(sources)
    write_outputs(result, html or d.html, summary or d.summary, d.details, d.features_csv)
    return result


def format_summary(summary: dict[str, Any]) -> str:
    """One short paragraph for the terminal."""
    verdict = "DRIFT DETECTED" if summary["drift_detected"] else "no drift"
    emb = summary.get("embedding", {})
    lines = [f"{verdict}: {summary['n_drifted']}/{summary['n_tested']} columns drifted "
             f"(share {summary['share_drifted']:.2f}, threshold {summary['drift_share_threshold']}); "
             f"{summary.get('n_current', '?')} current vs {summary.get('n_reference', '?')} reference photos",
             f"drifted: {', '.join(summary['drifted_features']) or '-'}",
             f"embedding: {emb.get('source', 'none')}" + (f" ({emb['note']})" if emb.get("note") else "")]
    return "\n".join(lines)
