"""Model tier: ``cardamage score --engine ray`` on a local Ray instance gives the local engine's table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

pytest.importorskip("ray", reason="Ray is optional: pip install -e .[ray]")

from cardamage.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "sample"


@pytest.fixture
def tiny_model(tiny_model_file) -> Path:
    """The session's untrained 64 px model (tests/conftest.py)."""
    return tiny_model_file


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from cardamage.active.engines.ray import connect

    connect(num_cpus=2)
    yield
    ray.shutdown()


def _score(tmp: Path, model: Path, out: str, *extra: str):
    sets = [f"data.root={SAMPLE}", f"score.model_path={model}", f"score.out={tmp / out}",
            f"score.hash_cache={tmp / 'hashes.json'}", f"labelstudio.ledger={tmp / 'ledger.json'}",
            "score.mc_samples=0", "score.batch_size=3"]
    return CliRunner().invoke(main, ["score", str(SAMPLE / "test"), *extra, *[x for s in sets for x in ("--set", s)]])


@pytest.mark.slow
def test_ray_engine_matches_the_local_engine(tiny_model, tmp_path, ray_local):
    local = _score(tmp_path, tiny_model, "local.parquet")
    assert local.exit_code == 0, local.output
    remote = _score(tmp_path, tiny_model, "ray.parquet", "--engine", "ray", "--actors", "2")
    assert remote.exit_code == 0, remote.output
    assert "7 candidate(s), 1 excluded" in remote.output
    a, b = pd.read_parquet(tmp_path / "local.parquet"), pd.read_parquet(tmp_path / "ray.parquet")
    assert list(a.columns) == list(b.columns) and list(a["id"]) == list(b["id"])
    for col in ("id", "path", "phash", "model_version", "reduction", "instance_count", "random"):
        assert a[col].tolist() == b[col].tolist(), col
    for col in ("entropy", "margin", "least_confidence", "damaged_share"):
        np.testing.assert_allclose(a[col], b[col], rtol=1e-5, atol=1e-6, err_msg=col)
    np.testing.assert_allclose(np.stack(a["embedding"]), np.stack(b["embedding"]), rtol=1e-5, atol=1e-6)
    again = _score(tmp_path, tiny_model, "ray.parquet", "--engine", "ray")
    assert again.exit_code == 0 and pd.read_parquet(tmp_path / "ray.parquet").equals(b), "fresh rows are kept"


def test_actors_must_be_positive(tmp_path):
    from cardamage.active.engines.ray import RayEngine
    from cardamage.config import ScoreParams
    from cardamage.errors import BadParameterError

    with pytest.raises(BadParameterError, match="--actors"):
        RayEngine(tmp_path / "m.keras", ScoreParams(), actors=0)
