"""The Jupyter server extension on a real jupyter_server and a real daemon: auth, XSRF, input checks, the page."""

from __future__ import annotations

import http.cookiejar
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reinf.jupyter.handlers import STATIC

from .daemon_proc import DaemonProcess, daemon_env
from .jupyter_proc import JupyterProcess, start_both


@dataclass
class Reply:
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Browser:
    """An HTTP client with a cookie jar that does not follow redirects, like a browser tab's fetch()."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.cookies), _NoRedirect()
        )

    def cookie(self, name: str) -> str | None:
        return next((c.value for c in self.cookies if c.name == name), None)

    def send(
        self, path: str, body: Any = None, *, headers: dict[str, str] | None = None, raw: bytes | None = None
    ) -> Reply:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.base + path, data=data, headers=headers or {})
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with self.opener.open(request, timeout=30) as response:
                return Reply(response.status, response.headers, response.read())
        except urllib.error.HTTPError as exc:
            return Reply(exc.code, exc.headers, exc.read())


@dataclass
class Stack:
    daemon: DaemonProcess
    jupyter: JupyterProcess

    def token_headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.jupyter.token}"}

    def logged_in(self) -> Browser:
        """A browser session logged in by the token in the URL, as `jupyter server` prints it."""
        browser = Browser(self.jupyter.url)
        page = browser.send(f"/reinf/?token={self.jupyter.token}")
        assert page.status == 200, page.body[:500]
        assert browser.cookie("_xsrf"), "the page must set the XSRF cookie"
        return browser

    def chat(self, prompt: str) -> str:
        with self.daemon.client() as client:
            return client.request(
                "reinf/chat", {"messages": [{"role": "user", "content": prompt}], "max_tokens": 4}
            )["interaction_id"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("jupyter-server")
    daemon = DaemonProcess(work / "home", daemon_env(work / "home"))
    jupyter = JupyterProcess(work, daemon.env)
    try:
        start_both(daemon, jupyter)
        yield Stack(daemon, jupyter)
    finally:
        jupyter.stop()
        daemon.stop()
        print(f"jupyter log: {jupyter.log_path}\ndaemon log: {daemon.log_path}")


# -- auth and XSRF -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/reinf/api/status"),
        ("GET", "/reinf/api/queue"),
        ("GET", "/reinf/api/runs"),
        ("GET", "/reinf/api/adapters"),
        ("GET", "/reinf/api/timeline"),
        ("POST", "/reinf/api/rate"),
        ("POST", "/reinf/api/chat"),
        ("POST", "/reinf/api/rollback"),
        ("POST", "/reinf/api/retrain"),
        ("POST", "/reinf/api/cancel"),
    ],
)
def test_the_api_requires_login(stack: Stack, method: str, path: str) -> None:
    browser = Browser(stack.jupyter.url)
    body = {"interaction_id": "x", "stars": 3} if method == "POST" else None
    assert browser.send(path, body).status == 403
    wrong = browser.send(path, body, headers={"Authorization": "token not-the-token"})
    assert wrong.status == 403


def test_the_page_and_its_assets_require_login(stack: Stack) -> None:
    browser = Browser(stack.jupyter.url)
    for path in ("/reinf/", "/reinf/static/app.js", "/reinf/static/style.css"):
        reply = browser.send(path)
        assert reply.status == 302 and "/login" in reply.headers["Location"], path
        assert b"reinf" not in reply.body


def test_a_post_without_the_xsrf_token_is_refused(stack: Stack) -> None:
    browser = stack.logged_in()
    interaction_id = stack.chat("xsrf check")
    refused = browser.send("/reinf/api/rate", {"interaction_id": interaction_id, "stars": 2})
    assert refused.status == 403 and b"_xsrf" in refused.body
    forged = browser.send(
        "/reinf/api/rate",
        {"interaction_id": interaction_id, "stars": 2},
        headers={"X-XSRFToken": "2|00|forged|1"},
    )
    assert forged.status == 403
    with stack.daemon.client() as client:
        item = _item(client, interaction_id)
    assert item["rating"] is None, "nothing may be written by a refused request"

    accepted = browser.send(
        "/reinf/api/rate",
        {"interaction_id": interaction_id, "stars": 2},
        headers={"X-XSRFToken": _page_xsrf(browser)},
    )
    assert accepted.status == 200, accepted.body
    assert accepted.json()["ratings_total"] >= 1


def _page_xsrf(browser: Browser) -> str:
    page = browser.send("/reinf/").body.decode()
    match = re.search(r'<meta name="reinf-xsrf" content="([^"]+)">', page)
    assert match, "the page carries the XSRF token for its script"
    return match.group(1)


def _item(client: Any, interaction_id: str) -> dict[str, Any]:
    items = client.request("reinf/history", {"limit": 200})["items"]
    return next(i for i in items if i["interaction_id"] == interaction_id)


# -- the page ----------------------------------------------------------------------------------------


def test_the_page_has_a_strict_csp_and_loads_nothing_remote(stack: Stack) -> None:
    browser = stack.logged_in()
    page = browser.send("/reinf/")
    csp = page.headers["Content-Security-Policy"]
    for directive in ("default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'"):
        assert directive in csp
    assert "unsafe" not in csp and "http" not in csp
    assert page.headers["Content-Type"].startswith("text/html")
    for name in ("app.js", "style.css"):
        asset = browser.send(f"/reinf/static/{name}")
        assert asset.status == 200 and asset.headers["Content-Security-Policy"] == csp
    assert browser.send("/reinf/static/index.html").status == 404
    assert browser.send("/reinf/static/..%2F__init__.py").status == 404
    for path in STATIC.iterdir():
        text = path.read_text()
        # The only absolute URL is the SVG namespace, a name that is never fetched.
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.\w+[^\s\"'`)]*", text)) - {
            "http://www.w3.org/2000/svg"
        }
        assert not urls, f"{path.name} refers to {urls}"
        assert "<script>" not in text and " style=" not in text and "innerHTML" not in text, path.name


def test_bare_reinf_redirects_to_the_page(stack: Stack) -> None:
    reply = Browser(stack.jupyter.url).send("/reinf")
    assert reply.status in (301, 302) and reply.headers["Location"].endswith("/reinf/")


# -- the REST handlers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/reinf/api/rate", {"interaction_id": "x", "stars": 9}, "stars must be between 1 and 5, got 9"),
        ("/reinf/api/rate", {"interaction_id": "x", "stars": "4"}, "stars must be an integer"),
        ("/reinf/api/rate", {"interaction_id": "x", "stars": True}, "stars must be an integer"),
        ("/reinf/api/rate", {"interaction_id": "x", "thumbs": "sideways"}, "thumbs must be one of up, down"),
        ("/reinf/api/rate", {"interaction_id": "", "stars": 3}, "unknown interaction_id ''"),
        ("/reinf/api/rate", {"interaction_id": "x"}, "give at least one of thumbs, stars or comment"),
        ("/reinf/api/rate", {"interaction_id": "x", "stars": 3, "admin": True}, "unknown field 'admin'"),
        ("/reinf/api/rate", {"interaction_id": "x", "comment": 5}, "comment must be a string, got int"),
        ("/reinf/api/rate", [1, 2], "the body must be a JSON object"),
        ("/reinf/api/rollback", {"version": -1}, "version must be between 0 and 2147483648, got -1"),
        ("/reinf/api/rollback", {"version": "v2"}, "version must be an integer"),
        ("/reinf/api/retrain", {"now": True}, "unknown field 'now'"),
        ("/reinf/api/chat", {"messages": []}, "messages must be a list of 1–100 messages"),
        ("/reinf/api/chat", {"messages": [{"role": "system", "content": "x"}]}, "messages[0] must be"),
        ("/reinf/api/chat", {"messages": [{"role": "user", "content": " "}]}, "messages[0].content must be"),
        (
            "/reinf/api/chat",
            {"messages": [{"role": "user", "content": "q"}], "kind": "ask"},
            "unknown field 'kind'",
        ),
    ],
)
def test_bad_input_is_refused_with_a_message(stack: Stack, path: str, body: Any, message: str) -> None:
    reply = Browser(stack.jupyter.url).send(path, body, headers=stack.token_headers())
    assert reply.status == 400, reply.body
    assert message in reply.json()["message"]


def test_bad_query_and_body_are_refused(stack: Stack) -> None:
    browser = Browser(stack.jupyter.url)
    headers = stack.token_headers()
    assert (
        browser.send("/reinf/api/rate", raw=b"{not json", headers=headers).json()["message"]
        == "the body must be JSON"
    )
    for query, message in (("limit=abc", "limit must be a whole number"), ("limit=0", "limit must be 1–200, got 0"),
                           ("offset=-3", "offset must be at least 0, got -3")):  # fmt: skip
        reply = browser.send(f"/reinf/api/queue?{query}", headers=headers)
        assert reply.status == 400 and message in reply.json()["message"], query


def test_an_unknown_interaction_is_refused_by_the_daemon(stack: Stack) -> None:
    reply = Browser(stack.jupyter.url).send(
        "/reinf/api/rate", {"interaction_id": "no-such-id", "stars": 3}, headers=stack.token_headers()
    )
    assert reply.status == 400 and "interaction" in reply.json()["message"]


def test_queue_rate_and_dashboard_reads(stack: Stack) -> None:
    interaction_id = stack.chat("def add(a, b):")
    browser = Browser(stack.jupyter.url)
    headers = stack.token_headers()
    queue = browser.send("/reinf/api/queue?limit=200", headers=headers).json()
    item = next(i for i in queue["items"] if i["interaction_id"] == interaction_id)
    assert "def add(a, b):" in item["prompt"] and "response" in item and queue["total"] >= 1

    stored = browser.send(
        "/reinf/api/rate", {"interaction_id": interaction_id, "stars": 5, "thumbs": "up", "comment": "ok"},
        headers=headers,
    )  # fmt: skip
    assert stored.status == 200 and {"rating_id", "ratings_total", "until_next_training"} <= set(
        stored.json()
    )
    queue = browser.send("/reinf/api/queue?limit=200", headers=headers).json()
    assert interaction_id not in [i["interaction_id"] for i in queue["items"]]
    with stack.daemon.client() as client:
        assert _item(client, interaction_id)["rating"] == {"thumbs": "up", "stars": 5, "comment": "ok"}

    status = browser.send("/reinf/api/status", headers=headers).json()
    assert status["model"] == "reinf-tiny-test" and status["ratings_total"] >= 1
    timeline = browser.send("/reinf/api/timeline", headers=headers).json()
    assert sum(p["count"] for p in timeline["points"]) >= 1
    assert "runs" in browser.send("/reinf/api/runs", headers=headers).json()
    adapters = browser.send("/reinf/api/adapters", headers=headers).json()
    assert "adapters" in adapters and "active" in adapters


def test_daemon_down_is_a_503_with_a_message(tmp_path: Path) -> None:
    env = daemon_env(tmp_path / "home", training_min_new_ratings="lots")  # start-up fails on this setting
    jupyter = JupyterProcess(tmp_path, env).start()
    try:
        reply = Browser(jupyter.url).send(
            "/reinf/api/status", headers={"Authorization": f"token {jupyter.token}"}
        )
        assert reply.status == 503
        assert reply.json()["message"].startswith("the reinf daemon is not available: reinf serve exited")
    finally:
        jupyter.stop()


def test_installing_the_package_enables_the_extension() -> None:
    listing = subprocess.run(
        [sys.executable, "-m", "jupyter", "server", "extension", "list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = re.sub(r"\x1b\[[0-9;]*m", "", listing.stdout + listing.stderr)
    assert re.search(r"reinf\.jupyter\s+enabled", out), out
    assert re.search(r"reinf\.jupyter\s.*OK", out), out


def test_installing_the_package_enables_the_jupyterlab_extension() -> None:
    """The Help menu entry and the answers' Copy and Insert buttons come from it."""
    listing = subprocess.run(
        [sys.executable, "-m", "jupyter", "labextension", "list"], capture_output=True, text=True, timeout=60
    )
    out = re.sub(r"\x1b\[[0-9;]*m", "", listing.stdout + listing.stderr)
    assert re.search(r"reinf-jupyterlab v\S+ enabled\s+OK", out), out
