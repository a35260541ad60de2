"""Helpers of the service tests (no tests here): a tiny model, a real uvicorn server, test photos.

The models are randomly initialised 64 px MobileNetV3-small DeepLabV3+ networks saved with
``save_model``: enough for API tests (shapes, files, versions), not for damage accuracy.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
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
