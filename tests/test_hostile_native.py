"""Hostile payloads against the native decoders, the Qobj validator and the job-name
filter: each must be refused quickly, in bounded memory, with a 4xx naming the limit, and
leave nothing behind (issue 9). Any user with a token can send these."""

from __future__ import annotations

import base64
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import orjson
import psutil
import pytest

from qdispatch import _native
from qobjs import bell_qobj
from support import ServiceProcess, submit

MIB = 1 << 20


def zlib_bomb(n_mib: int, prefix: bytes = b"") -> bytes:
    """A zlib stream of ``prefix`` then ``n_mib`` MiB of zeros, about 1 KiB per MiB: one
    MiB compressed once and repeated (a full flush makes every repeat the same bytes), the
    Adler-32 of the whole computed directly (zeros leave ``a`` alone and add ``a`` to ``b``
    per byte)."""
    c = zlib.compressobj(9)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    mib = bytes(MIB)
    segment = c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH)
    assert segment == c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH)
    adler = zlib.adler32(prefix)
    a, b = adler & 0xFFFF, adler >> 16
    b = (b + n_mib * MIB * a) % 65521
    final = b"\x03\x00"  # an empty fixed-Huffman block marked final
    return head + segment * n_mib + final + ((b << 16) | a).to_bytes(4, "big")


def npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    """A version 1.0 ``.npy`` preamble, padded as numpy pads it."""
    dims = ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "")
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': ({dims}), }}"
    text += " " * (-(10 + len(text) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@contextmanager
def peak_rss_growth(pid: int | None = None) -> Iterator[Callable[[], int]]:
    """Samples a process's RSS every millisecond; yields a getter of the peak growth."""
    proc = psutil.Process(pid)
    start = proc.memory_info().rss
    peak = [start]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield lambda: peak[0] - start
    finally:
        stop.set()
        thread.join()


# A 4 MB payload inflating to 4 GiB: the one that grew the service by 8.3 GiB.
BOMB_4G = b64(zlib_bomb(4096))


# --- the decoders, in process ----------------------------------------------------------


def test_zlib_bomb_stops_at_the_default_limit_quickly_in_bounded_memory() -> None:
    assert _native.DEFAULT_MAX_PAYLOAD_BYTES == 256 * MIB
    started = time.monotonic()
    with (
        peak_rss_growth() as growth,
        pytest.raises(_native.PayloadError, match=f"limit of {256 * MIB} bytes"),
    ):
        _native.unpack_payload(BOMB_4G)
    assert time.monotonic() - started < 5
    assert growth() < 300 * MIB, growth() / MIB


def test_zlib_bomb_stops_at_a_given_limit() -> None:
    bomb = b64(zlib_bomb(512))  # 512 MiB in 0.5 MB, within the base64 bound of 1 MiB
    with (
        peak_rss_growth() as growth,
        pytest.raises(_native.PayloadError, match="inflates past the limit of 1048576 bytes"),
    ):
        _native.unpack_payload(bomb, max_bytes=MIB)
    assert growth() < 32 * MIB, growth() / MIB
    small = b64(zlib_bomb(2))
    assert len(_native.unpack_payload(small, max_bytes=2 * MIB)) == 2 * MIB
    with pytest.raises(_native.PayloadError, match="max_bytes"):
        _native.unpack_payload(small, max_bytes=2 * MIB - 1)


def test_base64_longer_than_the_limit_is_refused_before_decoding() -> None:
    text = "A" * (8 * MIB)
    with pytest.raises(_native.PayloadError, match="base64 characters"):
        _native.unpack_payload(text, max_bytes=MIB)
    with pytest.raises(_native.PayloadError, match="base64 characters"):
        _native.decode_ndarray(text, max_bytes=MIB)


def test_npy_header_claiming_a_huge_shape_is_refused_before_inflating() -> None:
    # 100 bytes of header claiming 2^40 float64s, followed by 4 GiB of zeros.
    bomb = b64(zlib_bomb(4096, npy_header("<f8", (1 << 20, 1 << 20))))
    started = time.monotonic()
    with (
        peak_rss_growth() as growth,
        pytest.raises(_native.PayloadError, match="8796093022208 bytes of data"),
    ):
        _native.decode_ndarray(bomb)
    assert time.monotonic() - started < 1
    assert growth() < 32 * MIB
    # Shapes whose product overflows 64 bits are refused too, not wrapped around.
    huge = b64(zlib.compress(npy_header("<c16", (2**63, 4))))
    with pytest.raises(_native.PayloadError, match="more than 2\\^64"):
        _native.decode_ndarray(huge)


def test_npy_data_longer_than_its_shape_stops_after_one_byte_more() -> None:
    bomb = b64(zlib_bomb(4096, npy_header("<f8", (1,))))
    with (
        peak_rss_growth() as growth,
        pytest.raises(_native.PayloadError, match="more than 8 data bytes"),
    ):
        _native.decode_ndarray(bomb)
    assert growth() < 32 * MIB


def test_npy_of_an_unsized_dtype_is_held_to_the_limit() -> None:
    bomb = b64(zlib_bomb(512, npy_header("zz", (1,))))
    with pytest.raises(_native.PayloadError, match="inflates past the limit of 1048576 bytes"):
        _native.decode_ndarray(bomb, max_bytes=MIB)


def test_npy_header_nesting_and_dimensions_are_bounded() -> None:
    deep = "{'descr': " + "[" * 5000 + "'<f8'" + "]" * 5000 + ", 'fortran_order': False}"
    text = deep + " " * (-(12 + len(deep) + 1) % 64) + "\n"
    file = b"\x93NUMPY\x02\x00" + struct.pack("<I", len(text)) + text.encode()
    with pytest.raises(_native.PayloadError, match="nest deeper than 32") as info:
        _native.decode_ndarray(b64(zlib.compress(file)))
    assert len(str(info.value)) < 500  # the header is quoted, not echoed whole
    many = b64(zlib.compress(npy_header("|u1", (1,) * 100) + b"x"))
    with pytest.raises(_native.PayloadError, match="100 dimensions"):
        _native.decode_ndarray(many)


def test_bit_array_counts_are_not_sized_by_num_bits_or_positions() -> None:
    assert _native.bitarray_counts(b"", 2**60) == {}
    with pytest.raises(_native.PayloadError, match="positions exceed the limit"):
        _native.bitarray_counts_by_position(b"", 3, 2**40)
    with pytest.raises(_native.PayloadError, match="not whole shots"):
        _native.bitarray_counts(b"\x01\x02", 2**60)
    distinct = bytes(range(256))
    with pytest.raises(_native.PayloadError, match="101 distinct outcomes"):
        _native.bitarray_counts(distinct, 8, max_bytes=800)
    with pytest.raises(_native.PayloadError, match="max_bytes"):
        _native.bitarray_int_counts(distinct, 8, max_bytes=800)
    assert len(_native.bitarray_counts(distinct, 8)) == 256


def test_name_pattern_is_linear_and_bounded() -> None:
    pattern = _native.NamePattern("^(a|aa)+$")
    started = time.monotonic()
    assert not pattern.search("a" * 100_000 + "!")
    assert time.monotonic() - started < 0.5
    assert pattern.search("aaaa")
    assert pattern.pattern == "^(a|aa)+$"
    assert _native.NamePattern("bell").search("my-bell-1")  # a search, not a full match
    for bad, problem in [
        ("(", "bad name pattern"),
        (r"(a)\1", "backreferences are not supported"),
        ("(?=a)", "look-around"),
        (r"(\w{100}){100}", "size limit"),
        ("a" * 1025, "1025 bytes; the limit is 1024"),
    ]:
        with pytest.raises(_native.InvalidNamePatternError, match=problem):
            _native.NamePattern(bad)
    assert _native.MAX_NAME_PATTERN_BYTES == 1024


# --- through a real service ------------------------------------------------------------


def job_count(client: httpx.Client) -> int:
    count: int = client.get("/jobs", params={"limit": 1}).json()["count"]
    return count


def post_raw(client: httpx.Client, body: bytes) -> httpx.Response:
    return client.post("/jobs", content=body, headers={"Content-Type": "application/json"})


def refused(service: ServiceProcess, body: bytes, code: str, *needles: str) -> dict[str, Any]:
    """Posts ``body``; asserts a 400 with ``code`` and every needle, and no new job."""
    client = service.client()
    before = job_count(client)
    answer = post_raw(client, body)
    assert answer.status_code == 400, answer.text[:500]
    error: dict[str, Any] = answer.json()["error"]
    assert error["code"] == code, error
    for needle in needles:
        assert needle in error["message"], error["message"][:500]
    assert len(error["message"]) < 2000  # user strings are quoted, not echoed whole
    assert job_count(client) == before
    return error


def test_tiny_qobj_asking_for_2_31_memory_slots(service: ServiceProcess) -> None:
    qobj = b'{"experiments":[{"header":{"memory_slots":2147483648},"instructions":[]}]}'
    body = b'{"backend":"aer_simulator","qobj":' + qobj + b"}"
    assert len(body) < 120
    refused(
        service,
        body,
        "invalid_qobj",
        "memory_slots=2147483648",
        "1024 memory slots allowed (max_memory_slots)",
    )


def experiment_body(header: dict[str, Any], instructions: bytes = b"", **top: Any) -> bytes:
    qobj = (
        b'{"config": '
        + orjson.dumps({"shots": 8, **top})
        + b', "experiments": [{"header": '
        + orjson.dumps(header)
        + b', "instructions": ['
        + instructions
        + b"]}]}"
    )
    return b'{"backend": "aer_simulator", "qobj": ' + qobj + b"}"


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        (
            experiment_body({"creg_sizes": [["c", 2**40]]}),
            ("header.creg_sizes hold 1099511627776 bits", "max_memory_slots"),
        ),
        (
            experiment_body({"creg_sizes": [["c", 0]] * 5000}),
            ("lists 5000 registers",),
        ),
        (
            experiment_body({"qreg_sizes": [["q", 2**31]]}),
            ("qreg_sizes hold 2147483648 bits",),
        ),
        (experiment_body({"n_qubits": 2**31}), ("header.n_qubits=2147483648",)),
        (
            experiment_body({"clbit_labels": [["c", 0]] * 2000}),
            ("clbit_labels has 2000 labels",),
        ),
        (experiment_body({}, memory_slots=2**62), ("config.memory_slots=4611686018427387904",)),
        (
            experiment_body({"name": "n" * 5000}),
            ("is 5000 bytes; at most 1024 are allowed (max_name_bytes)",),
        ),
        (
            experiment_body({"metadata": {"blob": "x" * 100_000}}),
            ("(max_header_bytes)",),
        ),
        (
            experiment_body({}, blob="x" * 100_000),
            ("config is 100", "(max_header_bytes)"),
        ),
        (
            # Without memory_slots a worker sized the register by the highest slot used.
            experiment_body({}, b'{"name": "measure", "qubits": [0], "memory": [2147483647]}'),
            ("memory slot 2147483647 is outside the 1024 memory slots allowed",),
        ),
        (
            experiment_body({}, b'{"name": "barrier", "qubits": [' + b"0," * 100_000 + b"0]}"),
            ("lists 100001 qubits, but backend 'aer_simulator' has",),
        ),
        (
            experiment_body({}, b'{"name": "barrier", "qubits": [' + b"1," * 60_000 + b"1]}"),
            ("qubit 1 appears twice",),
        ),
        (
            experiment_body({}, b'{"name": "barrier", "params": [' + b"0," * 1000 + b"0]}"),
            ("has 1001 parameters; at most 64",),
        ),
        (
            experiment_body(
                {},
                b'{"name": "bfunc", "register": 1099511627776, "mask": "0x1", '
                b'"relation": "==", "val": "0x1"}',
            ),
            ("register 1099511627776 is outside the register slots 0..4096",),
        ),
        (
            experiment_body(
                {},
                b'{"name": "bfunc", "register": 1, "mask": "0x' + b"f" * 10_000 + b'", '
                b'"relation": "==", "val": "0x1"}',
            ),
            ("bfunc mask has 10000 hex digits",),
        ),
        (
            experiment_body({}, b'{"name": "' + b"g" * 100_000 + b'", "qubits": [0]}'),
            ("is not supported by backend", "(100000 bytes)"),
        ),
    ],
    ids=lambda v: None if isinstance(v, bytes) else v[0][:30],
)
def test_qobj_sizes_over_the_limits(
    service: ServiceProcess, body: bytes, needles: tuple[str, ...]
) -> None:
    refused(service, body, "invalid_qobj", *needles)


def test_a_million_instructions_in_one_experiment(service: ServiceProcess) -> None:
    body = experiment_body({}, b",".join([b'{"name":"x","qubits":[0]}'] * 1_000_000))
    started = time.monotonic()
    with peak_rss_growth(service.proc.pid if service.proc else None) as growth:
        refused(
            service,
            body,
            "invalid_qobj",
            "more than 100000 instructions",
            "(max_instructions)",
        )
    assert time.monotonic() - started < 10
    # The body itself is 26 MB; the validator keeps one instruction at a time.
    assert growth() < 200 * MIB, growth() / MIB


def test_deeply_nested_json_is_refused(service: ServiceProcess) -> None:
    # The validator skips metadata without recursing, but the workers' parsers recurse.
    deep = b"[" * 20_000 + b"]" * 20_000
    qobj = b'{"experiments": [{"header": {"metadata": {"d": ' + deep + b'}}, "instructions": []}]}'
    body = b'{"backend": "aer_simulator", "qobj": ' + qobj + b"}"
    refused(service, body, "invalid_qobj", "deeper than 64 levels")
    assert service.client().get("/info").status_code == 200


def test_many_experiments_within_the_count_are_checked_one_at_a_time(
    service: ServiceProcess,
) -> None:
    # 300 experiments (the limit), the last one bad: refused, naming it.
    good = b'{"instructions": [{"name": "h", "qubits": [0]}]}'
    bad = b'{"header": {"memory_slots": 99999}, "instructions": []}'
    body = (
        b'{"backend": "aer_simulator", "qobj": {"experiments": ['
        + b",".join([good] * 299 + [bad])
        + b"]}}"
    )
    refused(service, body, "invalid_qobj", "experiment 299: header.memory_slots=99999")


def test_program_qobj_inputs_are_bounded_too(service: ServiceProcess) -> None:
    qobj = {"experiments": [{"header": {"memory_slots": 2**31}, "instructions": []}]}
    body = orjson.dumps(
        {
            "program_id": "sampler",
            "backend": "aer_simulator",
            "params": {"circuits": qobj},
        }
    )
    refused(service, body, "invalid_params", "circuits:", "max_memory_slots")


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ({"__type__": "QuantumCircuit", "__value__": BOMB_4G}, "limit of 268435456 bytes"),
        (
            {
                "__type__": "ndarray",
                "__value__": b64(zlib_bomb(4096, npy_header("<f8", (2**29,)))),
            },
            "4294967296 bytes of data",
        ),
        (
            {"__type__": "ndarray", "__value__": b64(zlib_bomb(4096, npy_header("<f8", (4,))))},
            "more than 32 data bytes",
        ),
    ],
    ids=["circuit-bomb", "npy-shape", "npy-data-bomb"],
)
def test_decompression_bombs_in_program_params(
    service: ServiceProcess, value: dict[str, Any], needle: str
) -> None:
    body = orjson.dumps(
        {"program_id": "sampler", "backend": "aer_simulator", "params": {"pubs": [], "x": value}}
    )
    assert len(body) < 6 * MIB
    started = time.monotonic()
    with peak_rss_growth(service.proc.pid if service.proc else None) as growth:
        refused(service, body, "invalid_params", "params do not decode", needle)
    assert time.monotonic() - started < 10
    assert growth() < 400 * MIB, growth() / MIB


def test_catastrophic_name_pattern_does_not_freeze_the_service(service: ServiceProcess) -> None:
    client = service.client()
    submit(client, "aer_simulator", bell_qobj(), name="a" * 40 + "!")
    answers: dict[str, Any] = {}

    def listing() -> None:
        started = time.monotonic()
        answers["list"] = service.client().get("/jobs", params={"name": "^(a|aa)+$"})
        answers["list_s"] = time.monotonic() - started

    thread = threading.Thread(target=listing)
    thread.start()
    started = time.monotonic()
    other = client.get("/info")
    other_s = time.monotonic() - started
    thread.join(30)
    assert other.status_code == 200
    assert other_s < 1.0, other_s
    assert answers["list"].status_code == 200
    assert answers["list_s"] < 1.0, answers["list_s"]
    assert answers["list"].json()["count"] == 0
    matching = client.get("/jobs", params={"name": "^a{40}!$"}).json()
    assert matching["count"] == 1


@pytest.mark.parametrize(
    ("pattern", "needle"),
    [
        ("(", "bad name pattern"),
        (r"(a)\1", "backreferences are not supported"),
        ("(?<=a)b", "look-around"),
        ("a" * 2000, "2000 bytes; the limit is 1024"),
        (r"(\w{100}){100}", "size limit"),
    ],
    ids=["unbalanced", "backreference", "lookbehind", "too-long", "too-big"],
)
def test_invalid_name_patterns_are_400(service: ServiceProcess, pattern: str, needle: str) -> None:
    answer = service.client().get("/jobs", params={"name": pattern})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_request"
    assert needle in error["message"], error["message"]
