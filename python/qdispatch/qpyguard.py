"""Loading QPY from a peer: what ``qiskit.qpy.load`` may look up, narrowed to instructions.

QPY names each instruction by its class name, and qiskit's reader (the Rust one, for the
format versions 13 and later that :mod:`qdispatch.encoding` accepts) resolves that name
with ``hasattr``/``getattr`` on three modules, ``qiskit.circuit.library``,
``qiskit.circuit`` and ``qiskit.circuit.controlflow``, then calls what it found with the
payload's parameters. It imports nothing by name, but any attribute of those modules is
reachable: functions and circuit classes that build large circuits from a number
(``quantum_volume``, ``QuantumVolume``), and the module object's own methods
(``__setattr__``, ``__delattr__``, ``__init__``), which would change the module for every
later job of a long-lived worker. :func:`guarded_load` lets the reader see, while it
runs, modules that answer only for instruction classes (and the few other names qiskit's
own code reads from them), so such a payload fails with "Gate class not found" before
anything is called.
"""

from __future__ import annotations

import functools
import io
import sys
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from qiskit import qpy
from qiskit.circuit import Instruction, Operation, QuantumCircuit

__all__ = ["guarded_load", "refused_names"]

# The modules qiskit's QPY reader resolves instruction class names in.
_LOOKUP_MODULES = ("qiskit.circuit.library", "qiskit.circuit", "qiskit.circuit.controlflow")
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
_LOCK = threading.Lock()


def _allowed(module: types.ModuleType, name: str) -> bool:
    if name in _QISKIT_OWN:
        return True
    value = getattr(module, name, None)
    if not callable(value):
        return True  # the reader only calls what it found; data is harmless
    return isinstance(value, type) and issubclass(value, Instruction)


@functools.lru_cache(maxsize=1)
def refused_names() -> frozenset[str]:
    """The callable attributes of the lookup modules a QPY payload may not name: anything
    not an :class:`~qiskit.circuit.Instruction` subclass, dunder methods included."""
    refused: set[str] = set()
    for module_name in _LOOKUP_MODULES:
        module = sys.modules[module_name]
        for name in set(dir(module)) | set(dir(type(module))):
            if not _allowed(module, name):
                refused.add(name)
    return frozenset(refused)


class _Narrowed(types.ModuleType):
    """A stand-in for one lookup module: its attributes, minus the refused names."""

    def __init__(self, real: types.ModuleType, refused: frozenset[str]) -> None:
        super().__init__(real.__name__, real.__doc__)
        object.__setattr__(self, "_real", real)
        object.__setattr__(self, "_refused", refused)

    def __getattribute__(self, name: str) -> Any:
        refused: frozenset[str] = object.__getattribute__(self, "_refused")
        if name in refused:
            raise AttributeError(f"QPY may not name '{name}': it is not an instruction class")
        return getattr(object.__getattribute__(self, "_real"), name)


@contextmanager
def _narrowed_modules() -> Iterator[None]:
    refused = refused_names()
    with _LOCK:
        # Read under the lock: another thread's load would have its stand-ins in place,
        # and putting those back afterwards would leave qiskit's modules narrowed for good.
        originals = {name: sys.modules[name] for name in _LOOKUP_MODULES}
        for name, module in originals.items():
            sys.modules[name] = _Narrowed(module, refused)
        try:
            yield
        finally:
            sys.modules.update(originals)


def guarded_load(payload: bytes) -> list[Any]:
    """``qiskit.qpy.load`` of ``payload`` with the instruction lookups narrowed (see the
    module's docstring). The caller checks the header first (``qdispatch.encoding``:
    format version, declared widths and counts). Errors are qiskit's, unchanged."""
    with _narrowed_modules():
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
