"""Monitoring: what the team lead reads.

Owns the photo features (``features``), Evidently drift reports (``drift``: every Evidently call)
and the HTML report page (``report``, ``templates/``).
"""
