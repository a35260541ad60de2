"""The fuzz tests' harness: cases run in a child process with a memory cap, reporting JSON lines.

A native crash (pycocotools, Pillow) or an allocation bomb then fails the test, naming the seed and
the last case started, instead of killing pytest; memory is bounded per case (``tracemalloc``) and
for the whole run (peak resident memory).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

#: Largest growth of the child's peak resident memory over one run (native allocations too).
MAX_RSS_GROWTH = 500 * 1024 ** 2
#: Address-space limit of the child process that runs the cases.
CHILD_MEMORY = 3 * 1024 ** 3


def max_rss() -> int:
    """Peak resident memory of this process so far, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def report(**fields: Any) -> None:
    """One JSON line to the parent: ``start`` (case, description), ``failure`` or ``rss_growth``."""
    print(json.dumps(fields), flush=True)


def fuzz_in_child(module: str, function: str, seed: int, folder: Path, out: Path) -> None:
    """Run ``module.function(folder, out)`` in a child with a memory cap; assert it reported no failure."""
    here = Path(__file__).parent
    code = (f"import sys, faulthandler; faulthandler.enable(); sys.path[:0] = [{str(here)!r}, {str(here.parent)!r}]\n"
            f"from pathlib import Path\nimport {module} as m\n"
            f"m.{function}(Path({str(folder)!r}), Path({str(out)!r}))\n")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))

    env = {**os.environ, "CARDAMAGE_FUZZ_SEED": str(seed)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          preexec_fn=limit, env=env)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    started = [line for line in lines if "start" in line]
    failures = [line["failure"] for line in lines if "failure" in line]
    growth = next((line["rss_growth"] for line in lines if "rss_growth" in line), None)
    last = f"case {started[-1]['start']} ({started[-1]['description']})" if started else "before the first case"
    assert proc.returncode == 0 and growth is not None, \
        f"seed {seed}: the {function} child died (exit {proc.returncode}) in {last}:\n{proc.stderr[-3000:]}"
    assert not failures, f"seed {seed}: {len(failures)} {function} cases failed:\n" + "\n".join(failures[:10])
    assert growth < MAX_RSS_GROWTH, f"seed {seed}: peak memory grew by {growth / 2 ** 20:.0f} MiB"
