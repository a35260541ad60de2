"""Exact (sha256) and near (perceptual hash) duplicate detection.

Perceptual hashes are 64-bit difference hashes (dHash, 9x8 greyscale) from ``imagehash``,
stored as 16-character hex strings; near-duplicates are pairs within a Hamming distance.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np

from cardamage.data.images import ImageLoadError, open_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DuplicatePair:
    """Two images that are the same photo: ``kind`` is ``"exact"`` (same bytes) or ``"near"``."""

    a: str
    b: str
    kind: str
    distance: int


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def perceptual_hash(path: str | os.PathLike) -> str:
    """64-bit dHash of the EXIF-rotated RGB image as 16 hex characters.

    Raises:
        ImageLoadError: unreadable image.
    """
    return str(imagehash.dhash(open_image(path), hash_size=8))


def hash_bits(hex_hashes: Sequence[str]) -> np.ndarray:
    """Hex hashes -> ``bool [N, 64]`` bit matrix."""
    if not hex_hashes:
        return np.zeros((0, 64), dtype=bool)
    as_int = np.array([int(h, 16) for h in hex_hashes], dtype=np.uint64)
    shifts = np.arange(63, -1, -1, dtype=np.uint64)
    return ((as_int[:, None] >> shifts[None, :]) & np.uint64(1)).astype(bool)


def hamming_matrix(a: Sequence[str], b: Sequence[str] | None = None) -> np.ndarray:
    """Pairwise Hamming distances ``int [len(a), len(b)]`` between hex hashes (``b`` defaults to ``a``)."""
    bits_a = hash_bits(a).astype(np.int16)
    bits_b = bits_a if b is None else hash_bits(b).astype(np.int16)
    # popcount(x xor y) = |x| + |y| - 2 x.y for 0/1 vectors
    dots = bits_a @ bits_b.T
    return bits_a.sum(1)[:, None] + bits_b.sum(1)[None, :] - 2 * dots


def find_duplicates(sha256s: Sequence[str], phashes: Sequence[str | None], names: Sequence[str],
                    max_distance: int = 6) -> list[DuplicatePair]:
    """Pairs of exact duplicates (same sha256) and near-duplicates (dHash distance <= ``max_distance``).

    Args:
        sha256s, phashes, names: one entry per image, same order; a ``None`` phash (unreadable
            image) takes part only in exact matching.
    """
    pairs: list[DuplicatePair] = []
    first_by_sha: dict[str, int] = {}
    exact: set[tuple[int, int]] = set()
    for i, sha in enumerate(sha256s):
        if sha in first_by_sha:
            j = first_by_sha[sha]
            exact.add((j, i))
            pairs.append(DuplicatePair(names[j], names[i], "exact", 0))
        else:
            first_by_sha[sha] = i
    valid = [i for i, h in enumerate(phashes) if h]
    if len(valid) > 1:
        dist = hamming_matrix([phashes[i] for i in valid])
        rows, cols = np.nonzero(np.triu(dist <= max_distance, k=1))
        for r, c in zip(rows.tolist(), cols.tolist()):
            i, j = valid[r], valid[c]
            if (i, j) not in exact and sha256s[i] != sha256s[j]:
                pairs.append(DuplicatePair(names[i], names[j], "near", int(dist[r, c])))
    return pairs


def hash_files(paths: Iterable[str | os.PathLike]) -> tuple[list[str], list[str | None]]:
    """sha256 and dHash of each file; unreadable images get a ``None`` hash and a warning."""
    shas: list[str] = []
    hashes: list[str | None] = []
    for p in paths:
        shas.append(file_sha256(p))
        try:
            hashes.append(perceptual_hash(p))
        except ImageLoadError as exc:
            log.warning("%s", exc)
            hashes.append(None)
    return shas, hashes


def duplicate_groups(pairs: Iterable[DuplicatePair]) -> list[set[str]]:
    """Merge pairs into connected groups of names (union-find), e.g. to keep them on one split side."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for pair in pairs:
        parent[find(pair.a)] = find(pair.b)
    groups: dict[str, set[str]] = {}
    for name in parent:
        groups.setdefault(find(name), set()).add(name)
    return [g for g in groups.values() if len(g) > 1]


def image_files_hashes(root: str | os.PathLike, rel_paths: Sequence[str]) -> tuple[list[str], list[str | None]]:
    """:func:`hash_files` over paths relative to ``root``."""
    return hash_files(Path(root) / p for p in rel_paths)
