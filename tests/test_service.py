"""The job service's REST API against a real service process: circuits with checkable
counts, the job record, filters, idempotency, cancel, users and bad input."""

from __future__ import annotations

import gzip
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest
from qiskit.result import Result

from qdispatch.constants import (
    MAX_BULK_IDS,
    MAX_CLIENT_INFO_ITEMS,
    MAX_NAME_LENGTH,
    MAX_TAG_LENGTH,
    MAX_TAGS,
)
from qobjs import bell_qobj, device_bell, experiment, ghz, measure_all, qobj, slow_qobj
from support import ServiceProcess, submit, wait_final, wait_status


def counts_of(client: Any, job_id: str, index: int = 0) -> dict[str, int]:
    """The job's counts as qiskit bitstrings, through qiskit's own Result."""
    response = client.get(f"/jobs/{job_id}/results")
    assert response.status_code == 200, response.text
    counts: dict[str, int] = Result.from_dict(response.json()).get_counts(index)
    return counts


def test_bell_and_ghz_give_only_the_expected_bitstrings(service: ServiceProcess) -> None:
    client = service.client()
    bell = submit(client, "aer_simulator", bell_qobj(shots=400))
    ghz_job = submit(client, "aer_simulator", qobj([ghz(3), ghz(5)], shots=300))
    assert wait_final(client, bell["id"])["status"] == "DONE"
    assert wait_final(client, ghz_job["id"])["status"] == "DONE"

    counts = counts_of(client, bell["id"])
    assert set(counts) == {"00", "11"}
    assert sum(counts.values()) == 400
    assert min(counts.values()) > 100  # both outcomes, roughly half each
    assert set(counts_of(client, ghz_job["id"], 0)) == {"000", "111"}
    assert set(counts_of(client, ghz_job["id"], 1)) == {"00000", "11111"}

    result = client.get(f"/jobs/{ghz_job['id']}/results").json()
    assert result["job_id"] == ghz_job["id"]
    assert result["results"][1]["header"]["metadata"] == {"test": "ghz5"}


def test_same_seed_same_counts_and_memory(service: ServiceProcess) -> None:
    client = service.client()
    jobs = [
        submit(client, "aer_simulator", bell_qobj(shots=64, seed_simulator=7, memory=True))
        for _ in range(2)
    ]
    results = [wait_final(client, j["id"]) and counts_of(client, j["id"]) for j in jobs]
    assert results[0] == results[1]
    result = Result.from_dict(client.get(f"/jobs/{jobs[0]['id']}/results").json())
    memory = result.get_memory(0)
    assert len(memory) == 64
    assert set(memory) <= {"00", "11"}


@pytest.mark.parametrize("backend", ["fake_generic_5q", "fake_generic_27q"])
def test_noisy_devices_run_with_noise(service: ServiceProcess, backend: str) -> None:
    client = service.client()
    job = submit(client, backend, device_bell(shots=1000))
    assert wait_final(client, job["id"])["status"] == "DONE"
    counts = counts_of(client, job["id"])
    assert counts.get("11", 0) > 800  # mostly the ideal outcome…
    assert len(counts) > 1  # …but noisy


def test_job_record_steps_and_metrics(service: ServiceProcess) -> None:
    client = service.client()
    job = submit(
        client,
        "aer_simulator",
        bell_qobj(),
        name="record",
        tags=["a", "b", "a"],
        experiment_id="exp-1",
        client_info={"qdispatch": "test"},
    )
    assert job["status"] == "QUEUED"
    assert job["tags"] == ["a", "b"]
    assert job["queue_info"] is None  # not computed on create; GET /jobs/{id} has it
    done = wait_final(client, job["id"])
    assert done["status"] == "DONE"
    assert list(done["time_per_step"]) == [
        "CREATED",
        "VALIDATED",
        "QUEUED",
        "RUNNING",
        "COMPLETED",
    ]
    assert done["experiment_id"] == "exp-1"
    assert done["client_info"] == {"qdispatch": "test"}
    assert done["queue_info"] is None
    metrics = client.get(f"/jobs/{job['id']}/metrics").json()
    assert metrics["timestamps"]["finished"] == done["time_per_step"]["COMPLETED"]
    assert metrics["usage"]["seconds"] > 0
    stored = client.get(f"/jobs/{job['id']}/qobj").json()
    assert stored == bell_qobj()


def test_results_served_deflated_when_accepted(service: ServiceProcess) -> None:
    client = service.client()
    job = submit(client, "aer_simulator", bell_qobj())
    wait_final(client, job["id"])
    raw = client.stream("GET", f"/jobs/{job['id']}/results", headers={"Accept-Encoding": "deflate"})
    with raw as response:
        assert response.headers["content-encoding"] == "deflate"
        body = b"".join(response.iter_raw())
    assert orjson.loads(zlib.decompress(body))["job_id"] == job["id"]


def test_compressed_request_bodies(service: ServiceProcess) -> None:
    client = service.client()
    body = orjson.dumps({"backend": "aer_simulator", "qobj": bell_qobj()})
    for encoding, data in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        response = client.post("/jobs", content=data, headers={"Content-Encoding": encoding})
        assert response.status_code == 201, response.text
        assert wait_final(client, response.json()["id"])["status"] == "DONE"


def test_concurrent_retries_with_one_key_make_one_job(service: ServiceProcess) -> None:
    client = service.client()
    body = orjson.dumps({"backend": "aer_simulator", "qobj": qobj([ghz(5)] * 250)})
    headers = {"Idempotency-Key": "racing-key"}
    with ThreadPoolExecutor(6) as pool:
        answers = list(
            pool.map(lambda _: client.post("/jobs", content=body, headers=headers), range(6))
        )
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 200, 200, 201]
    assert len({a.json()["id"] for a in answers}) == 1


def test_every_error_has_the_error_shape(service: ServiceProcess) -> None:
    client = service.client()
    missing = client.get("/no/such/path")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong = client.delete("/jobs")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"
    gz = gzip.compress(orjson.dumps({"ids": ["x"]}))
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    bulk = client.post("/jobs:status", content=gz, headers=headers)
    assert bulk.status_code == 200  # every route takes compressed bodies
    assert bulk.json()["missing"] == ["x"]
    deflate_refused = client.get("/jobs/x/results", headers={"Accept-Encoding": "deflate;q=0"})
    assert deflate_refused.status_code == 404


def test_idempotency_key_returns_the_same_job(service: ServiceProcess) -> None:
    client = service.client()
    body = orjson.dumps({"backend": "aer_simulator", "qobj": bell_qobj(), "name": "idem"})
    headers = {"Idempotency-Key": "retry-me-1"}
    first = client.post("/jobs", content=body, headers=headers)
    again = client.post("/jobs", content=body, headers=headers)
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    listed = client.get("/jobs", params={"name": "^idem$"}).json()
    assert listed["count"] == 1


def test_list_filters_and_paging(service: ServiceProcess) -> None:
    client = service.client()
    ids = [
        submit(client, "aer_simulator", bell_qobj(), name=f"page-{i}", tags=["paging", f"n{i}"])[
            "id"
        ]
        for i in range(5)
    ]
    for job_id in ids:
        wait_final(client, job_id)
    page = client.get("/jobs", params={"tags": "paging", "limit": 2}).json()
    assert page["count"] == 5
    assert [j["id"] for j in page["jobs"]] == ids[::-1][:2]  # newest first
    second = client.get("/jobs", params={"tags": "paging", "limit": 2, "skip": 2}).json()
    assert [j["id"] for j in second["jobs"]] == ids[::-1][2:4]
    oldest = client.get("/jobs", params={"tags": "paging", "descending": "false"}).json()
    assert oldest["jobs"][0]["id"] == ids[0]
    both = client.get(
        "/jobs", params=[("tags", "paging"), ("tags", "n3"), ("tags_operator", "AND")]
    ).json()
    assert [j["id"] for j in both["jobs"]] == [ids[3]]
    by_name = client.get("/jobs", params={"name": r"page-[12]$"}).json()
    assert sorted(j["id"] for j in by_name["jobs"]) == sorted(ids[1:3])
    done = client.get("/jobs", params={"tags": "paging", "status": "DONE"}).json()
    assert done["count"] == 5
    assert client.get("/jobs", params={"tags": "paging", "status": "RUNNING"}).json()["count"] == 0
    created = page["jobs"][0]["creation_date"]
    after = client.get("/jobs", params={"tags": "paging", "created_after": created}).json()
    assert [j["id"] for j in after["jobs"]] == [ids[-1]]
    backend = client.get("/jobs", params={"tags": "paging", "backend": "fake_generic_5q"}).json()
    assert backend["count"] == 0


def test_bulk_status(service: ServiceProcess) -> None:
    client = service.client()
    ids = [submit(client, "aer_simulator", bell_qobj())["id"] for _ in range(3)]
    for job_id in ids:
        wait_final(client, job_id)
    answer = client.post("/jobs:status", json={"ids": [*ids, "no-such-job"]}).json()
    assert {k: v["status"] for k, v in answer["statuses"].items()} == dict.fromkeys(ids, "DONE")
    assert answer["missing"] == ["no-such-job"]


def test_update_name_and_tags(service: ServiceProcess) -> None:
    client = service.client()
    job = submit(client, "aer_simulator", bell_qobj(), name="before", tags=["x"])
    renamed = client.put(f"/jobs/{job['id']}/name", json={"name": "after"}).json()
    assert renamed["name"] == "after"
    tagged = client.put(f"/jobs/{job['id']}/tags", json={"tags": ["y", "z"]}).json()
    assert tagged["tags"] == ["y", "z"]
    assert client.get("/jobs", params={"tags": "x", "name": "^after$"}).json()["count"] == 0
    assert client.get("/jobs", params={"tags": "z", "name": "^after$"}).json()["count"] == 1


def test_cancel_queued_and_running_jobs(service_factory: Any) -> None:
    svc = service_factory("--workers", "1")
    client = svc.client()
    running = submit(client, "aer_simulator", slow_qobj(shots=5000))
    queued = submit(client, "aer_simulator", bell_qobj())
    wait_status(client, running["id"], "RUNNING")
    assert client.get(f"/jobs/{queued['id']}").json()["status"] == "QUEUED"

    cancelled = client.post(f"/jobs/{queued['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "CANCELLED"
    assert client.post(f"/jobs/{running['id']}/cancel").json()["status"] == "CANCELLED"

    # The worker running the cancelled job was replaced; new work still runs.
    after = submit(client, "aer_simulator", bell_qobj())
    assert wait_final(client, after["id"])["status"] == "DONE"
    for job_id in (running["id"], queued["id"]):
        job = client.get(f"/jobs/{job_id}").json()
        assert job["status"] == "CANCELLED"
        assert "CANCELLED" in job["time_per_step"]
        answer = client.get(f"/jobs/{job_id}/results")
        assert answer.status_code == 409
        assert answer.json()["error"]["code"] == "job_has_no_result"

    again = client.post(f"/jobs/{after['id']}/cancel")
    assert again.status_code == 409
    assert again.json()["error"] == {
        "code": "job_finished",
        "message": f"job '{after['id']}' is already DONE and cannot be cancelled",
    }


def test_fair_share_queue_positions(service_factory: Any) -> None:
    svc = service_factory("--workers", "1")
    alice = svc.client()
    bob = svc.client(svc.token_for("bob"))
    blocker = submit(alice, "aer_simulator", slow_qobj(shots=2500))
    wait_status(alice, blocker["id"], "RUNNING")
    alice_jobs = [submit(alice, "aer_simulator", bell_qobj())["id"] for _ in range(3)]
    bob_job = submit(bob, "aer_simulator", bell_qobj())["id"]
    positions = {j: alice.get(f"/jobs/{j}").json()["queue_info"]["position"] for j in alice_jobs}
    bob_info = bob.get(f"/jobs/{bob_job}").json()["queue_info"]
    # Alice has a job running and Bob none, so Bob's one job goes first.
    assert bob_info["position"] == 1
    assert [positions[j] for j in alice_jobs] == [2, 3, 4]
    assert bob_info["estimated_start_time"] <= bob_info["estimated_complete_time"]
    status = alice.get("/backends/aer_simulator/status").json()
    assert status["pending_jobs"] == 4
    alice.post(f"/jobs/{blocker['id']}/cancel")
    assert wait_final(bob, bob_job)["status"] == "DONE"
    starts = {j: wait_final(alice, j)["time_per_step"]["RUNNING"] for j in alice_jobs}
    bob_start = bob.get(f"/jobs/{bob_job}").json()["time_per_step"]["RUNNING"]
    assert bob_start < min(starts.values())


def test_active_job_limit_has_its_own_code(service_factory: Any) -> None:
    svc = service_factory("--workers", "1", "--max-active-jobs", "1")
    client = svc.client()
    first = submit(client, "aer_simulator", slow_qobj(shots=1500))
    response = client.post(
        "/jobs", content=orjson.dumps({"backend": "aer_simulator", "qobj": bell_qobj()})
    )
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == "active_job_limit"
    assert error["limit"] == 1
    assert "has 1 active jobs, the limit is 1" in error["message"]
    assert client.get("/info").json()["max_active_jobs"] == 1
    client.post(f"/jobs/{first['id']}/cancel")
    assert submit(client, "aer_simulator", bell_qobj())["status"] == "QUEUED"


def test_users_are_isolated(service: ServiceProcess) -> None:
    alice = service.client(service.token_for("alice", project="lab"))
    bob = service.client(service.token_for("bob", project="other"))
    carol = service.client(service.token_for("carol", project="lab"))
    private = submit(alice, "aer_simulator", bell_qobj(), tags=["iso"])["id"]
    for_lab = submit(alice, "aer_simulator", bell_qobj(), share_level="project", tags=["iso"])["id"]
    public = submit(alice, "aer_simulator", bell_qobj(), share_level="global", tags=["iso"])["id"]
    wait_final(alice, private)

    for path in ("", "/results", "/qobj", "/metrics", "/properties"):
        answer = bob.get(f"/jobs/{private}{path}")
        assert answer.status_code == 404, path
        assert answer.json()["error"] == {
            "code": "job_not_found",
            "message": f"job '{private}' not found",
        }
    assert bob.post(f"/jobs/{private}/cancel").status_code == 404
    assert bob.put(f"/jobs/{private}/name", json={"name": "mine"}).status_code == 404
    assert bob.put(f"/jobs/{private}/tags", json={"tags": []}).status_code == 404

    def listed(client: Any) -> set[str]:
        return {j["id"] for j in client.get("/jobs", params={"tags": "iso"}).json()["jobs"]}

    assert listed(alice) == {private, for_lab, public}
    assert listed(bob) == {public}
    assert listed(carol) == {for_lab, public}
    assert bob.post("/jobs:status", json={"ids": [private, public]}).json()["missing"] == [private]

    # What a share level shows, it shows read-only.
    assert bob.get(f"/jobs/{public}").status_code == 200
    denied = bob.post(f"/jobs/{public}/cancel")
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "read_only"


def post_raw(client: Any, body: bytes, **headers: str) -> tuple[int, dict[str, Any]]:
    response = client.post("/jobs", content=body, headers=headers)
    return response.status_code, response.json()["error"]


def job_body(backend: str = "aer_simulator", **qobj_overrides: Any) -> bytes:
    payload = bell_qobj()
    payload.update(qobj_overrides)
    return orjson.dumps({"backend": backend, "qobj": payload})


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [
        (b"{not json", 400, "malformed_json", "request body must be a JSON object"),
        (b"[1, 2, 3]", 400, "malformed_json", "request body must be a JSON object"),
        (b'{"qobj": {}}', 400, "invalid_request", "'backend' is required"),
        (b'{"backend": "aer_simulator"}', 400, "invalid_request", "'qobj' is required"),
        (job_body("no_such_backend"), 400, "unknown_backend", "unknown backend 'no_such_backend'"),
        (
            orjson.dumps({"backend": "aer_simulator", "qobj": {"experiments": "none"}}),
            400,
            "malformed_json",
            "Qobj: invalid type: string",
        ),
        (
            orjson.dumps(
                {
                    "backend": "aer_simulator",
                    "qobj": qobj([experiment("e", 1, [{"name": "frob", "qubits": [0]}])]),
                }
            ),
            400,
            "invalid_qobj",
            "experiment 0 ('e'): instruction 0: gate 'frob' is not supported by backend "
            "'aer_simulator'",
        ),
        (
            orjson.dumps({"backend": "fake_generic_5q", "qobj": qobj([ghz(6)])}),
            400,
            "invalid_qobj",
            "gate 'h' is not supported by backend 'fake_generic_5q'",
        ),
        (
            orjson.dumps(
                {
                    "backend": "fake_generic_5q",
                    "qobj": qobj(
                        [experiment("wide", 6, [{"name": "x", "qubits": [5]}, measure_all(6)])]
                    ),
                }
            ),
            400,
            "invalid_qobj",
            "uses qubit 5, but backend 'fake_generic_5q' has 5 qubits",
        ),
        (
            orjson.dumps(
                {
                    "backend": "fake_generic_5q",
                    "qobj": device_bell() | {"config": {"shots": 200_000}},
                }
            ),
            400,
            "invalid_qobj",
            "shots=200000 is more than backend 'fake_generic_5q' allows (max_shots=100000)",
        ),
        (
            orjson.dumps({"backend": "aer_simulator", "qobj": qobj([ghz(2)] * 301)}),
            400,
            "invalid_qobj",
            "Qobj has 301 experiments; backend 'aer_simulator' accepts at most 300",
        ),
        (
            orjson.dumps(
                {"backend": "aer_simulator", "qobj": {"type": "PULSE", "experiments": []}}
            ),
            400,
            "invalid_qobj",
            "Pulse schedules are not",
        ),
        (
            orjson.dumps({"backend": "aer_simulator", "qobj": bell_qobj(), "share_level": "hub"}),
            400,
            "invalid_request",
            "share_level must be one of none, project, global",
        ),
        (
            orjson.dumps({"backend": "aer_simulator", "qobj": bell_qobj(), "tags": "solo"}),
            400,
            "invalid_request",
            "'tags' must be a list of strings",
        ),
        *(
            (
                orjson.dumps({"backend": "aer_simulator", "qobj": bell_qobj(), field: value}),
                400,
                "invalid_request",
                message,
            )
            for field, value, message in [
                ("backend", 5, "'backend' must be str, got 5"),
                ("program_id", 5, "'program_id' must be str, got 5"),
                ("session_id", 5, "'session_id' must be str, got 5"),
                ("share_level", 5, "'share_level' must be str, got 5"),
                ("client_info", "x", "'client_info' must be dict, got 'x'"),
                ("name", 5, "'name' must be str, got 5"),
                ("experiment_id", [1], "'experiment_id' must be str, got [1]"),
            ]
        ),
        (
            orjson.dumps({"program_id": "circuit-runner", "image": 5}),
            400,
            "invalid_request",
            "'image' must be str, got 5",
        ),
    ],
)
def test_bad_submissions_get_4xx_naming_the_problem(
    service: ServiceProcess, body: bytes, status: int, code: str, message: str
) -> None:
    got_status, error = post_raw(service.client(), body)
    assert (got_status, error["code"]) == (status, code), error
    assert message in error["message"]


def test_bad_tokens_and_unknown_things(service: ServiceProcess) -> None:
    anonymous = service.client()
    anonymous.headers.pop("Authorization")
    answer = anonymous.get("/jobs")
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "unauthorized"
    assert "missing bearer token" in answer.json()["error"]["message"]
    forged = service.client("not-a-token").get("/backends")
    assert forged.status_code == 401
    assert forged.json()["error"]["message"] == "invalid token"

    client = service.client()
    assert client.get("/jobs/nope").json()["error"]["code"] == "job_not_found"
    missing_backend = client.get("/backends/nope/configuration")
    assert missing_backend.status_code == 404
    assert "unknown backend 'nope'" in missing_backend.json()["error"]["message"]
    bad_limit = client.get("/jobs", params={"limit": 0})
    assert bad_limit.status_code == 400
    assert "limit" in bad_limit.json()["error"]["message"]
    bad_regex = client.get("/jobs", params={"name": "("})
    assert bad_regex.status_code == 400
    assert "bad name pattern" in bad_regex.json()["error"]["message"]
    bad_date = client.get("/jobs", params={"created_after": "yesterday"})
    assert "not an ISO 8601 timestamp" in bad_date.json()["error"]["message"]
    encoding = client.post("/jobs", content=b"x", headers={"Content-Encoding": "br"})
    assert encoding.status_code == 415
    corrupt = client.post("/jobs", content=b"not gzip", headers={"Content-Encoding": "gzip"})
    assert corrupt.status_code == 400
    assert "not valid gzip data" in corrupt.json()["error"]["message"]


def test_oversized_and_bomb_bodies_are_refused(service_factory: Any) -> None:
    svc = service_factory("--max-request-mb", "1")
    client = svc.client()
    big = b'{"backend": "aer_simulator", "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    status, error = post_raw(client, big)
    assert (status, error["code"]) == (413, "payload_too_large")
    assert "over the service's limit of 1048576 bytes" in error["message"]
    bomb = gzip.compress(big)
    assert len(bomb) < 1024 * 1024
    status, error = post_raw(client, bomb, **{"Content-Encoding": "gzip"})
    assert (status, error["code"]) == (413, "payload_too_large")
    # The service is still fine afterwards.
    assert (
        wait_final(client, submit(client, "aer_simulator", bell_qobj())["id"])["status"] == "DONE"
    )


def test_backends_configuration_properties_and_openapi(service: ServiceProcess) -> None:
    client = service.client()
    names = [b["name"] for b in client.get("/backends").json()["backends"]]
    assert names == ["aer_simulator", "fake_generic_27q", "fake_generic_5q"]
    config = client.get("/backends/fake_generic_27q/configuration").json()
    assert config["n_qubits"] == 27
    assert config["max_experiments"] == 300
    assert config["open_pulse"] is False
    assert [0, 1] in config["coupling_map"]
    props = client.get("/backends/fake_generic_5q/properties").json()
    assert props["backend_name"] == "fake_generic_5q"
    t1 = props["qubits"][0][0]
    assert (t1["name"], t1["unit"]) == ("T1", "us")
    assert t1["date"] == props["last_update_date"]
    assert client.get("/backends/aer_simulator/properties").json() is None
    before = client.get("/backends/fake_generic_5q/properties", params={"datetime": "2000-01-01"})
    assert before.json() is None

    job = submit(client, "fake_generic_5q", device_bell())
    wait_final(client, job["id"])
    assert client.get(f"/jobs/{job['id']}/properties").json() == props

    spec = client.get("/openapi.json").json()
    for path in (
        "/jobs",
        "/jobs/{job_id}",
        "/jobs/{job_id}/results",
        "/jobs/{job_id}/cancel",
        "/jobs:status",
        "/backends/{name}/properties",
    ):
        assert path in spec["paths"], path
    assert "Idempotency-Key" in orjson.dumps(spec["paths"]["/jobs"]["post"]).decode()


def test_names_tags_and_id_lists_are_bounded(service: ServiceProcess) -> None:
    """What one request may name is bounded (docs/service.md, "Limits"): each excess is a
    400 that names the limit, and no job is made or changed."""
    client = service.client()
    before = client.get("/jobs").json()["count"]
    too_long = "n" * (MAX_NAME_LENGTH + 1)
    for fields in (
        {"name": too_long},
        {"experiment_id": too_long},
        {"tags": [f"t{i}" for i in range(MAX_TAGS + 1)]},
        {"tags": ["t" * (MAX_TAG_LENGTH + 1)]},
        {"client_info": {f"k{i}": "v" for i in range(MAX_CLIENT_INFO_ITEMS + 1)}},
    ):
        answer = client.post(
            "/jobs", json={"backend": "aer_simulator", "qobj": bell_qobj(), **fields}
        )
        assert answer.status_code == 400, fields
        assert answer.json()["error"]["code"] == "invalid_request"
    assert client.get("/jobs").json()["count"] == before
    job = submit(client, "aer_simulator", bell_qobj(), name="kept", tags=["kept"])
    assert client.put(f"/jobs/{job['id']}/name", json={"name": too_long}).status_code == 400
    tags = {"tags": [f"t{i}" for i in range(MAX_TAGS + 1)]}
    assert client.put(f"/jobs/{job['id']}/tags", json=tags).status_code == 400
    record = client.get(f"/jobs/{job['id']}").json()
    assert (record["name"], record["tags"]) == ("kept", ["kept"])
    answer = client.post("/jobs:status", json={"ids": ["x"] * (MAX_BULK_IDS + 1)})
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_request"
