"""The headline table of issue 13 (benchmarks/active_learning_table.py): interpolated crossings and a
random baseline from a run with larger rounds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from active_learning_table import baseline_random, main, overrides, table, take_reference  # noqa: E402

from cardamage.active.simulate_results import crossing, share, summarise  # noqa: E402


def test_crossing_is_linear_between_rounds_and_none_when_never_reached():
    effort, curve = np.array([10.0, 20.0, 30.0]), np.array([0.2, 0.4, 0.6])
    assert crossing(effort, curve, 0.5) == 25.0
    assert crossing(effort, curve, 0.1) == 10.0, "reached at the first round: no earlier point to interpolate"
    assert crossing(effort, curve, 0.7) is None and crossing(effort, curve, None) is None
    assert crossing(effort, np.array([0.2, 0.6, 0.4]), 0.5) == 17.5, "the first crossing, not a later one"


def _state(config: dict, arm: str, step: float, values: list[float], full: float = 0.5) -> dict:
    history = [{"labelled": 10 + i, "effort": 10.0 + step * i, "tasks": 1, "mean_iou": v, "damage_iou": v}
               for i, v in enumerate(values)]
    return {"config": config, "full_pool": {"mean_iou": full, "damage_iou": full, "labelled": 99},
            "runs": {f"{arm}/0": {"strategy": arm, "seed": 0, "history": history}}}


def test_baseline_random_from_a_run_with_larger_rounds(tmp_path):
    config = {"budget": 5, "rounds": 3, "input_size": 128}
    main = _state(config, "entropy@region", 5.0, [0.1, 0.3, 0.5])  # target 0.475: crossed at 19.375
    other = _state({**config, "budget": 50, "rounds": 2}, "random", 50.0, [0.1, 0.4, 0.55], full=0.9)
    (tmp_path / "state.json").write_text(json.dumps(other))
    base = baseline_random(main, [tmp_path], 0.95, "damage_iou")
    assert base == 85.0, "judged against this run's target (0.475), not the other run's whole pool"
    text = table(summarise(main, ["entropy@region"], 0.95, complete=False, metric="damage_iou"), base)
    assert "| 19.4 | 0: 19.4 | 0.23x |" in text and "baseline run" in text


def test_baseline_of_another_configuration_is_refused(tmp_path):
    main = _state({"budget": 5, "input_size": 128}, "random", 5.0, [0.1, 0.5])
    other = _state({"budget": 50, "input_size": 256}, "random", 50.0, [0.1, 0.5])
    (tmp_path / "state.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="input_size"):
        baseline_random(main, [tmp_path], 0.95, "damage_iou")


def test_a_baseline_from_before_head_restarts_counts_as_one_head(tmp_path):
    old = _state({"budget": 50, "input_size": 128}, "random", 50.0, [0.1, 0.5])  # no head_restarts key
    (tmp_path / "state.json").write_text(json.dumps(old))
    one = _state({"budget": 5, "input_size": 128, "head_restarts": 1}, "random", 5.0, [0.1, 0.5])
    assert baseline_random(one, [tmp_path], 0.95, "damage_iou") is not None
    three = _state({"budget": 5, "input_size": 128, "head_restarts": 3}, "random", 5.0, [0.1, 0.5])
    with pytest.raises(SystemExit, match="head_restarts"):
        baseline_random(three, [tmp_path], 0.95, "damage_iou")


def test_summary_only_at_another_target_fraction(tmp_path, capsys):
    config = {"budget": 5, "rounds": 3, "input_size": 128}
    (tmp_path / "state.json").write_text(json.dumps(_state(config, "entropy@region", 5.0, [0.1, 0.3, 0.5])))
    assert main(["--out", str(tmp_path), "--summary-only", "--fraction", "0.5"]) == 0
    out = capsys.readouterr().out
    assert share(0.925) == "92.5%" and share(0.95) == "95%", "the share as precise as given"
    assert "target 50% = 0.2500" in out and "| 13.8 | 0: 13.8 |" in out, "0.25 crossed between 0.1 and 0.3"
    with pytest.raises(SystemExit, match="fraction"):
        main(["--out", str(tmp_path), "--summary-only", "--fraction", "1.5"])
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--fraction", "0.9"])


def _seed(state: dict, seed: int, full: float) -> dict:
    """``state``'s one run and whole-pool fit renamed to ``seed``."""
    (key, run), = state["runs"].items()
    state["runs"] = {f"{run['strategy']}/{seed}": {**run, "seed": seed}}
    state["full_pool"]["runs"] = [{"seed": seed, "mean_iou": full, "damage_iou": full}]
    return state


def test_seeds_run_apart_join_in_one_table(tmp_path, capsys):
    from cardamage.active.simulate import merge_states
    from cardamage.errors import BadInputError

    config = {"budget": 5, "rounds": 3, "input_size": 128}
    one, two = tmp_path / "one", tmp_path / "two"
    for folder, seed, values, full in ((one, 0, [0.1, 0.3, 0.5], 0.5), (two, 1, [0.1, 0.5, 0.6], 0.7)):
        folder.mkdir()
        state = _seed(_state({**config, "rounds": 2 + seed}, "entropy@region", 5.0, values), seed, full)
        (folder / "state.json").write_text(json.dumps(state))
    states = [json.loads((f / "state.json").read_text()) for f in (one, two)]
    merged = merge_states(states, ["one", "two"])
    assert sorted(merged["runs"]) == ["entropy@region/0", "entropy@region/1"], "rounds may differ"
    assert merged["full_pool"]["damage_iou"] == pytest.approx(0.6), "the reference over both seeds"
    assert merge_states([states[0], states[0]], ["a", "b"])["runs"] == states[0]["runs"], "the same run twice"
    assert main(["--out", str(one), "--summary-only", "--also", str(two)]) == 0
    out = capsys.readouterr().out
    assert "target 95% = 0.5700" in out, "the reference over both seeds' whole-pool fits"
    assert "| 0: > 20, 1: 18.5 |" in out, "seed 1 crosses 0.57 between 0.5 and 0.6; seed 0 never does"

    changed = json.loads(json.dumps(states[1]))
    changed["runs"]["entropy@region/1"]["history"][1]["damage_iou"] = 0.2
    with pytest.raises(BadInputError, match=r"two: run entropy@region/1 differs"):
        merge_states([states[1], changed], ["one", "two"])
    changed = {**states[1], "config": {**config, "input_size": 256}}
    with pytest.raises(BadInputError, match=r"two: another simulation than one \(differs in input_size\)"):
        merge_states([states[0], changed], ["one", "two"])
    with pytest.raises(SystemExit, match="no saved state"):
        main(["--out", str(one), "--summary-only", "--also", str(tmp_path / "missing")])
    with pytest.raises(SystemExit):
        main(["--out", str(one), "--also", str(two)])  # --also is for the summary


def test_states_without_per_seed_references_must_hold_the_same_one():
    from cardamage.active.simulate import merge_states
    from cardamage.errors import BadInputError

    config = {"budget": 5, "rounds": 2, "input_size": 128}
    a = _state(config, "random", 5.0, [0.1, 0.3], full=0.5)
    b = _seed(_state(config, "random", 5.0, [0.1, 0.4], full=0.5), 1, 0.5)
    del b["full_pool"]["runs"]
    assert merge_states([a, b], ["a", "b"])["full_pool"]["damage_iou"] == 0.5, "the same reference twice"
    b["full_pool"]["damage_iou"] = 0.7
    with pytest.raises(BadInputError, match="b: its whole-pool reference differs"):
        merge_states([a, b], ["a", "b"])
    c = _seed(_state(config, "random", 5.0, [0.1, 0.2], full=0.5), 2, 0.5)
    assert merge_states([a, c], ["a", "c"])["full_pool"]["runs"][0]["seed"] == 2, "a mean that agrees: joined"
    c["full_pool"]["runs"][0]["damage_iou"] = 0.6
    with pytest.raises(BadInputError, match="holds only its mean .* not the mean of the others' per-seed fits"):
        merge_states([a, c], ["a", "c"])


def test_a_new_out_takes_the_reference_of_another_run(tmp_path):
    config = {"budget": 5, "rounds": 2, "input_size": 128}
    src, out, empty = tmp_path / "src", tmp_path / "out", tmp_path / "empty"
    for folder in (src, out, empty):
        folder.mkdir()
    (src / "state.json").write_text(json.dumps(_seed(_state(config, "random", 5.0, [0.1, 0.3], full=0.6), 0, 0.6)))
    take_reference(src, out)
    taken = json.loads((out / "state.json").read_text())
    assert taken["runs"] == {} and taken["config"] == config, "no seeds, the same configuration"
    take_reference(src, tmp_path / "larger", budget=150)
    larger = json.loads((tmp_path / "larger" / "state.json").read_text())
    assert larger["config"] == {**config, "budget": 150} and larger["full_pool"] == taken["full_pool"], \
        "a random baseline with larger rounds shares the reference"
    assert taken["full_pool"]["damage_iou"] == 0.6 and taken["full_pool"]["runs"][0]["seed"] == 0
    with pytest.raises(SystemExit, match="exists"):
        take_reference(src, out)
    (empty / "state.json").write_text(json.dumps({"config": config, "runs": {}, "full_pool": None}))
    with pytest.raises(SystemExit, match="no whole-pool reference"):
        take_reference(empty, tmp_path / "other")
    with pytest.raises(SystemExit):
        main(["--out", str(out), "--summary-only", "--reference-from", str(src)])


def test_set_passes_a_variant_setting_to_the_run(tmp_path):
    import argparse

    args = argparse.Namespace(out=tmp_path, dataset=tmp_path / "bilgi", preset=tmp_path / "preset", strategies=[],
                              region_strategies=[], pseudo_arms=["entropy@region"], seeds=[3], rounds=10,
                              budget=50, head_restarts=1, tune_stages=1, cache=None, metric="damage_iou",
                              set=["score.region_grid=3"])
    pairs = overrides(args)
    assert pairs[-1] == "score.region_grid=3", "last, so it wins over the table's own settings"
    assert f"simulate.state_file={tmp_path / 'state.json'}" in pairs and "simulate.seeds=[3]" in pairs
