"""A strategy defined here, registered with one line, shows up everywhere the registry is read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import SAMPLE

from cardamage.active import strategies
from cardamage.active.strategies import ScoreBatch, SelectContext, Strategy
from cardamage.cli import main
from cardamage.config import load_params
from cardamage.errors import BadParameterError


class DamageShare(Strategy):
    """Pick the photos with the largest predicted damage share (a test-only strategy)."""

    name = "damage_share_test"
    columns = {"damage_share_test": "float32"}

    def score(self, batch: ScoreBatch) -> dict[str, np.ndarray]:
        damage = np.asarray(batch.probs).argmax(-1) != 0
        return {self.name: damage.mean(axis=(1, 2)).astype(np.float32)}

    def select(self, table: pd.DataFrame, ctx: SelectContext) -> pd.DataFrame:
        from cardamage.active.selection import ranked, score_column

        return ranked(table, score_column(table, self.name), ctx.budget, None,
                      lambda v, pos, n: f"damage share {v:.3f}")


@pytest.fixture
def registered():
    strategies.register(DamageShare())
    yield DamageShare.name
    strategies.unregister(DamageShare.name)


def _sets(tmp: Path, model: Path) -> list[str]:
    sets = [f"data.root={SAMPLE}", f"score.model_path={model}", f"score.out={tmp / 'scores.parquet'}",
            f"score.hash_cache={tmp / 'hashes.json'}", f"labelstudio.ledger={tmp / 'ledger.json'}",
            f"score.labelled_embeddings={tmp / 'emb.npz'}", f"select.out={tmp / 'sel.csv'}",
            "score.mc_samples=0", "score.batch_size=4"]
    return [x for s in sets for x in ("--set", s)]


def test_registered_strategy_in_help_config_score_and_select(registered, tiny_model_file, tmp_path):
    runner = CliRunner()
    assert registered in runner.invoke(main, ["select", "--help"]).output
    assert load_params(None, [f"select.strategy={registered}"]).select.strategy == registered
    scored = runner.invoke(main, ["score", str(SAMPLE / "test"), *_sets(tmp_path, tiny_model_file)])
    assert scored.exit_code == 0, scored.output
    table = pd.read_parquet(tmp_path / "scores.parquet")
    assert registered in table.columns and table[registered].between(0, 1).all()
    picked = runner.invoke(main, ["select", "--strategy", registered, "--budget", "2", "--pool", str(SAMPLE / "test"),
                                  *_sets(tmp_path, tiny_model_file)])
    assert picked.exit_code == 0, picked.output
    selection = pd.read_csv(tmp_path / "sel.csv")
    assert (selection["strategy"] == registered).all() and len(selection) == 2
    best = table.sort_values([registered, "id"], ascending=[False, True])["id"].head(2).tolist()
    assert selection["id"].tolist() == best


def test_unknown_strategy_is_a_parameter_error_naming_the_known_ones(registered):
    with pytest.raises(BadParameterError, match=registered):
        load_params(None, ["select.strategy=nope"])
    result = CliRunner().invoke(main, ["select", "--strategy", "nope"])
    assert result.exit_code == 2 and registered in result.output


def test_stale_when_the_registry_gains_a_column(registered):
    from cardamage.active.pool import PoolPhoto
    from cardamage.active.scoring import FIXED_COLUMNS, stale_photos
    from cardamage.config import ScoreParams

    params = ScoreParams(mc_samples=0)
    photo = PoolPhoto(Path("a.jpg"), "a.jpg", "a" * 64, "")
    cells = [0.0] * params.region_grid ** 2
    cols = {c: [0] for c in FIXED_COLUMNS} | {c: [cells] if t == strategies.CELL_DTYPE else [0.0]
                                              for c, t in strategies.score_columns(False).items()}
    cols.update(id=[photo.sha256], model_version=["v"], reduction=["topk10"])
    assert stale_photos(pd.DataFrame(cols), [photo], "v", params) == []
    cols.pop(registered)
    assert stale_photos(pd.DataFrame(cols), [photo], "v", params) == [photo]


def test_duplicate_names_and_columns_are_refused(registered):
    with pytest.raises(BadParameterError, match="already registered"):
        strategies.register(DamageShare())
    clash = type("Clash", (DamageShare,), {"name": "other_test"})
    with pytest.raises(BadParameterError, match="score column"):
        strategies.register(clash())


@pytest.mark.slow
def test_registered_strategy_runs_in_the_simulation(registered, tmp_path):
    from cardamage.active import simulate as sim

    params = load_params(None, [
        f"data.root={SAMPLE}", "model.backbone=mobilenetv3_small", "model.width=0.25", "model.backbone_preset=null",
        "simulate.input_size=64", "simulate.max_pool=8", "simulate.max_val=2", "simulate.initial=2",
        "simulate.budget=2", "simulate.rounds=1", "simulate.seeds=[0]", f"simulate.strategies=[{registered}]",
        "simulate.epochs=1", "simulate.min_steps=1", "simulate.head_filters=8", "simulate.batch_size=4",
        f"simulate.cache_dir={tmp_path / 'cache'}", f"simulate.state_file={tmp_path / 'state.json'}",
        f"simulate.out={tmp_path / 'al.json'}", f"simulate.plot={tmp_path / 'al.png'}"])
    result = sim.run_simulation(params, max_rounds=1)
    assert result["curves"][registered]["labelled"] == [2, 4]
