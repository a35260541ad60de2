"""Connected regions of predicted masks: the one region finder behind every region count.

Used by evaluation (:func:`count_regions` of a class mask), scoring (:func:`instance_counts` of
damage masks) and prediction (:func:`remove_small_regions`, :func:`find_regions` for polygons).
Regions are 8-connected; areas are in pixels of the mask given.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CONNECTIVITY = 8


@dataclass(frozen=True)
class Regions:
    """The connected regions of one binary mask.

    Attributes:
        labels: ``int32 [H, W]``; 0 outside every region, ``k`` (1..n) inside region ``k``.
        areas: ``int [n]`` pixels of region ``k`` at index ``k - 1``.
        boxes: ``int [n, 4]`` bounding box ``x, y, width, height`` (pixels) of region ``k`` at ``k - 1``.
    """

    labels: np.ndarray
    areas: np.ndarray
    boxes: np.ndarray

    def __len__(self) -> int:
        return len(self.areas)

    def mask(self, k: int) -> np.ndarray:
        """``bool [H, W]``: the pixels of region ``k`` (1..n)."""
        return self.labels == k


def find_regions(mask: np.ndarray) -> Regions:
    """Connected regions of the true / nonzero pixels of ``mask [H, W]``."""
    binary = (np.asarray(mask) != 0).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=CONNECTIVITY)
    return Regions(labels, stats[1:n, cv2.CC_STAT_AREA], stats[1:n, :4])


def count_regions(labels: np.ndarray, num_classes: int, min_px: float) -> int:
    """Regions of at least ``min_px`` pixels, summed over each class ``1..C-1`` of ``labels [H, W]``."""
    return sum(int((find_regions(labels == c).areas >= min_px).sum()) for c in range(1, num_classes))


def instance_counts(damage: np.ndarray, min_px: float = 16) -> np.ndarray:
    """Damage regions of at least ``min_px`` pixels per photo: ``bool [N, H, W]`` -> ``int32 [N]``."""
    return np.array([count_regions(np.asarray(mask, np.uint8), 2, min_px) for mask in damage], np.int32)


def remove_small_regions(labels: np.ndarray, num_classes: int, min_area_px: float) -> np.ndarray:
    """``labels [H, W]`` with connected regions (per class) under ``min_area_px`` pixels set to background."""
    out = labels.copy()
    for c in range(1, num_classes):
        regions = find_regions(labels == c)
        small = np.flatnonzero(regions.areas < min_area_px) + 1
        if small.size:
            out[np.isin(regions.labels, small)] = 0
    return out
