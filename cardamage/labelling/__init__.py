"""Labelling: the Label Studio round trip.

Owns the one Label Studio client module (``client``: every server call), the label config
(``label_config``), the ledger of what was sent and what came back (``ledger``), ``push`` (tasks
with the model's polygons as pre-annotations) and ``pull`` (labels back to VIA and COCO).
"""
