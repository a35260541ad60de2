"""The served models, loaded once and swapped for a new version without dropping requests.

A watcher thread looks at the model files every ``serve.reload_check_s`` seconds. When a file
changed (mtime, size or inode) and carries another ``model_version``, the new model is loaded and
warmed up in that thread while requests go on with the old one, then swapped in under a lock: a
request takes one :class:`Models` snapshot at its start and finishes with it. A file that fails
to load (half-copied, foreign) is logged and skipped until it changes again; the old model stays.
``save_model`` writes atomically, so a reader never sees a half-written model from it.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cardamage.model.io import load_model, read_model_info
from cardamage.model.predict import LoadedModel, full_res_probs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Models:
    """One consistent pair: the damage model and the optional car-part model."""

    main: LoadedModel
    part: LoadedModel | None = None


def _signature(path: str | None) -> tuple[int, int, int] | None:
    if not path:
        return None
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size, st.st_ino


def load_warm(path: str) -> LoadedModel:
    """Load a saved model and run one prediction (builds the predict function before any request)."""
    model, info = load_model(path)
    loaded = LoadedModel(model, info, str(path))
    full_res_probs(loaded, [np.zeros((info.input_size, info.input_size, 3), np.uint8)])
    log.info("loaded model %s version %s (classes %s)", path, info.model_version, info.classes)
    return loaded


class ModelHolder:
    """Holds the current :class:`Models` and reloads them when a file on disk gets a new version."""

    def __init__(self, path: str, part_path: str | None = None, check_s: float = 10.0):
        self.path, self.part_path, self.check_s = str(path), part_path, float(check_s)
        self._lock = threading.Lock()
        self._models: Models | None = None
        self._seen: tuple[Any, Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reloads = 0
        self.last_error: str | None = None

    def load(self) -> Models:
        """Load both models now (at startup; errors propagate)."""
        seen = (_signature(self.path), _signature(self.part_path))
        models = Models(load_warm(self.path), load_warm(self.part_path) if self.part_path else None)
        with self._lock:
            self._models, self._seen = models, seen
        return models

    def current(self) -> Models:
        """The models to use for one request (a snapshot: a later swap does not change it)."""
        with self._lock:
            if self._models is None:
                raise RuntimeError("models not loaded yet")
            return self._models

    def check_once(self) -> bool:
        """Reload when a model file changed and carries a new version; ``True`` when a swap happened."""
        try:
            seen = (_signature(self.path), _signature(self.part_path))
        except OSError as exc:  # the file is being replaced by a non-atomic copy: look again later
            log.warning("model file not readable now: %s", exc)
            return False
        if seen == self._seen:
            return False
        old = self.current()
        try:
            models = Models(self._maybe_load(self.path, old.main),
                            self._maybe_load(self.part_path, old.part) if self.part_path else None)
        except (OSError, ValueError) as exc:
            self._seen, self.last_error = seen, str(exc)
            log.error("model reload failed, keeping version %s: %s", old.main.info.model_version, exc)
            return False
        with self._lock:
            self._models, self._seen = models, seen
        swapped = models != old
        if swapped:
            self.reloads += 1
            log.info("model swapped: %s -> %s", old.main.info.model_version, models.main.info.model_version)
        return swapped

    @staticmethod
    def _maybe_load(path: str, old: LoadedModel | None) -> LoadedModel:
        if old is not None and read_model_info(path).model_version == old.info.model_version:
            return old  # touched or copied again, same weights
        return load_warm(path)

    def start(self) -> None:
        """Start the watcher thread (no-op when ``check_s <= 0``)."""
        if self.check_s <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="model-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the watcher thread and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _watch(self) -> None:
        while not self._stop.wait(self.check_s):
            try:
                self.check_once()
            except Exception:  # the watcher must survive anything; the service keeps the old model
                log.exception("model watcher")

    def describe(self) -> dict[str, Any]:
        """Model versions and classes for ``/version`` and ``/health``."""
        m = self.current()
        out = {"model": _describe(m.main), "part_model": _describe(m.part) if m.part else None,
               "reloads": self.reloads}
        if self.last_error:
            out["last_reload_error"] = self.last_error
        return out


def _describe(loaded: LoadedModel) -> dict[str, Any]:
    info = loaded.info
    return {"path": Path(loaded.path).as_posix(), "version": info.model_version, "classes": list(info.classes),
            "input_size": info.input_size, "architecture": info.architecture, "backbone": info.backbone,
            "created": info.created}
