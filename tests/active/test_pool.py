"""Pool listing and exclusions on the embedded sample (train/val labelled, test unlabelled)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import SAMPLE
from PIL import Image

from cardamage.active.pool import HashCache, build_pool, labelled_photos, list_pool_files
from cardamage.config import DataParams
from cardamage.data.dedup import file_sha256


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    """Hashes of the sample's labelled photos (computed once for the module)."""
    cache = HashCache(tmp_path_factory.mktemp("cache") / "hashes.json")
    return labelled_photos(DataParams(root=str(SAMPLE)), cache)


def _data(sample: Path) -> DataParams:
    return DataParams(root=str(sample))


def test_sample_test_split_excludes_the_copy_of_a_labelled_photo(sample, known, tmp_path):
    pool = build_pool(sample / "test", _data(sample), known=known)
    excluded = {Path(k).name: v for k, v in pool.excluded.items()}
    assert set(excluded) == {"66.jpg"}
    assert "already labelled: same file as train/17.jpg" in excluded["66.jpg"]
    assert len(pool.photos) == 7 and not pool.unreadable
    assert "7 candidate(s), 1 excluded" in pool.summary()


def test_reads_the_dataset_and_ledger_itself(sample, tmp_path):
    ledger = tmp_path / "ledger.json"
    photo = sample / "test" / "11.jpg"
    ledger.write_text(json.dumps({file_sha256(photo): {
        "path": str(photo), "task_id": 3, "project_id": 1, "pushed_at": "2024-01-01T00:00:00Z",
        "status": "pushed"}}))
    cache = tmp_path / "hashes.json"
    pool = build_pool(sample / "test", _data(sample), ledger=ledger, hash_cache=cache)
    reasons = {Path(k).name: v for k, v in pool.excluded.items()}
    assert reasons["11.jpg"].startswith("already sent for labelling")
    assert "66.jpg" in reasons and len(pool.photos) == 6
    assert cache.is_file() and len(json.loads(cache.read_text())) >= 78
    # a photo sent as region tasks leaves the pool too, even where the ledger's path is gone (sha256 match)
    region = sample / "test" / "12.jpg"
    ledger.write_text(json.dumps({f"{file_sha256(region)}@0,0,64,48": {
        "path": str(tmp_path / "moved.jpg"), "task_id": 4, "status": "labelled"}}))
    reasons = {Path(k).name: v for k, v in build_pool(sample / "test", _data(sample), ledger=ledger).excluded.items()}
    assert reasons["12.jpg"].startswith("already labelled in Label Studio: same file as")
    # a missing ledger is an empty ledger
    assert len(build_pool(sample / "test", _data(sample), ledger=tmp_path / "none.json",
                          hash_cache=cache).photos) == 7


def test_near_duplicates_unreadable_and_pool_copies(sample, known, tmp_path):
    folder = tmp_path / "pool"
    folder.mkdir()
    # a re-encoded, smaller copy of a labelled photo: other bytes, same picture
    Image.open(sample / "train" / "19.jpg").resize((512, 512)).save(folder / "a_resaved.jpg", quality=80)
    shutil.copy(sample / "test" / "12.jpg", folder / "b_new.jpg")
    shutil.copy(sample / "test" / "12.jpg", folder / "c_same_as_b.jpg")
    (folder / "d_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    pool = build_pool(folder, _data(sample), known=known)
    names = {Path(k).name: v for k, v in pool.excluded.items()}
    assert "near-duplicate of train/19.jpg" in names["a_resaved.jpg"]
    assert names["c_same_as_b.jpg"].startswith("duplicate: same file as pool photo")
    assert [Path(k).name for k in pool.unreadable] == ["d_broken.jpg"]
    assert [p.path.name for p in pool.photos] == ["b_new.jpg"]


def test_list_file_pool(sample, known, tmp_path):
    listing = tmp_path / "pool.txt"
    listing.write_text(f"# claim photos\n{sample / 'test' / '12.jpg'}\n\nlocal.jpg\n{sample / 'test' / '12.jpg'}\n")
    shutil.copy(sample / "test" / "28.jpg", tmp_path / "local.jpg")
    files = list_pool_files(listing)
    assert [f.name for f in files] == ["12.jpg", "local.jpg"]
    pool = build_pool(listing, _data(sample), known=known)
    assert len(pool.photos) == 2


def test_missing_pool_is_a_clear_error(sample, tmp_path):
    with pytest.raises(FileNotFoundError, match="pool folder or list file not found"):
        list_pool_files(tmp_path / "nowhere")


def test_missing_listed_file_is_reported(sample, known, tmp_path):
    listing = tmp_path / "pool.txt"
    listing.write_text("gone.jpg\n")
    pool = build_pool(listing, _data(sample), known=known)
    assert not pool.photos and "gone.jpg" in next(iter(pool.unreadable))
