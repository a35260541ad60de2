"""Code tier: the photo quality gate (dark, blurred, small, not a photo) on real and made-up pictures."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from test_service_support import car_photo, screenshot

from cardamage.config import ServeParams
from cardamage.monitoring.features import downsize, pixel_stats
from cardamage.service.quality import check_photo, colour_measures, measure

P = ServeParams()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(car_photo("12.jpg", (640, 480)))


def codes(rgb: np.ndarray) -> list[str]:
    return [p["code"] for p in check_photo(rgb, P).problems]


@pytest.mark.parametrize("name", ["11.jpg", "28.jpg", "45.jpg", "60.jpg", "67.jpg", "72.jpg"])
def test_real_car_photos_pass(name):
    verdict = check_photo(np.asarray(car_photo(name, (1024, 1024))), P)
    assert verdict.ok, verdict.problems
    assert verdict.to_dict()["problems"] == []


def test_measures_are_the_drift_features(photo):
    """Brightness, contrast and sharpness equal cardamage.monitoring.features' values at the drift size."""
    m = measure(photo, max_side=512)
    stats = pixel_stats(downsize(photo, 512))
    assert (m["width"], m["height"]) == (640, 480)
    for key in ("brightness", "contrast", "sharpness"):
        assert m[key] == pytest.approx(stats[key])


def test_dark_photo_is_refused_with_advice(photo):
    verdict = check_photo((photo * 0.3).astype(np.uint8), P)
    assert not verdict.ok and [p["code"] for p in verdict.problems] == ["too_dark"]
    problem = verdict.problems[0]
    assert "too dark" in problem["message"] and problem["value"] < problem["limit"] == P.min_brightness


def test_overexposed_photo(photo):
    bright = np.clip(photo.astype(np.int32) + 190, 0, 255).astype(np.uint8)
    assert "too_bright" in codes(bright)


def test_blurred_photo(photo):
    blurred = cv2.GaussianBlur(photo, (0, 0), 6)
    assert codes(blurred) == ["too_blurred"]
    assert "blurred" in check_photo(blurred, P).problems[0]["message"]


def test_small_photo_names_its_size(photo):
    verdict = check_photo(cv2.resize(photo, (200, 150), interpolation=cv2.INTER_AREA), P)
    assert [p["code"] for p in verdict.problems] == ["too_small"]
    assert "200x150" in verdict.problems[0]["message"]


def test_uniform_picture_is_not_a_photo():
    grey = np.full((600, 800, 3), 128, np.uint8)
    assert codes(grey) == ["not_a_photo_uniform"]
    assert codes(np.zeros((600, 800, 3), np.uint8)) == ["too_dark"]  # a black picture: the advice is light


def test_screenshot_is_not_a_photo():
    assert codes(np.asarray(screenshot())) == ["not_a_photo_screenshot"]


def test_colour_measures():
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[:5] = (255, 0, 0)
    assert colour_measures(rgb) == {"colours": 2.0, "flat_share": 1.0}
    noise = np.random.default_rng(0).integers(0, 256, (100, 100, 3), dtype=np.uint8)
    m = colour_measures(noise)
    assert m["colours"] > 9000 and m["flat_share"] < 0.01


def test_colour_measures_match_a_plain_count():
    """The sorted-run count equals np.unique's, on noise, flat areas, a strided view and one pixel."""
    rng = np.random.default_rng(1)
    cases = [rng.integers(0, 8, (64, 48, 3), dtype=np.uint8), rng.integers(0, 256, (33, 17, 3), dtype=np.uint8),
             rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)[::2, ::3], np.full((1, 1, 3), 7, np.uint8)]
    for rgb in cases:
        _, counts = np.unique(rgb.reshape(-1, 3), axis=0, return_counts=True)
        top = np.sort(counts)[-16:].sum() / counts.sum()
        m = colour_measures(rgb)
        assert m["colours"] == counts.size and m["flat_share"] == pytest.approx(top)
