"""``cardamage show``: draw annotations over images into PNG files (one per image or a grid)."""

from __future__ import annotations

import colorsys
import logging
import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from cardamage.config import DataParams
from cardamage.data.annotations import Dataset, ImageRecord
from cardamage.data.images import ImageLoadError, open_image
from cardamage.fileio import atomic_path

log = logging.getLogger(__name__)


def category_colours(categories: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """Evenly spaced, saturated RGB colours, one per category."""
    n = max(len(categories), 1)
    out = {}
    for i, cat in enumerate(categories):
        r, g, b = colorsys.hsv_to_rgb(i / n, 0.9, 1.0)
        out[cat] = (int(r * 255), int(g * 255), int(b * 255))
    return out


def draw_record(image: Image.Image, record: ImageRecord, colours: dict[str, tuple[int, int, int]],
                alpha: int = 90) -> Image.Image:
    """Return a copy of ``image`` with every polygon of ``record`` filled (translucent) and outlined."""
    base = image.convert("RGBA")
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    width = max(2, round(max(base.size) / 300))
    for inst in record.instances:
        colour = colours.get(inst.category, (255, 255, 0))
        for poly in inst.polygons:
            if len(poly) < 3:
                continue
            draw.polygon(poly, fill=colour + (alpha,), outline=colour + (255,), width=width)
        box = inst.bbox()
        if box:
            draw.text((box[0] + 3, box[1] + 3), inst.category, fill=colour + (255,))
    return Image.alpha_composite(base, overlay).convert("RGB")


def _save_png(img: Image.Image, path: Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        img.save(tmp, format="PNG")
    return path


def _grid(tiles: list[Image.Image], tile: int = 256) -> Image.Image:
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    sheet = Image.new("RGB", (cols * tile, rows * tile), (32, 32, 32))
    for k, img in enumerate(tiles):
        thumb = img.copy()
        thumb.thumbnail((tile, tile))
        sheet.paste(thumb, ((k % cols) * tile, (k // cols) * tile))
    return sheet


def render(dataset: Dataset, out_dir: str | Path, grid: bool = False,
           limit: int | None = None) -> list[Path]:
    """Draw each labelled image of ``dataset`` into ``out_dir``; unreadable images are skipped with a warning.

    Returns:
        The PNG files written (one per image, or one ``grid.png``).
    """
    out = Path(out_dir)
    colours = category_colours(dataset.ensure_categories())
    records = [r for r in dataset.images if r.labelled][:limit]
    root = Path(dataset.root or ".")
    written: list[Path] = []
    tiles: list[Image.Image] = []
    for rec in records:
        try:
            drawn = draw_record(open_image(root / rec.path), rec, colours)
        except ImageLoadError as exc:
            log.warning("skipped: %s", exc)
            continue
        if grid:
            tiles.append(drawn)
        else:
            written.append(_save_png(drawn, out / (rec.path.replace("/", "__").rsplit(".", 1)[0] + ".png")))
    if grid and tiles:
        written.append(_save_png(_grid(tiles), out / "grid.png"))
    return written


def show_dataset(path: str | Path, out_dir: str | Path, data: DataParams, grid: bool = False,
                 limit: int | None = None) -> list[Path]:
    """Open a dataset folder or annotation file and :func:`render` it."""
    from cardamage.data.stats import open_dataset

    return render(open_dataset(path, data), out_dir, grid=grid, limit=limit)
