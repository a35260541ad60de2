"""Code tier: reused-photo detection (:mod:`cardamage.service.reuse`): exact, near, embeddings, persistence.

Pure numpy / PIL / sqlite: no model. Embeddings here are synthetic vectors.
"""

from __future__ import annotations

import hashlib
import io
import logging
import sqlite3
import threading

import numpy as np
import pytest
from PIL import Image
from test_service_support import SAMPLE_TEST

from cardamage.config_serve import ServeParams
from cardamage.errors import BadInputError
from cardamage.service import hamming, reuse
from cardamage.service.hamming import HammingIndex, popcount64
from cardamage.service.reuse import ReuseIndex, check_reuse, open_reuse_index, phash64


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def photos() -> dict[str, tuple[str, np.ndarray]]:
    """``name -> (sha256, rgb uint8 [H, W, 3])``: two real sample photos and a re-saved, resized, cropped copy."""
    files = sorted(SAMPLE_TEST.glob("*.jpg"))[:2]
    original, other = (Image.open(f).convert("RGB") for f in files)
    w, h = original.size
    copy = original.crop((w // 100, h // 100, w - w // 100, h - h // 100)).resize((w // 2, h // 2))
    copy = Image.open(io.BytesIO(_jpeg(copy, quality=70))).convert("RGB")
    out = {}
    for name, img in (("original", original), ("copy", copy), ("other", other)):
        out[name] = (_sha(_jpeg(img)), np.asarray(img))
    return out


def _unit(rng: np.random.Generator, dim: int = 32) -> np.ndarray:
    v = rng.normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def test_phash64_is_a_64_bit_int_resize_invariant_and_checks_its_input(photos):
    h = phash64(photos["original"][1])
    assert isinstance(h, int) and 0 <= h < 2**64
    assert h == phash64(photos["original"][1].copy())
    small = np.asarray(Image.fromarray(photos["original"][1]).resize((200, 200)))
    assert popcount64(np.uint64(h) ^ np.uint64(phash64(small))) <= 4
    with pytest.raises(BadInputError, match="uint8"):
        phash64(np.zeros((8, 8), np.uint8))
    with pytest.raises(BadInputError, match="uint8"):
        phash64(np.zeros((8, 8, 3), np.float32))


def test_phash64_stays_within_2_bits_of_imagehash_phash_on_every_sample_photo():
    """The box pre-reduction (reducing_gap) may not move the hash: stored hashes stay comparable."""
    import imagehash

    for f in sorted(SAMPLE_TEST.glob("*.jpg")):
        rgb = np.asarray(Image.open(f).convert("RGB"))
        plain = int(str(imagehash.phash(Image.fromarray(rgb), hash_size=8)), 16)
        assert popcount64(np.uint64(plain) ^ np.uint64(phash64(rgb))) <= 2, f.name


def test_popcount_without_numpy_bitwise_count(monkeypatch):
    x = np.array([0, 1, 2**64 - 1, 0b1011 << 60], dtype=np.uint64)
    expected = [0, 1, 64, 3]
    assert popcount64(x).tolist() == expected
    monkeypatch.setattr(hamming, "_HAS_BITWISE_COUNT", False)  # numpy < 2.0
    assert popcount64(x).tolist() == expected


def test_hamming_index_finds_exactly_what_a_linear_scan_finds():
    rng = np.random.default_rng(3)
    hashes = rng.integers(0, 2**64 - 1, size=6000, dtype=np.uint64, endpoint=True)
    index = HammingIndex()
    for start in range(0, hashes.size, 700):  # 700 at a time: band tables rebuilt, the newest in the tail
        index.add(hashes[start:start + 700], np.arange(start, min(start + 700, hashes.size)) + 100)
    assert len(index) == 6000 and 0 < index._n_sorted < 6000
    for radius in (0, 4, 8, 12):
        for _ in range(40):
            q = int(hashes[rng.integers(hashes.size)])
            for bit in rng.choice(64, size=rng.integers(0, radius + 2), replace=False):
                q ^= 1 << int(bit)
            ids, dist = index.search(q, radius)
            scan = popcount64(hashes ^ np.uint64(q))
            assert sorted(ids.tolist()) == (np.flatnonzero(scan <= radius) + 100).tolist()
            assert dist.tolist() == scan[ids - 100].tolist()


@pytest.fixture
def index(tmp_path):
    with ReuseIndex(tmp_path / "new" / "reuse.sqlite") as ix:
        yield ix


def test_exact_reuse_under_another_claim(index, photos):
    sha, rgb = photos["original"]
    h = phash64(rgb)
    assert index.check_and_add(sha, h, None, "claim-1", "front.jpg") == []
    matches = index.check_and_add(sha, h, None, "claim-2", "IMG_0001.jpg")
    assert len(matches) == 1
    m = matches[0]
    assert (m["kind"], m["claim_id"], m["sha256"], m["photo"], m["hamming"], m["confirmed"]) == (
        "exact", "claim-1", sha, "front.jpg", 0, True)
    assert m["first_seen"].endswith("+00:00") and m["embedding_distance"] is None
    assert len(index) == 2


def test_same_claim_again_is_no_match_and_one_row(index, photos):
    sha, rgb = photos["original"]
    h = phash64(rgb)
    assert index.check_and_add(sha, h, None, "claim-1", "front.jpg") == []
    assert index.check_and_add(sha, h, None, "claim-1", "front (resent).jpg") == []
    assert index.check_and_add(_sha(b"copy"), phash64(photos["copy"][1]), None, "claim-1", "copy.jpg") == []
    assert len(index) == 2
    count = sqlite3.connect(index.path).execute("SELECT COUNT(*) FROM photos WHERE sha256 = ?", (sha,)).fetchone()
    assert count == (1,)


def test_near_copy_is_found_and_an_unrelated_photo_is_not(index, photos):
    sha, rgb = photos["original"]
    index.check_and_add(sha, phash64(rgb), None, "claim-1", "front.jpg")
    copy_sha, copy_rgb = photos["copy"]
    assert copy_sha != sha
    matches = index.check_and_add(copy_sha, phash64(copy_rgb), None, "claim-2", "copy.jpg")
    assert [(m["kind"], m["claim_id"], m["sha256"], m["confirmed"]) for m in matches] == [
        ("near", "claim-1", sha, False)]  # no embeddings: a candidate for the handler, unconfirmed
    assert 0 < matches[0]["hamming"] <= index.max_hamming
    other_sha, other_rgb = photos["other"]
    assert index.check_and_add(other_sha, phash64(other_rgb), None, "claim-3", "other.jpg") == []


def test_embeddings_confirm_or_deny_a_near_match(index):
    rng = np.random.default_rng(0)
    base, h = _unit(rng), 0x0123_4567_89AB_CDEF
    index.check_and_add("a" * 64, h, base, "claim-1", "a.jpg", embedding_model="v1")
    index.check_and_add("b" * 64, h ^ 0b1, None, "claim-2", "b.jpg")  # stored without an embedding
    close = base + 0.05 * _unit(rng)  # cosine distance about 0.001
    matches = {m["claim_id"]: m for m in index.check_and_add("c" * 64, h ^ 0b11, close, "claim-3", "c.jpg",
                                                              embedding_model="v1")}
    assert matches["claim-1"]["confirmed"] and 0 < matches["claim-1"]["embedding_distance"] < 0.01
    assert not matches["claim-2"]["confirmed"] and matches["claim-2"]["embedding_distance"] is None
    far = _unit(rng)  # another photo with a colliding hash: about 1 apart
    assert [m["claim_id"] for m in index.check_and_add("d" * 64, h ^ 0b111, far, "claim-4", "d.jpg",
                                                        embedding_model="v1")] == ["claim-2"]
    other_model = index.check_and_add("e" * 64, h, far, "claim-5", "e.jpg", embedding_model="v2")
    assert {m["claim_id"]: m["confirmed"] for m in other_model}["claim-1"] is False  # not comparable: unconfirmed
    with pytest.raises(BadInputError, match="embedding"):
        index.check_and_add("f" * 64, h, np.full(4, np.nan), "claim-6", "f.jpg")


def test_matches_are_closest_first_one_per_claim_and_capped(index):
    h = 0xFFFF_0000_FFFF_0000
    for k in range(8):  # claim k: a photo k bits away, and a farther one
        index.check_and_add(f"{k:064x}", h ^ ((1 << k) - 1), None, f"claim-{k}", "near.jpg")
        index.check_and_add(f"{k + 100:064x}", h ^ ((1 << (k + 1)) - 1) << 20, None, f"claim-{k}", "far.jpg")
    matches = index.check_and_add(f"{0:064x}", h, None, "claim-new", "x.jpg")
    assert [m["claim_id"] for m in matches] == [f"claim-{k}" for k in range(reuse.MAX_MATCHES)]
    assert matches[0]["kind"] == "exact" and [m["hamming"] for m in matches] == list(range(reuse.MAX_MATCHES))


def test_a_photo_without_claim_id_is_checked_but_not_recorded(index):
    assert index.check_and_add("a" * 64, 42, None, "claim-1", "a.jpg") == []
    assert [m["claim_id"] for m in index.check_and_add("a" * 64, 42, None, None, "anon.jpg")] == ["claim-1"]
    assert [m["claim_id"] for m in index.check_and_add("b" * 64, 43, None, "  ", "anon.jpg")] == ["claim-1"]
    assert len(index) == 1
    assert index.check_and_add("b" * 64, 43, None, "claim-2", "b.jpg")[0]["claim_id"] == "claim-1"


def test_entries_survive_reopening(tmp_path):
    path = tmp_path / "reuse.sqlite"
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 2**64 - 1, size=300, dtype=np.uint64, endpoint=True)
    vec = _unit(rng)
    with ReuseIndex(path) as ix:
        for i, h in enumerate(hashes):
            ix.check_and_add(f"{i:064x}", int(h), vec, f"claim-{i}", f"{i}.jpg")
    with ReuseIndex(path) as ix:
        assert len(ix) == 300
        exact = ix.check_and_add(f"{7:064x}", int(hashes[7]), None, "claim-x", "again.jpg")
        near = ix.check_and_add("f" * 64, int(hashes[9]) ^ 0b101, vec, "claim-y", "near.jpg")
    assert [(m["kind"], m["claim_id"]) for m in exact] == [("exact", "claim-7")]
    assert [(m["kind"], m["claim_id"], m["hamming"], m["confirmed"]) for m in near] == [("near", "claim-9", 2, True)]


@pytest.mark.parametrize("content", [b"this is not a database\n" * 200, "foreign", "corrupt"])
def test_a_corrupt_or_foreign_file_gives_a_clear_error(tmp_path, content):
    path = tmp_path / "reuse.sqlite"
    if content == "foreign":
        sqlite3.connect(path).execute("CREATE TABLE songs (title TEXT)").connection.commit()
    elif content == "corrupt":
        with ReuseIndex(path) as ix:
            for i in range(500):
                ix.check_and_add(f"{i:064x}", i * 7919, None, f"claim-{i}", f"{i}.jpg")
        sqlite3.connect(path).execute("PRAGMA wal_checkpoint(TRUNCATE)").connection.close()
        data = bytearray(path.read_bytes())
        data[4096:len(data) - 4096] = b"\xa5" * (len(data) - 8192)  # every page but the first and last
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(content)
    before = path.read_bytes()
    with pytest.raises(BadInputError, match=str(path)):
        ReuseIndex(path)
    assert path.read_bytes() == before  # left for an operator, never rewritten


def test_the_service_runs_without_reuse_checks_on_a_bad_file(tmp_path, caplog, photos):
    path = tmp_path / "reuse.sqlite"
    path.write_bytes(b"garbage" * 1000)
    serve = ServeParams(incoming_dir=str(tmp_path / "incoming"))
    serve.reuse.index_path = str(path)
    with caplog.at_level(logging.ERROR, logger="cardamage.service.reuse"):
        assert open_reuse_index(serve) is None
    assert "reuse checks are off" in caplog.text and str(path) in caplog.text
    sha, rgb = photos["original"]
    assert check_reuse(None, rgb, sha, "claim-1", "a.jpg") is None  # not checked, no failure
    serve.reuse.index_path = None
    ix = open_reuse_index(serve)
    assert ix is not None and ix.path == tmp_path / "incoming" / "reuse.sqlite"
    assert check_reuse(ix, rgb, sha, "claim-1", "a.jpg") == []
    assert check_reuse(ix, rgb, sha, "claim-2", "b.jpg")[0]["claim_id"] == "claim-1"
    ix.close()
    with caplog.at_level(logging.ERROR, logger="cardamage.service.reuse"):
        assert check_reuse(ix, rgb, sha, "claim-3", "c.jpg") is None  # a failing check does not fail the claim
    assert "reuse check failed" in caplog.text
    serve.reuse.enabled = False
    assert open_reuse_index(serve) is None


def test_concurrent_checks_from_8_threads_lose_nothing(tmp_path):
    """8 threads, each its own claim: the same photo (exact), then 30 photos of its own."""
    path = tmp_path / "reuse.sqlite"
    seen: dict[int, int] = {}
    errors: list[BaseException] = []
    with ReuseIndex(path) as ix:
        barrier = threading.Barrier(8)

        def work(t: int) -> None:
            try:
                barrier.wait()
                seen[t] = len(ix.check_and_add("e" * 64, 12345, None, f"claim-{t}", "shared.jpg"))
                for i, h in enumerate(np.random.default_rng(t).integers(0, 2**63, size=30)):
                    ix.check_and_add(f"{t * 1000 + i + 1:064x}", int(h), None, f"claim-{t}", "p.jpg")
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors
        assert sorted(seen.values()) == [min(k, reuse.MAX_MATCHES) for k in range(8)]  # each saw all before it
        assert len(ix) == 8 * 31
    with ReuseIndex(path) as again:
        assert len(again) == 8 * 31
        assert len(again.check_and_add("e" * 64, 12345, None, "claim-9", "x.jpg")) == reuse.MAX_MATCHES
