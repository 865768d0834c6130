"""``qdispatch demo``: random circuits through the local service, end to end.

Starts (or finds) the local service, splits the circuits into jobs of at most the
backend's ``max_experiments``, submits them, follows them on one WebSocket with a progress
bar, fetches the results and prints a summary. It speaks the wire protocol directly
(docs/protocol.md); the Qiskit-style client classes are built on the same calls.
"""

from __future__ import annotations

import gzip
import time
import urllib.request
from collections import Counter
from typing import Any

import orjson


class _Http:
    """Just enough HTTP for the demo: JSON in, JSON out, bearer token."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, body: bytes | None = None, **headers: str) -> Any:
        request = urllib.request.Request(
            self.url + path, data=body, method=method, headers={**self.headers, **headers}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return orjson.loads(response.read())


def run_demo(n_circuits: int, backend: str, shots: int, workers: int | None) -> dict[str, Any]:
    """Run the demo and return its summary figures."""
    from qiskit import transpile
    from qiskit.circuit.random import random_circuit
    from qiskit.providers.fake_provider import GenericBackendV2
    from qiskit.result import Result
    from tqdm import tqdm
    from websockets.sync.client import connect

    from .assembler import circuits_to_qobj_json
    from .local import find_or_start

    service = find_or_start(workers=workers)
    try:
        http = _Http(service.url, service.token)
        config = http.call("GET", f"/backends/{backend}/configuration")
        print(f"service {service.url}, backend {backend} ({config['n_qubits']} qubits)")

        circuits = [
            random_circuit(5, 8, max_operands=2, measure=True, seed=i) for i in range(n_circuits)
        ]
        if not config["simulator"]:
            target = GenericBackendV2(
                config["n_qubits"],
                basis_gates=config["basis_gates"],
                coupling_map=config["coupling_map"],
            )
            circuits = transpile(circuits, target, optimization_level=1, seed_transpiler=1)
        chunk = config["max_experiments"]
        start = time.perf_counter()
        job_ids: list[str] = []
        for first in range(0, n_circuits, chunk):
            qobj = circuits_to_qobj_json(
                circuits[first : first + chunk], shots=shots, seed_simulator=first
            )
            envelope = orjson.dumps({"backend": backend, "name": f"demo-{first}", "tags": ["demo"]})
            body = gzip.compress(envelope[:-1] + b',"qobj":' + qobj + b"}", 1)
            job = http.call("POST", "/jobs", body, **{"Content-Encoding": "gzip"})
            job_ids.append(job["id"])
        submitted = time.perf_counter() - start

        ws_url = service.url.replace("http://", "ws://") + "/stream"
        pending = set(job_ids)
        failed: list[str] = []
        with (
            connect(ws_url, additional_headers=http.headers, max_queue=None) as ws,
            tqdm(total=n_circuits, unit="circuit", desc="running") as bar,
        ):
            ws.send(
                orjson.dumps(
                    {"op": "subscribe", "job_ids": job_ids, "inline_results": False}
                ).decode()
            )
            sizes = {jid: min(chunk, n_circuits - i * chunk) for i, jid in enumerate(job_ids)}
            while pending:
                event = orjson.loads(ws.recv(timeout=600))
                if event.get("type") != "status" or event["job_id"] not in pending:
                    continue
                status = event["data"]["status"]
                if status in ("DONE", "ERROR", "CANCELLED"):
                    pending.discard(event["job_id"])
                    bar.update(sizes[event["job_id"]])
                    if status != "DONE":
                        failed.append(f"{event['job_id']}: {status} {event['data'].get('error')}")
        finished = time.perf_counter() - start

        results = [Result.from_dict(http.call("GET", f"/jobs/{jid}/results")) for jid in job_ids]
        counts = [
            c for r in results for c in (r.get_counts() if len(r.results) > 1 else [r.get_counts()])
        ]
        total = Counter[str]()
        for c in counts:
            total.update(c)
    finally:
        service.stop()
    summary = {
        "circuits": n_circuits,
        "jobs": len(job_ids),
        "failed_jobs": failed,
        "submit_seconds": submitted,
        "total_seconds": finished,
        "circuits_per_second": n_circuits / finished,
        "sample_counts": counts[:3],
        "most_common": total.most_common(3),
    }
    print(
        f"{n_circuits} circuits in {len(job_ids)} jobs: submitted in {submitted:.2f} s, "
        f"all done in {finished:.2f} s ({n_circuits / finished:.0f} circuits/s)"
    )
    for i, c in enumerate(counts[:3]):
        top = dict(sorted(c.items(), key=lambda kv: -kv[1])[:4])
        print(f"  circuit {i}: {top} …")
    if failed:
        print("failed jobs:", *failed, sep="\n  ")
    return summary
