"""Streaming scorer (fake and tiny real model) and the score / select commands."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import SAMPLE

from cardamage.active import scorer, scoring
from cardamage.active.pool import PoolPhoto
from cardamage.config import ScoreParams


def _photos(names=("11", "12", "28", "45", "60")) -> list[PoolPhoto]:
    return [PoolPhoto(SAMPLE / "test" / f"{n}.jpg", f"test/{n}.jpg", f"{int(n):064x}", "0" * 16) for n in names]


def _fake_scorer(size: int = 32, calls: list | None = None) -> scorer.Scorer:
    """Probabilities from the mean brightness (brighter = more uncertain), 3-d embeddings."""

    def predict(images):
        if calls is not None:
            calls.append(len(images))
        b = images.mean(axis=(1, 2, 3)) / 255.0
        p1 = np.broadcast_to((0.5 * b)[:, None, None], images.shape[:3])
        probs = np.stack([1 - p1, p1], axis=-1).astype(np.float32)
        return probs, np.stack([b, 1 - b, np.ones_like(b)], axis=1).astype(np.float32)

    def sample(images, t):
        probs, _ = predict(images)
        return np.stack([probs] * t)

    return scorer.Scorer(predict=predict, input_size=size, model_version="v1", sample=sample)


def test_iter_batches_is_lazy_and_bounded(monkeypatch):
    loaded = []
    real = scorer.load_image
    monkeypatch.setattr(scorer, "load_image", lambda p: loaded.append(p) or real(p))
    gen = scorer.iter_batches(_photos(), 32, batch_size=2)
    assert loaded == []  # a generator: nothing read before the first batch is asked for
    photos, images, valid = next(gen)
    assert len(loaded) == 2 and images.shape == (2, 32, 32, 3) and valid.all()
    assert [len(b[0]) for b in gen] == [2, 1]


def test_letterbox_padding_is_not_valid(tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 32), (200, 10, 10)).save(tmp_path / "wide.png")
    photo = PoolPhoto(tmp_path / "wide.png", "wide.png", "a" * 64, "0" * 16)
    _, images, valid = next(scorer.iter_batches([photo], 32))
    assert valid[0, 8:24].all() and not valid[0, :8].any() and not valid[0, 24:].any()
    assert images[0, 0].max() == 0  # padding is black, as in training


def test_score_batch_columns():
    probs = np.zeros((2, 8, 8, 2), np.float32)
    probs[..., 0] = 1.0
    probs[0, :3, :3] = [0.2, 0.8]  # one 9-pixel damage region in image 0
    valid = np.ones((2, 8, 8), bool)
    cols = scorer.score_batch(probs, valid, ScoreParams(min_instance_px=4, reduction="mean"))
    assert cols["instance_count"].tolist() == [1, 0]
    np.testing.assert_allclose(cols["damaged_share"], [9 / 64, 0.0])
    assert cols["entropy"][0] > cols["entropy"][1] == 0.0 and "bald" not in cols


def test_score_photos_writes_parquet_and_skips_unreadable(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"broken")
    photos = _photos(("11", "12")) + [PoolPhoto(bad, "bad.jpg", "b" * 64, "0" * 16)]
    unreadable: dict[str, str] = {}
    out = tmp_path / "scores.parquet"
    n = scoring.score_photos(photos, _fake_scorer(), ScoreParams(batch_size=2, mc_samples=2), out, unreadable,
                             progress=False)
    table = pd.read_parquet(out)
    assert n == 2 and list(unreadable) == ["bad.jpg"]
    expected = ["id", "path", "entropy", "entropy_cells", "margin", "margin_cells", "least_confidence",
                "least_confidence_cells", "bald", "bald_cells", "random", "damaged_share",
                "instance_count", "class_shares", "embedding", "phash", "model_version", "reduction"]
    assert table.columns.tolist() == expected
    assert all(len(v) == 1 for v in table["class_shares"]), "one damage class: one share per photo"
    grid = ScoreParams().region_grid
    assert all(len(v) == grid ** 2 for v in table["entropy_cells"]), "a score.region_grid grid of cells per photo"
    assert len(table["embedding"].iloc[0]) == 3 and (table["model_version"] == "v1").all()
    assert (table["reduction"] == "topk10").all() and table["bald"].max() < 1e-5
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_ensure_scores_only_scores_new_or_stale(tmp_path):
    out = tmp_path / "scores.parquet"
    params = ScoreParams(batch_size=4, mc_samples=0)
    calls: list[int] = []
    first = scoring.ensure_scores(_photos()[:3], out, params, lambda: _fake_scorer(calls=calls), "v1", progress=False)
    assert len(first) == 3 and sum(calls) == 3
    calls.clear()
    again = scoring.ensure_scores(_photos()[:3], out, params, lambda: pytest.fail("no rescoring"), "v1",
                                  progress=False)
    pd.testing.assert_frame_equal(again, first)
    more = scoring.ensure_scores(_photos()[1:], out, params, lambda: _fake_scorer(calls=calls), "v1", progress=False)
    assert sum(calls) == 2 and len(more) == 4 and "test/11.jpg" not in set(more["path"])
    calls.clear()
    scoring.ensure_scores(_photos()[1:], out, params, lambda: _fake_scorer(calls=calls), "v2", progress=False)
    assert sum(calls) == 4  # a new model version rescores everything


def test_labelled_embeddings_cached_per_model(tmp_path):
    files = [(p.sha256, p.path) for p in _photos(("11", "12"))]
    cache = tmp_path / "emb.npz"
    calls: list[int] = []
    emb = scoring.labelled_embeddings(files, lambda: _fake_scorer(calls=calls), "v1", cache)
    assert emb.shape == (2, 3) and sum(calls) == 2
    again = scoring.labelled_embeddings(files[:1], lambda: pytest.fail("cached"), "v1", cache)
    np.testing.assert_allclose(again, emb[:1])


# ----------------------------------------------------------------------------- a real tiny model


@pytest.fixture(scope="module")
def tiny_model(tiny_model_file) -> Path:
    """The session's untrained 64 px model (``tiny_model_file``): one model build per test run."""
    return tiny_model_file


def _cli(tmp_path: Path, model: Path, *args: str):
    from cardamage.cli import main

    sets = [f"data.root={SAMPLE}", f"score.model_path={model}", f"score.out={tmp_path / 'scores.parquet'}",
            f"score.hash_cache={tmp_path / 'hashes.json'}", f"labelstudio.ledger={tmp_path / 'ledger.json'}",
            f"score.labelled_embeddings={tmp_path / 'emb.npz'}", f"select.out={tmp_path / 'selection.csv'}",
            "score.mc_samples=2"]
    return CliRunner().invoke(main, [*args, *[x for s in sets for x in ("--set", s)]])


def test_real_model_score_and_select(tiny_model, tmp_path):
    result = _cli(tmp_path, tiny_model, "score", str(SAMPLE / "test"))
    assert result.exit_code == 0, result.output
    assert "7 candidate(s), 1 excluded" in result.output
    table = pd.read_parquet(tmp_path / "scores.parquet")
    assert len(table) == 7 and table["embedding"].map(len).nunique() == 1 and table["bald"].notna().all()
    for strategy in ("hybrid", "coreset", "bald"):
        result = _cli(tmp_path, tiny_model, "select", "--budget", "3", "--strategy", strategy,
                      "--pool", str(SAMPLE / "test"))
        assert result.exit_code == 0, result.output
        selection = pd.read_csv(tmp_path / "selection.csv")
        assert len(selection) == 3 and (selection["strategy"] == strategy).all()
    assert (tmp_path / "emb.npz").is_file()  # labelled embeddings cached for coreset / hybrid


def test_select_scores_first_and_handles_big_budget(tiny_model, tmp_path):
    result = _cli(tmp_path, tiny_model, "select", "--budget", "50", "--strategy", "entropy", "--seed", "1",
                  "--pool", str(SAMPLE / "test"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "scores.parquet").is_file() and len(pd.read_csv(tmp_path / "selection.csv")) == 7


def test_select_one_line_messages(tiny_model, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"not a photo")
    (broken / "b.jpg").write_bytes(b"")
    only_labelled = tmp_path / "labelled"
    only_labelled.mkdir()
    shutil.copy(SAMPLE / "train" / "17.jpg", only_labelled / "copy.jpg")
    for folder, text in ((empty, "no photos found"), (broken, "all 2 photo(s) are unreadable"),
                         (only_labelled, "nothing left")):
        result = _cli(tmp_path, tiny_model, "select", "--budget", "2", "--pool", str(folder))
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert result.exit_code != 0 and len(errors) == 1 and text in errors[0], result.output
        assert "Traceback" not in result.output
    result = _cli(tmp_path, tiny_model, "select", "--budget", "2", "--strategy", "best", "--pool", str(SAMPLE / "test"))
    assert result.exit_code != 0 and "--strategy" in result.output


def test_select_regions_with_a_real_model(tiny_model, tmp_path):
    from cardamage.data.images import image_size

    result = _cli(tmp_path, tiny_model, "select", "--unit", "region", "--budget", "5", "--strategy", "entropy",
                  "--pool", str(SAMPLE / "test"))
    assert result.exit_code == 0, result.output
    assert "5 region(s)" in result.output and "region (x,y,w,h)" in result.output
    selection = pd.read_csv(tmp_path / "selection.csv")
    assert len(selection) == 5 and selection["id"].value_counts().max() <= 2, "select.max_regions_per_photo"
    assert list(selection["score"]) == sorted(selection["score"], reverse=True)
    g = ScoreParams().region_grid  # params.yaml's too (test_config checks they are one source)
    for path, region, cell in zip(selection["path"], selection["region"], selection["cell"]):
        x, y, w, h = (int(v) for v in region.split(","))
        width, height = image_size(path)
        assert x == round(width * (cell % g) / g) and y == round(height * (cell // g) / g)
        assert abs(w - width / g) <= 1 and abs(h - height / g) <= 1
    scores = pd.read_parquet(tmp_path / "scores.parquet")
    best = max((v, i) for cells in scores["entropy_cells"] for i, v in enumerate(cells))
    assert selection["score"].iloc[0] == pytest.approx(best[0], rel=1e-6), "the best cell of the pool comes first"

    big = _cli(tmp_path, tiny_model, "select", "--unit", "region", "--budget", "500", "--strategy", "margin",
               "--pool", str(SAMPLE / "test"))
    assert big.exit_code == 0, big.output
    assert len(pd.read_csv(tmp_path / "selection.csv")) == 14, "7 photos x 2 regions each"
    wrong = _cli(tmp_path, tiny_model, "select", "--unit", "region", "--strategy", "coreset",
                 "--pool", str(SAMPLE / "test"))
    errors = [line for line in wrong.output.splitlines() if line.startswith("Error:")]
    assert wrong.exit_code != 0 and len(errors) == 1 and "picks whole photos" in errors[0], wrong.output


def test_score_batch_can_compute_only_the_columns_a_caller_reads():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1.0, 1.0], size=(2, 8, 8)).astype(np.float32)
    valid = np.ones((2, 8, 8), bool)
    full = scorer.score_batch(probs, valid, ScoreParams())
    part = scorer.score_batch(probs, valid, ScoreParams(), only=["entropy"])
    assert {"entropy", "entropy_cells", "damaged_share", "instance_count", "class_shares"} <= set(part)
    assert "margin" not in part and "margin" in full
    np.testing.assert_array_equal(part["entropy"], full["entropy"])
