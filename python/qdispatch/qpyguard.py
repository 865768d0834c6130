"""Loading QPY from a peer: what ``qiskit.qpy.load`` may look up, narrowed to instructions.

QPY names each instruction by its class name, and qiskit's reader (the Rust one, for the
format versions 13 and later that :mod:`qdispatch.encoding` accepts) resolves that name
with ``hasattr``/``getattr`` on three modules, ``qiskit.circuit.library``,
``qiskit.circuit`` and ``qiskit.circuit.controlflow``, then calls what it found with the
payload's parameters. It imports nothing by name, but any attribute of those modules is
reachable: functions and circuit classes that build large circuits from a number
(``quantum_volume``, ``QuantumVolume``), and the module object's own methods
(``__setattr__``, ``__delattr__``, ``__init__``), which would change the module for every
later job of a long-lived worker. While :func:`guarded_load` runs, those modules answer
the loading thread only with instruction classes (and the few other names qiskit's own
code reads from them), so such a payload fails with "Gate class not found" before
anything is called.

The narrowing is for the loading thread alone. Jobs run in threads of one process (Dask
thread workers), and another job's ``from qiskit.circuit import QuantumCircuit`` during a
load must see the real module, so the modules are not replaced: while any load runs,
their ``__class__`` is a :class:`types.ModuleType` subclass whose ``__getattribute__``
refuses names only when a thread-local depth says the current thread is inside a load
(``hasattr``/``getattr`` from Rust go through the type's ``tp_getattro``, as Python's
do). The last load to finish puts the modules' own class back, so outside loads nothing
differs and attribute access costs what it always did.
"""

from __future__ import annotations

import functools
import io
import threading
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import qiskit.circuit.controlflow
import qiskit.circuit.library
from qiskit import qpy
from qiskit.circuit import Instruction, Operation, QuantumCircuit

__all__ = ["guarded_load", "refused_names"]

# The modules qiskit's QPY reader resolves instruction class names in.
_LOOKUP_MODULES: tuple[types.ModuleType, ...] = (
    qiskit.circuit.library,
    qiskit.circuit,
    qiskit.circuit.controlflow,
)
# Non-instruction names qiskit's Rust code imports from those modules itself (its
# `imports.rs` cells), which must keep answering while a load runs; none builds anything
# from a number.
_QISKIT_OWN = frozenset(
    {
        "AnnotatedOperation",
        "BlueprintCircuit",
        "CASE_DEFAULT",
        "ClassicalRegister",
        "Clbit",
        "condition_resources",
        "node_resources",
    }
)
# Names the guard refuses a loading thread without reading them: reading a module's
# `__annotations__` creates an empty dict on it (Python 3.10+), a change to the module a
# payload could make; no instruction class has such a name.
_NEVER_READ = frozenset({"__annotations__"})

# How many guarded loads the current thread is inside (a load may nest: a gate's
# constructor can read QPY); only a thread with a depth above 0 is refused anything.
_THREAD = threading.local()


def _allowed(name: str, value: Any) -> bool:
    if name in _QISKIT_OWN or not callable(value):
        return True  # the reader only calls what it found; data is harmless
    return isinstance(value, type) and issubclass(value, Instruction)


def _loading() -> bool:
    depth: int = getattr(_THREAD, "depth", 0)
    return depth > 0


def _guarded_class(base: type[types.ModuleType]) -> type[types.ModuleType]:
    """A subclass of ``base`` (a module's own class) that narrows attribute lookups for
    a thread inside a load and reads through for every other thread."""
    read: Callable[[types.ModuleType, str], Any] = base.__getattribute__

    def __getattribute__(self: types.ModuleType, name: str) -> Any:
        if not _loading():
            return read(self, name)
        if name not in _NEVER_READ:
            value = read(self, name)
            if _allowed(name, value):
                return value
        raise AttributeError(f"QPY may not name '{name}': it is not an instruction class")

    namespace = {"__getattribute__": __getattribute__, "__module__": __name__}
    return type(f"_Guarded{base.__name__.capitalize()}", (base,), namespace)


class _ModuleClasses:
    """The lookup modules' classes: swapped for guarded ones while any load runs in the
    process, and put back by the last load to finish, so that outside loads attribute
    access costs what it always did."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._guarded: dict[type[types.ModuleType], type[types.ModuleType]] = {}
        self._swapped: list[tuple[types.ModuleType, type[types.ModuleType]]] = []

    def enter(self) -> None:
        with self._lock:
            if self._running == 0:
                for module in _LOOKUP_MODULES:
                    base = type(module)
                    if base not in self._guarded:
                        self._guarded[base] = _guarded_class(base)
                    self._swapped.append((module, base))
                    module.__class__ = self._guarded[base]
            self._running += 1

    def leave(self) -> None:
        with self._lock:
            self._running -= 1
            if self._running == 0:
                while self._swapped:
                    module, base = self._swapped.pop()
                    module.__class__ = base


_CLASSES = _ModuleClasses()


@contextmanager
def _narrowed_for_this_thread() -> Iterator[None]:
    _CLASSES.enter()
    depth: int = getattr(_THREAD, "depth", 0)
    _THREAD.depth = depth + 1
    try:
        yield
    finally:
        _THREAD.depth = depth
        _CLASSES.leave()


@functools.lru_cache(maxsize=1)
def refused_names() -> frozenset[str]:
    """The callable attributes of the lookup modules a QPY payload may not name: anything
    not an :class:`~qiskit.circuit.Instruction` subclass, dunder methods included. (The
    guard decides each lookup as it happens, with the same rule; this is the list of
    what it refuses among the names the modules hold now.)"""
    refused: set[str] = set(_NEVER_READ)
    for module in _LOOKUP_MODULES:
        for name in (set(dir(module)) | set(dir(type(module)))) - _NEVER_READ:
            if not _allowed(name, getattr(module, name, None)):
                refused.add(name)
    return frozenset(refused)


def guarded_load(payload: bytes) -> list[Any]:
    """``qiskit.qpy.load`` of ``payload`` with the instruction lookups narrowed for the
    calling thread (see the module's docstring). The caller checks the header first
    (``qdispatch.encoding``: format version, declared widths and counts). Errors are
    qiskit's, unchanged."""
    with _narrowed_for_this_thread():
        loaded: list[Any] = qpy.load(io.BytesIO(payload))
    for item in loaded:
        if isinstance(item, QuantumCircuit):
            _check_operations(item)
    return loaded


def _check_operations(circuit: QuantumCircuit) -> None:
    # Belt and braces: whatever the reader built must be instructions, blocks included.
    for inst in circuit.data:
        op = inst.operation
        if not isinstance(op, Operation):
            raise TypeError(f"QPY built a {type(op).__name__}, not an operation")
        for block in getattr(op, "blocks", ()):
            _check_operations(block)
