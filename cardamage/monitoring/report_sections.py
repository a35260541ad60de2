"""HTML sections of the report page, in reading order: verdict, comparison, next photos, history, drift.

Pure functions from the pipeline's JSON/CSV contents to escaped HTML strings; the page
(:mod:`cardamage.monitoring.report`) puts them together. Figures with an interval read
``0.412 [0.351, 0.470]``.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

#: Title and CSS class of the verdict per ``publish.decision`` action.
VERDICTS = {
    "promoted": ("Promoted: the candidate {cand} is now in production", "v-ok"),
    "forced": ("Promoted by hand (--force): {cand} is now in production", "v-warn"),
    "rolled_back": ("Rolled back: {prod} is in production again", "v-warn"),
    "refused": ("Not promoted: production {prod} stays", "v-bad"),
    "unchanged": ("No change: the candidate {cand} already is the production model", "v-ok"),
}


def esc(value: Any) -> str:
    return html.escape(str(value))


def rel(path: Path, page_dir: Path) -> str:
    """``path`` relative to the page's folder, with ``/`` separators."""
    return Path(os.path.relpath(Path(path).resolve(), page_dir.resolve())).as_posix()


def num(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def with_ci(fig: dict[str, Any] | None, signed: bool = False) -> str:
    """``0.412 [0.351, 0.470]`` of a ``{"value", "ci"}`` figure (``+0.012 [...]`` when ``signed``)."""
    if not fig or not isinstance(fig.get("value"), (int, float)):
        return "-"
    fmt = "{:+.3f}" if signed else "{:.3f}"
    ci = fig.get("ci")
    text = fmt.format(fig["value"])
    return text + (f" [{fmt.format(ci[0])}, {fmt.format(ci[1])}]" if ci else "")


def table(rows: list[tuple[str, Any]]) -> str:
    """A two-column table: label, value (numbers right-aligned)."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f'<td class="num">{v:.4g}</td>'
        if isinstance(v, int) and not isinstance(v, bool):
            return f'<td class="num">{v}</td>'
        return f"<td>{esc(v)}</td>"

    return "<table>" + "".join(f"<tr><th>{esc(k)}</th>{cell(v)}</tr>" for k, v in rows) + "</table>"


def grid(header: list[str], rows: list[list[Any]]) -> str:
    """A table with a header row; cells are escaped text."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def section(title: str, body: str, anchor: str = "") -> str:
    ident = f' id="{esc(anchor)}"' if anchor else ""
    return f"<section{ident}><h2>{esc(title)}</h2>\n{body}\n</section>\n"


def figure(src: Path, title: str, page_dir: Path) -> str:
    return (f'<figure><img src="{esc(rel(src, page_dir))}" alt="{esc(title)}">'
            f"<figcaption>{esc(title)}</figcaption></figure>")


def link(path: Path, title: str, page_dir: Path) -> str:
    return f'<a href="{esc(rel(path, page_dir))}">{esc(title)}</a>'


def left_out(what: str, why: str) -> str:
    """The line that stands where a degenerate or missing plot would be."""
    return f'<p class="missing">{esc(what)} left out: {esc(why)}</p>'


# ----------------------------------------------------------------------------- sections

def verdict_section(decision: dict[str, Any], card: dict[str, Any]) -> str:
    """The first thing on the page: promoted or not, and why."""
    if not decision:
        return ('<section class="verdict v-warn"><h2>No gate decision yet</h2><p>Run <code>dvc repro</code> '
                "(or <code>cardamage publish</code>) to compare the candidate with the production model.</p>"
                "</section>\n")
    cand = (decision.get("candidate") or {}).get("model_version", "?")
    prod = decision.get("production") or "none"
    title, css = VERDICTS.get(decision.get("action", ""), ("{cand}: " + str(decision.get("action")), "v-warn"))
    before = (decision.get("production_before") or {}).get("model_version")
    facts = [f"candidate <code>{esc(cand)}</code>", f"in production now <code>{esc(prod)}</code>"]
    if before and before != prod:
        facts.append(f"replaced <code>{esc(before)}</code>")
    test = decision.get("test_set") or {}
    if test:
        facts.append(f"test set {esc(test.get('n_photos', '?'))} photos ({esc(test.get('fingerprint', '?'))})")
    facts.append(f"decided {esc(decision.get('time', '?'))}")
    git = (card.get("git") or {}) if card.get("model_version") == prod else {}
    if git.get("revision"):
        facts.append(f"git {esc(git['revision'][:10])}{' (uncommitted changes)' if git.get('dirty') else ''}")
    return (f'<section class="verdict {css}"><h2>{esc(title.format(cand=cand, prod=prod))}</h2>'
            f'<p>{esc(decision.get("reason", ""))}</p><p class="meta">{" &middot; ".join(facts)}</p></section>\n')


def comparison_section(decision: dict[str, Any]) -> str:
    """Candidate vs production on the test set, with intervals, and IoU per class."""
    cand = (decision.get("candidate") or {}).get("metrics") or {}
    prod = (decision.get("production_before") or {}).get("metrics") or {}
    if not cand:
        return ""
    diff = decision.get("difference")
    rows = [["damage IoU", with_ci(cand.get("damage_iou")), with_ci(prod.get("damage_iou")), with_ci(diff, True)],
            ["mean IoU", with_ci(cand.get("mean_iou")), with_ci(prod.get("mean_iou")), "-"]]
    note = "" if prod else "<p>No production model was compared (first model, forced or rolled back).</p>"
    level = cand.get("confidence")
    head = (f"<p>On the same {esc(cand.get('n_photos', '?'))} test photos; intervals: "
            f"{esc(f'{level:.0%}' if isinstance(level, float) else '?')} bootstrap over photos "
            "(paired for the difference).</p>")
    checks = decision.get("class_checks") or []
    by_class = [[c["class"], num(c["candidate"]), num(c["production"]), num(c["drop"]), f"{c['tolerance']:g}",
                 "ok" if c["ok"] else "DROPPED TOO MUCH"] for c in checks]
    if not by_class:
        by_class = [[name, with_ci(fig), "-", "-", "-", "-"] for name, fig in (cand.get("iou") or {}).items()
                    if name != "background"]
    return section("Candidate vs production", head + note
                   + grid(["", "candidate", "production", "difference"], rows)
                   + "<h3>IoU per class</h3>"
                   + grid(["class", "candidate", "production", "drop", "tolerance", "check"], by_class),
                   "comparison")


def selection_section(rows: list[dict[str, str]], thumbs: dict[str, Path], csv_path: Path, page_dir: Path) -> str:
    """The next photos to label, as thumbnails with rank, score and why."""
    if not rows:
        return ""
    cards = []
    for row in rows:
        thumb = thumbs.get(row.get("path", ""))
        img = (f'<img src="{esc(rel(thumb, page_dir))}" alt="{esc(row.get("path", ""))}">' if thumb
               else '<p class="missing">no thumbnail</p>')
        cards.append(f'<figure class="thumb">{img}<figcaption>#{esc(row.get("rank", "?"))} score '
                     f'{esc(num(_float(row.get("score")), 4))}<br>{esc(Path(row.get("path", "")).name)}<br>'
                     f'<span class="meta">{esc(row.get("reason", ""))}</span></figcaption></figure>')
    strategy = rows[0].get("strategy", "?")
    return section(f"Next photos to label ({len(rows)}, {strategy})",
                   '<div class="thumbs">' + "".join(cards) + "</div>"
                   + f"<p>{link(csv_path, 'selection (CSV)', page_dir)} &middot; send them to Label Studio: "
                   f"<code>cardamage push {esc(csv_path.as_posix())}</code></p>", "selection")


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def history_section(entries: list[dict[str, Any]], problems: list[str], plots: dict[str, Path | None],
                    page_dir: Path, photos_now: dict[str, int] | None = None) -> str:
    """Metric history over versions and labelled photos over time (plots, or a line saying why not).

    ``photos_now``: labelled photos by source at the latest evaluation, stated when there is no plot.
    """
    if not entries and not problems:
        return ""
    body = []
    now = ", ".join(f"{k} {v}" for k, v in (photos_now or {}).items())
    for key, what in (("history", "metric history plot"), ("photos", "labelled photos over time plot")):
        if plots.get(key):
            body.append(figure(plots[key], what, page_dir))
        else:
            why = f"it needs at least two evaluations, {len(entries)} so far"
            body.append(left_out(what, why + (f" (labelled photos now: {now})" if key == "photos" and now else "")))
    recent = [[str(e.get("time", ""))[:16], e.get("model_version", "?"), with_ci((e.get("metrics") or {}).get(
        "damage_iou")), e.get("action", e.get("event", "?"))] for e in entries[-5:][::-1]]
    body.append(grid(["time", "model version", "test damage IoU", "outcome"], recent))
    body += [f'<p class="missing">{esc(p)}</p>' for p in problems]
    return section("History", '<div class="figures">' + "".join(body[:2]) + "</div>" + "".join(body[2:]),
                   "history")


def drift_section(d: dict[str, Any], movers: list[dict[str, Any]], thumbs: dict[str, Path], links: list[str],
                  page_dir: Path) -> str:
    """Drift verdict, drifted features, and the photos that moved most."""
    if not d and not links:
        return ""
    verdict = '<p class="bad">Drift detected</p>' if d.get("drift_detected") else '<p class="ok">No drift</p>'
    emb = d.get("embedding") or {}
    rows = [("drifted columns", f"{d.get('n_drifted', '?')} of {d.get('n_tested', '?')}"),
            ("share drifted", d.get("share_drifted")), ("threshold (share)", d.get("drift_share_threshold")),
            ("drifted", ", ".join(d.get("drifted_features") or []) or "none"),
            ("embedding", emb.get("source", "none")),
            ("photos", f"{d.get('n_current', '?')} current vs {d.get('n_reference', '?')} reference")]
    cards = []
    for m in movers:
        thumb = thumbs.get(m["path"])
        img = f'<img src="{esc(rel(thumb, page_dir))}" alt="{esc(m["path"])}">' if thumb else ""
        cards.append(f'<figure class="thumb">{img}<figcaption>{esc(Path(m["path"]).name)}<br>{esc(m["feature"])} '
                     f'{esc(num(m["value"], 3))} (training median {esc(num(m["reference"], 3))})</figcaption></figure>')
    hint = "" if d.get("drifted_features") else ('<p class="meta">No feature drifted; these are the photos '
                                                  "furthest from the training photos anyway.</p>")
    moved = ("<h3>Photos that moved most</h3>" + hint + '<div class="thumbs">' + "".join(cards) + "</div>"
             ) if cards else ""
    body = verdict + table(rows) + moved + ("<p>" + " &middot; ".join(links) + "</p>" if links else "")
    return section("Data drift", body, "drift")


def test_metrics_section(m: dict[str, Any]) -> str:
    """Headline figures of the candidate on the test split, with intervals and image-level notes."""
    if not m:
        return ""
    ci = m.get("intervals") or {}
    image = m.get("image") or {}
    rows = [("mean IoU", with_ci(ci.get("mean_iou")) if ci else num(m.get("mean_iou"))),
            ("damage IoU", with_ci(ci.get("damage_iou")) if ci else num(m.get("damage_iou"))),
            ("image precision", num(image.get("precision"))), ("image recall", num(image.get("recall"))),
            ("image F1", num(image.get("f1"))), ("instance count MAE", num(m.get("instance_count_mae"), 2)),
            ("photos", f"{m.get('n_images', '?')} ({', '.join(m.get('splits') or [])})")]
    note = ""
    if image.get("negatives") == 0:
        note = ('<p class="meta">Every evaluated photo shows damage, so image-level precision is 1 whenever '
                "anything is found; recall is the informative figure.</p>")
    return table(rows) + note


def audit_section(summary: dict[str, Any], rows: list[dict[str, str]], csv_path: Path, page_dir: Path) -> str:
    """The last pull's label audit: the doubtful labels as pictures (label outline green, model red),
    each annotator's agreement, the swapped class pairs."""
    if not summary:
        return ""
    overlays = summary.get("overlays") or {}
    cards = []
    for row in rows:
        pic = overlays.get(row.get("id", ""))
        if not pic:
            continue
        flag = '<b class="missing">flagged</b> ' if row.get("flagged") == "True" else ""
        cards.append(f'<figure class="thumb"><img src="{esc(rel(Path(pic), page_dir))}" alt="{esc(row.get("image"))}">'
                     f'<figcaption>{flag}quality {esc(row.get("quality"))}, issues {esc(row.get("issue_share"))}'
                     f'<br>{esc(row.get("image"))} (task {esc(row.get("task_id"))})<br>'
                     f'<span class="meta">{esc(row.get("annotator"))}</span></figcaption></figure>')
    flagged = summary.get("flagged") or []
    body = (f"<p>{esc(summary.get('photos'))} pulled label(s) checked against model "
            f"{esc(summary.get('model_version'))} with cleanlab: {esc(summary.get('out_of_sample'))} made after that "
            f"model (only those can be flagged), <b>{len(flagged)} flagged</b>. Green: the label; red: the model's "
            "damage. Lowest label quality first.</p>")
    body += '<div class="thumbs">' + "".join(cards) + "</div>" if cards else ""
    people = summary.get("annotators") or []
    if people:
        body += "<h3>Annotators</h3>" + grid(["annotator", "photos", "mean IoU with the model", "mean label quality",
                                              "flagged"],
                                             [[a["annotator"], a["photos"], a["mean_model_iou"], a["mean_quality"],
                                               a["flagged"]] for a in people])
    if summary.get("annotator_pairs"):
        body += "<h3>Annotators with each other</h3>" + grid(
            ["annotators", "tasks", "mean IoU"],
            [[" & ".join(p["annotators"]), p["tasks"], p["mean_iou"]] for p in summary["annotator_pairs"]])
    if summary.get("class_pairs"):
        body += "<h3>Most often swapped (label given, model's class)</h3>" + grid(
            ["given", "model", "pixels", "share"],
            [[p["given"], p["predicted"], p["pixels"], p["share"]] for p in summary["class_pairs"][:8]])
    body += (f"<p>{link(csv_path, 'label audit (CSV)', page_dir)} &middot; send the flagged labels back for review: "
             "<code>cardamage labelstudio review</code>; keep them out of training: "
             "<code>prepare.exclude_flagged: true</code></p>")
    return section(f"Label audit ({len(flagged)} flagged)", body, "audit")


def active_learning_table(result: dict[str, Any]) -> str:
    """Effort to reach the target per arm (``simulate.out``), against random whole photos, with the noise floor."""
    curves = result.get("curves") or {}
    if not curves:
        return ""
    from cardamage.active.simulate_results import METRICS

    metric = result.get("target_metric", "mean_iou")
    name = METRICS.get(metric, metric)
    efforts, tasks = result.get("effort_to_target") or {}, result.get("tasks_to_target") or {}
    relative = result.get("effort_relative_to_random") or {}
    per_seed = result.get("effort_to_target_per_seed") or {}
    interp = result.get("effort_to_target_interpolated") or {}
    interp_rel = result.get("effort_interpolated_relative_to_random") or {}
    rows = []
    for arm, curve in curves.items():
        last = (curve.get("effort") or curve.get("labelled") or [None])[-1]
        reached = efforts.get(arm)
        rows.append([arm, len(curve.get("seeds") or []), num((curve.get(metric) or [None])[-1]),
                     num(reached, 1) if reached else f"not reached (> {num(last, 1)})",
                     _seed_band(per_seed.get(arm) or {}, last),
                     num(tasks.get(arm), 0) if tasks.get(arm) else "-",
                     f"{relative[arm]:.0%}" if relative.get(arm) else "-",
                     num(interp[arm], 1) if interp.get(arm) else "-",
                     f"{interp_rel[arm]:.0%}" if interp_rel.get(arm) else "-"])
    noise = result.get("noise_floor") or {}
    note = (f"<p>Target: {num(result.get('target_fraction'), 2)} of the whole-pool model's validation {name} "
            f"({num(result.get('target', result.get('target_mean_iou')), 4)}). Effort: a photo = 1 + the task "
            "cost, a region = its crop's share of the photo + the task cost. Noise floor (random over seeds, "
            f"max-min of {name}): mean {num(noise.get('mean_seed_spread'), 4)}, largest "
            f"{num(noise.get('max_seed_spread'), 4)}. Interpolated: where the seed-mean curve crosses the "
            "target, linear between rounds (the round figure is the first round at or above it).</p>")
    header = ["arm", "seeds", f"final {name}", "effort to target", "per seed", "tasks", "vs random",
              "interpolated", "vs random (interpolated)"]
    return note + grid(header, rows)


def _seed_band(per_seed: dict[str, Any], last: Any) -> str:
    """Each seed's own effort to target, ``seed: effort`` (``> last`` where a seed never reached it)."""
    return ", ".join(f"{seed}: {num(e, 1) if e else '> ' + num(last, 1)}" for seed, e in per_seed.items()) or "-"

