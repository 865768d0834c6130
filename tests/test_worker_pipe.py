"""The service reads a busy worker's pipe without ever waiting on it
(``server/pipeframes.py``, ``LocalExecutor._watch``): a worker stopped part way through a
message holds only its own job, which ends at the time limit, and a message header
announcing more than the service's limit ends its job before anything is allocated.

The faults are injected by programs from ``--programs-dir`` that write to their worker's
pipe themselves, as a hostile program could: a partial frame, then ``SIGSTOP``; a header
announcing 2**60 bytes."""

from __future__ import annotations

import asyncio
import os
import pickle
import random
import struct
import textwrap
import threading
import time
from collections.abc import Callable
from multiprocessing import Pipe
from pathlib import Path

import httpx
import orjson
import pytest

from qdispatch import encoding
from qdispatch.codes import RESULT_TOO_LARGE, TIME_LIMIT_EXCEEDED
from qdispatch.constants import DONE, ERROR
from qdispatch.server.executors import LocalExecutor, _Worker
from qdispatch.server.pipeframes import FrameError, FrameReader
from qobjs import bell_qobj
from support import ServiceProcess, submit, wait_final

# Finds the worker's end of its pipe to the service (the one open duplex connection) and
# writes to it directly.
PROGRAM = textwrap.dedent(
    """
    import gc
    import os
    import signal
    import struct
    import time
    from multiprocessing.connection import Connection

    def estimate(inputs):
        return 1, 0

    def main(backend, publisher, how, marker):
        (pipe,) = [
            o for o in gc.get_objects()
            if isinstance(o, Connection) and not o.closed and o.readable and o.writable
        ]
        if how == "stall":
            # A frame of 1000 bytes of which 10 are written: the rest never comes.
            os.write(pipe.fileno(), struct.pack("!i", 1000) + b"x" * 10)
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGSTOP)
        if how == "huge":
            open(marker, "w").close()  # first: the service stops this worker once it reads
            os.write(pipe.fileno(), struct.pack("!i", -1) + struct.pack("!Q", 1 << 60))
        time.sleep(3600)
    """
)

TIME_LIMIT = 20


@pytest.fixture
def pipe_service(tmp_path: Path, service_factory: Callable[..., ServiceProcess]) -> ServiceProcess:
    programs = tmp_path / "programs"
    programs.mkdir()
    (programs / "scribble.py").write_text(PROGRAM)
    return service_factory(
        "--workers",
        "2",
        "--job-time-limit",
        str(TIME_LIMIT),
        "--programs-dir",
        str(programs),
    )


def _scribble(service: ServiceProcess, how: str, marker: Path) -> str:
    body = {
        "program_id": "scribble",
        "backend": "aer_simulator",
        "params": orjson.Fragment(encoding.dumps({"how": how, "marker": str(marker)})),
    }
    answer = service.client().post("/jobs", content=orjson.dumps(body))
    assert answer.status_code == 201, answer.text
    job_id: str = answer.json()["id"]
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert time.monotonic() < deadline, f"the program never ran:\n{service.log()}"
        time.sleep(0.05)
    time.sleep(0.5)  # the service has seen what the program wrote
    return job_id


def test_a_worker_stopped_mid_message_holds_only_its_own_job(
    pipe_service: ServiceProcess, tmp_path: Path
) -> None:
    """A worker writes part of a message and stops (SIGSTOP). The service answers requests
    and runs another job on its other worker meanwhile (each request here would hang for
    good if the event loop waited for the rest of the message: the time limit's timer
    runs on the loop too), and the stopped worker's job ends at the time limit."""
    service = pipe_service
    client = service.client()  # 30 s per request: a stalled loop fails it
    stalled = _scribble(service, "stall", tmp_path / "stalled")
    assert client.get("/info").json()["job_time_limit"] == TIME_LIMIT
    assert client.get(f"/jobs/{stalled}").json()["status"] == "RUNNING"
    other = submit(client, "aer_simulator", bell_qobj(shots=10))["id"]
    assert wait_final(client, other, timeout=120)["status"] == DONE
    failed = wait_final(client, stalled, timeout=120)
    assert failed["status"] == ERROR
    assert failed["error"]["code"] == TIME_LIMIT_EXCEEDED
    assert f"time limit of {TIME_LIMIT} s" in failed["error"]["message"]
    assert len(failed["attempts"]) == 1  # not retried
    # Its worker was replaced: two jobs run again.
    again = [submit(client, "aer_simulator", bell_qobj(shots=10))["id"] for _ in range(2)]
    assert [wait_final(client, job_id)["status"] for job_id in again] == [DONE, DONE]


def test_a_message_announcing_more_than_the_limit_ends_its_job(
    pipe_service: ServiceProcess, tmp_path: Path
) -> None:
    """A header announcing 2**60 bytes is refused when read: the job fails with
    ``result_too_large`` naming the size and the limit, long before its time limit, and
    its worker is replaced."""
    service = pipe_service
    client = service.client()
    job_id = _scribble(service, "huge", tmp_path / "huge")
    failed = wait_final(client, job_id)  # refused when read: not by the time limit (below)
    assert failed["status"] == ERROR
    assert failed["error"]["code"] == RESULT_TOO_LARGE
    assert f"{1 << 60} bytes" in failed["error"]["message"]
    assert "limit" in failed["error"]["message"]
    follow = submit(client, "aer_simulator", bell_qobj(shots=10))["id"]
    assert wait_final(client, follow)["status"] == DONE


def test_a_stopped_idle_worker_does_not_stall_the_task_sent_to_it(
    service_factory: Callable[..., ServiceProcess],
) -> None:
    """The one worker is stopped while idle; a job whose task is larger than the pipe
    takes is sent to it. The write waits, in a thread: the service answers meanwhile, and
    the job ends at the time limit (the worker killed and replaced)."""
    psutil = pytest.importorskip("psutil")
    service = service_factory("--workers", "1", "--job-time-limit", str(TIME_LIMIT))
    client = service.client()
    assert wait_final(client, submit(client, "aer_simulator", bell_qobj())["id"])["status"] == DONE
    assert service.proc is not None
    (worker,) = [
        p
        for p in psutil.Process(service.proc.pid).children()
        if any("spawn_main" in part for part in p.cmdline())
    ]
    big = bell_qobj(shots=10)
    big["experiments"][0]["instructions"][:0] = [{"name": "x", "qubits": [0]}] * 40_000
    assert len(orjson.dumps(big)) > 512 * 1024  # more than a Unix socket pair holds
    worker.suspend()
    try:
        job_id = submit(client, "aer_simulator", big)["id"]
        time.sleep(1.0)  # its task is on its way
        assert client.get("/info").json()["running_jobs"] == 1
        failed = wait_final(client, job_id, timeout=120)
    finally:
        if worker.is_running():
            worker.resume()
    assert failed["status"] == ERROR
    assert failed["error"]["code"] == TIME_LIMIT_EXCEEDED
    follow = submit(client, "aer_simulator", bell_qobj(shots=10))["id"]
    assert wait_final(client, follow)["status"] == DONE


# -- the frames themselves -----------------------------------------------------------------


def _wire(*messages: object) -> bytes:
    """What a multiprocessing connection writes for ``messages``, read off a real pipe."""
    reader, writer = Pipe(duplex=False)
    try:
        for message in messages:
            writer.send(message)
        writer.close()
        chunks = []
        while chunk := os.read(reader.fileno(), 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        reader.close()


def test_frames_fed_in_any_pieces_come_out_whole_and_in_order() -> None:
    messages = [("log", "a"), ("interim", b"x" * 40_000), ("reply", None, 0.5), ("log", "")]
    wire = _wire(*messages)
    # The 8-byte length CPython writes for a message over 2 GiB, here for a small one.
    payload = pickle.dumps(("huge", b"y" * 100))
    wire += struct.pack("!i", -1) + struct.pack("!Q", len(payload)) + payload
    rng = random.Random(5)
    for _ in range(20):
        frames = FrameReader(limit=1 << 20)
        got = []
        at = 0
        while at < len(wire):
            step = rng.choice([1, 3, 7, 4096, 65536])
            frames.feed(wire[at : at + step])
            at += step
            while frames.ready:
                got.append(pickle.loads(frames.pop()))
        assert got == [*messages, ("huge", b"y" * 100)]
        assert frames.partial == 0
        assert not frames.midframe
    # A frame's length alone, its bytes still to come, is a frame begun: a worker that
    # leaves it after its reply is not given the next job.
    frames = FrameReader(limit=1 << 20)
    frames.feed(_wire(messages[2]) + struct.pack("!i", 100))
    assert frames.ready
    assert frames.partial == 0
    frames.pop()
    assert frames.midframe
    # Each read one whole frame, as a small message usually arrives.
    frames = FrameReader(limit=1 << 20)
    for message in messages:
        frames.feed(_wire(message))
        assert pickle.loads(frames.pop()) == message
        assert not frames.ready
        assert frames.partial == 0


def test_a_header_over_the_limit_is_refused_before_its_bytes_are_kept() -> None:
    frames = FrameReader(limit=1000)
    frames.feed(struct.pack("!i", 1000)[:3])  # not yet a header
    with pytest.raises(FrameError, match="1001 bytes, over the service's limit of 1000") as info:
        FrameReader(limit=1000).feed(struct.pack("!i", 1001))
    assert info.value.too_large
    with pytest.raises(FrameError, match="over the service's limit"):
        FrameReader(limit=1000).feed(struct.pack("!i", -1) + struct.pack("!Q", 1 << 60))
    frames = FrameReader(limit=1000)
    with pytest.raises(FrameError, match="malformed") as info:
        frames.feed(struct.pack("!i", -2))
    assert not info.value.too_large


# A program whose thread publishes after main has returned, while its worker may already
# run the next job.
LATE_PROGRAM = textwrap.dedent(
    """
    import threading
    import time

    def estimate(inputs):
        return 1, 0

    def main(backend, publisher, tag, later, run):
        if later:
            def late():
                time.sleep(later)
                publisher.publish({"from": tag})
            threading.Thread(target=late, daemon=True).start()
        publisher.publish({"own": tag})
        time.sleep(run)
        return {"me": tag}
    """
)


def test_a_publish_after_its_job_ended_never_reaches_the_next_job(
    tmp_path: Path, service_factory: Callable[..., ServiceProcess]
) -> None:
    """Job A's thread publishes a second after A returned, while B (the next job on the one
    worker) runs: the event is dropped, and each job's interim results are its own."""
    programs = tmp_path / "programs"
    programs.mkdir()
    (programs / "late.py").write_text(LATE_PROGRAM)
    service = service_factory("--workers", "1", "--programs-dir", str(programs))
    client = service.client()

    def run(**params: object) -> str:
        body = {
            "program_id": "late",
            "backend": "aer_simulator",
            "params": orjson.Fragment(encoding.dumps(params)),
        }
        answer = client.post("/jobs", content=orjson.dumps(body))
        assert answer.status_code == 201, answer.text
        job_id: str = answer.json()["id"]
        assert wait_final(client, job_id)["status"] == DONE
        return job_id

    first = run(tag="A", later=1.0, run=0.0)
    second = run(tag="B", later=0, run=3.0)

    def interim(job_id: str) -> list[object]:
        return [encoding.loads(orjson.dumps(item)) for item in _interim(client, job_id)]

    assert interim(first) == [{"own": "A"}]
    assert interim(second) == [{"own": "B"}]
    assert "events sent after their job ended are dropped" in service.log()


def _interim(client: httpx.Client, job_id: str) -> list[object]:
    answer = client.get(f"/jobs/{job_id}/interim_results")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return body if isinstance(body, list) else body["interim_results"]


def test_the_service_reads_a_busy_worker_one_whole_message_ahead() -> None:
    """While whole messages wait to be taken the service reads no more of the pipe: a
    program publishing faster than the service takes its events is held back by the pipe,
    and the service keeps one message and one read's worth, not all it was sent."""
    service_end, worker_end = Pipe()
    executor = LocalExecutor(1)
    worker = _Worker(None, service_end, None, None)  # type: ignore[arg-type]  # no process
    payload = b"x" * (1 << 20)
    messages = 6

    def publish() -> None:
        for i in range(messages):
            worker_end.send(("interim", i, payload))

    async def run() -> tuple[bool, int, list[int]]:
        executor._watch(worker)
        sender = threading.Thread(target=publish, daemon=True)
        sender.start()
        await asyncio.sleep(1.0)  # nothing takes the messages meanwhile
        assert worker.frames is not None
        held = sum(len(frame) for frame in worker.frames._frames) + worker.frames.partial
        still_sending = sender.is_alive()  # blocked: the pipe is full, the service waits
        taken = [(await executor._receive(worker))[1] for _ in range(messages)]
        sender.join(10)
        executor._unwatch(worker)
        return still_sending, held, taken

    try:
        still_sending, held, taken = asyncio.run(run())
    finally:
        service_end.close()
        worker_end.close()
    assert still_sending
    assert held < 2 * len(payload)
    assert taken == list(range(messages))
