"""Streaming an answer into a cell's output while the daemon generates it."""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

from IPython.display import display

# Shown until the first words arrive.
WAITING = "reinf is thinking…"
STARTING = "starting reinf (first use, about 15 s)…"
# While the answer streams, this follows the text (Markdown and plain text alike).
CURSOR = " ▌"
# At most one redraw per interval: each redraw resends the whole answer to the browser.
REDRAW_INTERVAL = 0.05


# After an interrupt, how long to wait for the daemon to send the answer so far before giving up on it.
STOP_GRACE_S = 10.0


class Interrupted(KeyboardInterrupt):
    """The user interrupted an answer that the daemon did not hand back in time (or a second interrupt)."""


def run_streaming(
    request: Callable[[Callable[[dict[str, Any]], None]], dict[str, Any]],
    on_delta: Callable[[str], None],
    *,
    stop: threading.Event | None = None,
    grace: float | None = None,
    poll: float = 0.1,
) -> dict[str, Any]:
    """Run `request(on_progress)` in a worker thread and call `on_delta` here, in the calling thread.

    Drawing from the cell's own thread keeps the output attached to the cell (ipykernel tracks the
    parent message per thread) and lets an interrupt reach this loop. The first interrupt sets `stop`, which
    the request passes on to the daemon, and waits up to `grace` seconds (STOP_GRACE_S) for the answer so far; a second
    interrupt, or no answer in time, raises `Interrupted`.
    """
    events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()

    def progress(value: dict[str, Any]) -> None:
        delta = value.get("delta")
        if delta:
            events.put(("delta", delta))

    def work() -> None:
        try:
            events.put(("result", request(progress)))
        except BaseException as exc:  # noqa: BLE001 - handed over to the cell's thread, which raises it
            events.put(("error", exc))

    threading.Thread(target=work, name="reinf-ask", daemon=True).start()
    deadline: float | None = None
    while True:
        # The loop that waits is a call of its own: an interrupt that lands on a loop's backward jump is
        # raised outside that loop's `try`, but always inside this one.
        try:
            return _drain(events, on_delta, poll, deadline)
        except Interrupted:
            raise
        except KeyboardInterrupt:
            if stop is None or stop.is_set():
                raise Interrupted from None
            stop.set()
            deadline = time.monotonic() + (STOP_GRACE_S if grace is None else grace)


def _drain(
    events: queue.SimpleQueue[tuple[str, Any]],
    on_delta: Callable[[str], None],
    poll: float,
    deadline: float | None,
) -> dict[str, Any]:
    """Hand each delta to `on_delta` until the result comes; raise `Interrupted` past `deadline`."""
    while True:
        try:
            kind, value = events.get(timeout=poll)
        except queue.Empty:
            if deadline is not None and time.monotonic() > deadline:
                raise Interrupted from None
            continue
        if kind == "delta":
            on_delta(value)
        elif kind == "result":
            return value
        else:
            raise value


def _longest_run(text: str, char: str) -> int:
    longest = run = 0
    for c in text:
        run = run + 1 if c == char else 0
        longest = max(longest, run)
    return longest


class RichAnswer:
    """The answer as a display that is redrawn in place: Markdown, a code block, or plain text."""

    def __init__(self, fmt: str = "markdown", language: str = "python", waiting: str = WAITING) -> None:
        self.fmt = fmt
        self.language = language
        self.waiting = waiting
        self.text = ""
        self.redraws = 0
        self._last = 0.0
        data, metadata = self._bundle("waiting")
        self._handle = display(data, metadata=metadata, raw=True, display_id=True)

    def _bundle(self, state: str, interaction_id: str | None = None) -> tuple[dict[str, str], dict[str, Any]]:
        text = self.text + (CURSOR if state == "streaming" else "")
        if state == "waiting":
            data = {"text/markdown": f"*{self.waiting}*", "text/plain": self.waiting}
        elif self.fmt == "text":
            data = {"text/plain": text}
        elif self.fmt == "code":
            fence = "`" * max(3, _longest_run(text, "`") + 1)
            data = {"text/markdown": f"{fence}{self.language}\n{text}\n{fence}", "text/plain": text}
        else:
            data = {"text/markdown": text, "text/plain": text}
        if state == "stopped":
            note = {"text/markdown": "\n\n*(stopped)*", "text/plain": "\n\n(stopped)"}
            data = {mime: value + note.get(mime, "") for mime, value in data.items()}
        meta: dict[str, Any] = {"state": state, "format": self.fmt}
        if interaction_id:
            meta["interaction_id"] = interaction_id
        return data, {"reinf": meta}

    def _redraw(self, state: str, interaction_id: str | None = None) -> None:
        data, metadata = self._bundle(state, interaction_id)
        self._handle.update(data, raw=True, metadata=metadata)
        self.redraws += 1
        self._last = time.monotonic()

    def on_delta(self, delta: str) -> None:
        self.text += delta
        # The first delta is drawn at once, so the answer visibly starts before it is complete.
        if self.redraws == 0 or time.monotonic() - self._last >= REDRAW_INTERVAL:
            self._redraw("streaming")

    def finish(self, result: dict[str, Any]) -> None:
        """The final answer; one that was stopped keeps a "(stopped)" note."""
        self.text = result.get("text", self.text)
        stopped = result.get("finish_reason") == "cancelled"
        self._redraw("stopped" if stopped else "done", result.get("interaction_id"))

    def stop(self) -> None:
        self._redraw("stopped")


class PlainAnswer:
    """The answer printed as it comes, for terminal IPython."""

    def __init__(self, out: TextIO | None = None, waiting: str = "") -> None:
        self.out = out or sys.stdout
        self.text = ""
        if waiting:
            self.out.write(waiting + "\n")
            self.out.flush()

    def on_delta(self, delta: str) -> None:
        self.text += delta
        self.out.write(delta)
        self.out.flush()

    def finish(self, result: dict[str, Any]) -> None:
        if not self.text:
            self.out.write(result.get("text", ""))
        self.out.write("\n(stopped)\n" if result.get("finish_reason") == "cancelled" else "\n")
        self.out.flush()

    def stop(self) -> None:
        self.out.write("\n(stopped)\n")
        self.out.flush()
