"""The web dashboard (``/ui``): logging in, who sees what, escaping, forged requests; and,
in a real headless browser, following and steering jobs live (skipped only when no
chromium + chromedriver is installed; ``.ci/run`` installs them)."""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from qdispatch import encoding
from qobjs import bell_qobj, ghz, qobj
from support import ServiceProcess, submit, wait_final
from test_network import pki  # noqa: F401 - the fixture: a CA and the service's certificate

BACKEND = "aer_simulator"
XSS_NAME = "<script>alert('name')</script>"
XSS_TAG = '"><img src=x onerror=alert(1)>'
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "ui"


def operator_token(svc: ServiceProcess, user: str = "ops") -> str:
    cmd = [sys.executable, "-m", "qdispatch", "token", "create", "--user", user, "--operator"]
    cmd += ["--db", str(svc.db)]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


# A program that logs and publishes, waits for a file, then logs and publishes again.
GATE = """
import time
from pathlib import Path


def main(backend, publisher, flag):
    print("warming up")
    publisher.publish({"step": 1, "energy": -1.25})
    deadline = time.monotonic() + 60
    while not Path(flag).exists():
        if time.monotonic() > deadline:
            raise TimeoutError("nobody opened the gate")
        time.sleep(0.02)
    print("converged")
    publisher.publish({"step": 2, "energy": -1.5})
    return "done"
"""


@pytest.fixture(scope="module")
def dash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """A service with one worker, so that a paused backend keeps jobs queued at will."""
    root = tmp_path_factory.mktemp("ui")
    programs = root / "programs"
    programs.mkdir()
    (programs / "gate.py").write_text(GATE)
    # A 16 KiB result limit: a chunk with 2,700 shots of memory passes the check at
    # submission (6 bytes a shot at least) and fails when done, result_too_large.
    svc = ServiceProcess(
        root,
        *("--workers", "1", "--heartbeat", "1", "--max-result-mb", "0.015625"),
        *("--programs-dir", str(programs)),
    )
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def ops(dash: ServiceProcess) -> httpx.Client:
    return dash.client(operator_token(dash))


def browser_client(svc: ServiceProcess, origin: str | None = None) -> httpx.Client:
    """An HTTP client that behaves as the dashboard's pages do: no bearer token, the
    service's own Origin on every request, cookies kept."""
    headers = {"Origin": origin or svc.url}
    return httpx.Client(base_url=svc.url, headers=headers, timeout=30.0)


def logged_in(svc: ServiceProcess, token: str) -> httpx.Client:
    client = browser_client(svc)
    answer = client.post("/ui/login", data={"token": token, "next": "/ui/jobs"})
    assert answer.status_code == 303, answer.text
    return client


def csrf_of(page: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)
    assert found, page[:500]
    return found.group(1)


# -- logging in ----------------------------------------------------------------------------


def test_login_sets_a_strict_httponly_cookie_that_is_not_the_token(dash: ServiceProcess) -> None:
    client = browser_client(dash)
    form = client.get("/ui/login")
    assert form.status_code == 200
    assert "Content-Security-Policy" in form.headers
    assert "script-src 'self'" in form.headers["Content-Security-Policy"]
    assert "<script>" not in form.text  # no inline script: only <script src=…>
    answer = client.post("/ui/login", data={"token": dash.token, "next": "/ui/jobs?page=1"})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/jobs?page=1"
    cookie = answer.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "path", "max-age"} <= attributes
    assert "samesite=strict" in cookie.lower()
    assert "path=/ui" in cookie.lower()
    assert "secure" not in attributes  # plain HTTP on loopback: a Secure cookie is never sent
    value = cookie.split(";")[0].split("=", 1)[1]
    assert value
    assert dash.token not in value
    for path in ("/ui/", "/ui/jobs", "/ui/sets"):
        page = client.get(path)
        assert page.status_code == 200, path
        assert dash.token not in page.text
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["cache-control"] == "no-store"
    client.close()


def test_over_tls_the_login_cookie_is_secure(
    service_factory: Callable[..., ServiceProcess],
    pki: dict[str, Path],  # noqa: F811 - the fixture imported above
) -> None:
    svc = service_factory("--ssl-certfile", str(pki["cert"]), "--ssl-keyfile", str(pki["key"]))
    assert svc.url.startswith("https://")
    verify = ssl.create_default_context(cafile=str(pki["ca"]))
    with httpx.Client(base_url=svc.url, headers={"Origin": svc.url}, verify=verify) as client:
        answer = client.post("/ui/login", data={"token": svc.token})
        assert answer.status_code == 303, answer.text
        attributes = [p.strip().lower() for p in answer.headers["set-cookie"].split(";")]
        assert "secure" in attributes
        assert "httponly" in attributes
        assert "samesite=strict" in attributes


def test_login_refuses_a_bad_token_and_a_foreign_origin(dash: ServiceProcess) -> None:
    client = browser_client(dash)
    wrong = client.post("/ui/login", data={"token": "not-a-token"})
    assert wrong.status_code == 401
    assert "invalid token" in wrong.text
    assert "set-cookie" not in wrong.headers
    evil = browser_client(dash, origin="http://evil.example")
    forged = evil.post("/ui/login", data={"token": dash.token})
    assert forged.status_code == 403
    assert "set-cookie" not in forged.headers
    bare = httpx.post(f"{dash.url}/ui/login", data={"token": dash.token})  # no Origin at all
    assert bare.status_code == 403
    huge = client.post("/ui/login", data={"token": "x" * 100_000})
    assert huge.status_code == 413
    client.close()
    evil.close()


def test_pages_redirect_and_data_answers_401_without_a_login(dash: ServiceProcess) -> None:
    client = browser_client(dash)
    page = client.get("/ui/jobs?status=DONE")
    assert page.status_code == 303
    assert page.headers["location"] == "/ui/login?next=%2Fui%2Fjobs%3Fstatus%3DDONE"
    # A bearer token is no way into the dashboard: only a login is.
    with_bearer = client.get("/ui/api/jobs", headers={"Authorization": f"Bearer {dash.token}"})
    assert with_bearer.status_code == 401
    assert with_bearer.json()["error"]["code"] == "unauthorized"
    client.cookies.set("qdispatch_ui", "made-up", path="/ui")
    assert client.get("/ui/api/overview").status_code == 401
    # The static files are public (they hold no data).
    assert client.get("/ui/static/common.js").status_code == 200
    assert stream_close_code(dash, dash.url, None) == 4401
    # A page of another site cannot open the stream with a visitor's login.
    alice = logged_in(dash, dash.token)
    cookie = alice.cookies["qdispatch_ui"]
    assert stream_close_code(dash, "http://evil.example", cookie) == 4401
    with connect(
        dash.url.replace("http://", "ws://") + "/ui/stream",
        origin=dash.url,  # type: ignore[arg-type]
        additional_headers={"Cookie": f"qdispatch_ui={cookie}"},
    ) as ws:
        ws.send('{"op": "ping"}')
        assert '"pong"' in str(ws.recv(timeout=30))
    client.close()
    alice.close()


def stream_close_code(svc: ServiceProcess, origin: str, cookie: str | None) -> int | None:
    """How ``/ui/stream`` closes on a page of ``origin`` holding ``cookie``."""
    headers = {"Cookie": f"qdispatch_ui={cookie}"} if cookie else {}
    url = svc.url.replace("http://", "ws://") + "/ui/stream"
    with connect(url, origin=origin, additional_headers=headers) as ws:  # type: ignore[arg-type]
        try:
            while True:
                ws.recv(timeout=10)
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None


def test_logout_and_a_revoked_token_end_the_login(dash: ServiceProcess) -> None:
    token = dash.token_for("carol")
    client = logged_in(dash, token)
    page = client.get("/ui/")
    assert page.status_code == 200
    out = client.post("/ui/logout", data={"csrf": csrf_of(page.text)})
    assert out.status_code == 303
    assert client.get("/ui/").status_code == 303
    again = logged_in(dash, token)
    assert again.get("/ui/api/jobs").status_code == 200
    cmd = [sys.executable, "-m", "qdispatch", "token", "revoke", token, "--db", str(dash.db)]
    subprocess.run(cmd, check=True, capture_output=True)
    assert again.get("/ui/api/jobs").status_code == 401
    client.close()
    again.close()


# -- who sees what -----------------------------------------------------------------------


def test_a_user_sees_what_the_rest_api_shows_them(dash: ServiceProcess, ops: httpx.Client) -> None:
    bob_token = dash.token_for("bob")
    bob_job = submit(dash.client(bob_token), BACKEND, bell_qobj(), name="bob's")
    mine = submit(dash.client(), BACKEND, bell_qobj(), name="mine")
    wait_final(dash.client(), mine["id"])
    alice = logged_in(dash, dash.token)
    for path in (f"/ui/jobs/{bob_job['id']}", f"/ui/api/jobs/{bob_job['id']}"):
        answer = alice.get(path)
        assert answer.status_code == 404, path
        assert "bob's" not in answer.text
    assert alice.get(f"/ui/api/jobs/{bob_job['id']}/counts").status_code == 404
    listed = {j["id"] for j in alice.get("/ui/api/jobs").json()["jobs"]}
    rest = {j["id"] for j in dash.client().get("/jobs", params={"limit": 25}).json()["jobs"]}
    assert listed == rest
    assert mine["id"] in listed
    assert bob_job["id"] not in listed
    operator = logged_in(dash, operator_token(dash, "ops2"))
    assert operator.get(f"/ui/jobs/{bob_job['id']}").status_code == 200
    seen = {j["id"] for j in operator.get("/ui/api/jobs").json()["jobs"]}
    assert bob_job["id"] in seen
    assert mine["id"] in seen
    alice.close()
    operator.close()


def test_user_named_values_are_escaped(dash: ServiceProcess) -> None:
    job = submit(dash.client(), BACKEND, bell_qobj(), name=XSS_NAME, tags=[XSS_TAG])
    wait_final(dash.client(), job["id"])
    alice = logged_in(dash, dash.token)
    # The filters are echoed in the form too.
    filtered = "/ui/jobs?" + urlencode({"tag": XSS_TAG, "name": re.escape(XSS_NAME)})
    for path in (f"/ui/jobs/{job['id']}", "/ui/jobs", filtered):
        page = alice.get(path).text
        assert XSS_NAME not in page, path
        assert XSS_TAG not in page, path
        assert "&lt;script&gt;alert(&#39;name&#39;)&lt;/script&gt;" in page, path
        assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in page, path
    alice.close()


# -- steering: cancel ----------------------------------------------------------------------


def test_cancel_needs_the_csrf_token_and_the_origin(
    dash: ServiceProcess, ops: httpx.Client
) -> None:
    ops.post(f"/backends/{BACKEND}/pause").raise_for_status()
    try:
        job = submit(dash.client(), BACKEND, bell_qobj())
        alice = logged_in(dash, dash.token)
        csrf = csrf_of(alice.get(f"/ui/jobs/{job['id']}").text)
        path = f"/ui/api/jobs/{job['id']}/cancel"
        missing = alice.post(path)
        assert missing.status_code == 403
        assert missing.json()["error"]["code"] == "csrf_failed"
        assert alice.post(path, headers={"X-CSRF-Token": "wrong"}).status_code == 403
        foreign = alice.post(path, headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"})
        assert foreign.status_code == 403
        # Bob holds a login and its CSRF token, but the job is not his: as in the API, 404.
        bob = logged_in(dash, dash.token_for("bob-too"))
        bob_csrf = csrf_of(bob.get("/ui/").text)
        assert bob.post(path, headers={"X-CSRF-Token": bob_csrf}).status_code == 404
        assert dash.client().get(f"/jobs/{job['id']}").json()["status"] == "QUEUED"
        done = alice.post(path, headers={"X-CSRF-Token": csrf})
        assert done.status_code == 200, done.text
        assert done.json()["status"] == "CANCELLED"
        # The page's form (no script): the same checks, then back to the job's page.
        other = submit(dash.client(), BACKEND, bell_qobj())
        form_path = f"/ui/jobs/{other['id']}/cancel"
        assert alice.post(form_path, data={"csrf": "nope"}).status_code == 403
        back = alice.post(form_path, data={"csrf": csrf})
        assert back.status_code == 303
        assert back.headers["location"] == f"/ui/jobs/{other['id']}"
        assert dash.client().get(f"/jobs/{other['id']}").json()["status"] == "CANCELLED"
        again = alice.post(path, headers={"X-CSRF-Token": csrf})
        assert again.status_code == 409  # already finished, as POST /jobs/{id}/cancel says
        alice.close()
        bob.close()
    finally:
        ops.post(f"/backends/{BACKEND}/resume").raise_for_status()


# -- the data the pages draw ---------------------------------------------------------------


def submit_set(
    svc: ServiceProcess, set_id: str, sizes: list[int], failing: int | None = None
) -> list[dict[str, Any]]:
    """Jobs tagged as IBMQJobManager tags a set's chunks; chunk ``failing`` ends ERROR."""
    jobs, start = [], 0
    for index, size in enumerate(sizes):
        tags = [
            "sweep",
            f"qdispatch_jobset:{set_id}",
            f"qdispatch_job:{index}:{start}:{size}",
            f"qdispatch_jobset_size:{len(sizes)}:{sum(sizes)}",
        ]
        experiments = [ghz(2, f"c{start + i}") for i in range(size)]
        shots = 2700 // size  # all its experiments together: 2,700 shots of memory
        payload = qobj(experiments, shots, memory=True) if index == failing else qobj(experiments)
        jobs.append(submit(svc.client(), BACKEND, payload, name=f"s_{index}_", tags=tags))
        start += size
    return jobs


def test_job_set_overview_and_counts_data(dash: ServiceProcess, ops: httpx.Client) -> None:
    ops.post(f"/backends/{BACKEND}/pause").raise_for_status()
    try:
        jobs = submit_set(dash, "set1", [2, 3, 1, 2], failing=3)
        dash.client().post(f"/jobs/{jobs[2]['id']}/cancel").raise_for_status()
    finally:
        ops.post(f"/backends/{BACKEND}/resume").raise_for_status()
    for job in jobs:
        wait_final(dash.client(), job["id"])
    alice = logged_in(dash, dash.token)
    data = alice.get("/ui/api/sets/set1").json()
    assert (data["name"], data["n_jobs"], data["n_experiments"]) == ("s", 4, 8)
    assert [c["count"] for c in data["chunks"]] == [2, 3, 1, 2]
    assert [c["status"] for c in data["chunks"]] == ["DONE", "DONE", "CANCELLED", "ERROR"]
    assert [c["progress"] for c in data["chunks"]] == [1.0, 1.0, 1.0, 1.0]
    assert data["experiments_done"] == 5
    assert data["tags"] == ["sweep"]
    failed = {c["index"]: c["error"] for c in data["failed"]}
    assert failed[2] == "cancelled"
    assert failed[3].startswith("the job's result is")
    overview = alice.get("/ui/api/overview").json()
    assert jobs[3]["id"] in {j["id"] for j in overview["failures"]}
    assert set(overview["workers"]) >= {"idle", "busy"}
    assert BACKEND in {q["backend"] for q in overview["queues"]}
    assert len(overview["throughput"]["finished"]) == 30
    assert sum(overview["throughput"]["finished"]) >= 4
    page = alice.get("/ui/sets/set1")
    assert page.status_code == 200
    assert "2\N{EN DASH}4" in page.text
    assert "set1" in alice.get("/ui/sets").text
    assert alice.get("/ui/sets/nope").status_code == 404
    counts = alice.get(f"/ui/api/jobs/{jobs[1]['id']}/counts", params={"experiment": 2}).json()
    assert (counts["experiments"], counts["name"]) == (3, "c4")
    assert {o for o, _ in counts["outcomes"]} <= {"00", "11"}
    assert sum(n for _, n in counts["outcomes"]) == counts["shots"]
    out_of_range = alice.get(f"/ui/api/jobs/{jobs[1]['id']}/counts", params={"experiment": 9})
    assert out_of_range.status_code == 400
    program_less = alice.get(f"/ui/api/jobs/{jobs[3]['id']}/counts")
    assert program_less.status_code == 409  # an ERROR job kept no result to plot
    alice.close()


# -- in a real browser -------------------------------------------------------------------


def _browser_paths() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture
def browser() -> Iterator[Any]:
    paths = _browser_paths()
    if paths is None:
        pytest.skip("no chromium + chromedriver on this machine (.ci/run installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.add_argument("--window-size=1200,800")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(paths[1]))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _wait(driver: Any, condition: Callable[[Any], Any], timeout: float = 60.0) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait  # noqa: PLC0415 - optional

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def _text(driver: Any, css: str) -> str:
    """The shown text of the first element ``css`` selects (read in one step: the pages
    replace elements as events come)."""
    script = "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';"
    return str(driver.execute_script(script, css)).strip()


def _texts(driver: Any, css: str) -> list[str]:
    """The shown text of every element ``css`` selects, in one step."""
    script = "return Array.from(document.querySelectorAll(arguments[0]), (e) => e.textContent);"
    return [str(t).strip() for t in driver.execute_script(script, css)]


def _shot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def _log_in(driver: Any, svc: ServiceProcess, path: str) -> None:
    """Open ``path``, be sent to the login form, log in, and land on ``path``."""
    from selenium.webdriver.common.by import By  # noqa: PLC0415 - optional

    driver.get(f"{svc.url}{path}")
    _wait(driver, lambda d: "/ui/login" in d.current_url)
    driver.find_element(By.ID, "token").send_keys(svc.token)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    _wait(driver, lambda d: d.current_url == f"{svc.url}{path}")


def _no_page_errors(driver: Any) -> None:
    """Nothing the page did was refused (a CSP violation, a script error)."""
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, "\n".join(e["message"] for e in severe)


def test_in_a_browser_follow_a_job_live_plot_it_and_cancel_another(
    dash: ServiceProcess, ops: httpx.Client, browser: Any
) -> None:
    from selenium.common.exceptions import NoAlertPresentException  # noqa: PLC0415
    from selenium.webdriver.common.by import By  # noqa: PLC0415

    ops.post(f"/backends/{BACKEND}/pause").raise_for_status()
    try:
        client = dash.client()
        job = submit(client, BACKEND, qobj([ghz(3, "ghz3")], shots=2000), name=XSS_NAME)
        queued = submit(client, BACKEND, bell_qobj(), name="to cancel")
        # Logging in through the form, from a page that needs a login.
        _log_in(browser, dash, f"/ui/jobs/{job['id']}")
        assert browser.get_cookie("qdispatch_ui")["httpOnly"] is True
        assert browser.execute_script("return document.cookie") == ""  # HttpOnly: not readable
        assert dash.token not in browser.page_source
        # The name is shown as text, never run.
        assert _text(browser, "h1.name") == XSS_NAME
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text  # noqa: B018 - raises when no alert is open
        assert _text(browser, "#status") == "QUEUED"
        _wait(browser, lambda d: "on" in d.find_element(By.ID, "live").get_attribute("class"))
        browser.execute_script("window.notReloaded = true")
        _shot(browser, "job-queued")
        ops.post(f"/backends/{BACKEND}/resume").raise_for_status()
        _wait(browser, lambda d: _text(d, "#status") == "DONE")
        assert browser.execute_script("return window.notReloaded") is True
        steps = _texts(browser, "#timeline td .status")
        assert steps[0] == "CREATED"
        assert "RUNNING" in steps
        assert steps[-1] == "COMPLETED"
        # Its histogram: the top outcomes of a GHZ state are 000 and 111.
        _wait(browser, lambda d: d.find_element(By.ID, "show-histogram").is_enabled())
        browser.find_element(By.ID, "show-histogram").click()
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#histogram rect.bar"))
        labels = _texts(browser, "#histogram .bar-label")
        assert set(labels) == {"000", "111"}
        counts = [int(t) for t in _texts(browser, "#histogram .bar-count")]
        assert sum(counts) == 2000
        browser.execute_script("document.getElementById('timeline-bar').scrollIntoView()")
        _shot(browser, "job-histogram")
        browser.set_window_size(1200, 1040)  # the whole job, for the README
        browser.execute_script("window.scrollTo(0, 0)")
        _shot(browser, "job-page")
        browser.set_window_size(1200, 800)
        # Cancel a queued job from its page.
        wait_final(client, queued["id"])  # the resume let it run too: queue another
        ops.post(f"/backends/{BACKEND}/pause").raise_for_status()
        queued = submit(client, BACKEND, bell_qobj(), name="to cancel")
        browser.get(f"{dash.url}/ui/jobs/{queued['id']}")
        assert _text(browser, "#status") == "QUEUED"
        browser.find_element(By.ID, "cancel").click()
        _wait(browser, lambda d: _text(d, "#status") == "CANCELLED")
        _wait(browser, lambda d: not d.find_elements(By.ID, "cancel"))
        assert client.get(f"/jobs/{queued['id']}").json()["status"] == "CANCELLED"
        _shot(browser, "job-cancelled")
        # The jobs table follows a new job's status live.
        browser.get(f"{dash.url}/ui/jobs")
        live = submit(client, BACKEND, bell_qobj(), name="live row")
        row = f'tr[data-job-id="{live["id"]}"] td.st'
        _wait(browser, lambda d: _text(d, row) == "QUEUED")
        ops.post(f"/backends/{BACKEND}/resume").raise_for_status()
        _wait(browser, lambda d: _text(d, row) == "DONE")
        _shot(browser, "jobs")
        # A job set: its chunks and failures follow the stream.
        ops.post(f"/backends/{BACKEND}/pause").raise_for_status()
        chunks = submit_set(dash, "browserset", [3, 3, 2, 3, 2], failing=4)
        browser.get(f"{dash.url}/ui/sets/browserset")
        statuses = "#chunks .status"
        _wait(browser, lambda d: len(_texts(d, statuses)) == 5)
        assert set(_texts(browser, statuses)) == {"QUEUED"}
        client.post(f"/jobs/{chunks[3]['id']}/cancel").raise_for_status()
        _wait(browser, lambda d: "CANCELLED" in _text(d, "#failed"))
        ops.post(f"/backends/{BACKEND}/resume").raise_for_status()
        _wait(browser, lambda d: "the job's result is" in _text(d, "#failed"), timeout=120)
        _wait(browser, lambda d: _text(d, "#done") == "8", timeout=120)
        grown = "var b = document.getElementById('total-bar'); return b.offsetWidth"
        whole = "return document.getElementById('total-bar').parentNode.clientWidth"
        _wait(
            browser, lambda d: abs(d.execute_script(grown) - 8 / 13 * d.execute_script(whole)) < 3
        )
        _shot(browser, "set")
        browser.get(f"{dash.url}/ui/")
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#sparkline polyline"))
        _shot(browser, "overview")
        _no_page_errors(browser)
    finally:
        ops.post(f"/backends/{BACKEND}/resume").raise_for_status()


def test_in_a_browser_a_program_jobs_logs_and_interim_results_stream_in(
    dash: ServiceProcess, browser: Any, tmp_path: Path
) -> None:
    flag = tmp_path / "open"
    body = {
        "program_id": "gate",
        "backend": BACKEND,
        "params": orjson.Fragment(encoding.dumps({"flag": str(flag)})),
    }
    answer = dash.client().post("/jobs", content=orjson.dumps(body))
    assert answer.status_code == 201, answer.text
    job_id = answer.json()["id"]
    _log_in(browser, dash, f"/ui/jobs/{job_id}")
    _wait(browser, lambda d: _text(d, "#status") == "RUNNING")
    _wait(browser, lambda d: "warming up" in _text(d, "#logs"))
    _wait(browser, lambda d: len(_texts(d, "#interim li")) == 1)
    browser.execute_script("window.notReloaded = true")
    flag.touch()
    _wait(browser, lambda d: _text(d, "#status") == "DONE")
    _wait(browser, lambda d: "converged" in _text(d, "#logs"))
    _wait(browser, lambda d: len(_texts(d, "#interim li")) == 2)
    assert browser.execute_script("return window.notReloaded") is True
    interim = [orjson.loads(t) for t in _texts(browser, "#interim li")]
    assert [item["step"] for item in interim] == [1, 2]
    assert _text(browser, "#logs").splitlines() == ["warming up", "converged"]
    browser.execute_script("document.getElementById('logs').scrollIntoView()")
    _shot(browser, "program-job")
    _no_page_errors(browser)
