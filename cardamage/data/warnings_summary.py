"""Warnings about one input file, summarised: the first few of each kind in full, then one count line.

A 50 MB annotation file with a defect in every entry would otherwise print one line per entry.
:class:`WarningSummary` logs the first :data:`SHOWN_PER_KIND` warnings of each kind at WARNING
(the rest at DEBUG, so ``-vv`` still shows them), keeps the first :data:`KEPT_PER_KIND` of each
kind in :attr:`WarningSummary.messages` (memory stays bounded however bad the file), and
:meth:`WarningSummary.summarize` adds one line per kind: ``... and N more <kind> warnings in <file>``.
"""

from __future__ import annotations

import logging
from collections import Counter

#: Warnings of one kind logged in full, per file.
SHOWN_PER_KIND = 5
#: Warnings of one kind kept in ``messages`` (e.g. ``Dataset.meta["issues"]``), per file.
KEPT_PER_KIND = 100


class WarningSummary:
    """Warnings raised while reading one source, counted per kind.

    Attributes:
        source: the file (or other source) the warnings are about, as shown in the summary line.
        logger: where the warnings go.
        messages: the kept warnings, in order, then the summary lines once :meth:`summarize` ran.
        counts: number of warnings per kind (all of them, shown or not).
    """

    def __init__(self, source: str, logger: logging.Logger, shown: int = SHOWN_PER_KIND,
                 kept: int = KEPT_PER_KIND) -> None:
        self.source = source
        self.logger = logger
        self.shown = shown
        self.kept = max(kept, shown)
        self.messages: list[str] = []
        self.counts: Counter[str] = Counter()
        self._summarized: Counter[str] = Counter()

    def warn(self, message: str, kind: str = "other") -> None:
        """Log ``message`` (in full for the first ``shown`` of its ``kind``) and keep it (the first ``kept``)."""
        self.counts[kind] += 1
        n = self.counts[kind]
        self.logger.log(logging.WARNING if n <= self.shown else logging.DEBUG, "%s", message)
        if n <= self.kept:
            self.messages.append(message)

    def summarize(self) -> list[str]:
        """Log and keep one ``... and N more <kind> warnings in <source>`` line per kind over ``shown``.

        Returns the new lines; a second call only reports warnings added since the first.
        """
        lines = []
        for kind, n in self.counts.items():
            hidden = n - max(self.shown, self._summarized[kind])
            if hidden > 0:
                lines.append(f"... and {hidden} more {kind} warnings in {self.source}")
                self._summarized[kind] = n
        for line in lines:
            self.logger.warning("%s", line)
        self.messages.extend(lines)
        return lines
