"""Results of ``cardamage simulate``: curves, effort to the target per arm, noise floor, plot and table.

The target is ``simulate.target_fraction`` (95 %) of the whole-pool model's ``simulate.target_metric``
on the validation photos: ``damage_iou`` (the damage class's IoU, what the issue's goal names) or
``mean_iou`` (background included). Every round stores both, so a finished run can be summarised
either way without training again (:func:`summarise` on the saved state).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cardamage.errors import BadParameterError
from cardamage.fileio import atomic_path

#: Target metrics and how tables and plots name them.
METRICS = {"mean_iou": "mean IoU", "damage_iou": "damage IoU"}


def check_fraction(fraction: float) -> None:
    """Refuse a target that is not a share of the whole-pool model, in (0, 1]."""
    if not 0 < fraction <= 1:
        raise BadParameterError(f"simulate.target_fraction: a share of the whole-pool model in (0, 1], "
                                f"got {fraction}")


def summarise(state: dict[str, Any], strategies: Sequence[str], fraction: float,
              complete: bool = True, *, metric: str) -> dict[str, Any]:
    """Curves per strategy (mean, std, min, max over seeds) and labels needed to reach the target.

    ``labels_to_target[s]`` is the smallest number of labelled photos at which the seed mean of
    ``metric`` (``mean_iou`` or ``damage_iou``, validation) of strategy ``s`` is >= ``fraction`` x the
    whole-pool model's (``None``: not reached). The bands (``std``, ``min``, ``max``, ``per_seed``) and
    the noise floor are of ``metric``; both metrics' seed means are in every curve.
    """
    if metric not in METRICS:
        raise BadParameterError(f"simulate.target_metric: one of {', '.join(METRICS)}, got {metric!r}")
    check_fraction(fraction)
    ref = state.get("full_pool")
    target = fraction * ref[metric] if ref else None
    curves: dict[str, Any] = {}
    to_target: dict[str, Any] = {}
    effort_to: dict[str, Any] = {}
    tasks_to: dict[str, Any] = {}
    per_seed: dict[str, Any] = {}
    interpolated: dict[str, Any] = {}
    interp_seed: dict[str, Any] = {}
    for strategy in strategies:
        runs = [r for r in state["runs"].values() if r["strategy"] == strategy and r["history"]]
        if not runs:
            continue
        n_rounds = min(len(r["history"]) for r in runs)
        miou = np.array([[h["mean_iou"] for h in r["history"][:n_rounds]] for r in runs])
        dmg = np.array([[h["damage_iou"] for h in r["history"][:n_rounds]] for r in runs])
        judged = miou if metric == "mean_iou" else dmg
        labelled = [h["labelled"] for h in runs[0]["history"][:n_rounds]]
        run_effort = np.array([[h.get("effort", h["labelled"]) for h in r["history"][:n_rounds]] for r in runs])
        effort = run_effort.mean(0)
        tasks = np.array([[h.get("tasks", h["labelled"]) for h in r["history"][:n_rounds]] for r in runs]).mean(0)
        curves[strategy] = {"labelled": labelled, "effort": _round(effort), "tasks": _round(tasks),
                            "mean_iou": _round(miou.mean(0)), "damage_iou": _round(dmg.mean(0)),
                            "std": _round(judged.std(0)), "min": _round(judged.min(0)), "max": _round(judged.max(0)),
                            "seeds": [r["seed"] for r in runs],
                            "per_seed": {str(r["seed"]): _round(m) for r, m in zip(runs, judged)}}
        k = _first_reaching(judged.mean(0), target)
        to_target[strategy] = labelled[k] if k is not None else None
        effort_to[strategy] = round(float(effort[k]), 2) if k is not None else None
        tasks_to[strategy] = round(float(tasks[k]), 1) if k is not None else None
        interpolated[strategy] = crossing(effort, judged.mean(0), target)
        interp_seed[strategy] = {str(r["seed"]): crossing(e, m, target) for r, e, m in zip(runs, run_effort, judged)}
        seed_hits = [_first_reaching(m, target) for m in judged]
        per_seed[strategy] = {str(r["seed"]): round(float(e[j]), 2) if j is not None else None
                              for r, e, j in zip(runs, run_effort, seed_hits)}
    base, base_effort = to_target.get("random"), effort_to.get("random")
    relative = {s: (round(n / base, 3) if n and base else None) for s, n in to_target.items()}
    effort_rel = {s: (round(e / base_effort, 3) if e and base_effort else None) for s, e in effort_to.items()}
    noise = curves.get("random", {})
    base_interp = interpolated.get("random")
    interp_rel = {s: (round(e / base_interp, 3) if e and base_interp else None) for s, e in interpolated.items()}
    return {"config": state["config"], "complete": complete, "full_pool": ref, "target_metric": metric,
            "target_fraction": fraction, "target": round(target, 4) if target is not None else None, "curves": curves,
            "labels_to_target": to_target, "labels_relative_to_random": relative,
            "effort_to_target": effort_to, "tasks_to_target": tasks_to, "effort_relative_to_random": effort_rel,
            "effort_to_target_per_seed": per_seed, "effort_to_target_interpolated": interpolated,
            "effort_to_target_interpolated_per_seed": interp_seed,
            "effort_interpolated_relative_to_random": interp_rel,
            "noise_floor": _noise_floor(noise)}


def _first_reaching(curve: np.ndarray, target: float | None) -> int | None:
    """First round whose value in ``curve [R]`` is >= ``target`` (``None``: none, or no target)."""
    hits = np.flatnonzero(curve >= target) if target is not None else []
    return int(hits[0]) if len(hits) else None


def crossing(effort: np.ndarray, curve: np.ndarray, target: float | None) -> float | None:
    """Effort at which ``curve [R]`` first reaches ``target``, linearly interpolated between that round
    and the one before (in photos of effort, rounded to 0.1; ``None``: never reached, or no target).

    The round-based figure (:func:`_first_reaching`) is an upper bound at the granularity of a round;
    this one compares arms whose rounds have different sizes fairly.
    """
    k = _first_reaching(np.asarray(curve), target)
    if k is None:
        return None
    if k == 0 or curve[k] == curve[k - 1]:
        return round(float(effort[k]), 1)
    share = (target - curve[k - 1]) / (curve[k] - curve[k - 1])
    return round(float(effort[k - 1] + share * (effort[k] - effort[k - 1])), 1)


def _noise_floor(random_curve: dict[str, Any]) -> dict[str, float] | None:
    """The spread of the random arm over seeds (mean and largest max-min of the target metric per round)."""
    if not random_curve:
        return None
    spread = np.array(random_curve["max"]) - np.array(random_curve["min"])
    return {"mean_seed_spread": round(float(spread.mean()), 4), "max_seed_spread": round(float(spread.max()), 4)}


def _round(values: np.ndarray) -> list[float]:
    return [round(float(v), 4) for v in values]


def plot_curves(result: dict[str, Any], path: str) -> None:
    """The target metric (validation) against labelling effort: one line + min-max band per strategy (PNG, atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = result.get("target_metric", "mean_iou")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, curve in result["curves"].items():
        x = curve.get("effort", curve["labelled"])
        (line,) = ax.plot(x, curve[metric], marker="o", label=f"{name} ({len(curve['seeds'])} seeds)")
        ax.fill_between(x, curve["min"], curve["max"], color=line.get_color(), alpha=0.2)
    ref = result.get("full_pool")
    if ref:
        ax.axhline(ref[metric], color="black", lw=1, label=f"whole pool ({ref['labelled']} photos)")
        ax.axhline(result["target"], color="grey", ls="--", lw=1,
                   label=f"{share(result['target_fraction'])} of whole pool")
    ax.set_xlabel("labelling effort (photos; a region = its share of the photo + the task cost)")
    ax.set_ylabel(f"validation {METRICS[metric]}")
    ax.set_title("Active learning: mean over seeds, band = min-max")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def share(fraction: float) -> str:
    """A target fraction as a percentage, as precise as given: 0.95 -> "95%", 0.925 -> "92.5%"."""
    return f"{fraction * 100:g}%"


def format_summary(result: dict[str, Any]) -> str:
    """A plain-text table: final value of the target metric, effort (and tasks) to reach the target per arm,
    vs random."""
    ref, metric = result.get("full_pool"), result.get("target_metric", "mean_iou")
    lines = []
    if ref:
        lines.append(f"whole pool ({ref['labelled']} photos): {METRICS[metric]} {ref[metric]:.4f}; "
                     f"target {share(result['target_fraction'])} = {result['target']:.4f}")
    lines.append(f"{'arm':<22} {'final':>7} {'effort to target':>17} {'tasks':>7} {'vs random':>10} "
                 f"{'interpolated':>13} {'vs random':>10}")
    efforts = result.get("effort_to_target", {})
    interp = result.get("effort_to_target_interpolated", {})
    for name, curve in result["curves"].items():
        effort = efforts.get(name)
        rel = result.get("effort_relative_to_random", {}).get(name)
        irel = result.get("effort_interpolated_relative_to_random", {}).get(name)
        reached = f"{effort:g}" if effort else f"> {curve.get('effort', curve['labelled'])[-1]:g}"
        tasks = result.get("tasks_to_target", {}).get(name)
        lines.append(f"{name:<22} {curve[metric][-1]:>7.4f} {reached:>17} {(f'{tasks:g}' if tasks else '-'):>7} "
                     f"{(f'{rel:.0%}' if rel else '-'):>10} {(f'{interp[name]:g}' if interp.get(name) else '-'):>13} "
                     f"{(f'{irel:.0%}' if irel else '-'):>10}")
    noise = result.get("noise_floor")
    if noise:
        lines.append(f"noise floor (random over seeds, max-min of {METRICS[metric]}): "
                     f"mean {noise['mean_seed_spread']:.4f}, largest {noise['max_seed_spread']:.4f}")
    return "\n".join(lines)
