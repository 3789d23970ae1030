"""The `%%ask` cell magic and the `%reinf` line magic."""

from __future__ import annotations

import os
import shlex
import signal
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

from reinf.client import running_daemon

from .connection import Connection, DaemonUnavailable, RpcError, shared
from .prompt import PromptError, interpolate, notebook_cells
from .stream import STARTING, WAITING, PlainAnswer, RichAnswer, run_streaming

RATE_HINT = "Rate it: %reinf rate {id} STARS [comment]   (STARS is 1–5)"

REINF_USAGE = """\
%reinf status                  the model, the adapter version, ratings and training
%reinf retrain [--fresh-judge] start a training run now (with a new judge of your ratings)
%reinf cancel                  cancel the running training run
%reinf rollback [VERSION]      go back to the previous good adapter (0 is the base model)
%reinf history [N]             the last N interactions (10)
%reinf rate ID STARS [comment] rate an answer with 1–5 stars
%reinf restart                 stop the daemon and start it again"""


class MagicError(Exception):
    """An error shown as one clear line in the cell, without a traceback."""

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[0;31mreinf: {self}\x1b[0m"]


class AskStopped(KeyboardInterrupt):
    """An interrupted %%ask: one line instead of a traceback. Still an interrupt, so "Run All" stops there."""

    def _render_traceback_(self) -> list[str]:
        return [f"reinf: {self}"]


def _positive_int(name: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise MagicError(f"{name} must be a whole number, got {value!r}") from None
    if number < 1:
        raise MagicError(f"{name} must be at least 1, got {number}")
    return number


@magics_class
class ReinfMagics(Magics):
    def __init__(self, shell: Any, connection: Connection | None = None, rich: bool | None = None) -> None:
        super().__init__(shell)
        self.connection = connection or shared()
        # A kernel has a frontend that draws updates and widgets; terminal IPython prints.
        self.rich = getattr(shell, "kernel", None) is not None if rich is None else rich
        # Tracebacks by execution count, for {Err[n]} and --context (IPython keeps none itself).
        self.errors: dict[int, str] = {}
        # The adapter of the last answer, so that the first answer from a new one says so.
        self.adapter_seen: int | None = None
        if shell is not None and getattr(shell, "events", None) is not None:
            shell.events.register("post_run_cell", self._remember_error)

    def _remember_error(self, result: Any) -> None:
        error = result.error_in_exec or result.error_before_exec
        count = result.execution_count
        if error is None or count is None or isinstance(error, KeyboardInterrupt):
            return
        self.errors[count] = "".join(
            traceback.format_exception(type(error), error, error.__traceback__)
        ).strip()
        while len(self.errors) > 50:
            self.errors.pop(min(self.errors))

    def _request(self, method: str, params: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        try:
            return self.connection.request(method, params, **kwargs)
        except DaemonUnavailable as exc:
            raise MagicError(f"cannot reach the daemon: {exc}") from None
        except RpcError as exc:
            raise MagicError(exc.message) from None
        except (ConnectionError, TimeoutError) as exc:
            raise MagicError(f"lost the connection to the daemon ({exc}); run the cell again") from None

    # %%ask ---------------------------------------------------------------------------------------------

    @magic_arguments()
    @argument("--max-tokens", type=int, default=None, help="the most tokens to generate")
    @argument("--temperature", type=float, default=None, help="sampling temperature; 0 is greedy")
    @argument(
        "--context",
        choices=["none", "cell", "notebook"],
        default="none",
        help="send the previous cell, or recent cells, and their outputs along",
    )
    @argument(
        "--format", choices=["markdown", "code", "text"], default="markdown", help="how to show the answer"
    )
    @cell_magic
    def ask(self, line: str, cell: str) -> None:
        """Ask the local model; the cell is the prompt. `{name}` inserts a variable, `{In[n]}`, `{Out[n]}` and
        `{Err[n]}` cell n's input, output and traceback (`{{` is a brace)."""
        started = time.monotonic()
        args = parse_argstring(self.ask, line)
        try:
            prompt = interpolate(cell, self.shell.user_ns, self.errors).strip()
        except PromptError as exc:
            raise MagicError(str(exc)) from None
        if not prompt:
            raise MagicError("the cell is empty: write the question under the %%ask line")
        params: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}], "kind": "ask"}
        if args.max_tokens is not None:
            params["max_tokens"] = _positive_int("--max-tokens", args.max_tokens)
        if args.temperature is not None:
            if args.temperature < 0:
                raise MagicError(f"--temperature must be 0 or more, got {args.temperature}")
            params["temperature"] = args.temperature
        cells = notebook_cells(*self._history(cell), args.context, errors=self.errors)
        if cells:
            params["context"] = {"language": "python", "cells": cells}

        # No daemon yet: the first answer waits for it to start, so say so instead of a silent wait.
        waiting = WAITING if self.connection.connected or running_daemon() else STARTING
        answer = RichAnswer(args.format, waiting=waiting) if self.rich else PlainAnswer(waiting=waiting)
        stop = threading.Event()
        try:
            result = run_streaming(
                lambda on_progress: self._request("reinf/chat", params, on_progress=on_progress, cancel=stop),
                answer.on_delta,
                stop=stop,
            )
        except KeyboardInterrupt:  # Interrupted, or a second interrupt on its way out
            answer.stop()
            self.connection.reset()  # the daemon stops generating for a connection that goes away
            raise AskStopped(
                "stopped; the daemon did not send the answer so far, so nothing was stored"
            ) from None
        answer.finish(result)
        interaction_id = result["interaction_id"]
        caption = self._caption(result, time.monotonic() - started)
        if self.rich:
            from .widgets import RatingWidget

            display(RatingWidget(interaction_id, self._rate, caption=caption, on_stored=self._after_rating))
        else:
            print(caption)
            print(RATE_HINT.format(id=interaction_id))
        if stop.is_set():
            raise AskStopped("stopped; the answer so far is stored, and you can rate it")

    def _caption(self, result: dict[str, Any], waited: float) -> str:
        """Model, adapter, the time the user waited, id; and, once, that a new adapter answered."""
        version = result.get("adapter_version") or 0
        parts = [
            str(result.get("model", "")),
            _adapter_name(version),
            f"{waited:.1f} s",
            f"id {result['interaction_id']}",
        ]
        if self.adapter_seen is not None and version != self.adapter_seen:
            parts.append(
                f"new since your last answer: {_adapter_name(version)}"
                if version
                else "back to the base model"
            )
        self.adapter_seen = version
        return " · ".join(p for p in parts if p)

    def _after_rating(self, result: dict[str, Any]) -> Any:
        """After a rating was stored: a progress widget when it started a training run, else None."""
        if not self.rich:
            return None
        try:
            training = self._request("reinf/status").get("training") or {}
        except MagicError:
            return None
        if training.get("state") != "running" or training.get("trigger") != "threshold":
            return None
        if (training.get("elapsed_s") or 0) > 30:  # a run that was going already, not this rating's
            return None
        from .widgets import TrainingProgress

        return TrainingProgress(training.get("run_id"), self._request, started_by="your ratings")

    def _history(self, cell: str) -> tuple[list[str], dict[int, Any], int]:
        """The raw inputs, the outputs, and the number of the cell now running (history stores it first)."""
        inputs = list(self.shell.history_manager.input_hist_raw) if self.shell.history_manager else []
        current = len(inputs)
        if inputs and inputs[-1].lstrip().startswith("%%ask") and cell.strip() in inputs[-1]:
            current -= 1
        return inputs, self.shell.user_ns.get("Out", {}), current

    def _rate(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._request("reinf/rate", params)

    # %reinf --------------------------------------------------------------------------------------------

    @line_magic
    def reinf(self, line: str) -> None:
        """%reinf status | retrain | cancel | rollback [V] | history [N] | rate ID STARS [comment]"""
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise MagicError(f"cannot read the arguments: {exc}") from None
        if not words or words[0] in ("help", "-h", "--help"):
            print(REINF_USAGE)
            return
        command, rest = words[0], words[1:]
        handler: Callable[[list[str]], None] | None = getattr(self, f"_cmd_{command}", None)
        if handler is None:
            raise MagicError(f"unknown command {command!r}; the commands are:\n{REINF_USAGE}")
        handler(rest)

    def _no_args(self, command: str, rest: list[str]) -> None:
        if rest:
            raise MagicError(f"%reinf {command} takes no arguments, got {' '.join(rest)!r}")

    def _cmd_status(self, rest: list[str]) -> None:
        self._no_args("status", rest)
        print(format_status(self._request("reinf/status")))

    def _cmd_retrain(self, rest: list[str]) -> None:
        if rest not in ([], ["--fresh-judge"]):
            raise MagicError(f"%reinf retrain takes only --fresh-judge, got {' '.join(rest)!r}")
        result = self._request("reinf/retrain", {"fresh_judge": rest == ["--fresh-judge"]})
        if self.rich:
            from .widgets import TrainingProgress

            display(TrainingProgress(result["run_id"], self._request))
        else:
            print(
                f"Training run {result['run_id']} started in the background. "
                "%reinf status shows how far it has got; %reinf cancel stops it."
            )

    def _cmd_restart(self, rest: list[str]) -> None:
        self._no_args("restart", rest)
        info = running_daemon()
        t0 = time.monotonic()
        if info is not None:
            pid = int(info.get("pid") or 0)
            print(f"Stopping the reinf daemon (pid {pid})…", flush=True)
            self.connection.reset()
            _stop_process(pid)
        else:
            print("No reinf daemon was running.")
        print("Starting it…", flush=True)
        status = self._request("reinf/status")
        print(
            f"reinf is running again ({time.monotonic() - t0:.1f} s): {status.get('model')} on "
            f"{status.get('device')}, {_adapter_name(status.get('adapter_version'))}."
        )

    def _cmd_cancel(self, rest: list[str]) -> None:
        self._no_args("cancel", rest)
        result = self._request("reinf/cancelTraining")
        print("Training cancelled." if result.get("cancelled") else "No training run was in progress.")

    def _cmd_rollback(self, rest: list[str]) -> None:
        if len(rest) > 1:
            raise MagicError(f"usage: %reinf rollback [VERSION], got {' '.join(rest)!r}")
        params: dict[str, Any] = {}
        if rest:
            version = rest[0].lstrip("vV")
            if not version.isdigit():
                raise MagicError(f"VERSION must be a number such as 3 (0 is the base model), got {rest[0]!r}")
            params["version"] = int(version)
        result = self._request("reinf/rollback", params)
        print(f"Now using {_adapter_name(result['adapter_version'])}.")

    def _cmd_history(self, rest: list[str]) -> None:
        if len(rest) > 1:
            raise MagicError(f"usage: %reinf history [N], got {' '.join(rest)!r}")
        limit = _positive_int("N", rest[0]) if rest else 10
        print(format_history(self._request("reinf/history", {"limit": limit})))

    def _cmd_rate(self, rest: list[str]) -> None:
        if len(rest) < 2:
            raise MagicError("usage: %reinf rate ID STARS [comment]")
        interaction_id, stars_text, comment = rest[0], rest[1], " ".join(rest[2:]).strip()
        if stars_text not in {"1", "2", "3", "4", "5"}:
            raise MagicError(f"STARS must be 1–5, got {stars_text!r}")
        params: dict[str, Any] = {"interaction_id": interaction_id, "stars": int(stars_text)}
        if comment:
            params["comment"] = comment
        from .widgets import describe_stored

        print(describe_stored(self._request("reinf/rate", params)))


def loaded_message(magics: ReinfMagics) -> str:
    """What `%load_ext reinf.jupyter` says: the magics, and the daemon (asked only if one is running)."""
    lines = [
        "reinf loaded: %%ask asks the local model (the cell is the question); %reinf help lists the rest."
    ]
    info = running_daemon()
    if info is None:
        lines.append("No reinf daemon is running yet: the first %%ask starts one (about 15 s).")
        return "\n".join(lines)
    try:
        status = magics._request("reinf/status")
    except MagicError as exc:
        lines.append(f"A reinf daemon is running (pid {info.get('pid')}) but does not answer: {exc}")
        return "\n".join(lines)
    magics.adapter_seen = status.get("adapter_version") or 0
    lines.append(
        f"Daemon running (pid {info.get('pid')}): {status.get('model')} on {status.get('device')}, "
        f"{_adapter_name(status.get('adapter_version'))}, {status.get('ratings_total')} ratings "
        f"({status.get('until_next_training')} more until the next training run)."
    )
    return "\n".join(lines)


def _stop_process(pid: int, timeout: float = 30.0) -> None:
    """SIGTERM `pid` and wait until it has gone (the daemon finishes its writes first)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    except PermissionError:
        raise MagicError(f"the daemon (pid {pid}) belongs to another user; stop it there") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child (this kernel started it): reaped
                return
        except ChildProcessError:  # not our child: it is gone once signal 0 fails
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.1)
    raise MagicError(f"the daemon (pid {pid}) did not stop within {timeout:.0f} s; stop it with `kill {pid}`")


def _adapter_name(version: int | None) -> str:
    return "the base model (adapter v0)" if not version else f"adapter v{version}"


def format_status(status: dict[str, Any]) -> str:
    """`reinf/status` as a few lines of text."""
    from .widgets import describe_training

    lines = [
        f"model:       {status.get('model')} on {status.get('device')}",
        f"adapter:     {_adapter_name(status.get('adapter_version'))}",
        f"ratings:     {status.get('ratings_total')} ({status.get('until_next_training')} until the next training run)",
        f"training:    {describe_training(status.get('training') or {})}",
    ]
    last = status.get("last_run")
    if last:
        lines.append(
            f"last run:    {last.get('run_id')} {last.get('state')} {last.get('finished') or ''}".rstrip()
        )
    return "\n".join(lines)


def _one_line(text: str, width: int) -> str:
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _rating_text(rating: dict[str, Any] | None) -> str:
    if not rating:
        return "unrated"
    bits = []
    if rating.get("stars"):
        bits.append(STAR_TEXT * int(rating["stars"]))
    if rating.get("thumbs"):
        bits.append("👍" if rating["thumbs"] == "up" else "👎")
    if rating.get("comment"):
        bits.append("💬")
    return " ".join(bits) or "rated"


STAR_TEXT = "★"


def format_history(history: dict[str, Any]) -> str:
    """`reinf/history` as one line per interaction, newest first."""
    items = history.get("items") or []
    if not items:
        return "No interactions yet."
    lines = [f"{len(items)} of {history.get('total', len(items))} interactions:"]
    for item in items:
        lines.append(
            f"{item['interaction_id']}  {str(item.get('ts', ''))[:19]:19}  {item.get('kind', ''):10}"
            f"  {_rating_text(item.get('rating')):12}  {_one_line(item.get('prompt', ''), 60)}"
        )
    return "\n".join(lines)
