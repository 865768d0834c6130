"""Running a program job inside a worker (a spawned process or a dask worker thread).

:func:`run_program` decodes the inputs, builds the backend, calls ``main(backend,
publisher, **inputs)`` and encodes what it returns. While ``main`` runs, everything it
sends leaves through ``emit(kind, data)`` as it happens: ``("interim", encoded bytes)``
for each ``publisher.publish(obj)`` and ``("log", text)`` for each line it writes to
``sys.stdout`` or ``sys.stderr``. The executor carries those to the service, which stores
and streams them before the job's final status.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

from qdispatch import _native, encoding
from qdispatch.server.backends import catalog, simulator

from . import BUILTIN, ENTRY_POINT, ProgramRef, load_module
from .common import fix_target

__all__ = ["Emit", "ProgramFailed", "Publisher", "program_backend", "run_program"]

#: Where a program's interim results and log lines go: ``emit("interim", bytes)`` or
#: ``emit("log", str)``.
Emit = Callable[[str, Any], None]


class ProgramFailed(Exception):
    """``main`` raised. ``message`` is ``"<ExceptionType>: <message>"`` (the traceback has
    gone to the job's log); ``timings`` has the steps measured until then."""

    def __init__(self, message: str, timings: dict[str, float]) -> None:
        super().__init__(message)
        self.message = message
        self.timings = timings


class Publisher:
    """The ``publisher`` a program's ``main`` gets."""

    def __init__(self, emit: Emit) -> None:
        self._emit = emit

    def publish(self, obj: Any) -> None:
        """Send ``obj`` as an interim result of the job, now (encoded with
        ``qdispatch.encoding``: anything a program may return may be published)."""
        self._emit("interim", encoding.dumps(obj))


# -- stdout/stderr capture ----------------------------------------------------------------


class _LineSink(io.TextIOBase):
    """A text stream that emits each complete line (with its newline) as a log event."""

    def __init__(self, emit: Emit) -> None:
        super().__init__()
        self._emit = emit
        self._partial: list[str] = []

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        start = 0
        while (end := text.find("\n", start)) != -1:
            line = text[start : end + 1]
            if self._partial:
                line = "".join(self._partial) + line
                self._partial.clear()
            self._emit("log", line)
            start = end + 1
        if start < len(text):
            self._partial.append(text[start:])
        return len(text)

    def finish(self) -> None:
        """Emit a last line that had no newline."""
        if self._partial:
            self._emit("log", "".join(self._partial))
            self._partial.clear()


class _ThreadRoutedStream(io.TextIOBase):
    """Stands in for ``sys.stdout``/``sys.stderr`` while programs run: what a thread
    running a program writes goes to that program's sink, anything else to the stream
    it replaced. A dask worker runs several tasks in threads of one process, so swapping
    the stream for one program alone would catch its neighbours' output too."""

    def __init__(self, original: TextIO) -> None:
        super().__init__()
        self.original = original
        self.sinks: dict[int, _LineSink] = {}

    def _target(self) -> TextIO | _LineSink:
        if getattr(_sending, "active", False):
            # Output while an event is on its way (a warning of the transport itself)
            # would be sent as another event from inside this one: it goes to the console.
            return self.original
        return self.sinks.get(threading.get_ident(), self.original)

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        target = self._target()
        if target is self.original:
            self.original.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        # For code that wants a descriptor (faulthandler): what is written to it is not
        # captured, as the documentation says of output below Python.
        return self.original.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.original, "encoding", None) or "utf-8"


_routing_lock = threading.Lock()
_routers: dict[str, _ThreadRoutedStream] = {}
_sending = threading.local()


def _guarded(emit: Emit) -> Emit:
    """``emit``, marking this thread as sending while it runs (see ``_target``)."""

    def send(kind: str, data: Any) -> None:
        _sending.active = True
        try:
            emit(kind, data)
        finally:
            _sending.active = False

    return send


@contextlib.contextmanager
def _captured_output(emit: Emit) -> Iterator[None]:
    """Send this thread's writes to ``sys.stdout`` and ``sys.stderr`` to ``emit``."""
    sink = _LineSink(emit)
    me = threading.get_ident()
    with _routing_lock:
        for name in ("stdout", "stderr"):
            current = getattr(sys, name)
            router = _routers.get(name)
            if router is None or current is not router:
                router = _ThreadRoutedStream(current)
                _routers[name] = router
                setattr(sys, name, router)
            router.sinks[me] = sink
    try:
        yield
    finally:
        sink.finish()
        with _routing_lock:
            for name, router in list(_routers.items()):
                router.sinks.pop(me, None)
                if not router.sinks and getattr(sys, name) is router:
                    setattr(sys, name, router.original)
                    del _routers[name]


# -- loading and running ------------------------------------------------------------------


def _file_stamp(ref: ProgramRef) -> int:
    # A program file the operator edits is loaded again; a built-in never changes.
    if ref.source in (BUILTIN, ENTRY_POINT):
        return 0
    try:
        return os.stat(Path(ref.target)).st_mtime_ns
    except OSError:
        return -1


@functools.lru_cache(maxsize=64)
def _module(ref: ProgramRef, stamp: int) -> ModuleType:
    return load_module(ref)


def program_backend(backend_name: str, threads: int, shared: bool = False) -> Any:
    """A simulator of a catalog backend for one program run (its noise model and target
    are the backend's).

    A fresh copy, so that options a program changes stay with its run; or, ``shared``,
    the one this thread keeps for the backend and thread count, with its target read once
    (``common.fix_target``): for the built-in programs, which never reconfigure their
    backend. Copying an ``AerSimulator`` and rebuilding its target cost about 3 ms a run,
    a fifth of a small estimator job in a worker.
    """
    threads = max(1, threads)
    if shared:
        kept: dict[tuple[str, int], Any] = _shared.__dict__.setdefault("backends", {})
        backend = kept.get((backend_name, threads))
        if backend is None:
            backend = kept[(backend_name, threads)] = program_backend(backend_name, threads)
            fix_target(backend)
        return backend
    defn = catalog().get(backend_name)
    if defn is None:
        raise ValueError(f"unknown backend '{backend_name}'")
    backend = copy.deepcopy(simulator(defn))
    backend.set_options(max_parallel_threads=threads)
    return backend


# The built-in programs' backends, per thread (a dask worker runs jobs in several).
_shared = threading.local()


def run_program(
    ref: ProgramRef, backend_name: str, inputs_json: bytes, threads: int, emit: Emit
) -> tuple[bytes, dict[str, float]]:
    """Run one program job; returns (the encoded result, timings in seconds).

    Raises :class:`ProgramFailed` when ``main`` raises (its traceback has been emitted as
    log lines); any other exception is a failure of the service's side (the program does
    not load, the inputs do not decode, the result does not encode).
    """
    module = _module(ref, _file_stamp(ref))
    timings: dict[str, float] = {}
    start = time.perf_counter()
    # Inputs the program declares as Qobjs (QOBJ_INPUTS) reach it as their raw JSON bytes:
    # it rebuilds their circuits from those (natively), never from a Python tree.
    qobjs: dict[str, bytes] = {}
    for key in getattr(module, "QOBJ_INPUTS", ()):
        inputs_json, member = _native.split_member(inputs_json, key, "params")
        if member is not None and member.strip() != b"null":
            qobjs[key] = member
    inputs = encoding.loads(inputs_json, settings_types=getattr(module, "SETTINGS_TYPES", ()))
    if not isinstance(inputs, dict):
        raise TypeError(f"program inputs must be an object, got {type(inputs).__name__}")
    inputs.update(qobjs)
    timings["decode_inputs"] = time.perf_counter() - start

    backend = program_backend(backend_name, threads, shared=ref.source == BUILTIN)
    emit = _guarded(emit)
    publisher = Publisher(emit)
    start = time.perf_counter()
    with _captured_output(emit):
        try:
            returned = module.main(backend, publisher, **inputs)
        except (Exception, SystemExit) as exc:  # sys.exit() in a program must not end the worker
            timings["execute"] = time.perf_counter() - start
            # Written while the capture is on: the traceback becomes the job's last lines.
            # It starts at main: the frame calling it here is nothing to the program's author.
            tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
            traceback.print_exception(type(exc), exc, tb, file=sys.stderr)
            raise ProgramFailed(f"{type(exc).__name__}: {exc}", timings) from exc
    timings["execute"] = time.perf_counter() - start

    start = time.perf_counter()
    try:
        result = encoding.dumps(returned)
    except (TypeError, ValueError) as exc:
        timings["encode_result"] = time.perf_counter() - start
        emit("log", f"the value main returned cannot be encoded: {exc}\n")
        raise ProgramFailed(f"{type(exc).__name__}: {exc}", timings) from exc
    timings["encode_result"] = time.perf_counter() - start
    return result, timings
