"""Runtime programs: what ``POST /jobs`` with a ``program_id`` runs (docs/runtime.md).

A program is a Python module with ``main(backend, publisher, **inputs)`` and, optionally,
``VERSION`` (default ``"1"``), ``DESCRIPTION``, ``estimate(inputs) -> (n_executions,
shots)`` (or ``estimate(inputs, limits)``, to check its inputs against the job's
:class:`Limits` and name the input over one) and ``SETTINGS_TYPES`` (classes its inputs
may hold as ``settings`` values besides the built-in ones, see
``qdispatch.encoding.loads``). The :class:`Registry`
finds them in three places, in this order: the built-ins of this package, the
entry-point group ``qdispatch.programs`` (name → module), and the files ``DIR/<id>.py``
of ``qdispatch serve --programs-dir DIR``. An id already taken by an earlier place is
refused with a warning, so an installed package cannot shadow ``sampler``.

The service imports each module once, to read its version and call ``estimate`` at
submission. Workers (spawned processes, dask workers) load it again from the
:class:`ProgramRef` the scheduler puts in each task, so a dask worker needs the same
packages installed and the programs directory at the same path.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .common import InvalidInputs, Limits

__all__ = [
    "BUILTIN",
    "ENTRY_POINT",
    "ENTRY_POINT_GROUP",
    "InvalidInputs",
    "Limits",
    "Program",
    "ProgramRef",
    "Registry",
    "load_module",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "qdispatch.programs"
#: ``ProgramRef.source`` of a built-in program and of one registered by an entry point;
#: any other source is the path of the program's file.
BUILTIN = "builtin"
ENTRY_POINT = "entry-point"
DEFAULT_VERSION = "1"

_BUILTINS = {
    "circuit-runner": "qdispatch.server.programs.circuit_runner",
    "sampler": "qdispatch.server.programs.sampler",
    "estimator": "qdispatch.server.programs.estimator",
}
# Ids end up in URLs, images ("<id>:<version>") and module names: keep them plain.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")


@dataclass(frozen=True)
class ProgramRef:
    """How a worker finds a program again: its id, where it came from (``builtin``,
    ``entry-point`` or the file's path) and the module to import (a module name or an
    entry-point value; the path again for a file). Picklable, it travels in the task."""

    id: str
    source: str
    target: str


@dataclass(frozen=True)
class Program:
    """A registered program, as the service knows it."""

    ref: ProgramRef
    version: str
    description: str
    module: ModuleType

    @property
    def id(self) -> str:
        """The program id (``program_id`` of its jobs)."""
        return self.ref.id

    def view(self) -> dict[str, Any]:
        """The program as ``GET /programs`` lists it."""
        return {
            "id": self.id,
            "version": self.version,
            "description": self.description,
            "source": self.ref.source,
        }

    def estimate(self, inputs: dict[str, Any], limits: Limits | None = None) -> tuple[int, int]:
        """``(n_executions, shots)`` of a run with ``inputs``; ``(1, 0)`` for a program
        without ``estimate``. Raises :class:`InvalidInputs` (or the program's own
        ``ValueError``/``TypeError``) for inputs the program would refuse, and, with
        ``limits``, for inputs over them: the program's own check when its ``estimate``
        takes ``limits`` (it names the input), then, for every program, its estimate's
        shots against ``max_shots`` and executions x shots against ``max_job_shots``."""
        _check_signature(self, inputs)
        estimate: Callable[..., Any] | None = getattr(self.module, "estimate", None)
        if estimate is None:
            return 1, 0
        takes_limits = limits is not None and "limits" in inspect.signature(estimate).parameters
        answer = estimate(inputs, limits=limits) if takes_limits else estimate(inputs)
        try:
            n_executions, shots = answer
            n_executions, shots = max(1, int(n_executions)), max(0, int(shots))
        except (TypeError, ValueError):
            raise RuntimeError(
                f"program '{self.id}': estimate() must return (n_executions, shots), got {answer!r}"
            ) from None
        if limits is not None:
            # The backstop for programs that do not check limits themselves.
            limits.shots(shots, f"program '{self.id}': shots per execution")
            what = f"program '{self.id}': {n_executions} executions x {shots} shots"
            limits.total(n_executions * shots, what)
        return n_executions, shots

    def estimate_pubs(
        self, inputs: dict[str, Any], limits: Limits | None = None
    ) -> tuple[list[int], int]:
        """``estimate`` pub by pub, for the programs that run as shards (their module's
        ``estimate_pubs``): each pub's executions and the shots, with ``estimate``'s
        checks. ``RuntimeError`` for a program without ``estimate_pubs``."""
        _check_signature(self, inputs)
        estimate: Callable[..., Any] | None = getattr(self.module, "estimate_pubs", None)
        if estimate is None:
            raise RuntimeError(f"program '{self.id}' does not estimate pub by pub")
        executions, shots = estimate(inputs, limits=limits)
        executions = [max(1, int(n)) for n in executions]
        if limits is not None:
            total = sum(executions)
            limits.shots(shots, f"program '{self.id}': shots per execution")
            limits.total(total * shots, f"program '{self.id}': {total} executions x {shots} shots")
        return executions, int(shots)


def _check_signature(program: Program, inputs: dict[str, Any]) -> None:
    """Refuse inputs ``main`` cannot take, before the job is queued rather than when it runs."""
    try:
        inspect.signature(program.module.main).bind(None, None, **inputs)
    except TypeError as exc:
        raise InvalidInputs(f"program '{program.id}' does not take these inputs: {exc}") from None


def load_module(ref: ProgramRef) -> ModuleType:
    """Import a program's module (in the service, or again in a worker)."""
    if ref.source == BUILTIN:
        module = importlib.import_module(ref.target)
    elif ref.source == ENTRY_POINT:
        loaded = importlib.metadata.EntryPoint(ref.id, ref.target, ENTRY_POINT_GROUP).load()
        if not isinstance(loaded, ModuleType):
            raise TypeError(
                f"entry point '{ref.id}' = '{ref.target}' names {type(loaded).__name__}, "
                "not a module"
            )
        module = loaded
    else:
        module = _load_file(ref.id, Path(ref.target))
    if not callable(getattr(module, "main", None)):
        raise TypeError(f"program '{ref.id}' ({ref.source}) has no main(backend, publisher, …)")
    return module


def _load_file(program_id: str, path: Path) -> ModuleType:
    # A name of our own, so that two directories' "foo.py" never meet in sys.modules.
    name = f"qdispatch_program_{re.sub(r'[^A-Za-z0-9_]', '_', program_id)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load program file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _describe(ref: ProgramRef, module: ModuleType) -> Program:
    version = getattr(module, "VERSION", DEFAULT_VERSION)
    description = getattr(module, "DESCRIPTION", None)
    if description is None:
        doc = (module.__doc__ or "").strip()
        description = doc.splitlines()[0] if doc else ""
    return Program(ref, str(version), str(description), module)


class Registry:
    """The programs a service runs, by id."""

    def __init__(self, programs: Iterable[Program] = ()) -> None:
        self._programs: dict[str, Program] = {}
        for program in programs:
            self.add(program)

    @classmethod
    def discover(cls, programs_dir: Path | None = None) -> Registry:
        """Built-ins, then entry points, then ``programs_dir``.

        A broken entry point (another package's) is logged and skipped; a broken file of
        ``programs_dir``, which the operator named, raises so that the service does not
        start without it.
        """
        registry = cls()
        for program_id, module_name in _BUILTINS.items():
            ref = ProgramRef(program_id, BUILTIN, module_name)
            registry.add(_describe(ref, load_module(ref)))
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            ref = ProgramRef(ep.name, ENTRY_POINT, ep.value)
            try:
                registry.add(_describe(ref, load_module(ref)))
            except Exception:
                log.exception("program entry point '%s' = '%s' does not load", ep.name, ep.value)
        if programs_dir is not None:
            directory = Path(programs_dir).expanduser().resolve()
            if not directory.is_dir():
                raise ValueError(f"--programs-dir {directory} is not a directory")
            for path in sorted(directory.glob("*.py")):
                if path.name.startswith("_"):
                    continue
                ref = ProgramRef(path.stem, str(path), str(path))
                try:
                    module = load_module(ref)
                except Exception as exc:
                    raise ValueError(f"program file {path} does not load: {exc}") from exc
                registry.add(_describe(ref, module))
        return registry

    def add(self, program: Program) -> None:
        """Register ``program``, unless its id is taken or not a plain name (warned)."""
        if not _ID.match(program.id):
            log.warning("program id %r (%s) is not a plain name; ignored", program.id, program.ref)
            return
        taken = self._programs.get(program.id)
        if taken is not None:
            log.warning(
                "program '%s' from %s ignored: the id is taken by %s",
                program.id,
                program.ref.source,
                taken.ref.source,
            )
            return
        self._programs[program.id] = program

    def get(self, program_id: str) -> Program | None:
        """The program ``program_id``, or ``None``."""
        return self._programs.get(program_id)

    def ref(self, program_id: str) -> ProgramRef | None:
        """How a worker finds ``program_id``, or ``None`` if it is not registered."""
        program = self._programs.get(program_id)
        return program.ref if program is not None else None

    def __iter__(self) -> Iterator[Program]:
        return iter(sorted(self._programs.values(), key=lambda p: p.id))

    def ids(self) -> list[str]:
        """Every registered id, sorted."""
        return sorted(self._programs)
