"""Hostile input and faults in scoring: bombs, unreadable photos, wrong models, kills, corrupt tables.

Each test reproduces a finding of the hostile-input review (issue 12) on the real CLI with the
session's tiny model; the kill test kills a real ``cardamage score`` process with SIGKILL.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import REPO, SAMPLE
from PIL import Image

from cardamage.active import scores_store
from cardamage.active.pool import HashCache, build_pool
from cardamage.config import DataParams, ScoreParams


def forged_png(path: Path, width: int, height: int) -> Path:
    """A valid PNG signature and IHDR declaring ``width x height`` pixels, with one empty IDAT (~60 bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
                     + chunk(b"IEND", b""))
    return path


def _sets(tmp_path: Path, model: Path, **extra: str) -> list[str]:
    sets = {"data.root": str(SAMPLE), "score.model_path": str(model), "score.out": str(tmp_path / "scores.parquet"),
            "score.hash_cache": str(tmp_path / "hashes.json"), "labelstudio.ledger": str(tmp_path / "ledger.json"),
            "score.labelled_embeddings": str(tmp_path / "emb.npz"), "select.out": str(tmp_path / "selection.csv"),
            "score.batch_size": "2", **extra}
    return [x for key, value in sets.items() for x in ("--set", f"{key}={value}")]


def _cli(tmp_path: Path, model: Path, *args: str, **extra: str):
    from cardamage.cli import main

    return CliRunner().invoke(main, [*args, *_sets(tmp_path, model, **extra)])


def _pool(tmp_path: Path, n: int = 3) -> Path:
    pool = tmp_path / "pool"
    pool.mkdir()
    for name in sorted(p.name for p in (SAMPLE / "test").glob("*.jpg"))[:n]:
        if name != "66.jpg":  # a copy of a training photo: excluded, not scored
            shutil.copy(SAMPLE / "test" / name, pool / name)
    return pool


def _other_classes_model(src: Path, dst: Path, classes: list[str]) -> Path:
    """A copy of the real ``.keras`` file ``src`` whose stored class list is ``classes``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                config["config"]["cardamage_info"]["classes"] = classes
                data = json.dumps(config).encode()
            zout.writestr(item, data)
    return dst


# ----------------------------------------------------------------------------- bombs and unreadable photos


def test_decompression_bomb_in_pool_is_skipped_by_name(tiny_model_file, tmp_path):
    pool = _pool(tmp_path)
    forged_png(pool / "bomb.png", 100_000, 100_000)  # 10^10 pixels declared in ~60 bytes
    result = _cli(tmp_path, tiny_model_file, "score", str(pool))
    assert result.exit_code == 0, result.output
    assert "1 unreadable" in result.output and "Traceback" not in result.output
    table = pd.read_parquet(tmp_path / "scores.parquet")
    assert len(table) == len(list(pool.glob("*.jpg"))) and not table["path"].str.endswith("bomb.png").any()


def test_pixel_budget_from_params_applies_to_the_pool(tiny_model_file, tmp_path):
    pool = _pool(tmp_path)
    big = pool / "big.png"
    Image.new("RGB", (1200, 1000), (90, 90, 90)).save(big)  # 1.2 MP: over 1.1 MP (sample photos: 1.05 MP)
    result = _cli(tmp_path, tiny_model_file, "score", str(pool), **{"data.max_pixels": "1100000"})
    assert result.exit_code == 0, result.output
    paths = pd.read_parquet(tmp_path / "scores.parquet")["path"]
    assert not paths.str.endswith("big.png").any()
    cache = json.loads((tmp_path / "hashes.json").read_text())
    assert any("exceeds the limit of 1100000" in (e.get("error") or "") for e in cache.values())


def test_decompression_bomb_under_data_root_does_not_crash_stats(tmp_path):
    from cardamage.cli import main

    root = tmp_path / "data"
    shutil.copytree(SAMPLE / "val", root / "val")
    forged_png(root / "val" / "bomb.png", 100_000, 100_000)
    result = CliRunner().invoke(main, ["stats", str(root)])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "bomb.png" in result.output


def test_unreadable_photo_does_not_abort_the_pool(tmp_path, monkeypatch):
    pool = _pool(tmp_path)
    locked = sorted(pool.glob("*.jpg"))[0]
    if os.geteuid() == 0:
        # root reads any file whatever its mode: make the read fail the way it does for a user
        import cardamage.active.pool as pool_module

        real = pool_module.file_sha256

        def denied(path, *args):
            if Path(path).name == locked.name:
                raise PermissionError(13, "Permission denied", str(path))
            return real(path, *args)

        monkeypatch.setattr(pool_module, "file_sha256", denied)
    else:
        locked.chmod(0)
    found = build_pool(pool, DataParams(root=str(tmp_path / "nothing")), hash_cache=tmp_path / "h.json")
    names = {Path(n).name: why for n, why in found.unreadable.items()}
    assert set(names) == {locked.name} and "permission denied" in names[locked.name]
    assert "corrupt" not in names[locked.name]
    assert len(found.photos) == len(list(pool.glob("*.jpg"))) - 1


def test_hash_cache_of_the_wrong_shape_is_rebuilt(tmp_path, caplog):
    pool = _pool(tmp_path)
    for bad in ("[1, 2, 3]", '{"x": [1], "y": {"sha256": 5}}', "\xff\xfe not utf-8"):
        cache = tmp_path / "hashes.json"
        cache.write_bytes(bad.encode("latin-1"))
        found = build_pool(pool, DataParams(root=str(tmp_path / "nothing")), hash_cache=cache)
        assert len(found.photos) == len(list(pool.glob("*.jpg")))
        assert isinstance(json.loads(cache.read_text()), dict)
    assert HashCache(cache).entries  # the rebuilt cache is read back


# ----------------------------------------------------------------------------- model identity


def test_score_refuses_a_model_for_other_classes(tiny_model_file, tmp_path):
    pool = _pool(tmp_path)
    assert _cli(tmp_path, tiny_model_file, "score", str(pool)).exit_code == 0
    before = (tmp_path / "scores.parquet").read_bytes()
    parts = _other_classes_model(tiny_model_file, tmp_path / "parts.keras", ["headlamp", "door"])
    for command in (["score", str(pool), "--model", str(parts), "--force"],
                    ["select", "--budget", "2", "--pool", str(pool), "--model", str(parts)],
                    ["predict", str(pool), "--model", str(parts), "--out", str(tmp_path / "predictions")]):
        result = _cli(tmp_path, tiny_model_file, *command)
        assert result.exit_code == 1, result.output
        assert "parts.keras" in result.output and "headlamp" in result.output and "data.classes" in result.output
        assert "Traceback" not in result.output
    assert (tmp_path / "scores.parquet").read_bytes() == before
    assert not (tmp_path / "predictions").exists()


def test_budget_zero_is_refused_before_anything_loads(tmp_path):
    code = ("import sys; from click.testing import CliRunner; from cardamage.cli import main; "
            "r = CliRunner().invoke(main, ['select', '--budget', '0']); "
            "print(r.exit_code, r.output); "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120).stdout
    assert out.startswith("2 ") and "--budget" in out and "1" in out
    assert out.strip().endswith("False")  # refused without importing TensorFlow


# ----------------------------------------------------------------------------- resumable scoring


def _fake_scorer(calls: list[int], fail_after: int | None = None):
    from cardamage.active.scorer import Scorer

    def predict(images):
        if fail_after is not None and len(calls) >= fail_after:
            raise KeyboardInterrupt  # what a Ctrl-C does between two batches
        calls.append(len(images))
        probs = np.full(images.shape[:3] + (2,), 0.5, np.float32)
        return probs, np.ones((len(images), 3), np.float32)

    return Scorer(predict=predict, input_size=32, model_version="v1")


def _photos(tmp_path: Path, n: int):
    from cardamage.active.pool import PoolPhoto

    photos = []
    for i in range(n):
        path = tmp_path / f"p{i}.png"
        Image.new("RGB", (40, 30), (10 * i, 20, 30)).save(path)
        photos.append(PoolPhoto(path, path.name, f"sha{i}", "0" * 16))
    return photos


def test_interrupted_scoring_resumes_after_its_last_batch(tmp_path):
    from cardamage.active.scoring import ensure_scores

    photos, out = _photos(tmp_path, 6), tmp_path / "scores.parquet"
    params = ScoreParams(batch_size=2, mc_samples=0)
    calls: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        ensure_scores(photos, out, params, lambda: _fake_scorer(calls, fail_after=2), "v1", progress=False)
    assert not out.exists() and len(list(scores_store.parts_dir(out).glob("part-*.parquet"))) == 2
    calls.clear()
    table = ensure_scores(photos, out, params, lambda: _fake_scorer(calls), "v1", progress=False)
    assert calls == [2] and sorted(table["path"]) == sorted(p.name for p in photos)
    assert not scores_store.parts_dir(out).exists()
    again = ensure_scores(photos, out, params, lambda: pytest.fail("nothing to rescore"), "v1", progress=False)
    assert len(again) == 6


def test_killed_score_process_resumes_and_leaves_no_orphans(tiny_model_file, tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    for i, name in enumerate(sorted(p.name for p in (SAMPLE / "train").glob("*.jpg"))[:12]):
        shutil.copy(SAMPLE / "train" / name, pool / f"claim{i}.jpg")
    sets = _sets(tmp_path, tiny_model_file, **{"data.root": str(tmp_path / "none"), "score.batch_size": "1"})
    out = tmp_path / "scores.parquet"
    (tmp_path / f".{out.name}.dead.parquet").write_bytes(b"half")  # orphans of earlier kills
    (tmp_path / f".{out.stem}.new.parquet").write_bytes(b"half")
    proc = subprocess.Popen([sys.executable, "-m", "cardamage.cli", "score", str(pool), *sets], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = scores_store.parts_dir(out)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and len(list(parts.glob("part-*.parquet"))) < 3 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(parts.glob("part-*.parquet")))
    assert 3 <= done < 12, "the process finished before it could be killed"
    from cardamage.cli import main

    result = CliRunner().invoke(main, ["-v", "score", str(pool), *sets])
    assert result.exit_code == 0, result.output
    assert len(pd.read_parquet(out)) == 12 and not parts.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{out.stem}")]
    assert leftovers == [], leftovers


def test_corrupt_scores_table_is_named_and_force_recovers(tiny_model_file, tmp_path):
    pool = _pool(tmp_path)
    out = tmp_path / "scores.parquet"
    out.write_bytes(b"PAR1 this is not parquet at all")
    result = _cli(tmp_path, tiny_model_file, "score", str(pool))
    assert result.exit_code == 1 and str(out) in result.output and "--force" in result.output, result.output
    result = _cli(tmp_path, tiny_model_file, "score", str(pool), "--force")
    assert result.exit_code == 0, result.output
    assert len(pd.read_parquet(out)) == len(list(pool.glob("*.jpg")))
