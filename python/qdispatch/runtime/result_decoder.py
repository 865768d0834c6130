"""``ResultDecoder`` and ``RunnerResult``: how a runtime job's results are decoded.

A program's results (and interim results) come from the service as JSON in the runtime
encoding (:mod:`qdispatch.encoding`); a result decoder turns them into Python objects.
``RuntimeJob.result()``, ``interim_results()`` and the streaming callback use the job's
decoders, or the one they are given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qiskit.result import Result

from ..encoding import loads

__all__ = ["ResultDecoder", "RunnerResult"]


class ResultDecoder:
    """Decodes a runtime job's result (and interim results) from the service's JSON.

    The default decodes the ``{"__type__", "__value__"}`` convention
    (:mod:`qdispatch.encoding`): primitives' results come back as qiskit
    ``PrimitiveResult`` objects. Subclass it and override :meth:`decode` for a program
    whose results need more.
    """

    #: Classes the results may hold as ``settings`` values besides the built-in ones.
    settings_types: tuple[type, ...] = ()

    @classmethod
    def decode(cls, raw_result: str | bytes) -> Any:
        """Convert the result JSON to Python objects."""
        return loads(raw_result, settings_types=cls.settings_types)


class RunnerResult(ResultDecoder):
    """Decoder of ``circuit-runner`` results: a qiskit :class:`~qiskit.result.Result`."""

    @classmethod
    def decode(cls, raw_result: str | bytes) -> Result:
        """Convert the result JSON to a qiskit ``Result``."""
        decoded = super().decode(raw_result)
        return decoded if isinstance(decoded, Result) else Result.from_dict(decoded)


def _decoders(
    decoder: type[ResultDecoder] | Sequence[type[ResultDecoder]] | None,
) -> tuple[type[ResultDecoder], type[ResultDecoder]]:
    """(interim decoder, final decoder) from a ``result_decoder`` argument."""
    if decoder is None:
        return ResultDecoder, ResultDecoder
    if isinstance(decoder, Sequence):
        if len(decoder) != 2:
            raise ValueError("result_decoder must be one decoder or (interim, final) decoders")
        return decoder[0], decoder[1]
    return decoder, decoder
