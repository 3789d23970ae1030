"""End to end in a real JupyterLab, driven through Chromium by Playwright, against a real daemon.

A `%%ask` cell streams its answer into the notebook; its rating widget stores 4 stars and a comment; the
`/reinf/` page rates another answer; the daemon then holds both ratings.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..daemon_proc import DaemonProcess, daemon_env
from ..jupyter_proc import JupyterProcess, start_both

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
ASK = "%%ask --max-tokens 24 --temperature 0\nWrite a Python function that reverses a string."


def notebook(*cells: str) -> str:
    return json.dumps({
        "cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [],
                   "source": source} for i, source in enumerate(cells)],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4, "nbformat_minor": 5,
    })  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProcess, JupyterProcess]]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing: run tests/e2e/jupyter_setup.sh (make e2e-setup)")
    work = tmp_path_factory.mktemp("jupyterlab")
    daemon = DaemonProcess(work / "home", daemon_env(work / "home"))
    lab = JupyterProcess(work, daemon.env, lab=True)
    (lab.root / "ask.ipynb").write_text(notebook("%load_ext reinf.jupyter", ASK))
    try:
        start_both(daemon, lab)
        yield daemon, lab
    finally:
        lab.stop()
        daemon.stop()


@pytest.fixture
def page(
    stack: tuple[DaemonProcess, JupyterProcess], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    daemon, lab = stack
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(30_000)
        page = context.new_page()
        messages: list[str] = []
        page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
        failures = request.session.testsfailed
        yield page
        # Keep what shows why it failed (or, with REINF_E2E_SHOTS=1, what it looked like).
        if request.session.testsfailed > failures or os.environ.get("REINF_E2E_SHOTS"):
            for i, p in enumerate(context.pages):
                shot = tmp_path / f"page-{i}.png"
                p.screenshot(path=str(shot), full_page=True)
                print(f"screenshot: {shot}")
            (tmp_path / "console.log").write_text("\n".join(messages))
            print(
                f"browser console: {tmp_path / 'console.log'}\njupyter log: {lab.log_path}\ndaemon log: {daemon.log_path}"
            )
        browser.close()


# The notebook's panel, found by its path: `shell.currentWidget` follows the focus, which may move.
PANEL = """const panel = Array.from(window.jupyterapp ? window.jupyterapp.shell.widgets("main") : [])
  .find((w) => w.context && w.context.path === "ask.ipynb");"""

# Resolves once the notebook's kernel is connected and idle: a toolbar that says "idle" is not enough.
# (Synchronous: wait_for_function takes a returned Promise for a true value.)
KERNEL_READY = """() => {
  PANEL
  if (!panel || !panel.sessionContext.isReady) return false;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  return !!kernel && kernel.connectionStatus === "connected" && kernel.status === "idle";
}""".replace("PANEL", PANEL)

# Records every answer display the kernel sends, as the browser receives it, then runs the notebook.
RUN_AND_RECORD = """async () => {
  PANEL
  window.reinfAnswers = [];
  panel.sessionContext.session.kernel.iopubMessage.connect((_, msg) => {
    const type = msg.header.msg_type;
    const meta = msg.content && msg.content.metadata && msg.content.metadata.reinf;
    if ((type === "display_data" || type === "update_display_data") && meta) {
      window.reinfAnswers.push({ type, state: meta.state, id: meta.interaction_id || null,
                                 text: msg.content.data["text/markdown"] || "" });
    }
  });
  window.jupyterapp.shell.activateById(panel.id);
  await window.jupyterapp.commands.execute("notebook:run-all-cells");
}""".replace("PANEL", PANEL)


def _letters(text: str) -> str:
    """What Markdown rendering keeps of a text: its letters and digits."""
    return re.sub(r"[^A-Za-z0-9]", "", text)


def test_ask_streams_rates_and_the_review_page_rates(
    stack: tuple[DaemonProcess, JupyterProcess], page: Any
) -> None:
    from playwright.sync_api import expect

    daemon, lab = stack
    page.goto(f"{lab.url}/lab/tree/ask.ipynb?token={lab.token}")
    page.wait_for_function(KERNEL_READY, polling=200, timeout=60_000)
    page.evaluate(RUN_AND_RECORD)

    # The answer streams: partial updates reach the browser before the final one, each a prefix of the next.
    page.wait_for_function("() => window.reinfAnswers.some((a) => a.state === 'done')", timeout=60_000)
    answers = page.evaluate("() => window.reinfAnswers")
    states = [a["state"] for a in answers]
    assert states[0] == "waiting" and states[-1] == "done", states
    partial = [a["text"].removesuffix(" ▌") for a in answers if a["state"] == "streaming"]
    final = answers[-1]["text"]
    assert partial and all(final.startswith(p) and p for p in partial), answers
    assert len(partial[0]) < len(final), "the first update carries less than the whole answer"
    ask_id = answers[-1]["id"]

    # The notebook shows the finished answer rendered as Markdown, without the streaming cursor.
    rendered = page.locator(".jp-Cell").nth(1).locator(".jp-RenderedMarkdown").first
    # A locator, not a handle: it follows the element when the output redraws.
    expect(rendered).not_to_contain_text("▌", timeout=30_000)
    assert _letters(rendered.inner_text()) == _letters(final)

    # The rating widget under the answer: 4 stars, a comment, submit.
    widget = page.locator(f".reinf-rating-{ask_id}")
    widget.locator(".reinf-star-4").click()
    widget.locator(".reinf-comment textarea").fill("e2e: clear enough")
    widget.locator(".reinf-submit").click()
    status = widget.locator(".reinf-status")
    status.filter(has_text="Rating stored").wait_for()

    # The review page rates an answer the notebook did not rate.
    with daemon.client("e2e") as client:
        other_id = client.request(
            "reinf/chat", {"messages": [{"role": "user", "content": "def add(a, b):"}], "max_tokens": 8}
        )["interaction_id"]
    review = page.context.new_page()
    review.goto(f"{lab.url}/reinf/")
    card = review.locator(f'article.item[data-interaction-id="{other_id}"]')
    card.locator('.star[data-stars="2"]').click()
    card.locator(".comment").fill("e2e: from the page")
    card.locator(".submit").click()
    card.locator(".status").filter(has_text="Rating stored").wait_for()
    assert review.locator(f'article.item[data-interaction-id="{ask_id}"]').count() == 0, (
        "rated items leave the queue"
    )

    with daemon.client("e2e-check") as client:
        items = {i["interaction_id"]: i for i in client.request("reinf/history", {"limit": 50})["items"]}
    assert items[ask_id]["kind"] == "ask"
    assert items[ask_id]["rating"] == {"thumbs": None, "stars": 4, "comment": "e2e: clear enough"}
    assert items[other_id]["rating"] == {"thumbs": None, "stars": 2, "comment": "e2e: from the page"}
