"""The claim service (``cardamage serve``): photos in, damage assessment and a settlement proposal out.

One module per concern: :mod:`.app` (FastAPI factory and routes), :mod:`.middleware` (request ids,
limits, the generic 500), :mod:`.logs` (JSON logs), :mod:`.uploads` (upload checks and decoding),
:mod:`.quality` (photo quality gate), :mod:`.models` (model loading and hot reload),
:mod:`.claims` (one claim end to end), :mod:`.settlement` (price table rules) and :mod:`.store`
(incoming pool, splash pictures). Importing this package imports nothing heavy.
"""
