"""Data: the canonical annotation model and everything that reads, checks and prepares photos.

Owns the annotation model (``annotations``), the format registry (``formats/``: VIA 1.x/2.x/CSV,
COCO, Label Studio JSON), the one image loader (``images``), polygon <-> mask conversion
(``masks``), dataset loading (``dataset``), exact and near duplicates (``dedup``), the pipeline's
``prepare`` stage, ``stats`` and ``show``. Imports nothing from the other stages.
"""
