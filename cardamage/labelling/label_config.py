"""The Label Studio labelling configuration: generated from ``params.data.classes``, parsed, checked.

The interface has one image, one ``PolygonLabels`` tool with one label per damage class, and one
single-choice ``Choices`` block for image-level verdicts (:data:`NO_DAMAGE`, :data:`UNUSABLE`).
Code that reads or writes Label Studio results takes the tag names and label values from a parsed
config (:class:`LabelConfig`), never from constants, so a project with renamed tags still works.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import quoteattr

from cardamage.errors import BadInputError
from cardamage.labelling.files import read_text

log = logging.getLogger(__name__)

#: Image-level choice: the photo was checked and shows no damage (an image with no instances).
NO_DAMAGE = "no damage"
#: Image-level choice: the photo cannot be labelled (blurred, not a car, ...); it is left out of training.
UNUSABLE = "unusable photo"
CHOICES = (NO_DAMAGE, UNUSABLE)
#: Label colours, cycled in class order (distinct on a car photo, readable with the label text).
PALETTE = ("#e6194b", "#f58231", "#ffe119", "#3cb44b", "#42d4f4", "#4363d8", "#911eb4", "#f032e6")


class LabelConfigError(BadInputError):
    """A labelling configuration that cannot be used; the message says what is missing."""


@dataclass
class LabelConfig:
    """The parts of a labelling configuration that conversion needs.

    Attributes:
        polygon_from_name: ``name`` of the ``PolygonLabels`` tag (results' ``from_name``).
        to_name: ``name`` of the ``Image`` tag (results' ``to_name``).
        data_key: task data key of the image (``value="$image"`` -> ``"image"``).
        labels: polygon label values, in order.
        choices_from_name: ``name`` of the ``Choices`` tag, ``None`` if there is none.
        choices: choice values, in order.
    """

    polygon_from_name: str
    to_name: str
    data_key: str
    labels: list[str] = field(default_factory=list)
    choices_from_name: str | None = None
    choices: list[str] = field(default_factory=list)


def generate_label_config(classes: Sequence[str]) -> str:
    """The labelling configuration XML for ``classes`` (polygons) plus the image-level choices.

    Raises:
        LabelConfigError: no class, an empty or duplicate class name, or a class named like a choice.
    """
    names = [str(c) for c in classes]
    if not names:
        raise LabelConfigError("data.classes is empty: at least one damage class is needed")
    if any(not n.strip() for n in names) or len(set(names)) != len(names):
        raise LabelConfigError(f"data.classes must be distinct non-empty names, got {names}")
    clash = sorted(set(names) & set(CHOICES))
    if clash:
        raise LabelConfigError(f"data.classes: {clash} would clash with the image-level choices {list(CHOICES)}")
    labels = "\n".join(f'    <Label value={quoteattr(n)} background="{PALETTE[i % len(PALETTE)]}"/>'
                       for i, n in enumerate(names))
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in CHOICES)
    return (
        "<View>\n"
        '  <Header value="Outline every damaged area with a polygon, or choose one verdict below."/>\n'
        '  <Image name="image" value="$image" zoom="true" zoomControl="true"/>\n'
        '  <PolygonLabels name="label" toName="image" strokeWidth="2" opacity="0.4">\n'
        f"{labels}\n"
        "  </PolygonLabels>\n"
        '  <Choices name="choice" toName="image" choice="single" showInline="true">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>\n"
    )


def parse_label_config(xml: str) -> LabelConfig:
    """Read tag names, label values and choices from a labelling configuration.

    Raises:
        LabelConfigError: not XML, or no ``Image`` / ``PolygonLabels`` tag.
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise LabelConfigError(f"the labelling configuration is not valid XML ({exc})") from None
    image = next(iter(root.iter("Image")), None)
    polygons = next(iter(root.iter("PolygonLabels")), None)
    if image is None or polygons is None:
        raise LabelConfigError("the labelling configuration needs an <Image> and a <PolygonLabels> tag")
    choices = next((c for c in root.iter("Choices") if c.get("toName") == image.get("name")), None)
    return LabelConfig(
        polygon_from_name=polygons.get("name", ""),
        to_name=image.get("name", ""),
        data_key=image.get("value", "$image").lstrip("$"),
        labels=[lab.get("value", "") for lab in polygons.iter("Label")],
        choices_from_name=None if choices is None else choices.get("name"),
        choices=[] if choices is None else [c.get("value", "") for c in choices.iter("Choice")],
    )


def check_label_config(xml: str, classes: Sequence[str]) -> list[str]:
    """Problems that make ``xml`` disagree with ``classes``; an empty list when they agree.

    Checked: the polygon labels are exactly the classes (same order), and both image-level choices
    exist. Cosmetic differences (colours, header text) are not problems.
    """
    try:
        config = parse_label_config(xml)
    except LabelConfigError as exc:
        return [str(exc)]
    problems = []
    if config.labels != list(classes):
        problems.append(f"polygon labels {config.labels} differ from data.classes {list(classes)}")
    missing = [c for c in CHOICES if c not in config.choices]
    if missing:
        problems.append(f"image-level choices {missing} are missing")
    return problems


def check_label_config_file(path: str | Path, classes: Sequence[str]) -> list[str]:
    """:func:`check_label_config` for a file, plus "differs from the generated file" when it does.

    A missing or non-UTF-8 file is a problem too (the message names the file).
    """
    p = Path(path)
    if not p.is_file():
        return [f"{p}: not found (write it with `cardamage labelstudio config`)"]
    try:
        text = read_text(p, "the labelling configuration")
    except BadInputError as exc:  # not UTF-8: one problem, named
        return [str(exc)]
    problems = [f"{p}: {msg}" for msg in check_label_config(text, classes)]
    if not problems and text != generate_label_config(classes):
        problems.append(f"{p}: differs from the generated configuration (rewrite it with "
                        "`cardamage labelstudio config`)")
    return problems
