"""The image loader: EXIF orientation, colour modes, bombs, truncated and corrupt files."""


import numpy as np
import pytest
from conftest import SAMPLE
from PIL import Image

from cardamage.data.images import ImageLoadError, image_size, list_images, load_image, load_image_bytes


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def test_sample_photo_loads_as_rgb():
    arr = load_image(SAMPLE / "train" / "2.jpg")
    assert arr.shape == (1024, 1024, 3) and arr.dtype == np.uint8


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 20))  # blue strip on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW when displayed
    path = _save(img, tmp_path / "rot.jpg", exif=exif, quality=95)
    arr = load_image(path)
    assert arr.shape == (40, 20, 3)
    assert image_size(path) == (20, 40)
    assert arr[2, 10, 2] > 200 and arr[-3, 10, 0] > 200  # blue strip moved to the top


@pytest.mark.parametrize("mode, value", [("L", 128), ("RGBA", (10, 20, 30, 255)), ("CMYK", (0, 0, 0, 0)),
                                         ("I;16", 65535), ("P", 3)])
def test_colour_modes_become_rgb(tmp_path, mode, value):
    img = Image.new(mode, (8, 6), value)
    fmt = "TIFF" if mode in ("CMYK",) else "PNG"
    path = _save(img, tmp_path / f"img.{fmt.lower()}", format=fmt)
    arr = load_image(path)
    assert arr.shape == (6, 8, 3) and arr.dtype == np.uint8
    if mode == "I;16":
        assert arr.max() == 255


def test_transparent_pixels_become_white(tmp_path):
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    arr = load_image(_save(img, tmp_path / "t.png"))
    assert (arr == 255).all()


def test_truncated_jpeg_is_reported_by_name(tmp_path):
    data = (SAMPLE / "train" / "2.jpg").read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageLoadError, match="cut.jpg.*truncated"):
        load_image(path)


@pytest.mark.parametrize("content, reason", [(b"", "empty"), (b"not an image at all", "not a readable image")])
def test_empty_and_garbage_files(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageLoadError, match=reason):
        load_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "nope.jpg")


def test_decompression_bomb_is_refused(tmp_path):
    path = _save(Image.new("L", (2000, 2000)), tmp_path / "big.png")
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(path, max_pixels=1_000_000)


def test_bytes_decode_as_the_file_does_and_refuse_the_same(tmp_path):
    """The service decodes uploads from memory: the same pixels, the same refusals, named by the upload."""
    path = SAMPLE / "train" / "2.jpg"
    data = path.read_bytes()
    for side in (None, 300):
        assert np.array_equal(load_image_bytes(data, "2.jpg", max_side=side), load_image(path, max_side=side))
    big = _save(Image.new("L", (2000, 2000)), tmp_path / "big.png").read_bytes()
    for content, reason in [(b"", "up.jpg: empty"), (b"junk", "up.jpg: not a readable image"),
                            (data[: len(data) // 3], "up.jpg: truncated"), (big, "up.jpg.*decompression bomb")]:
        with pytest.raises(ImageLoadError, match=reason):
            load_image_bytes(content, "up.jpg", max_pixels=1_500_000)


def test_list_images_sorted():
    files = list_images(SAMPLE / "test")
    assert len(files) == 8 and files == sorted(files)


def test_image_size_of_a_png_reads_only_the_header(tmp_path):
    """Pillow's ``getexif()`` decodes a whole PNG (~120 MB here); ``image_size`` must not."""
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    path = tmp_path / "big.png"
    Image.new("RGB", (6000, 5000), (40, 80, 120)).save(path)  # 90 MB of pixels in a small file
    code = ("import resource, sys; from cardamage.data.images import image_size; "
            "r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; size = image_size(sys.argv[1]); "
            "print(size[0], size[1], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - r0)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout.split()
    assert out[:2] == ["6000", "5000"]
    assert int(out[2]) < 20_000, f"image_size grew the process by {int(out[2]) / 1000:.0f} MB"
