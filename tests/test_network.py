"""A service on the network: TLS on both ends (``https://`` and ``wss://``, certificates
checked), the token life cycle (create, list, revoke, expiry) and its effect on requests
and open streams, the operator role, and the modes of the files that hold secrets.

The tests make their own CA and server certificate (``cryptography``) and run one service
on 127.0.0.1 with ``--ssl-certfile``/``--ssl-keyfile``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import logging
import os
import socket
import sqlite3
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from qiskit import QuantumCircuit
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

import qdispatch
from qdispatch import _native, codes
from qdispatch.cli import parse_expires
from qdispatch.cli.serve import _RedactTokens
from qdispatch.exceptions import IBMQApiError, IBMQBackendApiError, InsecureConnectionWarning
from qdispatch.server.store import SCHEMA_VERSION, Store, hash_token
from qobjs import bell_qobj, device_bell, slow_qobj
from support import ServiceProcess

STREAM_PROGRAM = """
import time


def main(backend, publisher, count=3, delay=0.0):
    for i in range(count):
        publisher.publish({"i": i})
        time.sleep(delay)
    return {"count": count}
"""

# -- a private CA and the service's certificate ---------------------------------------------


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _ca(root: Path, stem: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{stem} test CA"))
        .issuer_name(_name(f"{stem} test CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    (root / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``ca``: the CA that signed the service's certificate; ``other_ca``: one that did
    not; ``cert``/``key``: the service's, for 127.0.0.1 and localhost."""
    root = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _ca(root, "ca")
    _ca(root, "other_ca")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("qdispatch test service"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    (root / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (root / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return {name: root / f"{name}.pem" for name in ("ca", "other_ca", "cert", "key")}


@pytest.fixture(scope="module")
def tls_service(
    tmp_path_factory: pytest.TempPathFactory, pki: dict[str, Path]
) -> Iterator[ServiceProcess]:
    root = tmp_path_factory.mktemp("tls")
    programs = root / "programs"
    programs.mkdir()
    (programs / "stream.py").write_text(STREAM_PROGRAM)
    svc = ServiceProcess(
        root,
        "--workers",
        "2",
        "--programs-dir",
        str(programs),
        "--ssl-certfile",
        str(pki["cert"]),
        "--ssl-keyfile",
        str(pki["key"]),
    ).start()
    yield svc
    svc.stop()


@pytest.fixture(autouse=True)
def _no_ca_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QDISPATCH_CA_BUNDLE", raising=False)


_OPEN: list[httpx.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def http(svc: ServiceProcess, ca: Path, token: str) -> httpx.Client:
    client = httpx.Client(
        base_url=svc.url,
        headers={"Authorization": f"Bearer {token}"},
        verify=ssl.create_default_context(cafile=str(ca)),
        timeout=30.0,
    )
    _OPEN.append(client)
    return client


def open_stream(svc: ServiceProcess, ca: Path, token: str) -> ClientConnection:
    url = svc.url.replace("https://", "wss://") + "/stream"
    return ws_connect(
        url,
        ssl=ssl.create_default_context(cafile=str(ca)),
        additional_headers={"Authorization": f"Bearer {token}"},
        max_queue=None,
    )


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qdispatch", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def make_token(svc: ServiceProcess, user: str, *extra: str) -> str:
    made = cli("token", "create", "--user", user, "--db", str(svc.db), *extra)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def closed_with(ws: ClientConnection, within: float) -> tuple[int | None, list[dict[str, Any]]]:
    """Read until the service closes the socket; its close code and what came before."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            got.append(orjson.loads(ws.recv(timeout=deadline - time.monotonic())))
    except ConnectionClosed as closed:
        return (closed.rcvd.code if closed.rcvd else None), got
    except TimeoutError:
        pass
    return None, got


# -- TLS ------------------------------------------------------------------------------------


def test_jobs_over_https_with_statuses_and_interim_results_pushed_over_wss(
    tls_service: ServiceProcess, pki: dict[str, Path]
) -> None:
    assert tls_service.url.startswith("https://127.0.0.1:")
    with qdispatch.connect(tls_service.url, token=tls_service.token, verify=pki["ca"]) as svc:
        job = svc.backend("aer_simulator").run(_bell_circuit(), shots=200)
        assert set(job.result(timeout=60).get_counts()) <= {"00", "11"}
        # Pushed over the socket: the stream saw the final status, and never polled.
        assert svc.api.last_status(job.job_id()) == "DONE"

        got: list[Any] = []
        run = svc.run("stream", {"count": 5, "delay": 0.05}, callback=lambda _, r: got.append(r))
        assert run.result(timeout=60) == {"count": 5}
        run.wait_for_final_state(30)
        assert got[:-1] == [{"i": i} for i in range(5)]
        assert svc.api.stream_connected()
        assert not svc.api.stream_polling()


def _bell_circuit() -> QuantumCircuit:
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    return qc


def test_an_untrusted_certificate_is_refused_naming_host_and_reason(
    tls_service: ServiceProcess, pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    host = tls_service.url.removeprefix("https://")
    for verify in (True, pki["other_ca"]):
        start = time.monotonic()
        with (
            qdispatch.connect(tls_service.url, token=tls_service.token, verify=verify) as svc,
            pytest.raises(IBMQBackendApiError) as refused,
        ):
            svc.backends()
        assert time.monotonic() - start < 5  # not retried
        assert (refused.value.status, refused.value.code) == (0, codes.TLS_ERROR)
        assert host in str(refused.value)
        assert "UnknownIssuer" in str(refused.value) or "no CA certificates" in str(refused.value)
    # The event stream refuses it too, and does not fall back to polling.
    client = _native.Client(tls_service.url, tls_service.token, ca_bundle=str(pki["other_ca"]))
    try:
        client.watch(["some-job"])
        with pytest.raises(_native.ConnectionFailedError) as stream_refused:
            client.wait_final("some-job", timeout=10)
        assert stream_refused.value.code == codes.TLS_ERROR
        assert host in str(stream_refused.value)
        assert not client.stream_polling()
    finally:
        client.close()


def test_https_to_a_plain_http_port_is_a_tls_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(10)

        def answer() -> None:  # a plain-HTTP answer to the TLS hello
            with contextlib.suppress(OSError):
                conn, _ = server.accept()
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                conn.close()

        threading.Thread(target=answer, daemon=True).start()
        url = f"https://127.0.0.1:{server.getsockname()[1]}"
        client = _native.Client(url, "t", verify=False, max_attempts=3)
        try:
            with pytest.raises(_native.ConnectionFailedError) as refused:
                client.request("GET", "/info")
        finally:
            client.close()
    assert refused.value.code == codes.TLS_ERROR
    assert "127.0.0.1" in str(refused.value)


def test_a_ca_bundle_is_trusted_from_verify_the_environment_or_ssl_cert_file(
    tls_service: ServiceProcess, pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    with qdispatch.connect(tls_service.url, token=tls_service.token, verify=str(pki["ca"])) as s:
        assert "aer_simulator" in [b.name for b in s.backends()]
    monkeypatch.setenv("QDISPATCH_CA_BUNDLE", str(pki["ca"]))
    with qdispatch.connect(tls_service.url, token=tls_service.token) as s:
        assert s.info()["version"]
    monkeypatch.delenv("QDISPATCH_CA_BUNDLE")
    monkeypatch.setenv("SSL_CERT_FILE", str(pki["ca"]))  # the platform roots, replaced
    with qdispatch.connect(tls_service.url, token=tls_service.token) as s:
        assert s.info()["version"]
    with pytest.raises(IBMQApiError, match="cannot read the CA bundle"):
        qdispatch.connect(tls_service.url, token="t", verify="/nonexistent/ca.pem")


def test_verify_false_warns_and_works(tls_service: ServiceProcess) -> None:
    with pytest.warns(InsecureConnectionWarning, match="not checked"):
        svc = qdispatch.connect(tls_service.url, token=tls_service.token, verify=False)
    with svc:
        assert svc.info()["version"]


def test_non_loopback_plain_http_is_refused_unless_plaintext(tmp_path: Path) -> None:
    refused = cli("serve", "--host", "0.0.0.0", "--port", "0", "--db", str(tmp_path / "x.db"))
    assert refused.returncode == 2
    assert "refusing to serve plain HTTP on 0.0.0.0" in refused.stderr
    assert "--plaintext" in refused.stderr
    half = cli("serve", "--port", "0", "--db", str(tmp_path / "x.db"), "--ssl-certfile", "c")
    assert half.returncode == 2
    assert "go together" in half.stderr


# -- tokens -----------------------------------------------------------------------------------


def test_token_create_list_revoke_take_effect_at_once(
    tls_service: ServiceProcess, pki: dict[str, Path]
) -> None:
    token = make_token(tls_service, "tess", "--name", "laptop", "--expires", "30d")
    other = make_token(tls_service, "otto")
    client = http(tls_service, pki["ca"], token)
    assert client.get("/backends").status_code == 200
    listed = cli("token", "list", "--user", "tess", "--db", str(tls_service.db))
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == [
        "ID",
        "USER",
        "LABEL",
        "CREATED",
        "EXPIRES",
        "LAST",
        "USED",
        "STATE",
    ]
    (row,) = [line.split() for line in lines[1:]]
    token_id = row[0]
    assert row[1:3] == ["tess", "laptop"]
    assert row[4] != "never"
    assert row[5] != "never"
    assert token not in listed.stdout
    assert hash_token(token) not in listed.stdout

    with open_stream(tls_service, pki["ca"], token) as ws:
        ws.send(orjson.dumps({"op": "subscribe", "job_ids": []}).decode())
        revoked = cli("token", "revoke", token_id, "--db", str(tls_service.db))
        assert revoked.returncode == 0, revoked.stderr
        gone_at = time.monotonic()
        answer = client.get("/backends")
        assert (answer.status_code, answer.json()["error"]["code"]) == (401, "unauthorized")
        code, before = closed_with(ws, within=5)
        assert code == 4401
        assert time.monotonic() - gone_at < 2.5
        assert before[-1]["type"] == "error"
        assert before[-1]["code"] == "unauthorized"
    # Another user is served meanwhile; a revoked token is listed only with --all.
    assert http(tls_service, pki["ca"], other).get("/backends").status_code == 200
    assert token_id not in cli("token", "list", "--db", str(tls_service.db)).stdout
    assert "revoked" in cli("token", "list", "--all", "--db", str(tls_service.db)).stdout
    # Revoking by the secret itself works too; an unknown one is an error.
    assert cli("token", "revoke", other, "--db", str(tls_service.db)).returncode == 0
    assert http(tls_service, pki["ca"], other).get("/backends").status_code == 401
    assert cli("token", "revoke", "nope", "--db", str(tls_service.db)).returncode == 1


def test_an_expired_token_stops_working_on_requests_and_open_streams(
    tls_service: ServiceProcess, pki: dict[str, Path]
) -> None:
    token = make_token(tls_service, "eve", "--expires", "4s")
    client = http(tls_service, pki["ca"], token)
    assert client.get("/backends").status_code == 200
    with open_stream(tls_service, pki["ca"], token) as ws:
        code, _ = closed_with(ws, within=8)
    assert code == 4401
    assert client.get("/backends").status_code == 401
    bad = cli("token", "create", "--user", "eve", "--expires", "-1d", "--db", str(tls_service.db))
    assert bad.returncode == 2


def test_the_stream_takes_no_token_in_the_query_but_one_in_a_first_message(
    tls_service: ServiceProcess, pki: dict[str, Path]
) -> None:
    url = tls_service.url.replace("https://", "wss://") + "/stream"
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    with ws_connect(f"{url}?token={tls_service.token}", ssl=context) as ws:
        ws.send(orjson.dumps({"op": "subscribe", "job_ids": []}).decode())
        code, _ = closed_with(ws, within=15)
        assert code == 4401
    with ws_connect(url, ssl=context) as ws:
        ws.send(orjson.dumps({"op": "auth", "token": tls_service.token}).decode())
        ws.send(orjson.dumps({"op": "subscribe", "job_ids": []}).decode())
        assert orjson.loads(ws.recv(timeout=10))["type"] == "subscribed"
    # A token an old client still puts in a URL never reaches the log.
    record = logging.LogRecord(
        "uvicorn.error", logging.INFO, "", 0, '%s - "WebSocket %s" [accepted]',
        ("1.2.3.4", "/stream?a=1&token=s3cret"), None,
    )  # fmt: skip
    assert _RedactTokens().filter(record)
    assert "s3cret" not in record.getMessage()
    assert "token=[redacted]" in record.getMessage()


def test_last_used_is_written_at_most_once_a_minute(tmp_path: Path) -> None:
    store = Store(tmp_path / "jobs.db")
    try:
        token = store.create_token("lu")
        writes: list[str] = []
        store._db.set_trace_callback(
            lambda sql: writes.append(sql) if sql.startswith("UPDATE tokens") else None
        )
        for _ in range(50):
            assert store.user_for_token(token) == ("lu", None, False)
        assert len(writes) == 1
    finally:
        store.close()


def test_parse_expires() -> None:
    now = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    assert parse_expires("30d", now).startswith("2030-01-31T00:00:00")
    assert parse_expires("12h", now).startswith("2030-01-01T12:00:00")
    assert parse_expires("2031-06-01", now).startswith("2031-06-01T00:00:00")
    with pytest.raises(ValueError, match="duration"):
        parse_expires("soon", now)


# -- the operator -------------------------------------------------------------------------------


def test_an_operator_sees_and_cancels_every_users_jobs_and_pauses_backends(
    tls_service: ServiceProcess, pki: dict[str, Path]
) -> None:
    op = http(tls_service, pki["ca"], make_token(tls_service, "root", "--operator"))
    ann = http(tls_service, pki["ca"], make_token(tls_service, "ann"))
    bob = http(tls_service, pki["ca"], make_token(tls_service, "bob"))

    def submit(client: httpx.Client, backend: str, qobj: dict[str, Any]) -> str:
        made = client.post("/jobs", content=orjson.dumps({"backend": backend, "qobj": qobj}))
        assert made.status_code == 201, made.text
        job_id: str = made.json()["id"]
        return job_id

    # Ordinary users: 403 on operator routes, nothing changed.
    refused = bob.post("/backends/aer_simulator/pause")
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "operator_only")
    assert not bob.get("/backends/aer_simulator/status").json()["paused"]

    paused = op.post("/backends/aer_simulator/pause")
    assert paused.status_code == 200
    assert paused.json()["status_msg"] == "paused"
    try:
        held = submit(ann, "aer_simulator", bell_qobj())
        slow = submit(ann, "aer_simulator", slow_qobj(shots=2000))
        # Another backend is served meanwhile.
        elsewhere = submit(bob, "fake_generic_5q", device_bell())
        deadline = time.monotonic() + 30
        while bob.get(f"/jobs/{elsewhere}").json()["status"] != "DONE":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert ann.get(f"/jobs/{held}").json()["status"] == "QUEUED"
        status = ann.get("/backends/aer_simulator/status").json()
        assert status["paused"]
        assert status["pending_jobs"] >= 1
    finally:
        assert op.post("/backends/aer_simulator/resume").status_code == 200
    # Bob may neither see nor cancel Ann's job; the operator cancels it.
    assert bob.get(f"/jobs/{slow}").status_code == 404
    assert bob.post(f"/jobs/{slow}/cancel").status_code == 404
    cancelled = op.post(f"/jobs/{slow}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    deadline = time.monotonic() + 30
    while ann.get(f"/jobs/{held}").json()["status"] != "DONE":
        assert time.monotonic() < deadline
        time.sleep(0.05)

    # The operator lists everyone's jobs (or one user's), and cancels another user's.
    everyone = {j["id"] for j in op.get("/jobs", params={"limit": 100}).json()["jobs"]}
    assert {held, slow, elsewhere} <= everyone
    anns = op.get("/jobs", params={"user": "ann", "limit": 100}).json()["jobs"]
    assert {j["id"] for j in anns} >= {held, slow}
    assert elsewhere not in {j["id"] for j in anns}
    assert elsewhere not in {
        j["id"] for j in ann.get("/jobs", params={"limit": 100}).json()["jobs"]
    }
    assert ann.get(f"/jobs/{slow}").json()["status"] == "CANCELLED"

    # Sessions: the operator sees and cancels Ann's; Bob does not see it.
    session = ann.post("/sessions", json={"backend": "aer_simulator"}).json()
    assert bob.get(f"/sessions/{session['id']}").status_code == 404
    listed = op.get("/sessions", params={"user": "ann"}).json()["sessions"]
    assert session["id"] in {s["id"] for s in listed}
    assert op.delete(f"/sessions/{session['id']}").json()["state"] == "cancelled"


# -- secrets at rest ------------------------------------------------------------------------


def test_store_and_state_file_are_private(tls_service: ServiceProcess, tmp_path: Path) -> None:
    def mode(path: Path) -> int:
        return stat.S_IMODE(os.stat(path).st_mode)

    store = Store(tmp_path / "fresh" / "jobs.db")
    try:
        store.create_token("m")
        assert mode(tmp_path / "fresh") == 0o700
        for name in ("jobs.db", "jobs.db-wal", "jobs.db-shm"):
            assert mode(tmp_path / "fresh" / name) == 0o600, name
    finally:
        store.close()
    assert mode(tls_service.db) == 0o600
    assert mode(tls_service.state_file) == 0o600


def test_a_schema_1_store_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE users (name TEXT PRIMARY KEY, project TEXT, created TEXT NOT NULL);
        INSERT INTO users VALUES ('old', 'lab', '2024-01-01T00:00:00.000000Z');
        CREATE TABLE tokens (hash TEXT PRIMARY KEY, user TEXT NOT NULL REFERENCES users(name),
            created TEXT NOT NULL, origin TEXT NOT NULL DEFAULT 'cli');
        """
    )
    db.execute(
        "INSERT INTO tokens VALUES (?, 'old', '2024-01-01T00:00:00.000000Z', 'cli')",
        (hash_token("old-secret"),),
    )
    db.commit()
    db.close()
    os.chmod(path, 0o644)
    store = Store(path)
    try:
        assert store.meta("schema_version") == str(SCHEMA_VERSION) == "2"
        assert store.user_for_token("old-secret") == ("old", "lab", False)
        (info,) = store.tokens()
        assert len(info.id) == 12
        assert info.last_used
        assert not info.revoked
        assert store.revoke_token(info.id) is not None
        assert store.user_for_token("old-secret") is None
    finally:
        store.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
