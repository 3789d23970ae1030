"""End to end in a real JupyterLab, driven through Chromium by Playwright, against a real daemon.

A `%%ask` cell streams its answer into the notebook; its rating widget stores 4 stars and a comment; the
`/reinf/` page rates another answer; the daemon then holds both ratings.
"""

from __future__ import annotations

import json
import os
import re
import signal
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
# Long enough to be going still when the interrupt arrives: 4000 tokens take the test model well over 10 s.
LONG_ASK = "%%ask --max-tokens 4000 --temperature 1\nwrite a long module"


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
    (lab.root / "train.ipynb").write_text(notebook("%load_ext reinf.jupyter", LONG_ASK, "%reinf retrain"))
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
  .find((w) => w.context && w.context.path === NOTEBOOK);"""

# Resolves once the notebook's kernel is connected and idle: a toolbar that says "idle" is not enough.
# (Synchronous: wait_for_function takes a returned Promise for a true value.)
KERNEL_READY = """(NOTEBOOK) => {
  PANEL
  if (!panel || !panel.sessionContext.isReady) return false;
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  return !!kernel && kernel.connectionStatus === "connected" && kernel.status === "idle";
}""".replace("PANEL", PANEL)

# Records every answer display the kernel sends, as the browser receives it.
RECORD = """(NOTEBOOK) => {
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
}""".replace("PANEL", PANEL)

# Runs the cells from `first` to `last`, each after the one before has finished; returns at once, so that the
# test can watch (and interrupt) them.
RUN_CELLS = """([NOTEBOOK, first, last]) => {
  PANEL
  window.jupyterapp.shell.activateById(panel.id);
  panel.content.activeCellIndex = first;
  (async () => {
    for (let i = first; i <= last; i++) {
      await window.jupyterapp.commands.execute("notebook:run-cell-and-select-next");
    }
  })();
}""".replace("PANEL", PANEL)


def _open(page: Any, lab: JupyterProcess, name: str) -> Any:
    """Open notebook `name`, wait for its kernel, record its answers; returns a locator of its cells (the
    workspace may restore other notebooks beside it)."""
    page.goto(f"{lab.url}/lab/tree/{name}?token={lab.token}")
    page.wait_for_function(KERNEL_READY, arg=name, polling=200, timeout=60_000)
    page.evaluate(RECORD, name)
    panel_id = page.evaluate(f"(NOTEBOOK) => {{ {PANEL} return panel.id; }}", name)
    return page.locator(f'[id="{panel_id}"] .jp-Cell')


def _letters(text: str) -> str:
    """What Markdown rendering keeps of a text: its letters and digits."""
    return re.sub(r"[^A-Za-z0-9]", "", text)


def test_ask_streams_rates_and_the_review_page_rates(
    stack: tuple[DaemonProcess, JupyterProcess], page: Any
) -> None:
    from playwright.sync_api import expect

    daemon, lab = stack
    cells = _open(page, lab, "ask.ipynb")
    page.evaluate(RUN_CELLS, ["ask.ipynb", 0, 1])
    # Loading the extension says what it is, and that the daemon is there.
    loaded = cells.nth(0).locator(".jp-OutputArea-output")
    expect(loaded).to_contain_text("reinf loaded: %%ask asks the local model")
    expect(loaded).to_contain_text("Daemon running (pid")

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
    rendered = cells.nth(1).locator(".jp-RenderedMarkdown").first
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


def test_an_interrupted_ask_keeps_its_answer_and_retrain_shows_progress(
    stack: tuple[DaemonProcess, JupyterProcess], page: Any
) -> None:
    from playwright.sync_api import expect

    daemon, lab = stack
    cells = _open(page, lab, "train.ipynb")
    page.evaluate(RUN_CELLS, ["train.ipynb", 0, 1])
    # Interrupt the kernel once the answer streams, as the toolbar's stop button does. The test model answers
    # in half a second, so the daemon is paused meanwhile, as if it were a real model that takes its time.
    page.wait_for_function("() => window.reinfAnswers.some((a) => a.state === 'streaming')", timeout=60_000)
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    try:
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:interrupt-kernel')")
        page.wait_for_timeout(1500)  # the kernel sends $/cancelRequest within a few hundred ms
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)
    page.wait_for_function(
        "() => window.reinfAnswers.some((a) => a.state === 'stopped' || a.state === 'done')"
    )
    last = page.evaluate("() => window.reinfAnswers[window.reinfAnswers.length - 1]")
    assert last["state"] == "stopped" and last["id"], f"the answer was not stopped: {last}"
    cell = cells.nth(1)
    # The answer so far stays, marked stopped, with a rating widget, and one line instead of a traceback.
    expect(cell.locator(".jp-RenderedMarkdown").first).to_contain_text("(stopped)")
    expect(page.locator(f".reinf-rating-{last['id']}")).to_be_visible()
    expect(cell.locator(".jp-OutputArea")).to_contain_text("reinf: stopped; the answer so far is stored")
    expect(cell.locator(".jp-OutputArea")).not_to_contain_text("Traceback")
    with daemon.client("e2e-check") as client:
        out = daemon.home / "interrupted.jsonl"
        client.request("reinf/export", {"format": "jsonl", "path": str(out)})
    rows = {r["interaction_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    stored = rows[last["id"]]
    assert stored["finish_reason"] == "cancelled" and stored["kind"] == "ask"
    assert stored["response"] and _letters(last["text"]).startswith(_letters(stored["response"])[:20])

    # %reinf retrain shows the run as it goes, until it says how it ended.
    page.wait_for_function(KERNEL_READY, arg="train.ipynb", polling=200, timeout=60_000)
    page.evaluate(RUN_CELLS, ["train.ipynb", 2, 2])
    progress = cells.nth(2).locator(".reinf-training")
    expect(progress).to_be_visible(timeout=60_000)
    expect(progress).to_have_class(re.compile(r"reinf-training-(published|rejected|failed)"), timeout=300_000)
    expect(progress.locator(".reinf-training-status")).to_contain_text(
        re.compile(r"^(Published: adapter v\d+ is live|Not published|Failed)")
    )
    expect(progress).not_to_contain_text("reward_model")
