"""Merge the embedded sample and the Label Studio labels into one dataset: ``cardamage prepare``.

Output (``prepare.out_dir``, replaced as a whole: built beside it, then renamed into place)::

    <train>/<annotation_file> + photos    VIA 2 JSON per split, readable by ``load_dataset``
    <val>/<annotation_file>   + photos    (split folders named data.train_splits[0], data.val_splits[0],
    <test>/<annotation_file>  + photos     data.test_splits[0])
    _masks/<split>/<photo stem>.png       class indices (0 background, i+1 for data.classes[i]);
                                          "_" keeps load_dataset from taking it for a split
    manifest.csv                          path, sha256, phash, split, width, height, n_instances, ...
    prepare_report.json                   duplicates, conflicting labels, split moves, reader issues
                                          (:mod:`cardamage.data.prepare_report`)

Photos are renamed ``<source>-<original path with / as ->`` (``sample-train-2.jpg``,
``labelled-photo.jpg``) so names never collide. The split is stable when photos are added: a
photo's side depends only on its duplicate group (exact and near duplicates, see
:mod:`cardamage.data.dedup`), never on the other photos, and a whole group is always on one side.
``prepare.split: keep``: sample photos keep their split (a group with any training photo goes to
train); photos only from Label Studio are hashed. ``hash``: every group is hashed: validation when
``int(sha256[:8], 16) % 100 < prepare.val_percent`` for the group's smallest sha256.

The fixed test split comes first and is never fed by new labels: a duplicate group is a test group
when one of its sample photos (Label Studio photos too with ``prepare.test_from_labelled``) has
``int(sha256[8:16], 16) % 100 < prepare.test_percent`` (a hash independent of the validation one).
Its eligible photos go to the test split whatever their folder; a Label Studio photo that
duplicates a test photo is left out (listed under ``test_split.held_out``), so adding labels never
moves, adds or relabels a test photo and the numbers compare across weeks. Every byte written
depends only on the inputs, so an unchanged input gives an unchanged output for DVC.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from cardamage.config import Params
from cardamage.data.annotations import Dataset, ImageRecord, category_mapper
from cardamage.data.dedup import duplicate_groups, find_duplicates, hash_files
from cardamage.data.prepare_report import build_report
from cardamage.errors import BadParameterError
from cardamage.fileio import write_json, write_text

log = logging.getLogger(__name__)

#: The file ``cardamage pull`` writes in ``labelstudio.labelled_dir`` (photos under ``images/``).
PULLED_ANNOTATIONS = "via_region_data.json"
MASKS_DIR = "_masks"
MANIFEST_COLUMNS = ("path", "sha256", "phash", "split", "width", "height", "n_instances", "source", "origin",
                    "group", "mask")


@dataclass
class Item:
    """One labelled photo on its way into the prepared dataset.

    Attributes:
        record: the labels (paths relative to the source folder).
        file: the photo on disk; source: ``"sample"`` or ``"labelled"``.
        kept_split: ``"train"``/``"val"`` from the sample's folders, ``None`` for Label Studio photos;
            ``"test"`` once :func:`hold_out_test` put it in the fixed test split.
        sha256, phash: file and perceptual hashes; split: the side chosen; group: group id.
    """

    record: ImageRecord
    file: Path
    source: str
    kept_split: str | None = None
    sha256: str = ""
    phash: str | None = None
    split: str = ""
    group: str = ""

    @property
    def origin(self) -> str:
        """``<source>/<path in the source folder>``, e.g. ``sample/train/2.jpg``."""
        return f"{self.source}/{self.record.path}"

    @property
    def name(self) -> str:
        """File name in the prepared dataset, e.g. ``sample-train-2.jpg``."""
        return f"{self.source}-{self.record.path.replace('/', '-')}"


@dataclass
class PrepareResult:
    """What :func:`prepare` wrote: manifest rows and the report (also in ``prepare_report.json``)."""

    out_dir: Path
    rows: list[dict[str, Any]]
    report: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- reading

def collect(params: Params) -> tuple[list[Item], list[str]]:
    """Labelled photos of the sample splits and of ``labelstudio.labelled_dir`` (if present), and reader issues."""
    from cardamage.data.dataset import load_dataset

    data = params.data
    kind = {s: "train" for s in data.train_splits} | {s: "val" for s in data.val_splits}
    sample = load_dataset(data.root, data.annotation_file, data.category_key, splits=list(kind))
    items = [Item(r, Path(sample.root) / r.path, "sample", kind.get(r.split or ""))
             for r in sample.images if r.labelled]
    issues = list(sample.meta.get("issues", []))
    labelled_dir = Path(params.labelstudio.labelled_dir)
    if (labelled_dir / PULLED_ANNOTATIONS).is_file():
        pulled = load_dataset(labelled_dir / PULLED_ANNOTATIONS, category_key=data.category_key)
        items += [Item(r, Path(pulled.root) / r.path, "labelled") for r in pulled.images if r.labelled]
        issues += list(pulled.meta.get("issues", []))
    else:
        log.info("%s: no Label Studio labels yet", labelled_dir)
    return items, issues


def fill_hashes(items: Sequence[Item]) -> list[Item]:
    """Set ``sha256`` and ``phash``; photos that cannot be decoded are dropped with a warning."""
    shas, phashes = hash_files(i.file for i in items)
    kept = []
    for item, sha, ph in zip(items, shas, phashes, strict=True):
        item.sha256, item.phash = sha, ph
        if ph is None:
            log.warning("%s: unreadable photo left out of the prepared dataset", item.origin)
        else:
            kept.append(item)
    return kept


# ----------------------------------------------------------------------------- duplicates

def label_signature(record: ImageRecord) -> tuple:
    """Order-free fingerprint of a record's labels (categories and polygons rounded to 0.1 px)."""
    shapes = []
    for inst in record.instances:
        polys = tuple(sorted(tuple((round(x, 1), round(y, 1)) for x, y in p) for p in inst.polygons))
        shapes.append((inst.category, polys, str(inst.rle["counts"]) if inst.rle else ""))
    return tuple(sorted(shapes))


def _preference(item: Item) -> tuple:
    """Which copy of byte-identical photos to keep: Label Studio first, then training, then path order."""
    return (item.source != "labelled", item.kept_split != "train", item.origin)


def drop_exact_duplicates(items: list[Item], drop: bool = True) -> tuple[list[Item], list[dict[str, Any]]]:
    """Keep one copy per sha256 (when ``drop``) and list every exact-duplicate set.

    Returns:
        The kept items and one entry per duplicate set: ``{"sha256", "photos", "kept",
        "labels_differ"}``; ``labels_differ`` flags copies annotated differently.
    """
    by_sha: dict[str, list[Item]] = {}
    for item in items:
        by_sha.setdefault(item.sha256, []).append(item)
    kept, report = [], []
    for sha, copies in by_sha.items():
        copies = sorted(copies, key=_preference)
        if len(copies) > 1:
            differ = len({label_signature(c.record) for c in copies}) > 1
            report.append({"sha256": sha, "photos": [c.origin for c in copies],
                           "kept": [c.origin for c in (copies[:1] if drop else copies)], "labels_differ": differ})
            if differ:
                log.warning("byte-identical photos annotated differently: %s (kept %s)",
                            ", ".join(c.origin for c in copies), copies[0].origin if drop else "all")
        if drop:
            splits = {c.kept_split for c in copies}
            copies[0].kept_split = next((s for s in ("test", "train", "val") if s in splits), None)
        kept.extend(copies[:1] if drop else copies)
    return sorted(kept, key=lambda i: i.origin), sorted(report, key=lambda r: r["photos"])


def groups_of(items: Sequence[Item], max_distance: int) -> list[list[Item]]:
    """Connected groups of exact (same sha256) and near (dHash distance <= ``max_distance``) duplicates."""
    names = [i.origin for i in items]
    pairs = find_duplicates([i.sha256 for i in items], [i.phash for i in items], names, max_distance)
    by_name = {i.origin: i for i in items}
    grouped = [sorted((by_name[n] for n in g), key=lambda i: i.origin) for g in duplicate_groups(pairs)]
    seen = {i.origin for g in grouped for i in g}
    grouped += [[i] for i in items if i.origin not in seen]
    return sorted(grouped, key=lambda g: g[0].origin)


# ----------------------------------------------------------------------------- splits

def in_test_split(sha256: str, test_percent: int) -> bool:
    """``int(sha256[8:16], 16) % 100 < test_percent``: independent of :func:`hash_split`'s ``sha256[:8]``."""
    return int(sha256[8:16], 16) % 100 < test_percent


def hold_out_test(items: Sequence[Item], test_percent: int, from_labelled: bool = False,
                  max_distance: int = 6) -> tuple[list[Item], list[dict[str, Any]]]:
    """Mark the test split (``kept_split = "test"``: groups where an eligible photo, from the sample or any with
    ``from_labelled``, passes :func:`in_test_split`); return the items kept and one ``{"photo", "test_photos"}``
    per (Label Studio) photo of such a group left out."""
    if not 0 <= test_percent <= 100:
        raise BadParameterError(f"prepare.test_percent: expected 0-100, got {test_percent}")
    kept, held = [], []
    for group in groups_of(items, max_distance):
        eligible = [i for i in group if from_labelled or i.source != "labelled"]
        chosen = {id(i) for i in eligible}
        if not any(in_test_split(i.sha256, test_percent) for i in eligible):
            kept += group
            continue
        for item in group:
            if id(item) in chosen:
                item.kept_split = "test"
                kept.append(item)
            else:
                held.append({"photo": item.origin, "test_photos": [i.origin for i in eligible]})
                log.warning("%s duplicates test photo(s) %s: left out (the test split takes no new labels; "
                            "prepare.test_from_labelled: true to allow it)", item.origin,
                            ", ".join(i.origin for i in eligible))
    return sorted(kept, key=lambda i: i.origin), held


def hash_split(sha256: str, val_percent: int) -> str:
    """``"val"`` when ``int(sha256[:8], 16) % 100 < val_percent``, else ``"train"`` (stable, uniform)."""
    return "val" if int(sha256[:8], 16) % 100 < val_percent else "train"


def assign_splits(groups: Sequence[Sequence[Item]], mode: str = "keep", val_percent: int = 15) -> list[dict[str, Any]]:
    """Set ``split`` and ``group`` on every item; return the groups whose kept splits had to change.

    A group marked by :func:`hold_out_test` stays in test (both modes). ``keep``: a group with any
    sample training photo goes to train, else to val if it has a sample validation photo, else by
    hash. ``hash``: every other group by the hash of its smallest sha256.
    """
    if mode not in ("keep", "hash"):
        raise BadParameterError(f"prepare.split: expected keep or hash, got {mode!r}")
    if not 0 <= val_percent <= 100:
        raise BadParameterError(f"prepare.val_percent: expected 0-100, got {val_percent}")
    moved = []
    for group in groups:
        rep = min(i.sha256 for i in group)
        kept = {i.kept_split for i in group if i.kept_split}
        if "test" in kept:
            split = "test"
        elif mode == "keep" and kept:
            split = "train" if "train" in kept else "val"
        else:
            split = hash_split(rep, val_percent)
        for item in group:
            item.split, item.group = split, rep[:12]
        changed = [i.origin for i in group if i.kept_split and i.kept_split != split]
        if changed:
            moved.append({"group": rep[:12], "split": split, "moved": changed,
                          "members": [i.origin for i in group]})
    return moved


# ----------------------------------------------------------------------------- writing

def png_bytes(mask: np.ndarray) -> bytes:
    """Deterministic PNG (mode L) of a ``uint8 [H, W]`` class-index mask."""
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8), mode="L").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def write_split(items: Sequence[Item], out: Path, folder: str, params: Params) -> list[dict[str, Any]]:
    """Copy the photos of one split, write its VIA file and masks; return its manifest rows."""
    from cardamage.data.formats import write_annotations
    from cardamage.data.masks import class_mask
    from cardamage.data.reviewed import mask_unreviewed

    data = params.data
    category_of = category_mapper(data.classes, data.class_map)
    (out / folder).mkdir(parents=True, exist_ok=True)
    (out / MASKS_DIR / folder).mkdir(parents=True, exist_ok=True)
    records, rows = [], []
    for item in sorted(items, key=lambda i: i.name):
        r = item.record
        shutil.copyfile(item.file, out / folder / item.name)
        records.append(ImageRecord(path=item.name, width=r.width, height=r.height, sha256=item.sha256,
                                   split=folder, source=item.source, instances=r.instances,
                                   attributes=r.attributes, file_size=item.file.stat().st_size,
                                   reviewed=r.reviewed))
        mask_rel = f"{MASKS_DIR}/{folder}/{PurePosixPath(item.name).stem}.png"
        mask = mask_unreviewed(class_mask(r.instances, data.classes, int(r.height), int(r.width), category_of),
                               r.reviewed)
        (out / mask_rel).write_bytes(png_bytes(mask))
        rows.append({"path": f"{folder}/{item.name}", "sha256": item.sha256, "phash": item.phash,
                     "split": folder, "width": r.width, "height": r.height,
                     "n_instances": sum(1 for i in r.instances if category_of(i)), "source": item.source,
                     "origin": item.origin, "group": item.group, "mask": mask_rel})
    dataset = Dataset(images=records, categories=sorted({i.category for r in records for i in r.instances}),
                      root=out / folder)
    write_annotations(dataset, out / folder / data.annotation_file.format(split=folder), "via",
                      category_key=data.category_key)
    return rows


def manifest_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The manifest as CSV text (rows sorted by path, ``\\n`` line ends)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: r["path"]))
    return buf.getvalue()


def split_folders(params: Params) -> dict[str, str]:
    """Folder name of each side: ``{"train": data.train_splits[0], "val": data.val_splits[0], "test": ...}``."""
    d = params.data
    return {"train": d.train_splits[0] if d.train_splits else "train",
            "val": d.val_splits[0] if d.val_splits else "val",
            "test": d.test_splits[0] if d.test_splits else "test"}


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace the folder ``out`` by ``tmp`` (two renames; the old folder is removed afterwards)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- the stage

def exclude_flagged(items: Sequence[Item], params: Params) -> tuple[list[Item], list[str]]:
    """With ``prepare.exclude_flagged``: the items without the Label Studio photos the last label audit
    flagged (``labelstudio.audit.csv``, by sha256), and the origins left out."""
    if not params.prepare.exclude_flagged:
        return list(items), []
    from cardamage.labelling.audit import flagged_ids

    flagged = flagged_ids(params)
    out = [i.origin for i in items if i.source == "labelled" and i.sha256 in flagged]
    for origin in out:
        log.info("left out: %s (flagged by the label audit; `cardamage labelstudio review` sends it back)", origin)
    return [i for i in items if not (i.source == "labelled" and i.sha256 in flagged)], sorted(out)


def prepare(params: Params, out_dir: str | os.PathLike | None = None) -> PrepareResult:
    """Build the prepared dataset (see the module docstring) and return its manifest and report."""
    p = params.prepare
    out = Path(out_dir or p.out_dir)
    items, issues = collect(params)
    items = fill_hashes(items)
    items, flagged_out = exclude_flagged(items, params)
    items, held = hold_out_test(items, p.test_percent, p.test_from_labelled, params.data.near_duplicate_distance)
    items, exact = drop_exact_duplicates(items, p.drop_exact_duplicates)
    groups = groups_of(items, params.data.near_duplicate_distance)
    moved = assign_splits(groups, p.split, p.val_percent)
    folders = split_folders(params)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)
    try:
        rows = []
        for side, folder in folders.items():
            rows += write_split([i for i in items if i.split == side], tmp, folder, params)
        report = build_report(rows, exact, groups, moved, issues, params)
        report["test_split"] = {"percent": p.test_percent, "from_labelled": p.test_from_labelled, "held_out": held}
        report["flagged_out"] = flagged_out
        write_text(tmp / "manifest.csv", manifest_csv(rows))
        write_json(tmp / "prepare_report.json", report)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PrepareResult(out, sorted(rows, key=lambda r: r["path"]), report)
