"""Building an %%ask prompt: `{var}` interpolation and the notebook context that goes along with it."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

# `{{` and `}}` are escapes for literal braces, as in str.format; `{name}` is a variable. Anything else in
# braces (a dict literal, a set, an f-string with an expression, JSON) is left exactly as written.
_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")

# The bound on what --context sends: the newest cells first, until one of these is reached.
MAX_CONTEXT_CELLS = 20
MAX_CONTEXT_CHARS = 8000
MAX_OUTPUT_CHARS = 2000
TRUNCATED = "\n… [truncated]"


def interpolate(template: str, namespace: Mapping[str, Any]) -> str:
    """Replace `{name}` with `str(namespace[name])`; unknown names and other braces stay as written."""

    def substitute(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        name = match.group(1)
        if name in namespace and not name.startswith("_"):
            return str(namespace[name])
        return token

    return _TOKEN.sub(substitute, template)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - len(TRUNCATED))] + TRUNCATED


def _output_text(value: Any) -> str:
    try:
        return repr(value)
    except Exception as exc:  # a broken __repr__ must not break the question
        return f"<{type(value).__name__}: repr failed: {exc}>"


def notebook_cells(
    inputs: Sequence[str],
    outputs: Mapping[int, Any],
    current: int,
    mode: str,
    *,
    max_cells: int = MAX_CONTEXT_CELLS,
    max_chars: int = MAX_CONTEXT_CHARS,
) -> list[str]:
    """The cells before `current` (IPython's `In`/`Out`) as text, oldest first, within the bound.

    `mode` is "none", "cell" (the one cell run before this one) or "notebook" (recent cells).
    """
    if mode == "none":
        return []
    limit = 1 if mode == "cell" else max_cells
    cells: list[str] = []
    used = 0
    for number in range(min(current, len(inputs)) - 1, 0, -1):
        source = inputs[number].strip()
        if not source:
            continue
        output = _clip(_output_text(outputs[number]), MAX_OUTPUT_CHARS) if number in outputs else ""
        room = max_chars - used - len(output)
        if len(source) > room:
            if cells or room <= 0:
                break
            source = _clip(source, room)  # the newest cell alone is too long: send its start
        cells.append(f"In [{number}]:\n{source}" + (f"\n\nOut[{number}]:\n{output}" if output else ""))
        used += len(source) + len(output)
        if len(cells) >= limit:
            break
    cells.reverse()
    return cells
