"""COCO RLE checks: what pycocotools assumes but never verifies.

A COCO RLE is ``{"size": [height, width], "counts": ...}``: ``counts`` is either a list of run
lengths (uncompressed; background first, column-major) or COCO's compressed string (6-bit
characters ``'0'..'o'``, 5 payload bits each, a continuation bit, sign-extended deltas from the
count two places back). The runs must add up to ``height x width`` exactly: pycocotools writes
one byte per counted pixel into a ``height x width`` buffer without checking, and reads past the
end of a string whose last number is unfinished. :func:`check_rle` checks all of that in numpy,
without decoding, and bounds ``height x width`` by the photo pixel budget.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cardamage.errors import BadInputError

#: Largest single run length pycocotools stores (``uint32``).
MAX_RUN = 2 ** 32 - 1


class RLEError(BadInputError):
    """A COCO RLE mask that cannot be used; the message names the file, the entry and the field."""


def _dimension(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not (np.isfinite(value) and value.is_integer()):
        return None
    return int(value) if value >= 1 else None


def string_counts(counts: str | bytes) -> np.ndarray:
    """Run lengths (``int64 [n]``) of COCO's compressed counts string (pycocotools' ``rleFrString``).

    Raises:
        ValueError: characters outside ``'0'..'o'``, an unfinished last number, a number over
            7 characters, or a negative or over-``uint32`` run.
    """
    raw = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    c = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return c
    if c.min() < 0 or c.max() > 63:
        raise ValueError("characters outside '0'..'o'")
    more = (c & 0x20) != 0
    if more[-1]:
        raise ValueError("the last number is unfinished")
    ends = np.flatnonzero(~more)
    starts = np.r_[0, ends[:-1] + 1]
    lengths = ends - starts + 1
    if lengths.max() > 7:
        raise ValueError("a number longer than 7 characters")
    k = np.arange(c.size) - np.repeat(starts, lengths)
    x = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    x = np.where((c[ends] & 0x10) != 0, x - (np.int64(1) << (5 * lengths)), x)
    runs = x.copy()
    runs[1::2] = np.cumsum(x[1::2])
    runs[2::2] = np.cumsum(x[2::2])
    if runs.min() < 0 or runs.max() > MAX_RUN:
        raise ValueError("a run length below 0 or above 2**32 - 1")
    return runs


def list_counts(counts: list[Any]) -> np.ndarray:
    """Run lengths (``int64 [n]``) of uncompressed counts: whole numbers in ``0 .. 2**32 - 1``.

    Raises:
        ValueError: anything else (strings, booleans, fractions, nested lists, negative numbers).
    """
    try:
        arr = np.asarray(counts)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ValueError("not a flat list of numbers") from exc
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or arr.dtype.kind not in "iuf":
        raise ValueError("not a flat list of numbers")
    if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
        raise ValueError("not whole numbers")
    if arr.min() < 0 or arr.max() > MAX_RUN:
        raise ValueError("a run length below 0 or above 2**32 - 1")
    return arr.astype(np.int64)


def check_rle(rle: Any, where: str = "RLE", height: int | None = None, width: int | None = None,
              max_pixels: int | None = None) -> dict[str, Any]:
    """A usable COCO RLE ``{"size": [h, w], "counts": str | list[int]}``, checked without decoding.

    Args:
        rle: the RLE as read (a dict; ``counts`` as ``str``, ``bytes`` or a list of ints).
        where: prefix of error messages (file, image, annotation).
        height, width: if given, the image size in pixels the mask must have.
        max_pixels: largest ``h x w`` accepted (default: the photo budget, ``data.max_pixels``).

    Raises:
        RLEError: no ``size``/``counts``, a size that is not two positive integers, over the pixel
            budget or other than ``height x width``, or counts that are malformed or do not add up.
    """
    from cardamage.data.images import pixel_limit

    if not isinstance(rle, dict):
        raise RLEError(f"{where}: RLE is a {type(rle).__name__}, not an object with 'size' and 'counts'")
    size, counts = rle.get("size"), rle.get("counts")
    dims = [_dimension(v) for v in size] if isinstance(size, (list, tuple)) and len(size) == 2 else [None]
    if None in dims:
        raise RLEError(f"{where}: RLE 'size' {size!r:.60} is not [height, width] in whole pixels")
    h, w = dims
    limit = pixel_limit() if max_pixels is None else max_pixels
    if h * w > limit:
        raise RLEError(f"{where}: RLE 'size' {h}x{w} exceeds the limit of {limit} pixels (data.max_pixels)")
    if height is not None and width is not None and (h, w) != (int(height), int(width)):
        raise RLEError(f"{where}: RLE 'size' [{h}, {w}] differs from the image's height x width "
                       f"[{int(height)}, {int(width)}]")
    try:
        if isinstance(counts, (str, bytes)):
            runs = string_counts(counts)
            counts = counts if isinstance(counts, str) else counts.decode("ascii")
        elif isinstance(counts, list):
            runs = list_counts(counts)
            counts = runs.tolist()
        else:
            raise ValueError(f"a {type(counts).__name__}, not a string or a list of run lengths")
    except (ValueError, UnicodeError) as exc:
        raise RLEError(f"{where}: RLE 'counts' is malformed ({exc})") from exc
    total = int(runs.sum())
    if total != h * w:
        raise RLEError(f"{where}: RLE 'counts' add up to {total} pixels, not {h}x{w} = {h * w}")
    return {"size": [h, w], "counts": counts}


def pycoco_rle(rle: Any, where: str = "RLE") -> dict[str, Any]:
    """The checked RLE as pycocotools takes it (``bytes`` counts). Raises :class:`RLEError`."""
    from pycocotools import mask as mask_utils

    checked = check_rle(rle, where)
    h, w = checked["size"]
    if isinstance(checked["counts"], list):
        return mask_utils.frPyObjects({"size": [h, w], "counts": checked["counts"]}, h, w)
    return {"size": [h, w], "counts": checked["counts"].encode("ascii")}
