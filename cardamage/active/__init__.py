"""Active learning: which unlabelled photos to label next.

Owns the pure acquisition functions (``acquisition``), the strategy registry (``strategies``),
the unlabelled pool (``pool``), the one scoring pipeline (``scoring``) with its pluggable engines
(``engines/``: local, Ray), batch selection (``selection``) and the replay of the loop on labelled
data (``simulate``). It never trains; it calls the model package for probabilities.
"""
