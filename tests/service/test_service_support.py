"""Helpers of the service tests (no tests here): a tiny model, a real uvicorn server, test photos.

The models are randomly initialised 64 px MobileNetV3-small DeepLabV3+ networks saved with
``save_model``: enough for API tests (shapes, files, versions), not for damage accuracy.
"""

from __future__ import annotations

import contextlib
import io
import socket
import struct
import threading
import time
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[2]
SAMPLE_TEST = REPO / "data" / "sample" / "test"
PARTS = ["headlamp", "door", "front_bumper", "hood", "rear_bumper"]


def tiny_model(path: Path, classes: list[str]) -> Path:
    """Save a randomly initialised 64 px model (a new weights digest, so a new version, each call)."""
    from cardamage.config import ModelParams
    from cardamage.model.heads import build_model
    from cardamage.model.io import ModelInfo, save_model

    params = ModelParams(backbone="mobilenetv3_small", width=0.5, input_size=64, head_filters=16, projection_filters=8)
    save_model(build_model(params, len(classes) + 1), path, ModelInfo(classes=classes, input_size=64))
    return path


_CACHE: dict[str, Path] = {}


def cached_model(classes: list[str]) -> Path:
    """A tiny model built once per test session for these classes (copy it before changing the file)."""
    import atexit
    import shutil
    import tempfile

    key = ",".join(classes)
    if key not in _CACHE:
        folder = Path(tempfile.mkdtemp(prefix="cardamage-service-models-"))
        atexit.register(shutil.rmtree, folder, True)
        _CACHE[key] = tiny_model(folder / f"model{len(_CACHE)}.keras", classes)
    return _CACHE[key]


def service_params(tmp: Path, model: Path, part_model: Path | None = None, **serve: object):
    """Project params with the service writing under ``tmp`` and a low damage threshold (a random model)."""
    from cardamage.config import load_params

    params = load_params(REPO / "params.yaml")
    params.serve.model_path, params.serve.part_model_path = str(model), str(part_model) if part_model else None
    params.predict.part_model_path = None
    params.serve.incoming_dir, params.serve.splash_dir = str(tmp / "incoming"), str(tmp / "splash")
    params.serve.reload_check_s = 0
    params.data.classes, params.model.input_size = ["damage"], 64  # what the tiny damage model is
    params.predict.threshold = 0.3
    for key, value in serve.items():
        setattr(params.serve, key, value)
    return params


@contextlib.contextmanager
def running(app, timeout_s: float = 120.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def jpeg_bytes(img: Image.Image | np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of a PIL image or an RGB array."""
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def car_photo(name: str = "11.jpg", size: tuple[int, int] = (480, 360)) -> Image.Image:
    """A real sample photo (car-damage-via, MIT), resized to keep the tests quick."""
    return Image.open(SAMPLE_TEST / name).convert("RGB").resize(size)


def screenshot(size: tuple[int, int] = (800, 600)) -> Image.Image:
    """A screenshot-like picture: text lines on flat colours."""
    img = Image.new("RGB", size, (245, 245, 245))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, size[0], 50], fill=(30, 90, 200))
    for i in range(20):
        draw.text((20, 70 + 24 * i), f"Claim form, field {i}: lorem ipsum dolor sit amet", fill=(20, 20, 20))
    return img


def textured_png(width: int, height: int, block: int = 16, seed: int = 0) -> bytes:
    """A ``width`` x ``height`` RGB PNG of a few hundred kB that passes the quality gate.

    Pixel ``(r, c)`` is ``rows[r] + cols[c]`` (random per ``block`` px, 0-127 each): every row differs
    from the one above by one constant, so with the PNG "Up" filter each row is a run that deflate
    packs into a few bytes. Written row by row: no full-size array is made here (8000x8000: 0.2 MB, 1 s).
    """
    rng = np.random.default_rng(seed)
    cols = np.repeat(rng.integers(0, 128, (width // block + 1, 3), dtype=np.uint8), block, axis=0)[:width]
    rows = np.repeat(rng.integers(0, 128, (height // block + 1, 3), dtype=np.uint8), block, axis=0)[:height]
    comp = zlib.compressobj(6)
    parts = [comp.compress(b"\0" + (cols + rows[0]).tobytes())]
    same = b"\2" + bytes(3 * width)
    for r in range(1, height):
        step = rows[r] - rows[r - 1]
        parts.append(comp.compress(same if not step.any() else b"\2" + np.tile(step, width).tobytes()))
    parts.append(comp.flush())

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def corrupt_model(source: Path, target: Path, how: str) -> Path:
    """Write a broken copy of a ``.keras`` file: ``bad_crc`` (64 zeroed bytes inside the weights member,
    the zip directory intact) or ``truncated`` (the first half of the file, as a copy cut short)."""
    data = bytearray(Path(source).read_bytes())
    if how == "bad_crc":
        with zipfile.ZipFile(source) as zf:
            member = next(i for i in zf.infolist() if i.filename.endswith(".h5"))
        name_len, extra_len = struct.unpack("<HH", data[member.header_offset + 26:member.header_offset + 30])
        start = member.header_offset + 30 + name_len + extra_len  # the member's bytes, after its local header
        middle = start + member.compress_size // 2
        data[middle:middle + 64] = bytes(64)
    elif how == "truncated":
        data = data[: len(data) // 2]
    else:
        raise ValueError(how)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(bytes(data))
    tmp.replace(target)
    return target
