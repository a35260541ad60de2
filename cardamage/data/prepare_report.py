"""What ``cardamage prepare`` reports: ``prepare_report.json``, the DVC summary metrics and the terminal lines.

The report holds counts by split and source, exact duplicate sets, conflicting labels, near-duplicate
groups, split moves and reader issues; no timestamps, so an unchanged input gives an unchanged file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cardamage.config import Params

if TYPE_CHECKING:
    from cardamage.data.prepare import Item, PrepareResult


def build_report(rows: Sequence[dict[str, Any]], exact: list[dict[str, Any]], groups: Sequence[Sequence[Item]],
                 moved: list[dict[str, Any]], issues: list[str], params: Params) -> dict[str, Any]:
    """Counts, duplicate sets, conflicting labels and split moves (no timestamps: deterministic)."""
    counts: dict[str, int] = {}
    for row in rows:
        for key in (f"n_{row['split']}", f"n_{row['source']}"):
            counts[key] = counts.get(key, 0) + 1
    near = [[i.origin for i in g] for g in groups if len(g) > 1]
    return {
        "n_photos": len(rows), **dict(sorted(counts.items())),
        "n_instances": sum(int(r["n_instances"]) for r in rows),
        "split_mode": params.prepare.split, "val_percent": params.prepare.val_percent,
        "exact_duplicates": exact,
        "conflicting_labels": [e for e in exact if e["labels_differ"]],
        "duplicate_groups": near, "split_moves": moved, "reader_issues": issues,
    }


def summary_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """Numbers for ``reports/prepare_summary.json`` (a DVC metrics file)."""
    keep = {k: v for k, v in report.items() if k.startswith("n_")}
    keep.setdefault("n_test", 0)
    keep["n_test_held_out"] = len(report.get("test_split", {}).get("held_out", []))
    keep["n_flagged_out"] = len(report.get("flagged_out", []))
    keep.update(n_exact_duplicate_sets=len(report["exact_duplicates"]),
                n_conflicting_labels=len(report["conflicting_labels"]),
                n_duplicate_groups=len(report["duplicate_groups"]), n_split_moves=len(report["split_moves"]))
    return keep


def format_report(result: PrepareResult) -> str:
    """A few lines for the terminal."""
    r = result.report
    lines = [f"prepared {r['n_photos']} labelled photo(s) in {result.out_dir}: "
             + ", ".join(f"{k[2:]} {v}" for k, v in r.items() if k.startswith("n_") and k != "n_photos")]
    for e in r["conflicting_labels"]:
        lines.append(f"  same photo, different labels: {' = '.join(e['photos'])} (kept {', '.join(e['kept'])})")
    for h in r.get("test_split", {}).get("held_out", []):
        lines.append(f"  left out, duplicates test photo(s) {', '.join(h['test_photos'])}: {h['photo']}")
    for origin in r.get("flagged_out", []):
        lines.append(f"  left out, flagged by the label audit: {origin}")
    for m in r["split_moves"]:
        lines.append(f"  moved to {m['split']} to keep duplicates together: {', '.join(m['moved'])}")
    return "\n".join(lines)
