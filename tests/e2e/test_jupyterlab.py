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
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=lab.url)
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
    # The answer's own text: the Copy / Insert buttons the lab extension adds to it (once it is done, so
    # sometimes before this line runs and sometimes after) are not part of it.
    shown = rendered.evaluate(
        "e => { const c = e.cloneNode(true); c.querySelectorAll('.reinf-answer-actions').forEach(n => n.remove());"
        " return c.innerText; }"
    )
    assert _letters(shown) == _letters(final)

    # The rating widget under the answer: 4 stars, saved at once; then a comment, in a box that opens on demand.
    widget = page.locator(f".reinf-rating-{ask_id}")
    status = widget.locator(".reinf-status")
    widget.locator(".reinf-star-4").click()
    expect(status).to_contain_text("Saved: 4 stars.")
    expect(widget.locator(".reinf-comment textarea")).to_be_hidden()
    widget.locator(".reinf-comment-toggle").click()
    widget.locator(".reinf-comment textarea").fill("e2e: clear enough")
    widget.locator(".reinf-submit").click()
    expect(status).to_contain_text("Saved: 4 stars and your comment.")
    expect(widget.locator(".reinf-comment textarea")).to_be_hidden()

    # The Help menu opens the review page.
    page.locator(".lm-MenuBar-itemLabel", has_text="Help").click()
    with page.context.expect_page() as opened:
        page.locator(".lm-Menu-itemLabel", has_text="reinf: Review Queue and Dashboard").click()
    opened.value.wait_for_load_state()
    assert opened.value.url.rstrip("/").endswith("/reinf"), opened.value.url
    opened.value.close()

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
    # Interrupt the kernel once the answer streams, as the toolbar's stop button does. The test model answers
    # in half a second, so the daemon is paused meanwhile, as if it were a real model that takes its time. Its
    # whole answer can be on the wire before the pause: then there was nothing to stop, and the ask runs again.
    for _ in range(3):
        page.evaluate("() => { window.reinfAnswers = []; }")
        page.evaluate(RUN_CELLS, ["train.ipynb", 0, 1])
        page.wait_for_function(
            "() => window.reinfAnswers.some((a) => a.state === 'streaming')", timeout=60_000
        )
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
        if last["state"] != "done":
            break
        page.wait_for_function(KERNEL_READY, arg="train.ipynb", polling=200, timeout=60_000)
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

    # The stopped answer has Copy and Insert: Copy puts its text on the clipboard; Insert makes it a new
    # code cell right under it.
    # The answer is rendered as Markdown: if the model's text happens to hold a code block (an indented line will
    # do), the first pair of buttons is that block's, and copies the block alone.
    buttons = cell.locator(".reinf-answer-actions").first
    block = cell.locator(".jp-RenderedMarkdown pre")
    wanted = stored["response"]
    if block.count():
        wanted = block.first.text_content().removesuffix("\n")
        assert _letters(wanted) in _letters(stored["response"]), (wanted, stored["response"])
    buttons.get_by_role("button", name="Copy").click()
    expect(buttons).to_contain_text("Copied.")
    assert page.evaluate("() => navigator.clipboard.readText()") == wanted
    before = cells.count()
    buttons.get_by_role("button", name="Insert as a new cell").click()
    expect(cells).to_have_count(before + 1)
    source = page.evaluate(
        f"(NOTEBOOK) => {{ {PANEL} return panel.content.widgets[2].model.sharedModel.getSource(); }}",
        "train.ipynb",
    )
    assert source == wanted


def _gate(candidate: float, active: float, compared_with: int) -> dict[str, Any]:
    """A gate result shaped like training/gate.py's, with the chat-template example it carries."""
    return {
        "passed": True, "checks": {"score_ok": True}, "reasons": [], "n_prompts": 12, "samples_per_prompt": 2,
        "candidate_score": candidate, "active_score": active, "compared_with": compared_with,
        "kl_to_active": 3.21, "kl_to_base": 9.8, "max_kl": 20.0, "general_loss_increase": 0.011,
        "max_general_loss_increase": 0.05, "candidate_median_tokens": 41.0,
        "example": {"prompt": "<|im_start|>user\nsort a list<|im_end|>\n<|im_start|>assistant\n", "candidate": "x"},
    }  # fmt: skip


def _run(run_id: int, watermark: int, candidate: float, active: float, version: int | None) -> dict[str, Any]:
    return {
        "run_id": run_id, "state": "published" if version else "rejected", "trigger": "threshold",
        "started": "2026-03-04T10:00:00Z", "finished": "2026-03-04T10:05:00Z", "adapter_version": version,
        "metrics": {"reward_model": {"correlation": 0.4, "pairwise_accuracy": 0.7, "watermark": watermark},
                    "gate": _gate(candidate, active, max(0, (version or 1) - 1)), "reasons": []},
    }  # fmt: skip


def test_the_dashboard_reads_as_numbers_and_switching_says_so_in_its_row(
    stack: tuple[DaemonProcess, JupyterProcess], page: Any
) -> None:
    """The page's own rendering, on daemon answers shaped like real ones: three runs, the third scored by a new
    judge; v1 active and v2 newer."""
    from playwright.sync_api import expect

    _, lab = stack
    state = {"active": 1}
    runs = [_run(3, 40, 0.52, 0.31, 2), _run(2, 20, 0.30, 0.10, None), _run(1, 20, 0.35, 0.12, 1)]

    def adapters() -> dict[str, Any]:
        rows = [
            {"version": 2, "run_id": 3, "status": "retired", "created": "2026-03-04T10:05:00Z", "eval": _gate(0.52, 0.31, 1)},
            {"version": 1, "run_id": 1, "status": "retired", "created": "2026-03-03T10:05:00Z", "eval": _gate(0.35, 0.12, 0)},
        ]  # fmt: skip
        for row in rows:
            row["status"] = "active" if row["version"] == state["active"] else "retired"
        return {"adapters": rows, "active": state["active"]}

    def answer(route: Any) -> None:
        name = route.request.url.split("/api/")[1].split("?")[0]
        if name == "rollback":
            state["active"] = json.loads(route.request.post_data)["version"]
            body: Any = {"adapter_version": state["active"]}
        else:
            body = {
                "adapters": adapters(),
                "runs": {"runs": runs},
                "timeline": {"points": [{"day": "2026-03-03", "count": 7, "mean_stars": 3.4},
                                        {"day": "2026-03-04", "count": 12, "mean_stars": 4.1}]},
            }.get(name)  # fmt: skip
            if body is None:
                route.continue_()
                return
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    page.route("**/reinf/api/**", answer)
    page.goto(f"{lab.url}/reinf/?token={lab.token}")
    table = page.locator("#adapters")
    v1 = table.locator('tr[data-version="1"]')
    # Evaluations read as figures, without the chat template's tokens.
    expect(v1.locator(".eval-summary")).to_contain_text("0.350 vs 0.120 for the base (12 held-out prompts)")
    expect(v1.locator(".eval-summary")).to_contain_text("KL 3.21 from the base (bound 20.00)")
    expect(v1.locator(".eval-summary")).to_contain_text("loss +1.1% (at most +5.0%)")
    expect(table).not_to_contain_text("<|im_start|>")
    # The ratings chart writes its counts and mean stars.
    ratings = page.locator("#ratings-chart")
    expect(ratings.locator("text.value")).to_have_text(["7", "12", "★3.4", "★4.1"])
    # Held-out reward: one line per judge, two series, so four lines for the judges of runs 1–2 and run 3.
    expect(page.locator("#runs-chart .chart").nth(1).locator("polyline")).to_have_count(4)
    expect(page.locator("#runs-chart")).to_contain_text("not comparable, so they are not joined")
    # A newer version is switched to, not rolled back to; the confirmation is in its row.
    button = table.locator('tr[data-version="2"] button.rollback')
    expect(button).to_have_text("Switch to v2")
    expect(table.locator('tr[data-version="0"] button.rollback')).to_have_text("Use the base model")
    button.click()
    expect(table.locator('tr[data-version="2"]')).to_contain_text("Now using adapter v2.")
    expect(table.locator('tr[data-version="1"] button.rollback')).to_have_text("Roll back to v1")


def test_the_chat_panel_answers_from_the_daemon_and_rates(
    stack: tuple[DaemonProcess, JupyterProcess], page: Any
) -> None:
    from playwright.sync_api import expect

    daemon, lab = stack
    _open(page, lab, "ask.ipynb")
    page.locator(".jp-SideBar.jp-mod-right .lm-TabBar-tab", has_text="reinf").click()
    chat = page.locator("#reinf-chat")
    expect(chat).to_be_visible()
    chat.locator("textarea").fill("How do I reverse a list?")
    chat.locator("textarea").press("Control+Enter")  # the Ask button may sit under JupyterLab's news toast
    answer = chat.locator(".reinf-chat-answer[data-interaction]")
    expect(answer).to_be_visible(timeout=60_000)
    interaction_id = answer.get_attribute("data-interaction")
    rate = chat.locator(f'.reinf-chat-rate[data-interaction="{interaction_id}"]')
    rate.locator('.star[data-stars="3"]').click()
    expect(rate).to_contain_text("Saved: 3 stars.")
    rate.locator(".thumb-down").click()
    expect(rate).to_contain_text("Saved: thumbs down and 3 stars.")
    with daemon.client("e2e-check") as client:
        items = {i["interaction_id"]: i for i in client.request("reinf/history", {"limit": 50})["items"]}
    assert items[interaction_id]["kind"] == "chat"
    assert items[interaction_id]["prompt"].endswith("How do I reverse a list?")
    assert items[interaction_id]["rating"] == {"thumbs": "down", "stars": 3, "comment": None}
