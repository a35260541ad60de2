"""Simulated active learning: a tiny run (12 sample photos, 64 px) that stops, resumes and reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE

from cardamage.active import simulate as sim
from cardamage.active import simulate_results as results
from cardamage.config import load_params


def _params(tmp: Path, *extra: str):
    return load_params(None, [
        f"data.root={SAMPLE}", "model.backbone=mobilenetv3_small", "model.width=0.25", "model.backbone_preset=null",
        "simulate.input_size=64", "simulate.max_pool=12", "simulate.max_val=4", "simulate.initial=4",
        "simulate.budget=2", "simulate.rounds=2", "simulate.seeds=[0, 1]", "simulate.strategies=[random, hybrid]",
        "simulate.epochs=2", "simulate.min_steps=2", "simulate.head_filters=8", "simulate.batch_size=4",
        "simulate.mc_samples=2", f"simulate.cache_dir={tmp / 'cache'}", f"simulate.state_file={tmp / 'state.json'}",
        f"simulate.out={tmp / 'al.json'}", f"simulate.plot={tmp / 'al.png'}", *extra])


@pytest.fixture(scope="module")
def stopped_and_resumed(tmp_path_factory):
    """Run with max_rounds=1, keep that state, then run again to the end."""
    tmp = tmp_path_factory.mktemp("simulate")
    params = _params(tmp)
    partial = sim.run_simulation(params, max_rounds=1)
    state_after_1 = json.loads((tmp / "state.json").read_text())
    full = sim.run_simulation(params)
    return tmp, params, partial, state_after_1, full


def test_stops_after_max_rounds_and_writes_outputs(stopped_and_resumed):
    tmp, _, partial, state, _ = stopped_and_resumed
    assert set(state["runs"]) == {"random/0", "hybrid/0", "random/1", "hybrid/1"}
    assert all(len(run["history"]) == 2 for run in state["runs"].values())  # rounds 0 and 1
    assert all(len(run["labelled"]) == 8 for run in state["runs"].values())  # round-2 labels already chosen
    assert partial["complete"] is False and partial["full_pool"]["labelled"] == 12, "the target comes first"
    assert partial["curves"]["random"]["labelled"] == [4, 6]


def test_resume_continues_instead_of_restarting(stopped_and_resumed):
    tmp, _, _, before, full = stopped_and_resumed
    after = json.loads((tmp / "state.json").read_text())
    for key, run in after["runs"].items():
        assert run["history"][:2] == before["runs"][key]["history"]  # rounds 0-1 not retrained
        assert [h["labelled"] for h in run["history"]] == [4, 6, 8]
        assert run["labelled"][:8] == before["runs"][key]["labelled"]
    same_seed = [set(after["runs"][f"{s}/0"]["labelled"][:4]) for s in ("random", "hybrid")]
    assert same_seed[0] == same_seed[1]  # every strategy of a seed starts from the same labels
    assert full["complete"] and full["full_pool"]["labelled"] == 12


def test_result_json_and_plot(stopped_and_resumed):
    tmp, _, _, _, full = stopped_and_resumed
    written = json.loads((tmp / "al.json").read_text())
    assert written["curves"].keys() == {"random", "hybrid"}
    curve = written["curves"]["hybrid"]
    assert len(curve["mean_iou"]) == 3 and curve["seeds"] == [0, 1]
    assert written["target_metric"] == "damage_iou", "the default: the issue's goal is on damage IoU"
    assert all(lo <= m <= hi for lo, m, hi in zip(curve["min"], curve["damage_iou"], curve["max"]))
    assert set(written["labels_to_target"]) == {"random", "hybrid"}
    assert (tmp / "al.png").stat().st_size > 10_000
    assert "random" in results.format_summary(full)


def test_more_rounds_extend_a_finished_run(stopped_and_resumed):
    tmp, params, _, _, _ = stopped_and_resumed
    before = json.loads((tmp / "state.json").read_text())
    result = sim.run_simulation(_params(tmp, "simulate.rounds=3", "simulate.strategies=[random]",
                                        f"simulate.out={tmp / 'more.json'}", f"simulate.plot={tmp / 'more.png'}"))
    after = json.loads((tmp / "state.json").read_text())
    for seed in (0, 1):
        run = after["runs"][f"random/{seed}"]
        assert [h["labelled"] for h in run["history"]] == [4, 6, 8, 10]
        assert run["history"][:3] == before["runs"][f"random/{seed}"]["history"]
        assert after["runs"][f"hybrid/{seed}"] == before["runs"][f"hybrid/{seed}"]
    assert result["curves"]["random"]["labelled"] == [4, 6, 8, 10]
    assert result["curves"]["hybrid"]["labelled"] == [4, 6, 8]  # still reported


def test_another_configuration_is_refused(stopped_and_resumed):
    tmp, _, _, _, _ = stopped_and_resumed
    with pytest.raises(ValueError, match=r"differs in budget\); run with --fresh"):
        sim.run_simulation(_params(tmp, "simulate.budget=3"))


def test_bald_scores_from_mc_dropout(stopped_and_resumed):
    tmp, params, _, _, _ = stopped_and_resumed
    pool = sim.load_bank(params, ["train"], 12)  # from the feature cache
    trainer = sim.HeadTrainer(params, pool)
    head = trainer.fit(pool, np.arange(4), seed=0)
    table = sim.pool_scores(params, head, pool, np.arange(4, 12), "bald")
    assert len(table) == 8 and (table["bald"] >= 0).all() and table["bald"].max() > 0
    picks = sim.select_round(params, "bald", 0, 0, head, pool, list(range(4)))
    assert len(picks) == 2 and not set(picks) & set(range(4))


def test_summary_labels_to_target_on_a_crafted_state():
    def run(strategy, seed, values):
        return {"strategy": strategy, "seed": seed,
                "history": [{"labelled": 10 * (i + 1), "mean_iou": v, "damage_iou": v} for i, v in enumerate(values)]}

    state = {"config": {}, "full_pool": {"mean_iou": 0.8, "labelled": 100},
             "runs": {"a": run("random", 0, [0.5, 0.6, 0.7, 0.77]), "b": run("random", 1, [0.5, 0.6, 0.7, 0.74]),
                      "c": run("entropy", 0, [0.5, 0.77, 0.8, 0.8]), "d": run("entropy", 1, [0.5, 0.75, 0.8, 0.8])}}
    out = results.summarise(state, ["random", "entropy"], 0.95, metric="mean_iou")
    assert out["target"] == pytest.approx(0.76) and out["target_metric"] == "mean_iou"
    assert out["labels_to_target"] == {"random": None, "entropy": 20}
    state["runs"]["b"]["history"][3]["mean_iou"] = 0.79
    out = results.summarise(state, ["random", "entropy"], 0.95, metric="mean_iou")
    assert out["labels_to_target"]["random"] == 40 and out["labels_relative_to_random"]["entropy"] == 0.5


def test_the_target_can_be_damage_iou_with_its_own_bands():
    def run(strategy, seed, miou, dmg):
        return {"strategy": strategy, "seed": seed,
                "history": [{"labelled": 10 * (i + 1), "mean_iou": m, "damage_iou": d}
                            for i, (m, d) in enumerate(zip(miou, dmg))]}

    state = {"config": {}, "full_pool": {"mean_iou": 0.6, "damage_iou": 0.4, "labelled": 100},
             "runs": {"a": run("random", 0, [0.58, 0.6], [0.30, 0.39]),
                      "b": run("random", 1, [0.58, 0.6], [0.32, 0.37]),
                      "c": run("entropy", 0, [0.5, 0.5], [0.385, 0.39])}}
    by_mean = results.summarise(state, ["random", "entropy"], 0.95, metric="mean_iou")
    by_damage = results.summarise(state, ["random", "entropy"], 0.95, metric="damage_iou")
    assert by_mean["labels_to_target"] == {"random": 10, "entropy": None}, "mean IoU: random is there at once"
    assert by_damage["target"] == pytest.approx(0.38) and by_damage["target_metric"] == "damage_iou"
    assert by_damage["labels_to_target"] == {"random": 20, "entropy": 10}
    assert by_damage["effort_to_target_per_seed"]["random"] == {"0": 20.0, "1": None}
    assert by_damage["curves"]["random"]["min"] == [0.30, 0.37] and by_damage["noise_floor"]["max_seed_spread"] == 0.02
    assert "damage IoU 0.4000" in results.format_summary(by_damage)
    with pytest.raises(results.BadParameterError, match="simulate.target_metric"):
        results.summarise(state, ["random"], 0.95, metric="pixel_accuracy")
    assert results.summarise(state, ["random"], 1.0, metric="damage_iou")["target"] == pytest.approx(0.4)
    for fraction in (0.0, 95, -0.5):  # 95 is a percentage typed as a share: refused, not "never reached"
        with pytest.raises(results.BadParameterError, match=r"target_fraction: a share .* in \(0, 1\], got"):
            results.summarise(state, ["random"], fraction, metric="damage_iou")


def test_a_region_arm_spends_the_same_effort_on_crops(stopped_and_resumed):
    from cardamage.active.simulate_regions import crop_window, labelled_masks, photo_window

    tmp, _, _, _, _ = stopped_and_resumed
    params = _params(tmp, "simulate.strategies=[random]", "simulate.region_strategies=[entropy]",
                     "simulate.seeds=[0]", f"simulate.state_file={tmp / 'regions.json'}",
                     f"simulate.out={tmp / 'regions_al.json'}", f"simulate.plot={tmp / 'regions_al.png'}")
    result = sim.run_simulation(params)
    state = json.loads((tmp / "regions.json").read_text())
    run = state["runs"]["entropy@region/0"]
    assert len(run["labelled"]) == 4, "a region arm labels no whole photo after the seed photos"
    cells = [tuple(c) for c in run["regions"]]
    assert cells and len(set(cells)) == len(cells), "no cell twice"
    assert not {p for p, _ in cells} & set(run["labelled"]), "no crop of a photo already labelled"
    efforts = [h["effort"] for h in run["history"]]
    photo_efforts = [h["effort"] for h in state["runs"]["random/0"]["history"]]
    assert photo_efforts == [4.4, 6.6, 8.8]
    for a, b in zip(efforts, efforts[1:]):
        assert 2.2 <= b - a < 2.2 + 1.1, "each round spends a photo arm's round of effort (and one task more)"
    assert run["history"][-1]["tasks"] == 4 + len(cells)
    curve = result["curves"]["entropy@region"]
    assert curve["effort"] == efforts and "effort_to_target" in result and result["noise_floor"] is not None
    assert "entropy@region" in results.format_summary(result)

    pool = sim.load_bank(params, ["train"], 12)
    index, masks = labelled_masks(pool, run["labelled"], run["regions"], 4, 0.25)
    photo, cell = cells[0]
    k = list(index).index(photo)
    y0, y1, x0, x1 = crop_window(photo_window(pool.masks[photo]), cell, 4, 0.25)
    assert (masks[k][y0:y1, x0:x1] == pool.masks[photo][y0:y1, x0:x1]).all(), "the crop keeps its labels"
    outside = np.ones(masks[k].shape, bool)
    for p, c in cells:
        if p == photo:
            a0, a1, b0, b1 = crop_window(photo_window(pool.masks[photo]), c, 4, 0.25)
            outside[a0:a1, b0:b1] = False
    assert (masks[k][outside] == 255).all(), "the rest of the photo is ignored"


def test_pseudo_label_arms_train_a_student_on_confident_pixels(stopped_and_resumed):
    from cardamage.active.pseudo import pseudo_masks

    tmp, _, _, _, _ = stopped_and_resumed
    params = _params(tmp, "simulate.strategies=[random]", "simulate.pseudo_arms=[random]", "simulate.seeds=[0]",
                     "simulate.rounds=1", f"simulate.state_file={tmp / 'pseudo.json'}",
                     f"simulate.out={tmp / 'pseudo_al.json'}", f"simulate.plot={tmp / 'pseudo_al.png'}")
    result = sim.run_simulation(params)
    assert set(result["curves"]) == {"random", "random+pseudo"}
    state = json.loads((tmp / "pseudo.json").read_text())
    pseudo, plain = state["runs"]["random+pseudo/0"], state["runs"]["random/0"]
    assert pseudo["labelled"] == plain["labelled"], "the same photos are labelled: only training differs"
    assert [h["effort"] for h in pseudo["history"]] == [h["effort"] for h in plain["history"]]

    pool = sim.load_bank(params, ["train"], 12)
    head = sim.HeadTrainer(params, pool).fit(pool, np.arange(4), seed=0)
    padding = pool.masks[4:8] == 255
    everything = pseudo_masks(head, pool, np.arange(4, 8), threshold=0.0)
    assert (everything[~padding] != 255).all() and (everything[padding] == 255).all()
    assert (pseudo_masks(head, pool, np.arange(4, 8), threshold=1.01) == 255).all(), "nothing confident enough"


def test_head_restarts_average_their_members(stopped_and_resumed):
    from cardamage.active.pseudo import pseudo_masks
    from cardamage.model.frozen import HeadEnsemble, evaluate_head, head_probs, members, predict_head

    tmp, params, _, _, _ = stopped_and_resumed
    pool = sim.load_bank(params, ["train"], 12)
    single = sim.HeadTrainer(params, pool).fit(pool, np.arange(4), seed=5)
    assert not isinstance(single, HeadEnsemble), "head_restarts 1 (the default): one head, as before"
    x = pool.inputs(np.arange(4, 8))
    ens = sim.HeadTrainer(_params(tmp, "simulate.head_restarts=3"), pool).fit(pool, np.arange(4), seed=5)
    assert isinstance(ens, HeadEnsemble) and len(ens.weights) == 3
    assert not all(np.array_equal(a, b) for a, b in zip(ens.weights[0], ens.weights[1])), "other seeds, other heads"
    each = [np.asarray(m.model(x, training=False)) for m in members(ens)]
    np.testing.assert_allclose(head_probs(ens, x), np.mean(each, axis=0), atol=1e-6)
    assert np.abs(each[0] - each[1]).max() > 1e-4, "the members differ, so the mean is not one of them"

    part, probs, draws = next(predict_head(ens, pool, np.arange(4, 8), mc_samples=2))
    assert probs.shape[0] == 4 and draws.shape[:2] == (6, 4), "each member's dropout draws: T = 3 x 2"
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    confident = pseudo_masks(ens, pool, np.arange(4, 8), threshold=0.0)
    labels = head_probs(ens, x).argmax(-1)
    keep = pool.masks[4:8] != 255
    assert (confident[keep] == labels[keep]).all(), "pseudo-labels come from the ensemble's mean"
    assert set(evaluate_head(ens, pool, 2)) == {"mean_iou", "damage_iou"}


def test_head_restarts_run_and_an_older_state_resumes_only_with_one_head(stopped_and_resumed):
    tmp, _, _, _, _ = stopped_and_resumed
    files = [f"simulate.out={tmp / 'k2_al.json'}", f"simulate.plot={tmp / 'k2_al.png'}"]
    params = _params(tmp, "simulate.strategies=[bald]", "simulate.seeds=[0]", "simulate.rounds=1",
                     "simulate.head_restarts=2", f"simulate.state_file={tmp / 'k2.json'}", *files)
    result = sim.run_simulation(params)
    state = json.loads((tmp / "k2.json").read_text())
    assert state["config"]["head_restarts"] == 2 and len(state["runs"]["bald/0"]["history"]) == 2
    assert len(state["runs"]["bald/0"]["labelled"]) == 6 and result["curves"]["bald"]["labelled"] == [4, 6]

    older = json.loads((tmp / "state.json").read_text())  # as a version before head_restarts wrote it
    older["config"].pop("head_restarts")
    older["config"].pop("tune_stages")  # newer still: such a state ran with a frozen backbone
    (tmp / "older.json").write_text(json.dumps(older))
    again = sim.run_simulation(_params(tmp, f"simulate.state_file={tmp / 'older.json'}", *files))
    assert again["curves"]["hybrid"]["labelled"] == [4, 6, 8], "one head: the older state resumes"
    with pytest.raises(ValueError, match="--fresh"):
        sim.run_simulation(_params(tmp, "simulate.head_restarts=2", f"simulate.state_file={tmp / 'older.json'}",
                                   *files))
    with pytest.raises(sim.BadParameterError, match="head_restarts"):
        sim.run_simulation(_params(tmp, "simulate.head_restarts=0", *files))


def _weights(model, prefix: str) -> list[np.ndarray]:
    return [np.array(w) for layer in model.layers if layer.name.startswith(prefix) for w in layer.get_weights()]


def test_tune_stages_fine_tunes_the_last_backbone_stage_from_its_weights(stopped_and_resumed):
    from cardamage.model.backbones import build_backbone, save_backbone_preset
    from cardamage.model.frozen import evaluate_head, head_probs

    tmp, _, _, _, _ = stopped_and_resumed
    lite = ("model.backbone=efficientnetlite_b0", "model.width=1.0", f"simulate.cache_dir={tmp / 'lite_cache'}")
    with pytest.raises(sim.BadParameterError, match="needs a backbone preset"):
        sim.HeadTrainer(_params(tmp, *lite, "simulate.tune_stages=1"), sim.load_bank(_params(tmp), ["train"], 12))
    preset = save_backbone_preset(build_backbone("efficientnetlite_b0", 64), tmp / "lite_preset")
    lite += (f"model.backbone_preset={preset}",)
    params = _params(tmp, *lite, "simulate.tune_stages=1")
    pool = sim.load_bank(params, ["train"], 12)
    trainer = sim.HeadTrainer(params, pool)
    stages = trainer.stride32
    tuned = {layer.name for layer in stages.layers if layer.trainable and layer.weights}
    assert tuned and all(n.startswith(("block7", "top_")) for n in tuned), tuned
    assert not any("bn" in n for n in tuned), "batch norms keep their statistics"
    start6, start7, bn7 = (_weights(stages, p) for p in ("block6", "block7a_expand_conv", "block7a_bn"))

    head = trainer.fit(pool, np.arange(4), seed=0)
    assert any(np.abs(a - b).max() > 1e-6 for a, b in zip(_weights(stages, "block7a_expand_conv"), start7))
    assert all(np.array_equal(a, b) for a, b in zip(_weights(stages, "block6"), start6)), "stage 6 stays frozen"
    assert all(np.array_equal(a, b) for a, b in zip(_weights(stages, "block7a_bn"), bn7))
    x = pool.inputs(np.arange(4, 8))
    probs = head_probs(head, x)
    x[3] = np.zeros_like(x[3])
    np.testing.assert_allclose(head_probs(head, x), probs, atol=1e-6, err_msg="stride 32 comes from the tuned stage")
    assert set(evaluate_head(head, pool, 2)) == {"mean_iou", "damage_iou"}

    # Another fit restarts the stage from the backbone's weights: with a learning rate of 0 it ends there.
    trainer.params = _params(tmp, *lite, "simulate.tune_stages=1", "simulate.learning_rate=0.0")
    trainer.fit(pool, np.arange(4, 8), seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(_weights(stages, "block7a_expand_conv"), start7))

    with pytest.raises(sim.BadParameterError, match=r"2 stage\(s\) past stride 16 \(block6, block7\); got 3"):
        sim.HeadTrainer(_params(tmp, *lite, "simulate.tune_stages=3"), pool)
    small = sim.load_bank(_params(tmp), ["train"], 12)
    mobile = save_backbone_preset(build_backbone("mobilenetv3_small", 64, 0.25), tmp / "mobile_preset")
    with pytest.raises(sim.BadParameterError, match="no block<n> layers"):
        sim.HeadTrainer(_params(tmp, "simulate.tune_stages=1", f"model.backbone_preset={mobile}"), small)
    with pytest.raises(sim.BadParameterError, match="tune_stages"):
        sim.run_simulation(_params(tmp, "simulate.tune_stages=-1"))


def test_pseudo_generations_teach_each_student_with_the_last(stopped_and_resumed):
    from cardamage.active.pseudo import fit_with_pseudo, pseudo_masks

    tmp, _, _, _, _ = stopped_and_resumed
    params = _params(tmp, "simulate.pseudo_generations=2", "simulate.pseudo_threshold=0.5")
    pool = sim.load_bank(params, ["train"], 12)
    trainer, calls = sim.HeadTrainer(params, pool), []
    real_fit, everyone = trainer.fit, np.arange(len(pool.paths))

    def spy(bank, index, seed, masks=None):
        """The real fit, then its classifier pinned to one class, alternating per fit (teacher: damage,
        first student: background, ...), so which head taught which student shows in the labels
        whatever a tiny head learns; then what that head pseudo-labels."""
        head = real_fit(bank, index, seed, masks)
        classifier = head.tail.layers[-1]
        kernel, bias = classifier.get_weights()
        pinned = np.full_like(bias, -20.0)
        pinned[(len(calls) + 1) % len(bias)] = 20.0
        classifier.set_weights([np.zeros_like(kernel), pinned])
        calls.append((np.array(index), seed, np.array(masks), pseudo_masks(head, bank, everyone, 0.5)))
        return head

    trainer.fit = spy
    index, masks = np.arange(4), pool.masks[:4].copy()
    half = masks.shape[2] // 2
    masks[3, :, :half] = 255  # photo 3 labelled by a region: its left half unreviewed
    fit_with_pseudo(params, trainer, pool, index, masks, seed=7, round_no=5)
    assert [c[1] for c in calls] == [7, 8, 9], "a teacher, then two students"
    assert {int(v) for v in np.unique(calls[0][3])} <= {1, 255} and 1 in calls[0][3], "the pinned teacher"
    assert {int(v) for v in np.unique(calls[1][3])} <= {0, 255} and 0 in calls[1][3], "the pinned student"
    np.testing.assert_array_equal(calls[0][2], masks)
    for (_, _, _, taught_by), (seen, _, student, _) in zip(calls[:2], calls[1:]):
        chosen = seen[4:]
        assert len(chosen) == 4 and set(chosen) <= set(range(4, 12)), "pseudo-labelled photos from the rest"
        np.testing.assert_array_equal(seen, calls[1][0])  # the same photos every generation
        np.testing.assert_array_equal(student[4:], taught_by[chosen])  # the last head labels the extra photos
        np.testing.assert_array_equal(student[:3], masks[:3])  # human labels stay
        np.testing.assert_array_equal(student[3, :, half:], masks[3, :, half:])
        unknown = pool.masks[3, :, :half] != 255
        np.testing.assert_array_equal(student[3, :, :half][unknown], taught_by[3, :, :half][unknown])
    with pytest.raises(sim.BadParameterError, match="pseudo_generations"):
        sim.run_simulation(_params(tmp, "simulate.pseudo_generations=0"))
    with pytest.raises(sim.BadParameterError, match="target_fraction"):  # refused before any training
        sim.run_simulation(_params(tmp, "simulate.target_fraction=1.5"))


def test_a_fit_depends_on_its_seed_and_labels_not_on_what_came_before(stopped_and_resumed):
    """Dropout's random state lives outside get_weights(): each fit must reset it from its seed, or
    MC-dropout scoring and earlier fits in the process change the next fit (run vs retrain)."""
    from cardamage.model.frozen import head_probs, predict_head

    tmp, _, _, _, _ = stopped_and_resumed
    params = _params(tmp)
    pool = sim.load_bank(params, ["train"], 12)
    every, index = np.arange(len(pool.paths)), np.arange(8)
    trainer = sim.HeadTrainer(params, pool)
    first = head_probs(trainer.fit(pool, index, seed=3), pool.inputs(every))
    for _ in predict_head(trainer.head, pool, every, mc_samples=4):  # advances the dropout state
        pass
    trainer.fit(pool, index, seed=4)
    again = head_probs(trainer.fit(pool, index, seed=3), pool.inputs(every))
    np.testing.assert_allclose(again, first, atol=1e-5, err_msg="the same seed and labels, the same head")
    fresh = head_probs(sim.HeadTrainer(params, pool).fit(pool, index, seed=3), pool.inputs(every))
    np.testing.assert_allclose(fresh, first, atol=1e-5, err_msg="a new trainer (a new process) agrees")
