"""Building an %%ask prompt: `{var}` interpolation and the notebook context that goes along with it."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

# `{{` and `}}` are escapes for literal braces, as in str.format; `{name}` is a variable; `{In[3]}`, `{Out[3]}`
# and `{Err[3]}` are cell 3's input, output and error (its traceback), as in jupyter-ai; `{Err}` is the last error.
# Anything else in braces (a dict literal, a set, an f-string with an expression, JSON) is left as written.
_TOKEN = re.compile(r"\{\{|\}\}|\{(In|Out|Err)\[(-?\d+)\]\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


class PromptError(ValueError):
    """A `{…}` in the prompt that names nothing; the message says which and what to write instead."""


# The bound on what --context sends: the newest cells first, until one of these is reached.
MAX_CONTEXT_CELLS = 20
MAX_CONTEXT_CHARS = 8000
MAX_OUTPUT_CHARS = 2000
TRUNCATED = "\n… [truncated]"


def interpolate(template: str, namespace: Mapping[str, Any], errors: Mapping[int, str] | None = None) -> str:
    """Replace `{name}` with `str(namespace[name])`, and `{In[n]}`, `{Out[n]}`, `{Err[n]}` with cell n's input,
    output and traceback (`errors`, by execution count). A name or cell that does not exist raises
    PromptError naming each one, rather than sending the braces to the model as they are."""
    errors = errors or {}
    missing: list[str] = []

    def cell(kind: str, number: int) -> str | None:
        if kind == "In":
            inputs = namespace.get("In") or []
            return inputs[number] if -len(inputs) <= number < len(inputs) and inputs[number] else None
        if kind == "Out":
            outputs = namespace.get("Out") or {}
            return _output_text(outputs[number]) if number in outputs else None
        return errors.get(number)

    def substitute(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        if match.group(1):
            text = cell(match.group(1), int(match.group(2)))
        else:
            name = match.group(3)
            if name == "Err":
                text = errors[max(errors)] if errors else None
            else:
                text = str(namespace[name]) if name in namespace and not name.startswith("_") else None
        if text is None:
            missing.append(token)
            return token
        return text

    result = _TOKEN.sub(substitute, template)
    if missing:
        names = ", ".join(dict.fromkeys(missing))
        raise PromptError(
            f"{names} {'is' if len(missing) == 1 else 'are'} not defined: define "
            f"{'it' if len(missing) == 1 else 'them'} first, or double the braces ({{{{…}}}}) to send them as they are"
        )
    return result


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - len(TRUNCATED))] + TRUNCATED


def _output_text(value: Any) -> str:
    try:
        return repr(value)
    except Exception as exc:  # noqa: BLE001 - a broken __repr__ must not break the question
        return f"<{type(value).__name__}: repr failed: {exc}>"


def notebook_cells(
    inputs: Sequence[str],
    outputs: Mapping[int, Any],
    current: int,
    mode: str,
    *,
    errors: Mapping[int, str] | None = None,
    max_cells: int = MAX_CONTEXT_CELLS,
    max_chars: int = MAX_CONTEXT_CHARS,
) -> list[str]:
    """The cells before `current` (IPython's `In`/`Out`, and the traceback of a cell that failed, from
    `errors`) as text, oldest first, within the bound.

    `mode` is "none", "cell" (the one cell run before this one) or "notebook" (recent cells).
    """
    errors = errors or {}
    if mode == "none":
        return []
    limit = 1 if mode == "cell" else max_cells
    cells: list[str] = []
    used = 0
    for number in range(min(current, len(inputs)) - 1, 0, -1):
        source = inputs[number].strip()
        if not source:
            continue
        label, output = f"Out[{number}]", ""
        if number in outputs:
            output = _clip(_output_text(outputs[number]), MAX_OUTPUT_CHARS)
        elif number in errors:
            label, output = f"Error in [{number}]", _clip(errors[number], MAX_OUTPUT_CHARS)
        room = max_chars - used - len(output)
        if len(source) > room:
            if cells or room <= 0:
                break
            source = _clip(source, room)  # the newest cell alone is too long: send its start
        cells.append(f"In [{number}]:\n{source}" + (f"\n\n{label}:\n{output}" if output else ""))
        used += len(source) + len(output)
        if len(cells) >= limit:
            break
    cells.reverse()
    return cells
