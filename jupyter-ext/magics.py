"""The `%%ask` cell magic and the `%reinf` line magic."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

from .connection import Connection, DaemonUnavailable, RpcError, shared
from .prompt import interpolate, notebook_cells
from .stream import PlainAnswer, RichAnswer, run_streaming

RATE_HINT = "Rate it: %reinf rate {id} STARS [comment]   (STARS is 1–5)"

REINF_USAGE = """\
%reinf status                  the model, the adapter version, ratings and training
%reinf retrain [--fresh-judge] start a training run now (with a new judge of your ratings)
%reinf cancel                  cancel the running training run
%reinf rollback [VERSION]      go back to the previous good adapter (0 is the base model)
%reinf history [N]             the last N interactions (10)
%reinf rate ID STARS [comment] rate an answer with 1–5 stars"""


class MagicError(Exception):
    """An error shown as one clear line in the cell, without a traceback."""

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[0;31mreinf: {self}\x1b[0m"]


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
        """Ask the local model; the cell is the prompt and `{name}` inserts a variable (`{{` is a brace)."""
        args = parse_argstring(self.ask, line)
        prompt = interpolate(cell, self.shell.user_ns).strip()
        if not prompt:
            raise MagicError("the cell is empty: write the question under the %%ask line")
        params: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}], "kind": "ask"}
        if args.max_tokens is not None:
            params["max_tokens"] = _positive_int("--max-tokens", args.max_tokens)
        if args.temperature is not None:
            if args.temperature < 0:
                raise MagicError(f"--temperature must be 0 or more, got {args.temperature}")
            params["temperature"] = args.temperature
        cells = notebook_cells(*self._history(cell), args.context)
        if cells:
            params["context"] = {"language": "python", "cells": cells}

        answer = RichAnswer(args.format) if self.rich else PlainAnswer()
        try:
            result = run_streaming(
                lambda on_progress: self._request("reinf/chat", params, on_progress=on_progress),
                answer.on_delta,
            )
        except KeyboardInterrupt:
            answer.stop()
            self.connection.reset()  # the daemon stops generating for a connection that goes away
            raise
        answer.finish(result)
        interaction_id = result["interaction_id"]
        if self.rich:
            from .widgets import RatingWidget

            display(RatingWidget(interaction_id, self._rate, caption=_caption(result)))
        else:
            print(RATE_HINT.format(id=interaction_id))

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
        print(f"Training run {result['run_id']} started. Follow it with %reinf status.")

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


def _adapter_name(version: int | None) -> str:
    return "the base model (adapter v0)" if not version else f"adapter v{version}"


def _caption(result: dict[str, Any]) -> str:
    parts = [str(result.get("model", "")), _adapter_name(result.get("adapter_version"))]
    total_ms = (result.get("timings") or {}).get("total_ms")
    if total_ms is not None:
        parts.append(f"{total_ms / 1000:.1f} s")
    parts.append(f"id {result['interaction_id']}")
    return " · ".join(p for p in parts if p)


def format_status(status: dict[str, Any]) -> str:
    """`reinf/status` as a few lines of text."""
    training = status.get("training") or {}
    state = training.get("state", "idle")
    if training.get("run_id"):
        state += f" (run {training['run_id']}"
        if training.get("phase"):
            state += f", {training['phase']}"
        if training.get("progress") is not None:
            state += f", {float(training['progress']):.0%}"
        state += ")"
    lines = [
        f"model:       {status.get('model')} on {status.get('device')}",
        f"adapter:     {_adapter_name(status.get('adapter_version'))}",
        f"ratings:     {status.get('ratings_total')} ({status.get('until_next_training')} until the next training run)",
        f"training:    {state}",
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
