"""The %%ask and %reinf magics in a real IPython InteractiveShell: parsing, interpolation, streaming, widgets, errors.

Most tests talk to a fake daemon connection that records what is sent; the last ones use a real daemon.
"""

from __future__ import annotations

import _thread
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from reinf.client import RpcError
from reinf.jupyter.connection import Connection
from reinf.jupyter.magics import ReinfMagics
from reinf.jupyter.prompt import TRUNCATED, PromptError, interpolate, notebook_cells
from reinf.jupyter.stream import CURSOR
from reinf.jupyter.widgets import RatingWidget, TrainingProgress

from .daemon_proc import daemon_env, running_daemon

CHAT_RESULT = {
    "interaction_id": "abc123",
    "text": "Use `sorted(xs)`.",
    "finish_reason": "stop",
    "model": "reinf-tiny-test",
    "adapter_version": 0,
    "timings": {"queue_ms": 1, "generate_ms": 5, "total_ms": 7},
}


class FakeClient:
    """Records requests; a chat streams its answer in three deltas before answering."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.errors: dict[str, Exception] = {}
        self.results: dict[str, Any] = {
            "reinf/chat": CHAT_RESULT,
            "reinf/rate": {"rating_id": 1, "ratings_total": 3, "until_next_training": 997},
            "reinf/status": {
                "model": "reinf-tiny-test",
                "device": "cpu",
                "adapter_version": 2,
                "ratings_total": 3,
                "until_next_training": 997,
                "training": {"state": "running", "run_id": "r7", "phase": "ppo", "progress": 0.5},
            },
            "reinf/retrain": {"run_id": "r8"},
            "reinf/cancelTraining": {"cancelled": True},
            "reinf/rollback": {"adapter_version": 1},
            "reinf/history": {
                "items": [
                    {
                        "interaction_id": "abc123",
                        "kind": "ask",
                        "ts": "2025-01-02T03:04:05",
                        "prompt": "sort\na list",
                        "response": "x",
                        "rating": {"stars": 4},
                    }
                ],
                "total": 9,
            },
        }

    def request(
        self, method: str, params: dict | None = None, *, on_progress=None, timeout=None, cancel=None
    ) -> Any:
        self.calls.append((method, params or {}))
        if method in self.errors:
            raise self.errors[method]
        if method == "reinf/chat" and on_progress:
            for delta in ("Use ", "`sorted(xs)`", "."):
                on_progress({"interaction_id": "abc123", "delta": delta})
        return self.results[method]

    def close(self) -> None:
        pass


@pytest.fixture
def ip() -> Iterator[InteractiveShell]:
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "reinf.jupyter")
    yield shell
    shell.reset()


@pytest.fixture
def fake(ip: InteractiveShell) -> FakeClient:
    client = FakeClient()
    use(ip, Connection(lambda: client), rich=False)
    return client


def use(ip: InteractiveShell, connection: Connection, rich: bool) -> ReinfMagics:
    magics = ReinfMagics(ip, connection=connection, rich=rich)
    ip.register_magics(magics)
    return magics


def run(ip: InteractiveShell, source: str) -> tuple[Any, Any]:
    with capture_output() as captured:
        result = ip.run_cell(source, store_history=True)
    return result, captured


def sent(fake: FakeClient, method: str) -> dict[str, Any]:
    return [params for m, params in fake.calls if m == method][-1]


# -- loading and interpolation ---------------------------------------------------------------------


def test_load_ext_registers_both_magics(ip: InteractiveShell) -> None:
    assert "ask" in ip.magics_manager.magics["cell"]
    assert "reinf" in ip.magics_manager.magics["line"]


def test_interpolation_takes_variables_and_keeps_literal_braces() -> None:
    ns = {"name": "pandas", "n": 3, "_hidden": "x"}
    assert interpolate("explain {name} in {n} lines", ns) == "explain pandas in 3 lines"
    assert interpolate('d = {"a": 1}; s = {1, 2}; f"{n + 1}"', ns) == 'd = {"a": 1}; s = {1, 2}; f"{n + 1}"'
    assert interpolate("{{name}} is {name}", ns) == "{name} is pandas"
    assert interpolate("{} stays, and {{missing}} too", ns) == "{} stays, and {missing} too"
    assert interpolate("def f(): return {}\n", ns) == "def f(): return {}\n"
    # A name that is not defined is reported, never sent to the model as written.
    with pytest.raises(PromptError, match=r"\{missing\}, \{_hidden\} are not defined.*double the braces"):
        interpolate("{missing} and {_hidden}", ns)


def test_in_out_and_err_insert_a_cells_input_output_and_traceback() -> None:
    ns = {"In": ["", "xs = [3, 1]", "sorted(xs)", "1/0"], "Out": {2: [1, 3]}}
    errors = {3: "Traceback (most recent call last):\nZeroDivisionError: division by zero"}
    text = interpolate("Why does {In[3]} fail with {Err[3]}? {In[2]} gave {Out[2]}. Last: {Err}", ns, errors)
    assert text == (
        "Why does 1/0 fail with Traceback (most recent call last):\nZeroDivisionError: division by zero? "
        "sorted(xs) gave [1, 3]. Last: Traceback (most recent call last):\nZeroDivisionError: division by zero"
    )
    with pytest.raises(PromptError, match=r"\{Out\[1\]\}, \{Err\[2\]\}, \{In\[9\]\} are not defined"):
        interpolate("{Out[1]} {Err[2]} {In[9]}", ns, errors)


def test_err_and_context_carry_the_last_traceback(ip: InteractiveShell, fake: FakeClient) -> None:
    run(ip, "1/0")
    failed = ip.execution_count - 1
    result, captured = run(ip, f"%%ask\nexplain {{Err[{failed}]}}")
    assert result.success, captured.stdout
    content = sent(fake, "reinf/chat")["messages"][0]["content"]
    assert content.startswith("explain Traceback") and "ZeroDivisionError: division by zero" in content
    run(ip, "%%ask --context notebook\nwhy?")
    cells = sent(fake, "reinf/chat")["context"]["cells"]
    assert any(f"In [{failed}]:\n1/0\n\nError in [{failed}]:\nTraceback" in c for c in cells), cells


def test_an_undefined_name_is_reported_and_nothing_is_sent(ip: InteractiveShell, fake: FakeClient) -> None:
    result, captured = run(ip, "%%ask\nexplain {nowhere}")
    assert not result.success
    assert "reinf: {nowhere} is not defined" in captured.stdout + captured.stderr
    assert "Traceback" not in captured.stdout + captured.stderr
    assert not [m for m, _ in fake.calls if m == "reinf/chat"]


def test_ask_sends_the_interpolated_cell_and_options(ip: InteractiveShell, fake: FakeClient) -> None:
    ip.user_ns["df_name"] = "sales"
    result, captured = run(
        ip, '%%ask --max-tokens 12 --temperature 0\nSummarise {df_name}; keep {"k": 1} as is\n'
    )
    assert result.success, captured.stdout
    params = sent(fake, "reinf/chat")
    assert params["messages"] == [{"role": "user", "content": 'Summarise sales; keep {"k": 1} as is'}]
    assert params["kind"] == "ask" and params["max_tokens"] == 12 and params["temperature"] == 0
    assert "context" not in params


# -- streaming output --------------------------------------------------------------------------------


def test_terminal_prints_the_answer_as_it_streams_and_offers_rate(
    ip: InteractiveShell, fake: FakeClient
) -> None:
    result, captured = run(ip, "%%ask\nhow do I sort?")
    assert result.success
    assert "Use `sorted(xs)`.\n" in captured.stdout
    assert "%reinf rate abc123 STARS" in captured.stdout


def test_the_caption_gives_the_time_waited_and_says_once_that_a_new_adapter_answered(
    ip: InteractiveShell, fake: FakeClient
) -> None:
    _, first = run(ip, "%%ask\nsort?")
    assert re.search(r"reinf-tiny-test · the base model \(adapter v0\) · \d+\.\d s · id abc123", first.stdout)
    fake.results["reinf/chat"] = {**CHAT_RESULT, "adapter_version": 2}
    _, second = run(ip, "%%ask\nsort?")
    assert "new since your last answer: adapter v2" in second.stdout
    _, third = run(ip, "%%ask\nsort?")
    assert "adapter v2 · " in third.stdout and "new since" not in third.stdout


def test_the_first_ask_says_it_is_starting_reinf(
    ip: InteractiveShell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REINF_HOME", str(tmp_path))  # no daemon.json: none is running
    fake = FakeClient()
    magics = use(ip, Connection(lambda: fake), rich=True)
    _, captured = run(ip, "%%ask\nsort?")
    waiting = [o for o in captured.outputs if (o.metadata or {}).get("reinf", {}).get("state") == "waiting"]
    assert waiting[0].data["text/markdown"] == "*starting reinf (first use, about 15 s)…*"
    # Once connected, the wait is an ordinary one.
    assert magics.connection.connected
    _, captured = run(ip, "%%ask\nsort?")
    waiting = [o for o in captured.outputs if (o.metadata or {}).get("reinf", {}).get("state") == "waiting"]
    assert waiting[0].data["text/markdown"] == "*reinf is thinking…*"


def test_a_rating_that_starts_a_run_shows_its_progress_under_the_answer(ip: InteractiveShell) -> None:
    fake = FakeClient()
    running = {"state": "running", "run_id": 9, "phase": "snapshot", "progress": 0.0, "trigger": "threshold"}
    fake.results["reinf/status"] = {"adapter_version": 0, "training": {**running, "elapsed_s": 0.4}}
    use(ip, Connection(lambda: fake), rich=True)
    _, captured = run(ip, "%%ask\nsort?")
    widget = next(w for w in _widgets(captured) if isinstance(w, RatingWidget))
    widget.star_buttons[4].click()
    progress = [c for c in widget.children if isinstance(c, TrainingProgress)]
    assert len(progress) == 1 and progress[0].run_id == 9
    assert "started by your ratings" in progress[0].title.value
    # A run that was going already is not this rating's: no second widget.
    fake.results["reinf/status"] = {"adapter_version": 0, "training": {**running, "elapsed_s": 300.0}}
    widget.star_buttons[3].click()
    assert len([c for c in widget.children if isinstance(c, TrainingProgress)]) == 1
    progress[0].state = "cancelled"  # stops its thread


def test_notebook_answer_streams_as_markdown_then_shows_the_rating_widget(ip: InteractiveShell) -> None:
    fake = FakeClient()
    use(ip, Connection(lambda: fake), rich=True)
    result, captured = run(ip, "%%ask\nhow do I sort?")
    assert result.success, captured.stdout
    answers = [o for o in captured.outputs if "reinf" in (o.metadata or {})]
    states = [o.metadata["reinf"]["state"] for o in answers]
    assert states[0] == "waiting" and states[-1] == "done" and "streaming" in states
    first = answers[states.index("streaming")].data["text/markdown"]
    assert first == "Use " + CURSOR  # the first delta is drawn on its own, before the rest arrives
    assert answers[-1].data["text/markdown"] == "Use `sorted(xs)`."
    assert answers[-1].metadata["reinf"]["interaction_id"] == "abc123"
    widgets = [o for o in captured.outputs if "application/vnd.jupyter.widget-view+json" in o.data]
    assert len(widgets) == 1


@pytest.mark.parametrize(
    ("fmt", "mime", "expected"),
    [
        ("code", "text/markdown", "```python\nUse `sorted(xs)`.\n```"),
        ("text", "text/plain", "Use `sorted(xs)`."),
    ],
)
def test_format_option(ip: InteractiveShell, fmt: str, mime: str, expected: str) -> None:
    fake = FakeClient()
    use(ip, Connection(lambda: fake), rich=True)
    _, captured = run(ip, f"%%ask --format {fmt}\nsort?")
    done = [o for o in captured.outputs if (o.metadata or {}).get("reinf", {}).get("state") == "done"][-1]
    assert done.data[mime] == expected
    if fmt == "text":
        assert "text/markdown" not in done.data


class Slow(FakeClient):
    """A chat that streams one delta, then is interrupted; it answers the stop like the daemon, with the text
    so far, unless `deaf`."""

    deaf = False
    closed = False

    def request(self, method: str, params=None, *, on_progress=None, timeout=None, cancel=None) -> Any:
        self.calls.append((method, params or {}))
        if method != "reinf/chat":
            return self.results[method]
        on_progress({"interaction_id": "abc123", "delta": "Use "})
        threading.Timer(0.2, _thread.interrupt_main).start()
        if cancel is not None and not self.deaf and cancel.wait(5):
            return {**CHAT_RESULT, "text": "Use ", "finish_reason": "cancelled"}
        time.sleep(5)
        return CHAT_RESULT

    def close(self) -> None:
        self.closed = True


def interrupted(ip: InteractiveShell, source: str) -> tuple[Any, Any, float]:
    # A kernel turns SIGINT into KeyboardInterrupt. A test run started in the background (`make test &`) inherits
    # SIGINT ignored, and then Python installs no handler and interrupt_main() does nothing.
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        started = time.monotonic()
        result, captured = run(ip, source)
    finally:
        signal.signal(signal.SIGINT, handler)
    return result, captured, time.monotonic() - started


def test_an_interrupt_keeps_the_answer_so_far_with_a_rating_widget(ip: InteractiveShell) -> None:
    """Interrupting the kernel asks the daemon to stop; it answers with the text so far, stored as "cancelled",
    which the notebook shows with a rating widget, and one line instead of a traceback."""
    slow = Slow()
    use(ip, Connection(lambda: slow), rich=True)
    result, captured, elapsed = interrupted(ip, "%%ask\nhow do I sort?")
    assert isinstance(result.error_in_exec, KeyboardInterrupt) and elapsed < 3
    last = [o for o in captured.outputs if "reinf" in (o.metadata or {})][-1]
    assert last.metadata["reinf"] == {"state": "stopped", "format": "markdown", "interaction_id": "abc123"}
    assert last.data["text/markdown"] == "Use \n\n*(stopped)*"
    assert len([o for o in captured.outputs if "application/vnd.jupyter.widget-view+json" in o.data]) == 1
    assert "KeyboardInterrupt" not in captured.stdout + captured.stderr
    assert not slow.closed, "the connection is kept: the daemon answered the stop"


def test_an_interrupt_the_daemon_does_not_answer_drops_the_connection(
    ip: InteractiveShell, monkeypatch
) -> None:
    monkeypatch.setattr("reinf.jupyter.stream.STOP_GRACE_S", 0.5)
    slow = Slow()
    slow.deaf = True
    use(ip, Connection(lambda: slow), rich=True)
    result, captured, elapsed = interrupted(ip, "%%ask\nhow do I sort?")
    assert isinstance(result.error_in_exec, KeyboardInterrupt) and elapsed < 3
    last = [o for o in captured.outputs if "reinf" in (o.metadata or {})][-1]
    assert (
        last.metadata["reinf"]["state"] == "stopped" and last.data["text/markdown"] == "Use \n\n*(stopped)*"
    )
    assert "nothing was stored" in captured.stdout + captured.stderr
    assert slow.closed


# -- notebook context ------------------------------------------------------------------------------


def test_context_sends_recent_cells_and_outputs(ip: InteractiveShell, fake: FakeClient) -> None:
    run(ip, "xs = [3, 1, 2]")
    run(ip, "sorted(xs)")
    run(ip, "%%ask --context cell\nwhy?")
    assert sent(fake, "reinf/chat")["context"]["cells"] == [
        f"In [{ip.execution_count - 2}]:\nsorted(xs)\n\nOut[{ip.execution_count - 2}]:\n[1, 2, 3]"
    ]
    run(ip, "%%ask --context notebook\nwhy?")
    cells = sent(fake, "reinf/chat")["context"]["cells"]
    assert cells[-3:-1] == [
        f"In [{ip.execution_count - 4}]:\nxs = [3, 1, 2]",
        f"In [{ip.execution_count - 3}]:\nsorted(xs)\n\nOut[{ip.execution_count - 3}]:\n[1, 2, 3]",
    ]
    assert cells[-1].endswith("%%ask --context cell\nwhy?")


def test_context_is_bounded() -> None:
    inputs = ["", "a = 1", "b" * 50, "c" * 50, "ask"]
    assert notebook_cells(inputs, {}, 4, "notebook", max_chars=104) == [
        "In [2]:\n" + "b" * 50,
        "In [3]:\n" + "c" * 50,
    ]
    assert notebook_cells(inputs, {}, 4, "notebook", max_cells=1) == ["In [3]:\n" + "c" * 50]
    big = notebook_cells(["", "x" * 2000], {1: "y" * 5000}, 2, "cell", max_chars=3000)
    assert len(big[0]) < 3100 and big[0].count(TRUNCATED) == 2
    assert notebook_cells(inputs, {}, 4, "none") == []


# -- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("%%ask --max-tokens 0\nhi", "--max-tokens must be at least 1"),
        ("%%ask --temperature -1\nhi", "--temperature must be 0 or more"),
        ("%%ask\n   \n", "the cell is empty"),
        ("%%ask --format html\nhi", "invalid choice: 'html'"),
        ("%reinf rate abc123 7", "STARS must be 1–5, got '7'"),
        ("%reinf rate abc123", "usage: %reinf rate ID STARS [comment]"),
        ("%reinf history many", "N must be a whole number"),
        ("%reinf rollback latest", "VERSION must be a number"),
        ("%reinf frobnicate", "unknown command 'frobnicate'"),
        ("%reinf status now", "%reinf status takes no arguments"),
    ],
)
def test_bad_input_gets_one_clear_line(
    ip: InteractiveShell, fake: FakeClient, source: str, message: str
) -> None:
    result, captured = run(ip, source)
    assert not result.success
    assert message in captured.stdout + captured.stderr
    assert "Traceback" not in captured.stdout + captured.stderr
    assert not [m for m, _ in fake.calls if m != "initialize"]


def test_daemon_errors_are_shown_without_a_traceback(ip: InteractiveShell, fake: FakeClient) -> None:
    fake.errors["reinf/rollback"] = RpcError(-32000, "training is not available yet")
    result, captured = run(ip, "%reinf rollback 3")
    assert not result.success
    assert "reinf: training is not available yet" in captured.stdout
    assert "Traceback" not in captured.stdout
    assert sent(fake, "reinf/rollback") == {"version": 3}


def test_daemon_down_shows_a_clear_message(ip: InteractiveShell, tmp_path: Path) -> None:
    from reinf.client import Client

    use(ip, Connection(lambda: Client.connect(tmp_path, start=False)), rich=True)
    result, captured = run(ip, "%%ask\nhello")
    assert not result.success
    out = captured.stdout + captured.stderr
    assert "reinf: cannot reach the daemon: no reinf daemon is running" in out
    assert "Traceback" not in out and len(out.strip().splitlines()) <= 3


def test_a_daemon_that_cannot_start_is_reported(
    ip: InteractiveShell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default connection starts the daemon, as the CLI does; here start-up fails on a bad setting."""
    home = tmp_path / "home"
    for key, value in daemon_env(home).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("REINF_TRAINING_MIN_NEW_RATINGS", "lots")
    use(ip, Connection(), rich=False)
    result, captured = run(ip, "%reinf status")
    assert not result.success
    out = captured.stdout + captured.stderr
    assert "reinf: cannot reach the daemon: reinf serve exited" in out and "min_new_ratings" in out
    assert "Traceback (most recent call last)" not in out.split("log")[0]


# -- %reinf -------------------------------------------------------------------------------------------


def test_reinf_commands(ip: InteractiveShell, fake: FakeClient) -> None:
    _, out = run(ip, "%reinf status")
    assert "adapter v2" in out.stdout and "training:    run r7: training, 50%" in out.stdout
    _, out = run(ip, "%reinf retrain")
    assert "Training run r8 started" in out.stdout and "%reinf cancel stops it" in out.stdout
    assert "reinf/cancelTraining" not in out.stdout
    _, out = run(ip, "%reinf cancel")
    assert "Training cancelled." in out.stdout
    _, out = run(ip, "%reinf rollback")
    assert sent(fake, "reinf/rollback") == {} and "Now using adapter v1." in out.stdout
    _, out = run(ip, "%reinf history 5")
    assert sent(fake, "reinf/history") == {"limit": 5}
    assert "1 of 9 interactions" in out.stdout and "abc123" in out.stdout and "★★★★" in out.stdout
    _, out = run(ip, "%reinf rate abc123 4 clear and short")
    assert sent(fake, "reinf/rate") == {"interaction_id": "abc123", "stars": 4, "comment": "clear and short"}
    assert "Rating stored (3 ratings in total; 997 more until the next training run)." in out.stdout
    _, out = run(ip, "%reinf")
    assert "%reinf rollback [VERSION]" in out.stdout


# -- the rating widget -------------------------------------------------------------------------------


def test_widget_saves_each_click_and_the_comment_and_says_what_it_saved() -> None:
    calls: list[dict] = []
    left = iter([2, 1, 1, 0])
    widget = RatingWidget(
        "abc123", lambda p: calls.append(p) or {"ratings_total": 1, "until_next_training": next(left)}
    )
    widget.star_buttons[3].click()
    assert calls[-1] == {"interaction_id": "abc123", "stars": 4}
    assert "Saved: 4 stars. 2 more ratings until the next training." in widget.status.value
    widget.up.click()
    assert calls[-1] == {"interaction_id": "abc123", "thumbs": "up", "stars": 4}
    assert "Saved: thumbs up and 4 stars. 1 more rating until" in widget.status.value
    # The same click again is saved again, and the confirmation is a new one.
    before = widget.status.value
    widget.up.click()
    assert len(calls) == 3 and widget.status.value != before and 'data-saves="3"' in widget.status.value
    # The comment box opens on demand, and empties and closes once the comment is stored.
    assert widget.box.layout.display == "none"
    widget.toggle.click()
    assert widget.box.layout.display == "flex"
    widget.comment.value = "  good  "
    widget.submit.click()
    assert calls[-1] == {"interaction_id": "abc123", "thumbs": "up", "stars": 4, "comment": "good"}
    assert "Saved: thumbs up, 4 stars and your comment. Training starts now." in widget.status.value
    assert widget.comment.value == "" and widget.box.layout.display == "none"
    assert [b.description for b in widget.star_buttons] == ["★"] * 4 + ["☆"]


def test_only_the_newest_widget_says_how_many_ratings_are_to_go() -> None:
    rate = lambda p: {"ratings_total": 1, "until_next_training": 5}  # noqa: E731
    first, second = RatingWidget("a", rate), RatingWidget("b", rate)
    first.star_buttons[1].click()
    assert "5 more ratings" in first.status.value
    second.down.click()
    assert "5 more ratings" in second.status.value
    assert "Saved: 2 stars." in first.status.value and "more rating" not in first.status.value


def test_widget_shows_the_error_and_allows_a_retry() -> None:
    answers: list[Any] = [RpcError(-32602, "stars must be 1–5, got 9"), {"until_next_training": 3}]

    def rate(params: dict) -> dict:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    widget = RatingWidget("abc123", rate)
    widget.down.click()
    assert "Not saved: stars must be 1–5, got 9" in widget.status.value
    widget.down.click()
    assert "Saved: thumbs down." in widget.status.value


def test_training_progress_says_what_the_run_does_then_how_it_ended() -> None:
    runs: list[dict] = []

    def request(method: str, params: dict | None = None) -> dict:
        return {"runs": runs}

    widget = TrainingProgress(5, request, start=False)
    running = {"state": "running", "run_id": 5, "phase": "reward_model", "progress": 0.2, "eta_s": 100}
    widget.update({"adapter_version": 0, "training": running})
    assert widget.line.value == "judging your ratings, 20%, about 2 min left" and widget.bar.value == 0.2
    # The run has ended, but its row is not written yet: nothing final is said.
    widget.update({"adapter_version": 0, "training": {"state": "idle"}})
    assert widget.state == "running"
    runs.append({"run_id": 5, "state": "rejected", "metrics": {"reasons": ["reward did not improve"]}})
    widget.update({"adapter_version": 0, "training": {"state": "idle"}})
    assert widget.state == "rejected"
    assert widget.line.value == (
        "Not published: reward did not improve. So the base model stays. Rate more answers, then %reinf retrain again."
    )
    published = TrainingProgress(6, request, start=False)
    published.show_end({"run_id": 6, "state": "published", "adapter_version": 2}, 2)
    assert "adapter v2 is live" in published.line.value and published.bar.value == 1.0


def test_retrain_in_a_notebook_shows_the_progress_widget_until_the_run_ends(ip: InteractiveShell) -> None:
    fake = FakeClient()
    fake.results["reinf/status"] = {"adapter_version": 1, "training": {"state": "idle"}}
    fake.results["reinf/runs"] = {"runs": [{"run_id": "r8", "state": "published", "adapter_version": 2}]}
    use(ip, Connection(lambda: fake), rich=True)
    _, captured = run(ip, "%reinf retrain")
    (widget,) = [w for w in _widgets(captured) if isinstance(w, TrainingProgress)]
    widget._thread.join(10)
    assert widget.state == "published" and "adapter v2 is live" in widget.line.value


# -- with a real daemon ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    with running_daemon(tmp_path_factory.mktemp("jupyter-magics") / "home") as d:
        yield d


def test_ask_and_rate_against_a_real_daemon(ip: InteractiveShell, daemon) -> None:
    from reinf.client import Client

    magics = use(ip, Connection(lambda: Client.connect(daemon.home, start=False)), rich=True)
    ip.user_ns["topic"] = "lists"
    result, captured = run(ip, "%%ask --max-tokens 8 --temperature 0\ndef sort_{topic}(xs):")
    assert result.success, captured.stdout
    done = [o for o in captured.outputs if (o.metadata or {}).get("reinf", {}).get("state") == "done"][-1]
    interaction_id = done.metadata["reinf"]["interaction_id"]
    widget = next(w for w in _widgets(captured) if isinstance(w, RatingWidget))
    widget.star_buttons[4].click()
    assert "Saved: 5 stars." in widget.status.value, widget.status.value

    with Client.connect(daemon.home, start=False) as client:
        items = client.request("reinf/history", {"limit": 5})["items"]
    item = next(i for i in items if i["interaction_id"] == interaction_id)
    assert item["kind"] == "ask" and "def sort_lists(xs):" in item["prompt"]
    assert item["rating"]["stars"] == 5
    magics.connection.reset()


def _widgets(captured: Any) -> list[Any]:
    from ipywidgets.widgets.widget import _instances

    ids = [
        o.data["application/vnd.jupyter.widget-view+json"]["model_id"]
        for o in captured.outputs
        if "application/vnd.jupyter.widget-view+json" in o.data
    ]
    return [_instances[i] for i in ids]


def test_restart_stops_the_daemon_and_starts_a_new_one(
    ip: InteractiveShell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reinf.client import read_daemon_info

    home = tmp_path / "home"
    # The new daemon is started the way a notebook starts one: from this process's REINF_* settings.
    for key, value in daemon_env(home).items():
        if key.startswith("REINF_"):
            monkeypatch.setenv(key, value)
    with running_daemon(home) as old:
        magics = use(ip, Connection(), rich=False)
        new_pid = None
        try:
            result, captured = run(ip, "%reinf restart")
            new_pid = (read_daemon_info(home) or {}).get("pid")
            assert result.success, captured.stdout + captured.stderr
            assert f"Stopping the reinf daemon (pid {old.proc.pid})" in captured.stdout
            assert "reinf is running again" in captured.stdout and "reinf-tiny-test" in captured.stdout
            assert old.proc.poll() is not None and new_pid not in (None, old.proc.pid)
        finally:
            magics.connection.reset()
            if new_pid and new_pid != old.proc.pid:
                os.killpg(new_pid, signal.SIGTERM)
