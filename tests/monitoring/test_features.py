"""Code tier: per-photo drift features (exposure, focus, encoding, EXIF, colour histogram)."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from cardamage.monitoring.features import (
    FEATURE_COLUMNS,
    colour_histogram,
    downsize,
    estimate_jpeg_quality,
    file_info,
    histogram_columns,
    measure_folder,
    measure_photos,
    photo_features,
    pixel_stats,
)


def _photo(seed: int = 0, size: tuple[int, int] = (96, 64)) -> np.ndarray:
    """A textured RGB test picture ``uint8 [H, W, 3]`` (smooth gradients plus noise)."""
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], axis=-1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("quality", [10, 35, 50, 75, 90, 95, 100])
def test_jpeg_quality_estimate_matches_the_encoder_setting(tmp_path, quality):
    path = tmp_path / "q.jpg"
    Image.fromarray(_photo()).save(path, quality=quality)
    assert file_info(path)["jpeg_quality"] == quality


def test_jpeg_quality_is_nan_for_png_and_none_without_tables(tmp_path):
    path = tmp_path / "p.png"
    Image.fromarray(_photo()).save(path)
    assert math.isnan(file_info(path)["jpeg_quality"])
    assert estimate_jpeg_quality({}) is None


def test_exif_orientation_flag_and_rotated_size(tmp_path):
    img = Image.fromarray(_photo(size=(96, 64)))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=90)
    img.save(tmp_path / "plain.jpg", quality=90)
    rot, plain = photo_features(tmp_path / "rot.jpg"), photo_features(tmp_path / "plain.jpg")
    assert rot["exif_orientation"] == 1 and plain["exif_orientation"] == 0
    assert (rot["width"], rot["height"]) == (64, 96) and (plain["width"], plain["height"]) == (96, 64)
    assert rot["aspect_ratio"] == pytest.approx(64 / 96)


def test_dark_and_blurred_pictures_move_the_right_features():
    photo = _photo(size=(256, 192))
    base = pixel_stats(photo)
    dark = pixel_stats((photo * 0.3).astype(np.uint8))
    blurred = pixel_stats(cv2.GaussianBlur(photo, (0, 0), 3))
    assert dark["brightness"] < 0.4 * base["brightness"] and dark["contrast"] < base["contrast"]
    assert blurred["sharpness"] < 0.2 * base["sharpness"]
    assert blurred["brightness"] == pytest.approx(base["brightness"], rel=0.02)
    assert 0 <= base["saturation"] <= 1 and 0 <= base["edge_density"] <= 1


def test_colour_histogram_sums_to_one_and_checks_bins():
    hist = colour_histogram(_photo(), bins=4)
    assert hist.shape == (64,) and hist.sum() == pytest.approx(1.0) and (hist >= 0).all()
    black = colour_histogram(np.zeros((8, 8, 3), np.uint8), bins=2)
    assert black[0] == 1.0 and black[1:].sum() == 0
    with pytest.raises(ValueError, match="bins"):
        colour_histogram(_photo(), bins=0)


def test_downsize_keeps_small_pictures_and_caps_the_longer_side():
    photo = _photo(size=(200, 100))
    assert downsize(photo, 512) is photo
    assert downsize(photo, 50).shape[:2] == (25, 50)


def test_measure_photos_skips_unreadable_files_and_names_rows(tmp_path, caplog):
    Image.fromarray(_photo(1)).save(tmp_path / "a.jpg", quality=80)
    Image.fromarray(_photo(2)).save(tmp_path / "b.png")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    table = measure_folder(tmp_path, bins=2)
    assert list(table["path"]) == ["a.jpg", "b.png"]
    assert list(table.columns[:2]) == ["path", "sha256"] and set(FEATURE_COLUMNS) <= set(table.columns)
    assert histogram_columns(table) == [f"hist_{i:03d}" for i in range(8)]
    assert table.loc[0, "file_kb"] == pytest.approx((tmp_path / "a.jpg").stat().st_size / 1024)
    assert "broken.jpg" in caplog.text
    empty = measure_photos([], bins=2)
    assert empty.empty and "brightness" in empty.columns


def test_measure_folder_requires_a_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        measure_folder(tmp_path / "missing")


def test_sample_photos_have_plausible_values(sample: Path):
    row = photo_features(sample / "train" / "2.jpg")
    assert row["jpeg_quality"] == 75 and row["width"] == row["height"] == 1024
    assert 20 < row["brightness"] < 235 and row["sharpness"] > 10
