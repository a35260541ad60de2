"""Model tier: the service's pixel budgets and working size keep big photos from exhausting memory.

A 0.2 MB PNG can hold 49 million pixels; decoded at full size it cost gigabytes (the photo, the
damage and part probabilities on its pixel grid). Photos are now decoded to at most
``serve.max_side`` px, the request's header pixels are counted against ``serve.max_request_pixels``
before anything is decoded, and a photo over ``data.max_pixels`` is refused with the limit named.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageFile
from test_service_support import PARTS, cached_model, car_photo, jpeg_bytes, running, service_params, textured_png

from cardamage.config import ServeParams
from cardamage.data.images import load_image
from cardamage.service.quality import measure
from cardamage.service.uploads import Upload, decode_all

pytestmark = pytest.mark.slow

#: Peak memory one 7000x7000 photo may add to the server process (MB); it was ~2,900 MB at full size.
MAX_PEAK_MB = 600


@pytest.fixture(scope="module")
def big_png() -> bytes:
    """49 Mpx (just under data.max_pixels' 50 Mpx default) in about 170 kB."""
    return textured_png(7000, 7000)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server with a damage and a part model and the default limits (2 MB request body)."""
    from cardamage.service.app import create_app

    tmp = tmp_path_factory.mktemp("limits")
    params = service_params(tmp, cached_model(["damage"]), cached_model(PARTS), max_upload_mb=2.0)
    with running(create_app(params)) as url, httpx.Client(base_url=url, timeout=300) as client:
        warm = client.post("/v1/assess", files=[("photos", ("w.jpg", jpeg_bytes(car_photo()), "image/jpeg"))])
        assert warm.status_code == 200, warm.text  # TensorFlow's first call is not what is measured
        yield {"client": client, "params": params, "tmp": tmp}


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


@contextlib.contextmanager
def peak_rss_growth() -> Iterator[dict[str, float]]:
    """``{"mb": ...}``: how far this process's peak RSS rose above its RSS at the start (MB).

    Resets the kernel's high-water mark (``/proc/self/clear_refs``), so earlier tests do not count.
    """
    with contextlib.suppress(OSError, AttributeError):  # hand freed heap back, so it is not reused unseen
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pytest.skip("no /proc/self/clear_refs here (Linux only): peak memory cannot be measured")
    out = {"mb": 0.0}
    before = _status_mb("VmRSS")
    yield out
    out["mb"] = _status_mb("VmHWM") - before


def post(client: httpx.Client, *files: tuple[str, bytes, str]) -> httpx.Response:
    return client.post("/v1/assess", files=[("photos", f) for f in files])


def test_a_big_cheap_png_is_assessed_in_bounded_memory(server, big_png):
    with peak_rss_growth() as peak:
        resp = post(server["client"], ("big.png", big_png, "image/png"))
    assert resp.status_code == 200, resp.text
    assert peak["mb"] < MAX_PEAK_MB, f"one 7000x7000 photo raised the peak RSS by {peak['mb']:.0f} MB"
    (photo,) = resp.json()["photos"]
    assert photo["assessed"] and photo["quality"]["ok"], photo["quality"]
    assert (photo["width"], photo["height"]) == (7000, 7000)  # the photo's own size, not the working size
    assert photo["quality"]["measures"]["width"] == 7000
    for inst in photo["instances"]:  # coordinates are on the uploaded photo's pixel grid
        x, y, w, h = inst["bbox"]
        assert min(x, y) >= 0 and x + w <= 7000 and y + h <= 7000
        assert all(0 <= px <= 7000 and 0 <= py <= 7000 for poly in inst["polygons"] for px, py in poly)
    splash = Image.open(io.BytesIO(server["client"].get(photo["splash_url"]).content))
    assert max(splash.size) <= server["params"].serve.max_side
    sha = photo["sha256"]
    record = json.loads((server["tmp"] / "incoming" / f"{sha}.json").read_text())
    assert (record["width"], record["height"]) == (7000, 7000)  # the pool keeps the original photo's grid


def test_too_many_pixels_in_one_request_is_a_413_naming_the_limit(server, big_png):
    limit = server["params"].serve.max_request_pixels
    assert 2 * 7000 * 7000 <= limit < 3 * 7000 * 7000  # the defaults: two fit, three do not
    files = [(f"p{i}.png", big_png, "image/png") for i in range(3)]
    stored = sorted((server["tmp"] / "incoming").glob("*"))
    decoded = []
    real_load = ImageFile.ImageFile.load
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ImageFile.ImageFile, "load", lambda img: decoded.append(img.size) or real_load(img))
        resp = post(server["client"], *files)
        refused_decodes = list(decoded)
        assert post(server["client"], ("small.jpg", jpeg_bytes(car_photo()), "image/jpeg")).status_code == 200
    assert decoded, "the decode counter sees a decode"
    assert resp.status_code == 413, resp.text[:300]
    error = resp.json()["error"]
    assert error["code"] == "too_many_pixels" and error["limit"] == limit
    assert f"{limit:,}" in error["message"] and "serve.max_request_pixels" in error["message"]
    assert [f["pixels"] for f in error["files"]] == [49_000_000] * 3
    assert refused_decodes == [], "refused from the headers: no photo may be decoded"
    assert sorted((server["tmp"] / "incoming").glob("*")) == stored


def test_a_photo_over_data_max_pixels_is_a_413_naming_the_limit(server):
    resp = post(server["client"], ("ok.jpg", jpeg_bytes(car_photo()), "image/jpeg"),
                ("huge.png", textured_png(8000, 8000), "image/png"))
    assert resp.status_code == 413, resp.text[:300]
    error = resp.json()["error"]
    assert error["code"] == "too_many_pixels"
    (problem,) = error["files"]
    assert problem["filename"] == "huge.png" and problem["code"] == "too_many_pixels"
    assert "50,000,000" in problem["message"] and "data.max_pixels" in problem["message"]
    assert "8000x8000" in problem["message"]


def test_the_size_check_uses_the_original_photo(server):
    """A 3000x400 panorama is 1024x137 at the working size: the gate must still see 400 px, not 137."""
    wide = np.asarray(car_photo("45.jpg", (3000, 400)))
    resp = post(server["client"], ("wide.jpg", jpeg_bytes(wide), "image/jpeg"))
    assert resp.status_code == 200, resp.text
    (photo,) = resp.json()["photos"]
    assert photo["quality"]["ok"], photo["quality"]["problems"]
    assert (photo["width"], photo["height"]) == (3000, 400)


@pytest.mark.parametrize("name", ["11.jpg", "45.jpg", "72.jpg"])
def test_gate_measures_at_the_working_size_match_the_full_photo(tmp_path, name):
    """The gate's measures of a 4000x3000 JPEG decoded to serve.max_side are those of the full decode."""
    path = tmp_path / "big.jpg"
    path.write_bytes(jpeg_bytes(car_photo(name, (4000, 3000)), quality=92))
    full = measure(load_image(path), 512)
    small = measure(load_image(path, max_side=ServeParams().max_side), 512, size=(4000, 3000))
    assert (small["width"], small["height"]) == (4000, 3000)
    for key in ("brightness", "contrast"):
        assert small[key] == pytest.approx(full[key], rel=0.02), key
    assert small["sharpness"] == pytest.approx(full["sharpness"], rel=0.15)
    assert small["colours"] == pytest.approx(full["colours"], rel=0.15)


def test_an_exif_rotated_photo_keeps_its_upright_size(tmp_path):
    """Stored 2000x1000 with EXIF orientation 6 (turn 90 degrees): upright 1000x2000, decoded to 512x1024."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    car_photo("11.jpg", (2000, 1000)).save(buf, "JPEG", exif=exif.tobytes())
    (photo,) = decode_all([Upload("turned.jpg", "image/jpeg", buf.getvalue())], 10, 10**8, max_side=1024)
    assert (photo.width, photo.height) == (1000, 2000)
    assert photo.rgb.shape[:2] == (1024, 512) and photo.scale == pytest.approx((1000 / 512, 2000 / 1024))
