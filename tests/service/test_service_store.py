"""Code tier: the incoming pool (content addressed, no overwrite, atomic) and the splash store."""

from __future__ import annotations

import hashlib
import json
import threading

import pytest
from test_service_support import car_photo, jpeg_bytes

from cardamage.data.images import list_images
from cardamage.service.store import IncomingStore, SplashStore


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
