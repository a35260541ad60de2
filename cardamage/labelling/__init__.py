"""Labelling: the Label Studio round trip.

Owns the one Label Studio client module (``client``: every server call; ``client_errors``: how a
failed call becomes a one-line error; ``transport``: the per-call deadline under the SDK; ``redact``:
the API key check and secret scrubbing), the label config (``label_config``), the ledger of what was
sent and what came back (``ledger``), ``push`` (tasks with the model's polygons as pre-annotations,
photos from ``photos``) and ``pull`` (labels back to VIA and COCO, VIA file helpers in ``via_file``);
``files`` reads their inputs with one-line errors naming the file.
"""
