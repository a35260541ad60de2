"""Scoring engines: each maps a batch of pool photos to score columns; the pipeline does the rest."""
