"""Shared pieces of the browser end-to-end tests: free ports, servers in their own process groups, Chromium
through Playwright, and the screenshots and logs a failed run leaves in its temporary folder."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the process group `proc` leads, then SIGKILL what is left after `timeout`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            continue


Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """`spawn(name, argv, env=…, cwd=…)` starts a server in its own session, its output in `tmp_path/<name>.log`;
    teardown stops each group, newest first."""
    started: list[subprocess.Popen[bytes]] = []

    def start(
        name: str, argv: list[str], *, env: dict[str, str], cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps writing to it
        try:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):
        stop_group(proc)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # noqa: ANN201
    """Keep each phase's report on the test item, so fixtures can tell whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="module")
def chromium():  # noqa: ANN201
    """Debian's Chromium driven by Playwright (never a downloaded browser). Module-scoped: Playwright's sync
    API holds an event loop in the main thread, which would break asyncio.run in later tests."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: run 'bash tests/e2e/vscode_setup.sh' (make test does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(
            "the playwright package is missing: run 'bash tests/e2e/vscode_setup.sh' (make test does)"
        )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium, spawn: Spawn, request: pytest.FixtureRequest, tmp_path: Path):  # noqa: ANN001, ANN201
    """A fresh browser page; a failed test leaves `failure.png` and its logs in `tmp_path`, and says where.
    It depends on `spawn` so that it is torn down, and the screenshot taken, while the servers still run."""
    context = chromium.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is None or report.failed:
        try:
            page.screenshot(path=str(tmp_path / "failure.png"))
        except Exception as exc:  # noqa: BLE001 - the page may be gone; the logs still help
            print(f"no failure screenshot: {exc}")
        print(f"\nartifacts of {request.node.name} in {tmp_path}:")
        for path in sorted(tmp_path.glob("*")):
            print(f"  {path}")
    context.close()
