"""Label Studio brush RLE (label-studio-converter's ``brush.py`` format), in numpy.

A bit stream, most significant bit first: 32 bits value count, 5 bits word size - 1, four 4-bit
run-length field sizes - 1 (Label Studio: 3, 4, 8, 16). Then records until all values are out:
1 flag bit (1 = a run of one value, 0 = literal values), 2 bits choosing a length-field size,
the length - 1, then one value (run) or length values (literal). The values are the image's
RGBA bytes, row by row; the mask is the alpha channel.

The header's count is checked against the expected ``height x width x 4`` and against the photo
pixel budget *before* anything is allocated: a 100-byte stream may declare 2**32 values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

RLE_SIZES = (3, 4, 8, 16)
#: Bits before the first record: count, word size, four field sizes.
HEADER_BITS = 32 + 5 + 16


def _bytes(rle: Any) -> np.ndarray:
    """The RLE as ``uint8 [n]``; anything but a flat list of whole numbers 0..255 is a ``ValueError``."""
    if not isinstance(rle, (list, tuple, np.ndarray)):
        raise ValueError(f"'rle' is a {type(rle).__name__}, not a list of byte values")
    try:
        arr = np.asarray(rle)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ValueError("'rle' is not a flat list of byte values") from exc
    if arr.size == 0:
        raise ValueError("'rle' is empty")
    if arr.ndim != 1 or arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() > 255:
        raise ValueError("'rle' is not a flat list of byte values 0..255")
    return arr.astype(np.uint8)


class _BitReader:
    """Reads unsigned big-endian fields from a bit string (one ASCII ``0``/``1`` per bit)."""

    def __init__(self, data: Sequence[int]) -> None:
        self.text = (np.unpackbits(_bytes(data)) + ord("0")).tobytes().decode("ascii")
        self.pos = 0

    def read(self, size: int) -> int:
        if self.pos + size > len(self.text):
            raise ValueError("brush RLE ends early")
        value = int(self.text[self.pos:self.pos + size], 2)
        self.pos += size
        return value

    def read_many(self, count: int, size: int) -> np.ndarray:
        end = self.pos + count * size
        if end > len(self.text):
            raise ValueError("brush RLE ends early")
        bits = np.frombuffer(self.text[self.pos:end].encode("ascii"), dtype=np.uint8) - ord("0")
        self.pos = end
        return bits.reshape(count, size).astype(np.int64) @ (1 << np.arange(size - 1, -1, -1, dtype=np.int64))


def brush_rle_length(rle: Sequence[int]) -> int:
    """The number of values the RLE's header declares (read without decoding anything).

    Raises:
        ValueError: not a list of byte values, or shorter than the header.
    """
    arr = _bytes(rle)
    if arr.size < 4:
        raise ValueError("brush RLE ends early (no header)")
    return int.from_bytes(arr[:4].tobytes(), "big")


def decode_brush_rle(rle: Sequence[int], max_values: int | None = None) -> np.ndarray:
    """Label Studio brush RLE (list of byte values) -> the flat decoded values (``uint8`` for 8-bit words).

    Args:
        rle: the stream as byte values 0..255.
        max_values: most values accepted (default: 4 per pixel of the photo budget,
            ``data.max_pixels``); a header declaring more is refused before allocating.

    Raises:
        ValueError: a malformed stream, or a header declaring more than ``max_values`` values.
    """
    from cardamage.data.images import pixel_limit

    limit = 4 * pixel_limit() if max_values is None else int(max_values)
    reader = _BitReader(rle)
    num, word = reader.read(32), reader.read(5) + 1
    if num > limit:
        raise ValueError(f"brush RLE header declares {num} values, more than the {limit} accepted")
    sizes = [reader.read(4) + 1 for _ in range(4)]
    out = np.zeros(num, dtype=np.uint8 if word <= 8 else np.uint16 if word <= 16 else np.uint32)
    i = 0
    while i < num:
        is_run = reader.read(1)
        j = min(num, i + 1 + reader.read(sizes[reader.read(2)]))
        if is_run:
            out[i:j] = reader.read(word)
        else:
            out[i:j] = reader.read_many(j - i, word)
        i = j
    return out


def _records(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of equal values as ``(lengths, values, forced_long)``; runs over 2**16 split in chunks."""
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    lengths = np.diff(np.r_[starts, values.size])
    chunks = (lengths + 65535) // 65536
    last = np.cumsum(chunks) - 1
    out_len = np.full(int(chunks.sum()), 65536, dtype=np.int64)
    out_len[last] = lengths - (chunks - 1) * 65536
    forced = np.repeat(chunks > 1, chunks)
    return out_len, np.repeat(values[starts], chunks), forced


def encode_brush_rle(values: np.ndarray) -> list[int]:
    """Flat 8-bit values (e.g. RGBA bytes) -> Label Studio brush RLE (list of byte values).

    Same layout as label-studio-converter's ``encode_rle`` (word size 8, field sizes 3/4/8/16,
    single values as 1-value literals, zero padding to whole bytes plus one byte when aligned).
    """
    flat = np.asarray(values).ravel().astype(np.int64)
    if flat.size and (flat.min() < 0 or flat.max() > 255):
        raise ValueError("brush RLE values must be 0..255")
    header = f"{flat.size:032b}{7:05b}" + "".join(f"{s - 1:04b}" for s in RLE_SIZES)
    bits = [np.frombuffer(header.encode("ascii"), dtype=np.uint8) - ord("0")]
    if flat.size:
        lengths, vals, forced = _records(flat)
        index = np.where(forced, 3, np.searchsorted(np.array([8, 16, 256]), lengths))
        field = np.array(RLE_SIZES)[index]
        flag = ((lengths > 1) | forced).astype(np.int64)
        nbits = 3 + field + 8
        code = (flag << (2 + field + 8)) | (index << (field + 8)) | ((lengths - 1) << 8) | vals
        aligned = (code << (32 - nbits)).astype(">u4")
        table = np.unpackbits(aligned.view(np.uint8)).reshape(-1, 32)
        bits.append(table[np.arange(32)[None, :] < nbits[:, None]])
    stream = np.concatenate(bits)
    stream = np.r_[stream, np.zeros(8 - stream.size % 8, dtype=np.uint8)]
    return np.packbits(stream).tolist()


def brush_rle_to_mask(rle: Sequence[int], height: int, width: int) -> np.ndarray:
    """Brush RLE of an RGBA ``height x width`` image -> binary mask ``uint8 [height, width]`` (alpha > 0).

    Raises:
        ValueError: a malformed stream, an image over the photo pixel budget, or a header that
            declares other than ``height x width x 4`` values (checked before decoding).
    """
    from cardamage.data.images import pixel_limit

    if height * width > pixel_limit():
        raise ValueError(f"a {width}x{height} brush exceeds the limit of {pixel_limit()} pixels (data.max_pixels)")
    expected = height * width * 4
    declared = brush_rle_length(rle)
    if declared != expected:
        raise ValueError(f"header declares {declared} values, expected {height}x{width}x4 = {expected}")
    flat = decode_brush_rle(rle, max_values=expected)
    return (flat.reshape(height, width, 4)[:, :, 3] > 0).astype(np.uint8)


def mask_to_brush_rle(mask: np.ndarray) -> list[int]:
    """Binary mask ``[height, width]`` -> brush RLE (RGBA bytes, 255 where the mask is set)."""
    return encode_brush_rle(np.repeat((np.asarray(mask) > 0).astype(np.uint8).ravel() * 255, 4))
