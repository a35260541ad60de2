"""The served models, loaded once and swapped for a new version without dropping requests.

A watcher thread looks at the model files every ``serve.reload_check_s`` seconds. When a file
changed (mtime, size or inode) and carries another ``model_version``, the new model is checked,
loaded and warmed up in that thread while requests go on with the old one, then swapped in under
a lock: a request takes one :class:`Models` snapshot at its start and finishes with it.

Every file must fit what the service was started for: the damage model predicts ``data.classes``
at ``model.input_size`` px, the part model keeps the classes of the part model served at start.
A file that does not fit, or does not load (cut short, bad CRC, not a cardamage model), is
*refused*: the old model keeps serving, one log line says why, :attr:`ModelHolder.reload_state`
(``/health``'s ``model_reload``) says it until a fitting file comes, and the file is not tried
again until it changes. At start the same checks raise one-line
:class:`~cardamage.errors.CardamageError` s naming the file. ``save_model`` writes atomically, so a
reader never sees a half-written model from it.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import threading
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cardamage.errors import BadInputError, ModelMismatchError
from cardamage.model.inference import predict_with_embeddings
from cardamage.model.io import check_compatible, load_model, read_model_info
from cardamage.model.predict import LoadedModel

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


def load_warm(path: str, expect_classes: Sequence[str] | None = None,
              expect_input_size: int | None = None) -> LoadedModel:
    """Load a saved model, check it fits, and run one prediction (builds the predict function before any request).

    Raises:
        ModelMismatchError: other classes or input size than expected (checked on the file's info,
            before the weights are read), or an output with another number of channels than its classes.
        BadInputError, FileNotFoundError: a missing, corrupt or foreign file.
    """
    model, info = load_model(path, expect_classes, expect_input_size)
    loaded = LoadedModel(model, info, str(path))
    zeros = np.zeros((1, info.input_size, info.input_size, 3), np.float32)
    (probs,), _ = predict_with_embeddings(model, zeros)  # builds the graph the micro-batcher calls
    if probs.shape[-1] != info.num_outputs:
        raise ModelMismatchError(f"{path}: the network has {probs.shape[-1]} output channels but its info "
                                 f"names {len(info.classes)} classes {list(info.classes)} (+ background)")
    log.info("loaded model %s version %s (classes %s)", path, info.model_version, info.classes)
    return loaded


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class ModelHolder:
    """Holds the current :class:`Models` and reloads them when a file on disk gets a new, fitting version.

    Args:
        path, part_path: the damage and the optional car-part model files.
        check_s: seconds between looks at the files (``<= 0``: no watcher thread).
        expect_classes, expect_input_size: what the damage model must predict (``data.classes``)
            and take (``model.input_size``); ``None`` checks nothing.
    """

    def __init__(self, path: str, part_path: str | None = None, check_s: float = 10.0,
                 expect_classes: Sequence[str] | None = None, expect_input_size: int | None = None):
        self.path, self.part_path, self.check_s = str(path), part_path, float(check_s)
        self.expect_classes = list(expect_classes) if expect_classes is not None else None
        self.expect_input_size = expect_input_size
        self._lock = threading.Lock()
        self._models: Models | None = None
        self._seen: tuple[Any, Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reloads = 0
        self.last_error: str | None = None
        #: ``/health``'s ``model_reload``: ``status`` ``ok`` (the files on disk are what is served) or
        #: ``refused`` (``reason``, ``path`` of the refused file), and ``checked`` (UTC time).
        self.reload_state: dict[str, Any] = {"status": "ok", "reason": None, "path": None, "checked": None}

    def check_files(self) -> None:
        """Check the files' stored info fits (zip only, no TensorFlow): for a one-line error before serving.

        Raises:
            FileNotFoundError, BadInputError, ModelMismatchError: naming the file.
        """
        check_compatible(read_model_info(self.path), self.expect_classes, self.expect_input_size, source=self.path)
        if self.part_path:
            read_model_info(self.part_path)

    @property
    def loaded(self) -> bool:
        """Whether :meth:`load` has run."""
        with self._lock:
            return self._models is not None

    def load(self) -> Models:
        """Load both models now (at startup; errors propagate, one line naming the file)."""
        seen = (_signature(self.path), _signature(self.part_path))
        main = load_warm(self.path, self.expect_classes, self.expect_input_size)
        models = Models(main, load_warm(self.part_path) if self.part_path else None)
        with self._lock:
            self._models, self._seen = models, seen
        self.reload_state = {"status": "ok", "reason": None, "path": None, "checked": _now()}
        return models

    def current(self) -> Models:
        """The models to use for one request (a snapshot: a later swap does not change it)."""
        with self._lock:
            if self._models is None:
                raise RuntimeError("models not loaded yet")
            return self._models

    def check_once(self) -> bool:
        """Reload when a model file changed and carries a new, fitting version; ``True`` when a swap happened.

        A file that does not fit or does not load is refused (see the module doc) and ``False`` returned.
        """
        try:
            seen = (_signature(self.path), _signature(self.part_path))
        except OSError as exc:  # the file is being replaced by a non-atomic copy: look again later
            log.warning("model file not readable now: %s", exc)
            return False
        if seen == self._seen:
            return False
        old = self.current()
        refused: list[tuple[str, Exception]] = []
        main, part = old.main, old.part
        try:
            main = self._maybe_load(self.path, old.main, self.expect_classes, self.expect_input_size)
        except Exception as exc:  # anything from an untrusted file: keep serving the old model
            refused.append((self.path, exc))
        if self.part_path:
            try:
                part = self._maybe_load(self.part_path, old.part, old.part.info.classes if old.part else None)
            except Exception as exc:
                refused.append((self.part_path, exc))
        models = Models(main, part)
        with self._lock:
            self._models, self._seen = models, seen  # a refused file is not tried again until it changes
        if refused:
            self._refuse(refused, old)
        else:
            self.last_error = None
            self.reload_state = {"status": "ok", "reason": None, "path": None, "checked": _now()}
        swapped = models != old
        if swapped:
            self.reloads += 1
            log.info("model swapped: %s -> %s", old.main.info.model_version, models.main.info.model_version)
        return swapped

    def _refuse(self, refused: list[tuple[str, Exception]], old: Models) -> None:
        reasons = []
        for path, exc in refused:
            text = str(exc) if str(exc).startswith(str(path)) else f"{path}: {type(exc).__name__}: {exc}"
            reasons.append(" ".join(text.split()))
        self.last_error = "; ".join(reasons)
        self.reload_state = {"status": "refused", "reason": self.last_error,
                             "path": Path(refused[0][0]).as_posix(), "checked": _now()}
        log.error("model reload refused, still serving version %s: %s", old.main.info.model_version,
                  self.last_error)

    @staticmethod
    def _maybe_load(path: str, old: LoadedModel | None, expect_classes: Sequence[str] | None = None,
                    expect_input_size: int | None = None) -> LoadedModel:
        info = read_model_info(path)
        check_compatible(info, expect_classes, expect_input_size, source=path)
        if old is not None and info.model_version == old.info.model_version:
            _check_zip(path)  # the weights in memory are fine, but a restart would read this file
            return old  # touched or copied again, same weights
        return load_warm(path, expect_classes, expect_input_size)

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
        """Model versions and classes for ``/version``, with the state of the last reload."""
        m = self.current()
        out = {"model": _describe(m.main), "part_model": _describe(m.part) if m.part else None,
               "reloads": self.reloads, "model_reload": dict(self.reload_state)}
        if self.last_error:
            out["last_reload_error"] = self.last_error
        return out


def _check_zip(path: str) -> None:
    """Raise :class:`BadInputError` when a member of the zip at ``path`` fails its CRC (reads the whole file)."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise BadInputError(f"{path}: the model file cannot be read ({exc})") from exc
    if bad is not None:
        raise BadInputError(f"{path}: bad CRC-32 for {bad!r}: the file is damaged (copy it again)")


def _describe(loaded: LoadedModel) -> dict[str, Any]:
    info = loaded.info
    return {"path": Path(loaded.path).as_posix(), "version": info.model_version, "classes": list(info.classes),
            "input_size": info.input_size, "architecture": info.architecture, "backbone": info.backbone,
            "created": info.created}
