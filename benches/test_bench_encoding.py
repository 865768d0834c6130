"""Runtime-encoding figures, each against qiskit-ibm-runtime in the same run:

(a) decode a PrimitiveResult of 2,000 SamplerPubResults (1024 shots of 5 bits each) and
    take every pub's counts: ``qdispatch.encoding.loads`` + ``get_counts`` (Rust) vs
    ``json.loads(cls=RuntimeDecoder)`` + ``BitArray.get_counts``;
(b) encode the same result: ``qdispatch.encoding.dumps`` vs ``json.dumps(cls=RuntimeEncoder)``.

``make bench``; pytest-benchmark's table sets the peers of a group side by side, and each
benchmark's extra_info has the time per pub result.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from qiskit.primitives.containers import BitArray, DataBin, PrimitiveResult, SamplerPubResult

from qdispatch.encoding import dumps, loads

N_PUBS = 2_000
SHOTS = 1024
NUM_BITS = 5


@pytest.fixture(scope="module")
def result() -> PrimitiveResult[SamplerPubResult]:
    """2,000 sampler pub results, one 5-bit register of 1024 random shots each."""
    rng = np.random.default_rng(7)
    pubs = []
    for i in range(N_PUBS):
        shots = rng.integers(0, 1 << NUM_BITS, size=(SHOTS, 1), dtype=np.uint8)
        data = DataBin(meas=BitArray(shots, NUM_BITS), shape=())
        metadata = {"shots": SHOTS, "circuit_metadata": {"index": i}}
        pubs.append(SamplerPubResult(data, metadata=metadata))
    return PrimitiveResult(pubs, metadata={"version": 2})


@pytest.fixture(scope="module")
def wire(result: PrimitiveResult[SamplerPubResult]) -> str:
    """The result as qiskit-ibm-runtime writes it (what both decoders read)."""
    runtime = pytest.importorskip("qiskit_ibm_runtime")
    return json.dumps(result, cls=runtime.RuntimeEncoder)


def all_counts(decoded: PrimitiveResult[SamplerPubResult]) -> list[dict[str, int]]:
    return [pub.data.meas.get_counts() for pub in decoded]


@pytest.mark.benchmark(group="decode 2k sampler results + counts")
def test_decode_counts_qdispatch(benchmark: Any, wire: str) -> None:
    counts = benchmark.pedantic(lambda: all_counts(loads(wire)), rounds=5, warmup_rounds=1)
    assert len(counts) == N_PUBS
    assert sum(counts[0].values()) == SHOTS
    benchmark.extra_info["us_per_pub"] = benchmark.stats.stats.median / N_PUBS * 1e6


@pytest.mark.benchmark(group="decode 2k sampler results + counts")
def test_decode_counts_runtime(benchmark: Any, wire: str) -> None:
    decoder = pytest.importorskip("qiskit_ibm_runtime").RuntimeDecoder
    counts = benchmark.pedantic(
        lambda: all_counts(json.loads(wire, cls=decoder)), rounds=3, warmup_rounds=1
    )
    assert counts == all_counts(loads(wire))
    benchmark.extra_info["us_per_pub"] = benchmark.stats.stats.median / N_PUBS * 1e6


@pytest.mark.benchmark(group="encode 2k sampler results")
def test_encode_qdispatch(benchmark: Any, result: PrimitiveResult[SamplerPubResult]) -> None:
    out = benchmark.pedantic(lambda: dumps(result), rounds=5, warmup_rounds=1)
    assert len(loads(out)) == N_PUBS
    benchmark.extra_info["us_per_pub"] = benchmark.stats.stats.median / N_PUBS * 1e6


@pytest.mark.benchmark(group="encode 2k sampler results")
def test_encode_runtime(benchmark: Any, result: PrimitiveResult[SamplerPubResult]) -> None:
    encoder = pytest.importorskip("qiskit_ibm_runtime").RuntimeEncoder
    benchmark.pedantic(lambda: json.dumps(result, cls=encoder), rounds=3, warmup_rounds=1)
    benchmark.extra_info["us_per_pub"] = benchmark.stats.stats.median / N_PUBS * 1e6
