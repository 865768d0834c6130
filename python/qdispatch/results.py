"""Results built from the service's JSON without building every experiment up front.

``Result.from_dict(orjson.loads(raw))`` makes Python objects of every experiment's header,
data and metadata, most of a second for 10k experiments, before anything is read.
:func:`result_from_json` reads the JSON's outline natively (``_native.ResultOutline``:
where each experiment lies in the bytes, its name, its counts) and returns a
:class:`LazyResult`: a ``qiskit.result.Result`` whose ``results`` is a plain list of
experiments that are built by qiskit's own ``ExperimentResult.from_dict`` from their bytes
the first time anything of them is read (each then *is* a plain ``ExperimentResult``).
``get_counts`` builds each ``Counts`` straight from the outline, equal to the one qiskit
builds (keys, ``hex_raw``, ``int_raw``, ``creg_sizes``, ``memory_slots``); a lookup by
name uses the outline's names while the experiments are unread and in their places.
Those counts are :class:`LazyCounts`: qiskit's ``Counts`` holds each histogram three
times (``hex_raw``, ``int_raw`` and the bitstrings), and most code reads only the
bitstrings, so the other two (and the small attributes) are made the first time anything
reads one of them.
Everything else (``data``, ``get_memory``, ``to_dict``, ``repr``…) is qiskit's code on
the experiments it reads. Pickling or deep-copying gives a plain ``Result``.

JSON that ``Result.from_dict`` might refuse, or read other than the outline does (no
``results`` list, an experiment without ``shots``, ``success`` or a ``data`` object, a bad
``meas_return``, a tracked field written twice…), is built eagerly by ``Result.from_dict``,
which raises its own errors. The bytes are held until every experiment is built.
"""

from __future__ import annotations

import copyreg
import threading
import warnings
import weakref
from collections.abc import Sequence
from typing import Any

import orjson
from qiskit.circuit import QuantumCircuit
from qiskit.exceptions import QiskitError
from qiskit.result import Counts, Result
from qiskit.result.models import ExperimentResult

from . import _native

__all__ = ["LazyCounts", "LazyResult", "combine_result_json", "result_from_json"]

#: The key of an unbuilt experiment's state: ``(source, index)``.
_LAZY = "_qdispatch_lazy"

#: Building an experiment swaps its state and class, and making a ``LazyCounts``'
#: attributes fills its state; one thread at a time.
_BUILD_LOCK = threading.Lock()

#: The descriptor of a ``Counts``' own ``__dict__`` (``LazyCounts.__dict__`` shadows it).
_COUNTS_STATE: Any = Counts.__dict__["__dict__"]


def _make_state(counts: LazyCounts) -> dict[str, Any]:
    """``counts``' own ``__dict__``, first given (if it has not been) the attributes
    qiskit's constructor sets, in its order, from the outline's ``Counts`` of the
    experiment; what was set on it since stays after them, as it would on qiskit's."""
    state: dict[str, Any] = _COUNTS_STATE.__get__(counts)
    # Every attribute read comes here: once made (or never lazy) it answers without the
    # process-wide lock. The slot is set to ``None`` only after the state is whole, under
    # the lock, so seeing ``None`` here means there is nothing left to make.
    if getattr(counts, "_qdispatch_outline", None) is None:
        return state
    with _BUILD_LOCK:
        outline = counts._qdispatch_outline
        if outline is None:  # another thread made it while this one waited
            return state
        built = outline.counts(counts._qdispatch_index)
        ordered = dict(_COUNTS_STATE.__get__(built))
        ordered.update(state)
        state.clear()
        state.update(ordered)
        # The outline is no longer needed (nor held: it may be all that keeps it).
        counts._qdispatch_outline = None
    return state


def _made_on_first_read(name: str) -> property:
    """The attribute ``name`` of qiskit's ``Counts``, read from (written to, deleted from)
    the instance's own state once :func:`_make_state` has filled it."""

    def get(self: LazyCounts) -> Any:
        try:
            return _make_state(self)[name]
        except KeyError:  # deleted
            raise AttributeError(
                f"{type(self).__name__!r} object has no attribute {name!r}", name=name, obj=self
            ) from None

    def set_(self: LazyCounts, value: Any) -> None:
        _make_state(self)[name] = value

    def delete(self: LazyCounts) -> None:
        try:
            del _make_state(self)[name]
        except KeyError:
            raise AttributeError(name) from None

    return property(get, set_, delete, f"qiskit's ``Counts.{name}``, made on first read.")


class LazyCounts(Counts):
    """A ``qiskit.result.Counts`` whose attributes are made the first time one is read.

    ``get_counts`` of a :class:`LazyResult` fills only the keys and counts (from the
    native outline): qiskit's constructor also makes ``hex_raw`` and ``int_raw``, the
    same histogram twice more, and most callers read only the bitstrings. Reading any of
    ``hex_raw``, ``int_raw``, ``creg_sizes``, ``memory_slots``, ``time_taken`` or the
    ``__dict__`` (so ``hex_outcomes``, ``int_outcomes``, ``vars``, pickling and copying
    too) makes all five as qiskit's constructor does. Every other behaviour is qiskit's
    ``Counts`` (a ``dict``); ``__class__`` says ``Counts``, and it pickles and copies as a
    plain ``Counts`` (byte for byte the pickle of qiskit's); ``__getstate__``,
    ``__reduce__`` and ``__reduce_ex__`` answer what a plain ``Counts`` answers.

    Memory: until one of those attributes is first read, it holds a reference to the whole
    ``ResultOutline`` it came from (the outline of every experiment of the document, not
    only its own), so an unread ``LazyCounts`` kept alone keeps that outline alive; the
    first read drops the reference."""

    # The outline and experiment index the attributes come from; ``None`` once made.
    __slots__ = ("_qdispatch_index", "_qdispatch_outline")
    _qdispatch_index: int
    _qdispatch_outline: _native.ResultOutline | None

    hex_raw = _made_on_first_read("hex_raw")
    int_raw = _made_on_first_read("int_raw")
    creg_sizes = _made_on_first_read("creg_sizes")
    memory_slots = _made_on_first_read("memory_slots")
    time_taken = _made_on_first_read("time_taken")

    # Shadows the instance dict (``vars``, ``copy``…), to make it whole first.
    @property
    def __dict__(self) -> dict[str, Any]:  # type: ignore[override]  # read-only, as a view
        return _make_state(self)

    @property  # type: ignore[misc]  # read-only: pickle checks it, see ``__reduce_ex__``
    def __class__(self) -> type[Counts]:
        # ``type()`` still says ``LazyCounts``; ``isinstance`` reads both.
        return Counts

    def __getstate__(self) -> dict[str, Any]:
        # ``object.__getstate__`` would add the slots (outline and index) to the state;
        # qiskit's ``Counts`` gives its ``__dict__`` itself.
        return _make_state(self)

    def __reduce_ex__(self, protocol: Any) -> Any:
        # What a plain ``Counts`` of the same keys and state reduces to, so the pickle is
        # qiskit's byte for byte (the slots and this class stay out of it; pickle accepts
        # ``Counts`` in ``__newobj__``'s arguments because ``__class__`` says so).
        return _plain_counts(self).__reduce_ex__(protocol)

    def __reduce__(self) -> Any:
        # ``object.__reduce__`` (protocol 0's ``copyreg._reduce_ex``) refuses a class
        # with ``__slots__``; a plain ``Counts`` gives ``_reconstructor`` and its state.
        return _plain_counts(self).__reduce__()


def _plain_counts(counts: LazyCounts) -> Counts:
    """A plain ``Counts`` of the same keys and (made) state as ``counts``."""
    plain = Counts.__new__(Counts)
    dict.update(plain, counts)
    _COUNTS_STATE.__get__(plain).update(_make_state(counts))
    return plain


def _lazy_counts(outline: _native.ResultOutline, index: int) -> LazyCounts | None:
    counts = outline.bin_counts(index, LazyCounts)
    if counts is not None:
        counts._qdispatch_outline = outline
        counts._qdispatch_index = index
    return counts


class _Source:
    """One result document: its bytes, its outline, and how many of its experiments have
    been built (a lookup by name trusts the outline's names only while none has been)."""

    __slots__ = ("_names", "built", "outline", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = bytes(raw)
        self.outline = _native.ResultOutline(self.raw)
        self.built = 0
        self._names: list[str | None] | None = None

    def names(self) -> list[str | None]:
        if self._names is None:
            self._names = self.outline.names()
        return self._names

    def experiments(self) -> list[ExperimentResult]:
        new = object.__new__
        out = []
        for index in range(len(self.outline)):
            exp = new(_LazyExperimentResult)
            exp.__dict__[_LAZY] = (self, index)
            out.append(exp)
        return out


def _build(exp: ExperimentResult) -> None:
    """Builds an unbuilt experiment from its bytes, turning it into a plain
    ``ExperimentResult``; waits for another thread building it."""
    with _BUILD_LOCK:
        state = exp.__dict__
        lazy = state.get(_LAZY)
        if lazy is None:
            return
        source, index = lazy
        start, end = source.outline.span(index)
        built = ExperimentResult.from_dict(orjson.loads(memoryview(source.raw)[start:end]))
        state.clear()
        state.update(built.__dict__)
        object.__setattr__(exp, "__class__", ExperimentResult)
        source.built += 1


class _LazyExperimentResult(ExperimentResult):
    """An ``ExperimentResult`` not built yet: any attribute read or written builds it
    (qiskit's ``from_dict`` of its bytes), after which it is a plain ``ExperimentResult``."""

    def __getattr__(self, name: str) -> Any:
        _build(self)
        return getattr(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        _build(self)
        setattr(self, name, value)

    def __delattr__(self, name: str) -> None:
        _build(self)
        delattr(self, name)

    def __dir__(self) -> list[str]:
        _build(self)
        return dir(self)

    def __reduce_ex__(self, protocol: Any) -> Any:
        _build(self)
        return self.__reduce_ex__(protocol)

    @property
    def _metadata(self) -> dict[str, Any]:
        # The class attribute ``ExperimentResult._metadata`` would answer otherwise.
        _build(self)
        metadata: dict[str, Any] = self._metadata
        return metadata


class _NameIndex:
    """The first position of each name in a result's experiments, valid while the list
    holds the same unbuilt experiments."""

    __slots__ = ("first", "repeated", "snapshot", "sources")

    def __init__(
        self,
        snapshot: list[Any],
        sources: dict[_Source, int],
        first: dict[str, int],
        repeated: set[str],
    ) -> None:
        self.snapshot = snapshot
        self.sources = sources
        self.first = first
        self.repeated = repeated

    def valid(self, results: Any) -> bool:
        return all(s.built == n for s, n in self.sources.items()) and results == self.snapshot


_NAME_INDEXES: weakref.WeakKeyDictionary[LazyResult, _NameIndex] = weakref.WeakKeyDictionary()


def _name_index(results: Any) -> _NameIndex | None:
    """The names of ``results`` from the outlines, or ``None`` when any experiment has
    been built (or replaced): qiskit then reads the headers."""
    if not isinstance(results, list):
        return None
    first: dict[str, int] = {}
    repeated: set[str] = set()
    sources: dict[_Source, int] = {}
    for position, exp in enumerate(results):
        if type(exp) is not _LazyExperimentResult:
            return None
        lazy = exp.__dict__.get(_LAZY)
        if lazy is None:
            return None
        source, index = lazy
        if source not in sources:
            if not source.outline.names_ok:
                return None
            sources[source] = source.built
        name = source.names()[index]
        if name is None:
            continue
        if name in first:
            repeated.add(name)
        else:
            first[name] = position
    return _NameIndex(list(results), sources, first, repeated)


def _repeated_name(name: str) -> None:
    warnings.warn(  # qiskit's words
        f'Result object contained multiple results matching name "{name}", '
        "only first match will be returned. Use an integer index to "
        "retrieve results for all entries.",
        stacklevel=4,
    )


class LazyResult(Result):
    """A ``qiskit.result.Result`` whose experiments are built on first access and whose
    counts come from the native outline of its JSON (see :mod:`qdispatch.results`).
    Equal, accessor by accessor, to ``Result.from_dict`` of the same JSON; it pickles and
    deep-copies as a plain ``Result``."""

    def _position(self, name: str) -> int | None:
        """The position of the experiment named ``name``, ``-1`` when there is none;
        ``None`` when only qiskit's scan of the headers can say."""
        index = _NAME_INDEXES.get(self)
        if index is None or not index.valid(self.results):
            index = _name_index(self.results)
            if index is None:
                _NAME_INDEXES.pop(self, None)
                return None
            _NAME_INDEXES[self] = index
        return index.first.get(name, -1)

    def _repeated(self, name: str) -> bool:
        index = _NAME_INDEXES.get(self)
        return index is not None and name in index.repeated

    def _get_experiment(self, key: Any = None) -> Any:
        if isinstance(key, QuantumCircuit):
            key = key.name
        if isinstance(key, str):
            position = self._position(key)
            if position == -1:
                raise QiskitError(f'Data for experiment "{key}" could not be found.')
            if position is not None:
                if self._repeated(key):
                    _repeated_name(key)
                key = position
        return super()._get_experiment(key)

    def _fast_counts(self, key: Any) -> Any:
        """The counts of experiment ``key`` from the outline; ``None`` when qiskit must
        build them (a built or foreign experiment, a failed one, counts the outline does
        not hold, a key qiskit would refuse)."""
        if isinstance(key, QuantumCircuit):
            key = key.name
        name = None
        if isinstance(key, str):
            name, key = key, self._position(key)
            if key is None or key == -1:
                return None
        if not isinstance(key, int):
            return None
        try:
            exp = self.results[key]
        except (IndexError, TypeError):
            return None
        if type(exp) is not _LazyExperimentResult:
            return None
        lazy = exp.__dict__.get(_LAZY)
        if lazy is None:
            return None
        source, index = lazy
        counts = _lazy_counts(source.outline, index)
        if counts is not None and name is not None and self._repeated(name):
            # qiskit's get_counts looks the name up three times, warning each time.
            for _ in range(3):
                _repeated_name(name)
        return counts

    def get_counts(self, experiment: Any = None) -> Any:
        """Get the histogram data of an experiment (qiskit's ``Result.get_counts``)."""
        if experiment is not None:
            counts = self._fast_counts(experiment)
            return counts if counts is not None else super().get_counts(experiment)
        keys: Sequence[Any] = range(len(self.results))
        out = []
        for key in keys:
            counts = self._fast_counts(key)
            out.append(counts if counts is not None else super().get_counts(key))
        return out[0] if len(out) == 1 else out

    def __reduce_ex__(self, protocol: Any) -> Any:
        # A plain ``Result`` with the same state (pickle's ``__newobj__`` would insist on
        # this class); its experiments pickle as plain ones.
        reconstruct = copyreg._reconstructor  # type: ignore[attr-defined]  # not in typeshed
        return (reconstruct, (Result, object, None), self.__dict__)


def _lazy_result(top: dict[str, Any], experiments: list[ExperimentResult]) -> Result:
    top["results"] = experiments
    return LazyResult(**top)


def result_from_json(raw: bytes) -> Result:
    """The ``qiskit.result.Result`` of a result document (the service's JSON), equal to
    ``Result.from_dict(orjson.loads(raw))``, its experiments built on access."""
    try:
        source = _Source(raw)
    except _native.MalformedPayloadError:
        return Result.from_dict(orjson.loads(raw))
    return _lazy_result(orjson.loads(source.outline.top), source.experiments())


def combine_result_json(parts: Sequence[bytes], job_id: str) -> Result:
    """One ``Result`` of the experiments of every document of ``parts`` in order: the
    first document's fields, ``success`` only if every part's is, and ``job_id``."""
    if not parts:
        raise ValueError("no results to combine")
    try:
        sources = [_Source(raw) for raw in parts]
    except _native.MalformedPayloadError:
        return _combine_eagerly(parts, job_id)
    tops = [orjson.loads(source.outline.top) for source in sources]
    merged = tops[0]
    for top in tops:
        merged["success"] = merged.get("success", True) and top.get("success", True)
    merged["job_id"] = job_id
    return _lazy_result(merged, [exp for source in sources for exp in source.experiments()])


def _combine_eagerly(parts: Sequence[bytes], job_id: str) -> Result:
    merged: dict[str, Any] | None = None
    experiments: list[Any] = []
    for raw in parts:
        part = orjson.loads(raw)
        experiments.extend(part.get("results", []))
        if merged is None:
            merged = part
        merged["success"] = merged.get("success", True) and part.get("success", True)
    assert merged is not None
    merged["results"] = experiments
    merged["job_id"] = job_id
    return Result.from_dict(merged)
