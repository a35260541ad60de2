"""The page a team lead reads in two minutes: ``cardamage report`` writes ``reports/index.html``.

In reading order: the verdict of the promotion gate (promoted or not, and why:
``publish.decision``), candidate vs production on the fixed test set with intervals and IoU per
class, the next photos to label as thumbnails with their scores (``select.out``), the metric
history over model versions and the labelled photos over time by source (``publish.history``),
drift with the photos that moved most (``drift.summary`` + ``drift.features_csv``), the
active-learning curve (``cardamage simulate``, a manual command), then the test metrics, curves and
overlays. A plot that would be degenerate is left out with a line saying why (the precision-recall
curve when every test photo shows damage, a history of one evaluation). The header gives the model
in production, the candidate, the data version (sha256 of the prepared manifest and, when
``dvc.lock`` exists, DVC's hash of the prepared folder) and the date. Thumbnails and plots are
drawn into ``report.assets_dir``; links are relative, so ``reports/`` can be copied or served as it
is. No JavaScript, no network.
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
from cardamage.monitoring import report_assets as assets
from cardamage.monitoring import report_sections as sec
from cardamage.monitoring.data_version import data_version, data_version_text, dvc_lock_hash  # noqa: F401 (re-export)
from cardamage.monitoring.history import read_entries

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Artifact:
    """One file the page may show: ``kind`` is ``image`` (inline picture) or ``link``."""

    key: str
    title: str
    path: Path
    kind: str = "image"


@dataclass
class ReportPage:
    """What :func:`build_report` wrote and found.

    ``missing``: titles of artifacts not produced yet; ``left_out``: ``{title: why}`` of plots not drawn.
    """

    out_file: Path
    model_version: str
    data_version: str
    date: str
    present: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    drift: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    decision: dict[str, Any] = field(default_factory=dict)
    selection: list[dict[str, str]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)

    def text_summary(self) -> str:
        """A few lines for the end of ``dvc repro``, ending with what to open."""
        lines = [f"report: {self.out_file} (model {self.model_version}, data {self.data_version})"]
        if self.decision:
            d = self.decision
            head = "PROMOTED" if d.get("promoted") else ("UNCHANGED" if d.get("action") == "unchanged" else
                                                          "NOT PROMOTED")
            lines.append(f"  verdict: {head} {(d.get('candidate') or {}).get('model_version', '?')}: {d.get('reason')}")
        if self.metrics:
            lines.append("  metrics: " + metrics_line(self.metrics))
        if self.selection:
            lines.append(f"  next to label: {len(self.selection)} photo(s), "
                         + ", ".join(Path(r.get("path", "")).name for r in self.selection[:5]))
        if self.drift:
            d = self.drift
            verdict = "DRIFT DETECTED" if d.get("drift_detected") else "no drift"
            lines.append(f"  drift: {verdict} ({d.get('n_drifted', '?')}/{d.get('n_tested', '?')} columns: "
                         f"{', '.join(d.get('drifted_features') or []) or 'none'})")
        if self.data:
            lines.append("  data: " + data_line(self.data))
        if self.missing:
            lines.append(f"  not produced yet: {', '.join(self.missing)}")
        lines.append(f"open {self.out_file.resolve().as_uri()} in a browser: the verdict first, then candidate vs "
                     "production, the photos to label next, history and drift")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- inputs

def artifacts(params: Params) -> list[Artifact]:
    """Every file the page knows, in page order, with paths from the params."""
    plots = Path(params.evaluate.plots_dir)
    return [
        Artifact("decision", "gate decision (JSON)", Path(params.publish.decision), "link"),
        Artifact("model_history", "model history (JSON lines)", Path(params.publish.history), "link"),
        Artifact("metrics", "test metrics", Path(params.evaluate.metrics_file), "link"),
        Artifact("selection", "next photos to label (CSV)", Path(params.select.out), "link"),
        Artifact("training_curves", "training curves", plots / "training_curves.png"),
        Artifact("history", "training history (CSV)", Path(params.train.history_csv), "link"),
        Artifact("pr_curve", "precision-recall curve", plots / "pr_curve.png"),
        Artifact("overlays_worst", "worst test photos", plots / "overlays_worst.png"),
        Artifact("overlays_best", "best test photos", plots / "overlays_best.png"),
        Artifact("drift", "drift report (Evidently)", Path(params.drift.html), "link"),
        Artifact("drift_summary", "drift summary (JSON)", Path(params.drift.summary), "link"),
        Artifact("active_learning", "active-learning curve", Path(params.simulate.plot)),
        Artifact("data", "data summary (JSON)", Path(params.prepare.summary), "link"),
    ]


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; ``{}`` when missing or unreadable (with a warning)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("%s: unreadable (%s); left out of the report", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _model_version(metrics: dict[str, Any], params: Params) -> str:
    if metrics.get("model_version"):
        return str(metrics["model_version"])
    return "not evaluated yet" if Path(params.train.model_path).is_file() else "not trained yet"


def metrics_line(m: dict[str, Any]) -> str:
    """``mean IoU 0.412, damage IoU 0.301 [0.25, 0.35], image F1 0.800, AP 0.712, count MAE 1.25 (8 photos)``."""
    f = sec.num
    image = m.get("image") or {}
    ci = ((m.get("intervals") or {}).get("damage_iou") or {}).get("ci")
    interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
    mask = (m.get("mask_ap") or {}).get("mask_ap")
    return (f"mean IoU {f(m.get('mean_iou'))}, damage IoU {f(m.get('damage_iou'))}{interval}, "
            f"image F1 {f(image.get('f1'))}, AP {f(image.get('average_precision'))}, "
            + (f"mask AP {f(mask)}, " if mask is not None else "")
            + f"count MAE {f(m.get('instance_count_mae'), 2)} ({m.get('n_images', '?')} photos)")


def data_line(d: dict[str, Any]) -> str:
    """``69 photos (train 53, val 6, test 10; sample 69), 1 conflicting label set``."""
    other = {"n_photos", "n_instances", "n_exact_duplicate_sets", "n_conflicting_labels", "n_duplicate_groups",
             "n_split_moves", "n_test_held_out"}
    parts = ", ".join(f"{k[2:]} {v}" for k, v in d.items() if k.startswith("n_") and k not in other)
    text = f"{d.get('n_photos', '?')} photos ({parts})"
    if d.get("n_conflicting_labels"):
        text += f", {d['n_conflicting_labels']} byte-identical photo set(s) labelled differently"
    return text


# ----------------------------------------------------------------------------- assets

def _thumbs(paths: list[str], folder: Path, px: int) -> dict[str, Path]:
    """``{photo path: thumbnail}`` for the photos that could be read."""
    out = {}
    for i, path in enumerate(paths):
        thumb = assets.thumbnail(path, folder / f"{i:02d}-{Path(path).stem}.jpg", px)
        if thumb is not None:
            out[path] = thumb
    return out


def _clear(folder: Path) -> None:
    """Remove last run's thumbnails and plots (the page must not show stale ones); nothing else."""
    for sub in ("selection", "drift"):
        for old in (folder / sub).glob("*.jpg") if (folder / sub).is_dir() else []:
            old.unlink(missing_ok=True)
    for name in ("history.png", "labelled_photos.png"):
        (folder / name).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- HTML

def render(params: Params, page: ReportPage, found: dict[str, Artifact], page_dir: Path,
           parts: dict[str, Any]) -> str:
    """The full HTML page (``parts``: thumbnails, movers, plots and history problems from :func:`build_report`)."""
    sections = [sec.verdict_section(page.decision, parts["card"]), sec.comparison_section(page.decision),
                sec.selection_section(page.selection, parts["selection_thumbs"], Path(params.select.out), page_dir),
                sec.history_section(page.history, parts["history_problems"], parts["plots"], page_dir,
                                    assets.labelled_by_source(page.history[-1]) if page.history else None),
                sec.audit_section(parts["audit"], parts["audit_rows"], Path(params.labelstudio.audit.csv), page_dir)]
    links = [sec.link(found[k].path, found[k].title, page_dir) for k in ("drift", "drift_summary") if k in found]
    sections.append(sec.drift_section(page.drift, parts["movers"], parts["drift_thumbs"], links, page_dir))
    if "active_learning" in found:
        table = sec.active_learning_table(read_json(Path(params.simulate.out)))
        sections.append(sec.section("Active learning", table + sec.figure(found["active_learning"].path,
                                                                           found["active_learning"].title, page_dir)))
    else:
        sections.append(sec.section("Active learning", sec.left_out(
            "active-learning curve", "not produced yet; `cardamage simulate` replays active learning on the "
            "labelled photos (a manual command: it trains many small models) and this page picks it up")))
    figs = [sec.figure(found[k].path, found[k].title, page_dir)
            for k in ("training_curves", "pr_curve", "overlays_worst", "overlays_best") if k in found]
    figs += [sec.left_out(title, why) for title, why in page.left_out.items()]
    body = sec.test_metrics_section(page.metrics) + ('<div class="figures">' + "".join(figs) + "</div>" if figs else "")
    if body:
        sections.append(sec.section("Test metrics, curves and overlays (candidate)", body, "details"))
    if page.data:
        sections.append(sec.section("Data", f"<p>{sec.esc(data_line(page.data))}</p>"))
    files = [sec.link(a.path, a.title, page_dir) for a in found.values() if a.kind == "link"]
    if files:
        sections.append(sec.section("Files", "<ul>" + "".join(f"<li>{x}</li>" for x in files) + "</ul>"))
    if page.missing:
        items = "".join(f'<li class="missing">{sec.esc(t)}: not produced yet</li>' for t in page.missing)
        sections.append(sec.section("Not produced yet", f"<ul>{items}</ul>"))
    template = Template(resources.files("cardamage.monitoring").joinpath("templates/report.html")
                        .read_text(encoding="utf-8"))
    production = page.decision.get("production") or parts["card"].get("model_version") or "none yet"
    return template.substitute(title=html.escape(params.report.title), model_version=html.escape(page.model_version),
                               production=html.escape(str(production)), data_version=html.escape(page.data_version),
                               date=html.escape(page.date), sections="".join(s for s in sections if s))


def build_report(params: Params, out_file: str | os.PathLike | None = None,
                 now: dt.datetime | None = None) -> ReportPage:
    """Collect the inputs, draw the thumbnails and plots, write the page atomically and return what it shows."""
    r = params.report
    out = Path(out_file or r.out_file)
    folder = Path(r.assets_dir)
    _clear(folder)
    folder.mkdir(parents=True, exist_ok=True)  # a DVC output: it exists even when nothing is drawn
    metrics = read_json(Path(params.evaluate.metrics_file))
    skipped = {a.title: metrics["plots_skipped"][a.key] for a in artifacts(params)
               if a.key in (metrics.get("plots_skipped") or {})}
    found = {a.key: a for a in artifacts(params) if a.path.is_file() and a.title not in skipped}
    history, problems = read_entries(params.publish.history)
    drift = read_json(Path(params.drift.summary))
    page = ReportPage(
        out_file=out, model_version=_model_version(metrics, params),
        data_version=data_version_text(data_version(params)),
        date=(now or dt.datetime.now(dt.timezone.utc)).strftime("%Y-%m-%d %H:%M UTC"),
        present=[a.title for a in artifacts(params) if a.key in found],
        missing=[a.title for a in artifacts(params) if a.key not in found and a.title not in skipped],
        left_out=skipped, metrics=metrics, drift=drift, data=read_json(Path(params.prepare.summary)),
        decision=read_json(Path(params.publish.decision)), selection=assets.read_rows(params.select.out),
        history=history)
    movers = assets.drift_movers(assets.read_rows(params.drift.features_csv), _moved_features(drift), r.thumbnails)
    parts = {"card": read_json(Path(params.publish.card)), "history_problems": problems, "movers": movers,
             "selection_thumbs": _thumbs([x.get("path", "") for x in page.selection[:r.thumbnails]],
                                         folder / "selection", 200),
             "drift_thumbs": _thumbs([m["path"] for m in movers], folder / "drift", 160),
             "audit": read_json(Path(params.labelstudio.audit.summary)),
             "audit_rows": assets.read_rows(params.labelstudio.audit.csv),
             "plots": {"history": assets.plot_history(history, folder / "history.png"),
                       "photos": assets.plot_photos(history, folder / "labelled_photos.png")}}
    write_text(out, render(params, page, found, out.parent, parts))
    log.info("wrote %s (%d file(s), %d not produced yet, %d left out)", out, len(found), len(page.missing),
             len(skipped))
    return page


def _moved_features(drift: dict[str, Any]) -> list[str]:
    """Features to rank photos by: the drifted ones, else every photo feature (and model output)."""
    from cardamage.monitoring.features import FEATURE_COLUMNS

    drifted = [f for f in drift.get("drifted_features") or [] if f != "embedding"]
    return drifted or [*FEATURE_COLUMNS, "entropy", "damaged_share", "instance_count"]
