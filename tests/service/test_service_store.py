"""Code tier: the incoming pool (content addressed, no overwrite, atomic), the splash store, and their limits
(oldest first, never a photo waiting to be scored) with the background pruner."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest
from test_service_support import car_photo, jpeg_bytes

from cardamage.config import StorageParams
from cardamage.data.images import list_images
from cardamage.errors import BadParameterError
from cardamage.service.pruner import Pruner
from cardamage.service.store import IncomingStore, SplashStore, StoredFile, prune_files


def test_photo_is_stored_once_under_its_hash(tmp_path):
    store = IncomingStore(tmp_path / "incoming")
    data = jpeg_bytes(car_photo())
    sha = hashlib.sha256(data).hexdigest()
    first = store.save_photo(data, sha, ".jpg")
    assert first.created and first.path == tmp_path / "incoming" / f"{sha}.jpg"
    assert first.path.read_bytes() == data
    mtime = first.path.stat().st_mtime_ns
    again = store.save_photo(b"other bytes must not overwrite", sha, ".jpg")
    assert not again.created and again.path.read_bytes() == data and again.path.stat().st_mtime_ns == mtime


def test_concurrent_saves_of_the_same_photo_write_it_once(tmp_path):
    store = IncomingStore(tmp_path)
    data = jpeg_bytes(car_photo())
    sha = hashlib.sha256(data).hexdigest()
    results = []
    threads = [threading.Thread(target=lambda: results.append(store.save_photo(data, sha, ".jpg"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.created for r in results) >= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{sha}.jpg"]  # no temporary file left


def test_prediction_json_beside_the_photo_and_the_folder_is_a_pool(tmp_path):
    store = IncomingStore(tmp_path)
    data = jpeg_bytes(car_photo())
    sha = hashlib.sha256(data).hexdigest()
    store.save_photo(data, sha, ".jpg")
    store.save_prediction(sha, {"instances": [], "model": {"version": "v1"}})
    store.save_prediction(sha, {"instances": [], "model": {"version": "v2"}})
    assert json.loads((tmp_path / f"{sha}.json").read_text())["model"]["version"] == "v2"
    assert list_images(tmp_path) == [tmp_path / f"{sha}.jpg"]  # what score / select / drift read


def test_bad_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match="sha256"):
        IncomingStore(tmp_path).photo_path("../../etc/passwd", ".jpg")
    splashes = SplashStore(tmp_path)
    with pytest.raises(ValueError, match="splash id"):
        splashes.path("../x")
    path = splashes.save("0" * 32, b"\xff\xd8jpeg")
    assert path.read_bytes() == b"\xff\xd8jpeg" and path.name == "0" * 32 + ".jpg"


# ----------------------------------------------------------------------------- bounded storage

NOW = 1_800_000_000.0  # seconds since the epoch: every test's clock
DAY = 86400.0


def _put(path: Path, size: int, age_s: float) -> Path:
    """``size`` distinct bytes at ``path``, modified ``age_s`` seconds before :data:`NOW`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(path.name.encode()[:size].ljust(size, b"x"))
    os.utime(path, (NOW - age_s, NOW - age_s))
    return path


def _photo(folder: Path, n: int, age_days: float, size: int = 400, ext: str = ".jpg") -> str:
    """An incoming photo ``n`` (+ its 100-byte JSON), ``age_days`` old; returns its sha256."""
    sha = hashlib.sha256(str(n).encode()).hexdigest()
    _put(folder / f"{sha}{ext}", size, age_days * DAY)
    _put(folder / f"{sha}.json", 100, age_days * DAY)
    return sha


def _splash(folder: Path, n: int, age_s: float, size: int = 300) -> Path:
    return _put(folder / f"{n:032x}.jpg", size, age_s)


def _scores(path: Path, shas: list[str]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": shas, "path": [f"data/incoming/{s}.jpg" for s in shas],
                      "model_version": ["v1"] * len(shas), "reduction": ["topk10"] * len(shas)})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def _entries(folder: Path, sizes_ages: list[tuple[int, float]]) -> list[StoredFile]:
    files = [_put(folder / f"{i:032x}.jpg", size, age) for i, (size, age) in enumerate(sizes_ages)]
    return [StoredFile(p.stem, (p,), p.stat().st_size, p.stat().st_mtime) for p in files]


def test_size_limit_removes_the_oldest_first(tmp_path):
    files = _entries(tmp_path, [(100, 30), (100, 50), (100, 10), (100, 40), (100, 20)])
    removed = prune_files(files, max_bytes=250, max_age_s=0, now=NOW)
    assert [f.key for f in removed] == [files[1].key, files[3].key, files[0].key]  # 50, 40, 30 s old
    assert sorted(p.stem for p in tmp_path.iterdir()) == sorted([files[2].key, files[4].key])
    assert prune_files(SplashStore(tmp_path).files(), 250, 0, NOW) == []  # under the limit now


def test_age_limit_removes_everything_older_and_nothing_else(tmp_path):
    files = _entries(tmp_path, [(10, 2 * DAY), (10, 0.5 * DAY), (10, 3 * DAY)])
    removed = prune_files(files, max_bytes=0, max_age_s=DAY, now=NOW)
    assert sorted(f.key for f in removed) == sorted([files[0].key, files[2].key])
    assert [p.stem for p in tmp_path.iterdir()] == [files[1].key]
    assert prune_files(SplashStore(tmp_path).files(), 0, 0, NOW) == []  # both limits off


def test_vanished_and_unremovable_files_are_skipped(tmp_path, monkeypatch, caplog):
    from cardamage.labelling import redact

    # secrets other tests registered (a key of zeros) must not hide these names from the log
    monkeypatch.setattr(redact, "_secrets", set())
    files = _entries(tmp_path, [(100, 50), (100, 40), (100, 30), (100, 20)])
    vanished, locked = files[0], files[1]

    def removable(entry):
        if entry is vanished:
            entry.path.unlink()  # another worker pruned it meanwhile
        return True

    real_unlink = Path.unlink

    def unlink(self, missing_ok=False):
        if self == locked.path:
            raise PermissionError(13, "Permission denied")
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    removed = prune_files(files, max_bytes=200, max_age_s=0, now=NOW, removable=removable)
    # the vanished file's bytes are gone too; the locked one stays and the next oldest goes instead
    assert [f.key for f in removed] == [files[2].key]
    assert sorted(p.stem for p in tmp_path.iterdir()) == sorted([locked.key, files[3].key])
    assert "vanished" in caplog.text and "cannot be removed" in caplog.text and locked.path.name in caplog.text


def test_unscored_photos_stay_scored_ones_go_with_their_json(tmp_path):
    folder = tmp_path / "incoming"
    old_unscored = _photo(folder, 1, age_days=30)
    scored = [_photo(folder, n, age_days=20 - n) for n in (2, 3)]
    fresh_unscored = _photo(folder, 4, age_days=1, ext=".png")
    others = [_put(folder / "reuse.sqlite", 5000, 90 * DAY), _put(folder / f".{scored[0]}.abc.part", 10, 90 * DAY),
              _put(folder / "notes.jpg", 10, 90 * DAY)]
    store = IncomingStore(folder)
    assert {f.key: [p.suffix for p in f.paths] for f in store.files()}[fresh_unscored] == [".png", ".json"]
    removed = store.prune(set(scored), max_bytes=1, max_age_s=0, now=NOW)  # far over: all that may go, go
    assert [f.key for f in removed] == scored and all(f.size == 500 for f in removed)
    left = sorted(p.name for p in folder.iterdir())
    assert left == sorted([f"{old_unscored}.jpg", f"{old_unscored}.json", f"{fresh_unscored}.png",
                           f"{fresh_unscored}.json", *(p.name for p in others)])


def test_pending_photos_stay_labelled_ones_go(tmp_path):
    folder = tmp_path / "incoming"
    pending, labelled, scored = (_photo(folder, n, age_days=400 - n) for n in range(3))
    removed = IncomingStore(folder).prune({pending, scored}, max_bytes=0, max_age_s=365 * DAY, now=NOW,
                                          labelled={labelled}, pending={pending})
    assert [f.key for f in removed] == [labelled, scored]
    assert sorted(p.name for p in folder.iterdir()) == [f"{pending}.jpg", f"{pending}.json"]


def test_splash_limits_and_grace(tmp_path):
    store = SplashStore(tmp_path)
    old = [_splash(tmp_path, n, age_s=8 * DAY) for n in range(2)]
    mid = [_splash(tmp_path, n, age_s=3600.0 * n) for n in range(2, 6)]  # 2..5 h old
    just_served = _splash(tmp_path, 9, age_s=5.0)
    kept = _put(tmp_path / "index.html", 10, 30 * DAY)
    removed = store.prune(max_bytes=900, max_age_s=7 * DAY, now=NOW, min_age_s=60.0)
    # the age limit takes the two 8-day-old ones; the size limit then the 5 h and 4 h old ones
    assert {f.path for f in removed} == {*old, mid[3], mid[2]}
    assert sorted(tmp_path.iterdir()) == sorted([mid[0], mid[1], just_served, kept])
    assert store.prune(max_bytes=1, max_age_s=0, now=NOW, min_age_s=60.0) and just_served.exists()


# ----------------------------------------------------------------------------- the pruner


def _storage(**limits: float) -> StorageParams:
    return StorageParams(**{"splash_max_mb": 0.0, "splash_max_age_h": 0.0, "incoming_max_mb": 0.0,
                            "incoming_max_age_days": 0.0, "prune_every_s": 0.0, **limits})


@pytest.fixture
def service_dirs(tmp_path):
    """``(incoming, splash, scores path, ledger path, [sha256 of 3 photos oldest first])``."""
    incoming, splash = tmp_path / "incoming", tmp_path / "splash"
    shas = [_photo(incoming, n, age_days=500 - n) for n in range(3)]
    return incoming, splash, tmp_path / "reports" / "scores.parquet", tmp_path / "annotation" / "ledger.json", shas


def _pruner(dirs, **limits: float) -> Pruner:
    incoming, splash, scores, ledger, _ = dirs
    return Pruner(_storage(**limits), incoming, splash, scores, ledger, clock=lambda: NOW)


@pytest.mark.parametrize("table", [None, b"PAR1 not really parquet", "no id column"])
def test_missing_or_corrupt_scores_table_removes_nothing_from_the_pool(service_dirs, caplog, table):
    incoming, _, scores, ledger, shas = service_dirs
    ledger.parent.mkdir(parents=True)
    ledger.write_text(json.dumps({shas[0]: {"status": "labelled"}}))  # would go, were the table readable
    if isinstance(table, bytes):
        scores.parent.mkdir(parents=True)
        scores.write_bytes(table)
    elif table:
        import pyarrow as pa
        import pyarrow.parquet as pq

        scores.parent.mkdir(parents=True)
        pq.write_table(pa.table({"path": ["x.jpg"]}), scores)
    pruner = _pruner(service_dirs, incoming_max_age_days=365.0)
    before = sorted(incoming.iterdir())
    assert pruner.prune_once()["incoming_removed"] == 0 and pruner.prune_once()["incoming_removed"] == 0
    assert sorted(incoming.iterdir()) == before
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "no incoming photo is removed" in warnings[0] and str(scores) in warnings[0]


def test_corrupt_ledger_removes_nothing_from_the_pool(service_dirs, caplog):
    incoming, _, scores, ledger, shas = service_dirs
    _scores(scores, shas)
    ledger.parent.mkdir(parents=True)
    ledger.write_text('{"abc": {"status": "lost"}}')
    assert _pruner(service_dirs, incoming_max_age_days=1.0).prune_once()["incoming_removed"] == 0
    assert len(list(incoming.iterdir())) == 6 and str(ledger) in caplog.text


def test_prune_once_totals_and_the_table_read_only_when_changed(service_dirs, caplog):
    incoming, splash, scores, ledger, shas = service_dirs
    pictures = [_splash(splash, n, age_s=DAY * (3 - n)) for n in range(3)]  # 3, 2, 1 days old
    pruner = _pruner(service_dirs, splash_max_age_h=36.0, incoming_max_mb=1000 / (1 << 20))  # 1000 bytes
    _scores(scores, shas[1:])  # the oldest photo is not scored
    ledger.parent.mkdir(parents=True)
    ledger.write_text(json.dumps({shas[2]: {"status": "pushed", "path": "x.jpg"}}))
    with caplog.at_level(logging.INFO, logger="cardamage.service.pruner"):
        counts = pruner.prune_once()
    assert counts == {"splash_removed": 2, "splash_freed_bytes": 600, "splash_bytes": 300, "incoming_removed": 1,
                      "incoming_freed_bytes": 500, "incoming_bytes": 1000, "incoming_kept": 0}
    assert not pictures[0].exists() and not pictures[1].exists() and pictures[2].exists()
    assert sorted(p.stem for p in incoming.iterdir()) == sorted([shas[0]] * 2 + [shas[2]] * 2)
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("pruned")] and pruner.scores.reads == 1
    _photo(incoming, 7, age_days=0)  # over the limit again: nothing may go (unscored, pending)
    assert pruner.prune_once()["incoming_kept"] == 3 and pruner.scores.reads == 1  # the table did not change
    assert "3 incoming photo(s) over serve.storage limits kept" in caplog.text
    _scores(scores, shas)  # now the oldest is scored
    assert pruner.prune_once()["incoming_removed"] == 1 and pruner.scores.reads == 2


def test_under_the_limits_the_table_is_not_read(service_dirs):
    _, _, scores, _, shas = service_dirs
    _scores(scores, shas)
    pruner = _pruner(service_dirs, incoming_max_mb=1.0, incoming_max_age_days=1000.0)
    assert pruner.prune_once()["incoming_bytes"] == 1500 and pruner.scores.reads == 0


def test_background_thread_prunes_and_stops(service_dirs):
    incoming, _, scores, _, shas = service_dirs
    _scores(scores, shas)
    pruner = _pruner(service_dirs, incoming_max_age_days=1.0, prune_every_s=0.05)
    pruner.start()
    try:
        deadline = time.monotonic() + 10
        while any(incoming.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        pruner.stop()
    assert not any(incoming.iterdir()) and pruner._thread is None
    off = _pruner(service_dirs, incoming_max_age_days=1.0)  # prune_every_s = 0: no thread
    off.start()
    assert off._thread is None


def test_bad_storage_values_are_refused(tmp_path):
    with pytest.raises(BadParameterError, match="serve.storage.splash_max_mb"):
        Pruner(_storage(splash_max_mb=-1.0), tmp_path, tmp_path, tmp_path / "s.parquet")
    with pytest.raises(BadParameterError, match="serve.storage.prune_every_s"):
        Pruner(_storage(prune_every_s=float("nan")), tmp_path, tmp_path, tmp_path / "s.parquet")
