"""Retraining in the background when enough new labels arrived (the ML backend's ``/webhook``).

:meth:`Retrainer.record` counts new annotations and returns at once (Label Studio waits 1 s for a
webhook). A worker thread starts ``labelstudio.backend.retrain_commands`` (default ``cardamage pull``
then ``dvc repro``) when ``retrain_after`` events are counted and none came for ``retrain_quiet_s``
seconds, so a flood of events starts one run. One run at a time, never inside a request: events
that arrive during a run count towards the next one. The count survives a restart (``state_file``,
written atomically); the commands' output goes to ``retrain_log``. :meth:`Retrainer.status` is the
``retrain`` part of ``/health``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import shlex
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cardamage.fileio import write_json

log = logging.getLogger(__name__)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Retrainer:
    """Counts label events and runs the retrain commands (see the module doc).

    Args:
        commands: shell-free command lines run in order (``shlex`` split); a failing one stops the run.
        after: events that start a run (``<= 0``: never). quiet_s: seconds without events before it starts.
        log_path: the commands' output (appended). state_file: the event count (JSON).
        cwd: where the commands run (default: the current folder).
    """

    def __init__(self, commands: Sequence[str], after: int, quiet_s: float, log_path: str, state_file: str,
                 cwd: str | None = None, poll_s: float = 0.2):
        self.commands = [shlex.split(c) for c in commands]
        self.after, self.quiet_s, self.poll_s = int(after), float(quiet_s), float(poll_s)
        self.log_path, self.state_file, self.cwd = Path(log_path), Path(state_file), cwd
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pending = self._load_count()
        self._last_event = 0.0
        self.runs = 0
        self.running = False
        self.last_run: dict[str, Any] | None = None

    def _load_count(self) -> int:
        try:
            count = json.loads(self.state_file.read_text(encoding="utf-8")).get("pending", 0)
            return int(count) if isinstance(count, int) and count >= 0 else 0
        except (OSError, ValueError, AttributeError):
            return 0

    def _save(self) -> None:
        try:
            write_json(self.state_file, {"pending": self.pending, "runs": self.runs, "last_run": self.last_run})
        except OSError as exc:  # the count lives on in memory
            log.warning("retrain: cannot write %s: %s", self.state_file, exc)

    def record(self, n: int = 1) -> None:
        """Count ``n`` new annotations (returns at once)."""
        with self._lock:
            self.pending += n
            self._last_event = time.monotonic()
            self._save()

    def due(self) -> bool:
        """Whether a run should start now."""
        with self._lock:
            return (self.after > 0 and not self.running and self.pending >= self.after
                    and time.monotonic() - self._last_event >= self.quiet_s)

    def run_once(self) -> int:
        """Run the commands now (in this thread); their exit status (0: all passed)."""
        with self._lock:
            self.running, taken = True, self.pending
            self.pending = 0
            self.last_run = {"started": _now(), "finished": None, "labels": taken, "status": "running"}
            self._save()
        log.info("retrain: %d new label(s): running %s", taken, " && ".join(shlex.join(c) for c in self.commands))
        code = self._run_commands()
        with self._lock:
            self.running = False
            self.runs += 1
            self.last_run.update(finished=_now(), returncode=code, status="passed" if code == 0 else "failed")
            self._save()
        (log.info if code == 0 else log.error)("retrain: %s (exit status %d; output in %s)",
                                               self.last_run["status"], code, self.log_path)
        return code

    def _run_commands(self) -> int:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            for command in self.commands:
                out.write(f"\n$ {shlex.join(command)}  # {_now()}\n".encode())
                out.flush()
                try:
                    code = subprocess.run(command, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, check=False).returncode
                except OSError as exc:  # not installed, not executable
                    out.write(f"cannot run: {exc}\n".encode())
                    code = 127
                if code != 0:
                    return code
        return 0

    def status(self) -> dict[str, Any]:
        """``pending`` events, ``after``, ``running``, ``runs`` and the ``last_run``."""
        with self._lock:
            return {"pending": self.pending, "after": self.after, "running": self.running, "runs": self.runs,
                    "last_run": dict(self.last_run) if self.last_run else None}

    def start(self) -> None:
        """Start the worker thread (no-op when ``after <= 0`` or already started)."""
        if self.after <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._work, name="retrain", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the worker (a run in progress goes on in its process; the thread is left to finish)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None

    def _work(self) -> None:
        while not self._stop.wait(self.poll_s):
            if self.due():
                try:
                    self.run_once()
                except Exception:  # the worker must survive anything
                    log.exception("retrain")
                    with self._lock:
                        self.running = False
