"""The page people read: ``cardamage report`` writes ``reports/index.html`` and prints a summary.

The page links whatever the pipeline has produced so far (metrics, training and precision-recall
curves, overlay grids, the Evidently drift report, the active-learning curve, the data summary)
and lists the rest as "not produced yet". It states the model version (from the metrics file),
the data version (sha256 of the prepared manifest and, when ``dvc.lock`` exists, the DVC hash of
the prepared folder) and the date. Links are relative, so the ``reports/`` folder can be copied
or served as it is. No JavaScript, no network.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from cardamage.config import Params
from cardamage.fileio import write_text
from cardamage.monitoring.data_version import data_version, data_version_text, dvc_lock_hash  # noqa: F401 (re-export)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Artifact:
    """One thing the page may show: ``kind`` is ``image`` (inline picture) or ``link``."""

    key: str
    title: str
    path: Path
    kind: str = "image"


@dataclass
class ReportPage:
    """What :func:`build_report` wrote and found (``missing``: titles of artifacts not produced yet)."""

    out_file: Path
    model_version: str
    data_version: str
    date: str
    present: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    drift: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    def text_summary(self) -> str:
        """A few lines for the end of ``dvc repro``."""
        lines = [f"report: {self.out_file} (model {self.model_version}, data {self.data_version})"]
        if self.metrics:
            lines.append("  metrics: " + metrics_line(self.metrics))
        if self.drift:
            d = self.drift
            verdict = "DRIFT DETECTED" if d.get("drift_detected") else "no drift"
            lines.append(f"  drift: {verdict} ({d.get('n_drifted', '?')}/{d.get('n_tested', '?')} columns: "
                         f"{', '.join(d.get('drifted_features') or []) or 'none'})")
        if self.data:
            lines.append("  data: " + data_line(self.data))
        if self.missing:
            lines.append(f"  not produced yet: {', '.join(self.missing)}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- inputs

def artifacts(params: Params) -> list[Artifact]:
    """Every artifact the page knows, in page order, with paths from the params."""
    plots = Path(params.evaluate.plots_dir)
    return [
        Artifact("metrics", "validation metrics", Path(params.evaluate.metrics_file), "link"),
        Artifact("training_curves", "training curves", plots / "training_curves.png"),
        Artifact("history", "training history (CSV)", Path(params.train.history_csv), "link"),
        Artifact("pr_curve", "precision-recall curve", plots / "pr_curve.png"),
        Artifact("overlays_worst", "worst validation photos", plots / "overlays_worst.png"),
        Artifact("overlays_best", "best validation photos", plots / "overlays_best.png"),
        Artifact("drift", "drift report (Evidently)", Path(params.drift.html), "link"),
        Artifact("drift_summary", "drift summary (JSON)", Path(params.drift.summary), "link"),
        Artifact("active_learning", "active-learning curve", Path(params.simulate.plot)),
        Artifact("selection", "next photos to label (CSV)", Path(params.select.out), "link"),
        Artifact("data", "data summary (JSON)", Path(params.prepare.summary), "link"),
    ]


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; ``{}`` when missing or unreadable (with a warning)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("%s: unreadable (%s); left out of the report", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _model_version(metrics: dict[str, Any], params: Params) -> str:
    if metrics.get("model_version"):
        return str(metrics["model_version"])
    return "not evaluated yet" if Path(params.train.model_path).is_file() else "not trained yet"


def metrics_line(m: dict[str, Any]) -> str:
    """``mean IoU 0.412, damage IoU 0.301, image F1 0.800, AP 0.712, count MAE 1.25 (8 photos)``."""
    def f(value: Any, digits: int = 3) -> str:
        return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"

    image = m.get("image") or {}
    return (f"mean IoU {f(m.get('mean_iou'))}, damage IoU {f(m.get('damage_iou'))}, image F1 {f(image.get('f1'))}, "
            f"AP {f(image.get('average_precision'))}, count MAE {f(m.get('instance_count_mae'), 2)} "
            f"({m.get('n_images', '?')} photos)")


def data_line(d: dict[str, Any]) -> str:
    """``69 photos (train 61, val 8; sample 69), 1 conflicting label set``."""
    other = {"n_photos", "n_instances", "n_exact_duplicate_sets", "n_conflicting_labels", "n_duplicate_groups",
             "n_split_moves"}
    parts = ", ".join(f"{k[2:]} {v}" for k, v in d.items() if k.startswith("n_") and k not in other)
    text = f"{d.get('n_photos', '?')} photos ({parts})"
    if d.get("n_conflicting_labels"):
        text += f", {d['n_conflicting_labels']} byte-identical photo set(s) labelled differently"
    return text


# ----------------------------------------------------------------------------- HTML

def _rel(path: Path, page_dir: Path) -> str:
    return Path(os.path.relpath(path.resolve(), page_dir.resolve())).as_posix()


def _table(rows: list[tuple[str, Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f'<td class="num">{v:.4g}</td>'
        if isinstance(v, int) and not isinstance(v, bool):
            return f'<td class="num">{v}</td>'
        return f"<td>{html.escape(str(v))}</td>"

    body = "".join(f"<tr><th>{html.escape(k)}</th>{cell(v)}</tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>\n{body}\n</section>\n"


def _figure(a: Artifact, page_dir: Path) -> str:
    src = html.escape(_rel(a.path, page_dir))
    title = html.escape(a.title)
    return f'<figure><img src="{src}" alt="{title}"><figcaption>{title}</figcaption></figure>'


def _link(a: Artifact, page_dir: Path) -> str:
    return f'<a href="{html.escape(_rel(a.path, page_dir))}">{html.escape(a.title)}</a>'


def metrics_section(m: dict[str, Any]) -> str:
    """Headline validation numbers as a table."""
    image = m.get("image") or {}
    rows = [("mean IoU", m.get("mean_iou")), ("damage IoU", m.get("damage_iou")),
            ("image precision", image.get("precision")), ("image recall", image.get("recall")),
            ("image F1", image.get("f1")), ("image average precision", image.get("average_precision")),
            ("instance count MAE", m.get("instance_count_mae")), ("validation photos", m.get("n_images"))]
    return _table([(k, v) for k, v in rows if v is not None])


def drift_section(d: dict[str, Any]) -> str:
    """Drift verdict, drifted features and the embedding used."""
    verdict = ('<p class="bad">Drift detected</p>' if d.get("drift_detected") else '<p class="ok">No drift</p>')
    emb = d.get("embedding") or {}
    rows = [("drifted columns", f"{d.get('n_drifted', '?')} of {d.get('n_tested', '?')}"),
            ("share drifted", d.get("share_drifted")), ("threshold (share)", d.get("drift_share_threshold")),
            ("drifted", ", ".join(d.get("drifted_features") or []) or "none"),
            ("embedding", emb.get("source", "none")),
            ("photos", f"{d.get('n_current', '?')} current vs {d.get('n_reference', '?')} reference")]
    return verdict + _table(rows)


def render(params: Params, page: ReportPage, found: dict[str, Artifact], page_dir: Path) -> str:
    """The full HTML page."""
    sections = []
    if page.metrics:
        sections.append(_section("Validation metrics", metrics_section(page.metrics)))
    figs = [found[k] for k in ("training_curves", "pr_curve", "overlays_worst", "overlays_best") if k in found]
    if figs:
        sections.append(_section("Curves and overlays",
                                 '<div class="figures">' + "".join(_figure(a, page_dir) for a in figs) + "</div>"))
    if page.drift or "drift" in found:
        body = drift_section(page.drift) if page.drift else ""
        links = [_link(found[k], page_dir) for k in ("drift", "drift_summary") if k in found]
        sections.append(_section("Data drift", body + ("<p>" + " &middot; ".join(links) + "</p>" if links else "")))
    if "active_learning" in found:
        sections.append(_section("Active learning", _figure(found["active_learning"], page_dir)))
    if page.data:
        sections.append(_section("Data", f"<p>{html.escape(data_line(page.data))}</p>"))
    links = [_link(found[k], page_dir) for k in ("metrics", "history", "selection", "data") if k in found]
    if links:
        sections.append(_section("Files", "<ul>" + "".join(f"<li>{x}</li>" for x in links) + "</ul>"))
    if page.missing:
        items = "".join(f'<li class="missing">{html.escape(t)}: not produced yet</li>' for t in page.missing)
        sections.append(_section("Not produced yet", f"<ul>{items}</ul>"))
    page_file = resources.files("cardamage.monitoring").joinpath("templates/report.html")
    template = Template(page_file.read_text(encoding="utf-8"))
    return template.substitute(title=html.escape(params.report.title), model_version=html.escape(page.model_version),
                               data_version=html.escape(page.data_version), date=html.escape(page.date),
                               sections="".join(sections))


def build_report(params: Params, out_file: str | os.PathLike | None = None,
                 now: dt.datetime | None = None) -> ReportPage:
    """Collect the artifacts, write the page atomically and return what it shows."""
    out = Path(out_file or params.report.out_file)
    found = {a.key: a for a in artifacts(params) if a.path.is_file()}
    metrics = read_json(Path(params.evaluate.metrics_file))
    page = ReportPage(
        out_file=out, model_version=_model_version(metrics, params),
        data_version=data_version_text(data_version(params)),
        date=(now or dt.datetime.now(dt.timezone.utc)).strftime("%Y-%m-%d %H:%M UTC"),
        present=[a.title for a in artifacts(params) if a.key in found],
        missing=[a.title for a in artifacts(params) if a.key not in found],
        metrics=metrics, drift=read_json(Path(params.drift.summary)), data=read_json(Path(params.prepare.summary)))
    write_text(out, render(params, page, found, out.parent))
    log.info("wrote %s (%d artifact(s), %d not produced yet)", out, len(found), len(page.missing))
    return page
