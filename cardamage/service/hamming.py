"""Multi-index hashing of 64-bit hashes: every stored hash within a Hamming radius of a query, no scan.

The 64 bits are split into bands (``WIDTHS``); two hashes within ``r`` bits agree within
``r // BANDS`` bits on at least one band (pigeonhole), so a search probes each band's buckets within
that radius and verifies the few candidates with a popcount. Used by :mod:`cardamage.service.reuse`.
"""

from __future__ import annotations

from functools import cache

import numpy as np

WIDTHS = (13, 13, 13, 13, 12)
BANDS = len(WIDTHS)
_SHIFTS = tuple(int(x) for x in np.cumsum((0, *WIDTHS[:-1])))
_TABLE_BASE = tuple(int(x) for x in np.cumsum((0, *[(1 << w) + 1 for w in WIDTHS[:-1]])))
TAIL_MIN = 1024  # newest hashes checked directly (this many, or 1/256 of the index) until a rebuild


def popcount64(x: np.ndarray) -> np.ndarray:
    """Set bits of each ``uint64`` in ``x`` (``uint8 [...]``, same shape)."""
    x = np.asarray(x, dtype=np.uint64)
    if _HAS_BITWISE_COUNT:  # numpy >= 2.0
        return np.bitwise_count(x)
    return _BYTE_BITS[x.reshape(-1, 1).view(np.uint8)].sum(1).reshape(x.shape)


_HAS_BITWISE_COUNT = hasattr(np, "bitwise_count")
_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


@cache
def _probes(radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per probe (``intp [P]`` each; 70 for ``r = 8``): its band, XOR mask and band table base.

    Band b is probed at every value within ``radius // BANDS`` bits of the query's.
    """
    band, mask, base = [], [], []
    for b, width in enumerate(WIDTHS):
        masks = np.flatnonzero(popcount64(np.arange(1 << width, dtype=np.uint64)) <= radius // BANDS)
        band.append(np.full(masks.size, b))
        mask.append(masks)
        base.append(np.full(masks.size, _TABLE_BASE[b]))
    out = tuple(np.concatenate(x).astype(np.intp) for x in (band, mask, base))
    for x in out:
        x.setflags(write=False)  # shared by every call
    return out  # type: ignore[return-value]


class HammingIndex:
    """In-memory multi-index hashing (Norouzi et al., 2012) of 64-bit hashes, for radius search.

    Why this index: two hashes within ``r`` bits are within ``r // 5`` bits on at least one of 5 bands
    (pigeonhole). A query probes, per band, the band values within 1 bit of its own (``r = 8``: 70
    buckets in all) and popcounts only the hashes in those buckets (about N / 117): exact, no photo
    within ``r`` is missed, in about 15 vectorised steps. A BK-tree would walk Python nodes and at
    ``r = 8`` of 64 bits visit a large part of the tree. Each band keeps its hashes sorted by band
    value (``uint64 [N]``, so a bucket is read contiguously), their positions (``int32 [N]``) and
    bucket offsets (``int64 [2**13 + 1]``, 330 KB for all bands: cache resident); with the hashes
    and row ids that is 76 bytes a photo. The newest hashes (:data:`TAIL_MIN`, or 1/256 of the index)
    are checked directly until the tables are rebuilt (radix sorts: about 10 ms for 100,000).
    Not thread safe: :class:`ReuseIndex` locks.
    """

    def __init__(self) -> None:
        self._hashes, self._ids = np.zeros(1024, np.uint64), np.zeros(1024, np.int64)
        self._n = self._n_sorted = 0
        self._sorted = np.zeros(0, np.uint64)  # [BANDS * n_sorted]: band b's hashes at b * n_sorted, by band value
        self._order = np.zeros(0, np.int32)  # same layout: their positions
        self._offsets = np.zeros(_TABLE_BASE[-1] + (1 << WIDTHS[-1]) + 1, np.int64)  # bucket starts, into _sorted

    def __len__(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays (hashes, row ids, band tables)."""
        return sum(a.nbytes for a in (self._hashes, self._ids, self._sorted, self._order, self._offsets))

    def add(self, hashes: np.ndarray, ids: np.ndarray) -> None:
        """Add ``uint64 [K]`` hashes with their ``int64 [K]`` row ids."""
        hashes, ids = np.asarray(hashes, np.uint64).ravel(), np.asarray(ids, np.int64).ravel()
        end = self._n + hashes.size
        if end > self._hashes.size:
            cap = max(end, 2 * self._hashes.size)
            self._hashes = np.concatenate([self._hashes[:self._n], np.zeros(cap - self._n, np.uint64)])
            self._ids = np.concatenate([self._ids[:self._n], np.zeros(cap - self._n, np.int64)])
        self._hashes[self._n:end], self._ids[self._n:end] = hashes, ids
        self._n = end
        if self._n - self._n_sorted > max(TAIL_MIN, self._n_sorted // 256):
            self._rebuild()

    def _rebuild(self) -> None:
        n, hashes = self._n, self._hashes[:self._n]
        sorted_, order = np.empty(BANDS * n, np.uint64), np.empty(BANDS * n, np.int32)
        for b, (width, shift, base) in enumerate(zip(WIDTHS, _SHIFTS, _TABLE_BASE)):
            keys = ((hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.uint16)
            band_order = np.argsort(keys, kind="stable")  # a radix sort for uint16
            order[b * n:(b + 1) * n], sorted_[b * n:(b + 1) * n] = band_order, hashes[band_order]
            self._offsets[base + 1:base + (1 << width) + 1] = b * n + np.cumsum(np.bincount(keys, minlength=1 << width))
            self._offsets[base] = b * n
        self._sorted, self._order, self._n_sorted = sorted_, order, n

    def search(self, query: int, radius: int) -> tuple[np.ndarray, np.ndarray]:
        """Row ids ``int64 [M]`` of the hashes within ``radius`` bits of ``query`` and their distances ``int64 [M]``."""
        q = np.uint64(query)
        pos, dist = self._band_search(int(query), q, radius)
        if self._n > self._n_sorted:
            tail = popcount64(self._hashes[self._n_sorted:self._n] ^ q)
            near = np.flatnonzero(tail <= radius)
            pos, dist = np.concatenate([pos, near + self._n_sorted]), np.concatenate([dist, tail[near]])
        if pos.size > 1:  # a hash close in several bands is found in each: keep its first find
            first: dict[int, int] = {}
            for i, p in enumerate(pos.tolist()):
                first.setdefault(p, i)
            keep = np.fromiter(first.values(), np.intp, len(first))
            pos, dist = pos[keep], dist[keep]
        return self._ids[pos], dist.astype(np.int64)

    def _band_search(self, query: int, q: np.uint64, radius: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions ``intp [M]`` in the sorted part within ``radius`` of ``q`` and their distances ``uint8 [M]``."""
        if self._n_sorted == 0:
            return np.zeros(0, np.intp), np.zeros(0, np.uint8)
        band, mask, base = _probes(radius)
        values = np.array([(query >> shift) & ((1 << width) - 1) for width, shift in zip(WIDTHS, _SHIFTS)])
        probes = (values[band] ^ mask) + base
        starts = self._offsets[probes]
        lengths = self._offsets[probes + 1] - starts
        ends = np.cumsum(lengths)
        # the concatenated buckets [start, start + length): one repeat instead of a Python loop
        steps = np.repeat(starts - ends + lengths, lengths) + np.arange(int(ends[-1]))
        dist = popcount64(self._sorted[steps] ^ q)
        near = np.flatnonzero(dist <= radius)
        return self._order[steps[near]].astype(np.intp), dist[near]
