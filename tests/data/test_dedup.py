"""Exact and near-duplicate detection on the sample's known defects."""

from conftest import SAMPLE

from cardamage.data.dedup import duplicate_groups, find_duplicates, hamming_matrix, hash_files
from cardamage.data.images import list_images


def test_hamming_matrix():
    d = hamming_matrix(["0000000000000000", "000000000000000f", "ffffffffffffffff"])
    assert d.tolist() == [[0, 4, 64], [4, 0, 60], [64, 60, 0]]


def test_sample_known_duplicates_are_found():
    paths = list_images(SAMPLE)
    names = [p.relative_to(SAMPLE).as_posix() for p in paths]
    shas, hashes = hash_files(paths)
    pairs = {(p.a, p.b): p.kind for p in find_duplicates(shas, hashes, names, max_distance=6)}
    assert pairs[("test/66.jpg", "train/17.jpg")] == "exact"
    assert pairs[("train/25.jpg", "train/48.jpg")] == "exact"
    assert pairs[("train/19.jpg", "train/79.jpg")] == "near"
    assert pairs[("train/33.jpg", "train/8.jpg")] == "near"
    assert len(pairs) == 4  # no false positives among the other 74 photos


def test_duplicate_groups_merge_chains():
    from cardamage.data.dedup import DuplicatePair

    groups = duplicate_groups([DuplicatePair("a", "b", "near", 1), DuplicatePair("b", "c", "near", 2),
                               DuplicatePair("x", "y", "exact", 0)])
    assert sorted(map(sorted, groups)) == [["a", "b", "c"], ["x", "y"]]


def test_unreadable_image_gets_no_phash(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    shas, hashes = hash_files([bad])
    assert len(shas[0]) == 64 and hashes == [None]
