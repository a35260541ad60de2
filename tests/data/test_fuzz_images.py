"""Seeded fuzzing of the image loader: truncated JPEG/PNG, random bytes, bit rot, huge declared sizes.

Each damaged photo goes through :func:`~cardamage.data.images.image_size` and
:func:`~cardamage.data.images.load_image`: a result or :class:`~cardamage.data.images.ImageLoadError`,
nothing else, in bounded memory (see :mod:`fuzz_support`). Seed: ``CARDAMAGE_FUZZ_SEED``.
"""

from __future__ import annotations

import io
import os
import random
import struct
import zlib
from pathlib import Path

from conftest import SAMPLE
from fuzz_support import fuzz_in_child, max_rss, report
from PIL import Image

from cardamage.data.images import ImageLoadError, image_size, load_image

SEED = int(os.environ.get("CARDAMAGE_FUZZ_SEED", "20250611"))
CASES = 80


def _png(width: int, height: int, body: bytes = b"") -> bytes:
    """A PNG whose header declares ``width x height`` (valid CRCs), with ``body`` as its only IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body or zlib.compress(b"\x00" * 64)) \
        + chunk(b"IEND", b"")


def _bad_image(rng: random.Random) -> tuple[bytes, str, str]:
    jpeg = (SAMPLE / "train" / "2.jpg").read_bytes()
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(buffer, "PNG")
    png = buffer.getvalue()
    roll = rng.randrange(9)
    if roll == 0:
        return jpeg[:rng.randrange(0, len(jpeg))], ".jpg", "truncated JPEG"
    if roll == 1:
        return png[:rng.randrange(0, len(png))], ".png", "truncated PNG"
    if roll == 2:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000))), rng.choice([".jpg", ".png"]), \
            "random bytes"
    if roll == 3:
        w, h = rng.choice([(100_000, 100_000), (2 ** 31 - 1, 1), (1, 2 ** 31 - 1), (65_535, 65_535), (0, 10)])
        return _png(w, h), ".png", f"PNG header {w}x{h}"
    if roll == 4:
        at = jpeg.find(b"\xff\xc0")
        h, w = rng.choice([(65_535, 65_535), (0, 0), (1, 65_535)])
        return jpeg[:at + 5] + struct.pack(">HH", h, w) + jpeg[at + 9:], ".jpg", f"JPEG SOF {w}x{h}"
    if roll == 5:
        data = bytearray(jpeg)
        for _ in range(rng.randrange(1, 40)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data), ".jpg", "bit rot"
    if roll == 6:
        header = b"BM" + struct.pack("<IHHI", 1000, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, rng.choice(
            [2 ** 31 - 1, 100_000, -5]), 100_000, 1, 24, 0, 0, 0, 0, 0, 0)
        return header + b"\x00" * 100, ".bmp", "BMP header huge"
    if roll == 7:
        return b"", ".jpg", "empty"
    buffer = io.BytesIO()
    Image.new("RGB", (30, 20), "blue").save(buffer, "TIFF")
    data = bytearray(buffer.getvalue())
    for _ in range(rng.randrange(1, 10)):
        data[rng.randrange(8, len(data))] = rng.randrange(256)
    return bytes(data), ".tif", "damaged TIFF"


def images_cases(folder: Path, out: Path) -> None:
    """Child: damaged photos through :func:`image_size` and :func:`load_image`: a result or ImageLoadError."""
    rss_before = max_rss()
    for i in range(CASES):
        rng = random.Random(f"{SEED}-image-{i}")
        data, suffix, description = _bad_image(rng)
        path = out / f"img{i}{suffix}"
        path.write_bytes(data)
        report(start=i, description=description)
        max_side = rng.choice([None, 256])
        for call, args in ((image_size, {}), (load_image, {"max_side": max_side})):
            try:
                call(path, **args)
            except ImageLoadError:
                pass
            except Exception as exc:  # noqa: BLE001
                report(failure=f"case {i} ({description}): {type(exc).__name__}: {exc}")
    report(rss_growth=max_rss() - rss_before)




def test_fuzz_images(tmp_path):
    fuzz_in_child("test_fuzz_images", "images_cases", SEED, tmp_path, tmp_path)
