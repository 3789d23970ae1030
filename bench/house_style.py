"""A small synthetic Python project in one consistent house style, for completion benchmarks: code no model has
seen, whose names and idioms repeat across files the way a real project's do.

The style: functions named `hs_<verb>_<noun>`, a module logger `log` with %-style messages, failures raised as
`HouseError` with an f-string and `from exc`, one-line docstrings that start with "Return" or "Write", and
dataclass records named `<Noun>Record`. The same seed gives the same files.

    python bench/house_style.py OUT_DIR [--seed 0] [--files 6]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

NOUNS = [
    "order",
    "invoice",
    "customer",
    "shipment",
    "ledger",
    "payment",
    "account",
    "report",
    "budget",
    "vendor",
]
# Drawn after NOUNS only when a project needs more files than NOUNS has, so that smaller projects stay as they were.
MORE_NOUNS = ["contract", "warehouse", "refund", "employee", "product", "ticket"]
VERBS = ["load", "save", "check", "merge", "count", "find"]
FIELDS = ["amount", "total", "status", "owner", "created", "region", "code", "limit"]

HEADER = '''"""{title}."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from .errors import HouseError

log = logging.getLogger(__name__)
'''


def _record(noun: str, fields: list[str]) -> str:
    lines = ["", "", "@dataclass", f"class {noun.capitalize()}Record:"]
    lines.append(f'    """One {noun} as the files store it."""')
    lines.append("")
    for f in fields:
        lines.append(f"    {f}: {'float' if f in ('amount', 'total', 'limit') else 'str'}")
    return "\n".join(lines) + "\n"


def _function(verb: str, noun: str, field: str) -> str:
    name = f"hs_{verb}_{noun}s"
    if verb == "load":
        body = [
            f"def {name}(path: str) -> list[{noun.capitalize()}Record]:",
            f'    """Return the {noun}s stored at path."""',
            f'    log.info("loading {noun}s from %s", path)',
            "    try:",
            "        with open(path) as handle:",
            "            rows = json.load(handle)",
            "    except OSError as exc:",
            f'        raise HouseError(f"cannot load {noun}s from {{path}}: {{exc}}") from exc',
            f"    return [{noun.capitalize()}Record(**row) for row in rows]",
        ]
    elif verb == "save":
        body = [
            f"def {name}(path: str, {noun}s: list[{noun.capitalize()}Record]) -> None:",
            f'    """Write the {noun}s to path."""',
            f'    log.info("saving %d {noun}s to %s", len({noun}s), path)',
            "    try:",
            '        with open(path, "w") as handle:',
            f"            json.dump([vars(item) for item in {noun}s], handle)",
            "    except OSError as exc:",
            f'        raise HouseError(f"cannot save {noun}s to {{path}}: {{exc}}") from exc',
        ]
    elif verb == "check":
        body = [
            f"def {name}({noun}s: list[{noun.capitalize()}Record]) -> None:",
            f'    """Return nothing; raise HouseError for a {noun} without a {field}."""',
            f"    for item in {noun}s:",
            f"        if not item.{field}:",
            f'            log.warning("{noun} without {field}: %s", item)',
            f'            raise HouseError(f"{noun} {{item}} has no {field}")',
        ]
    elif verb == "count":
        body = [
            f"def {name}({noun}s: list[{noun.capitalize()}Record], {field}: str) -> int:",
            f'    """Return how many {noun}s have the given {field}."""',
            f"    total = sum(1 for item in {noun}s if item.{field} == {field})",
            f'    log.info("%d {noun}s with {field} %s", total, {field})',
            "    return total",
        ]
    elif verb == "find":
        body = [
            f"def {name}({noun}s: list[{noun.capitalize()}Record], {field}: str) -> {noun.capitalize()}Record:",
            f'    """Return the first {noun} with the given {field}."""',
            f"    for item in {noun}s:",
            f"        if item.{field} == {field}:",
            "            return item",
            f'    raise HouseError(f"no {noun} with {field} {{{field}}}")',
        ]
    else:  # merge
        body = [
            f"def {name}(first: list[{noun.capitalize()}Record], second: list[{noun.capitalize()}Record]) -> list:",
            f'    """Return the {noun}s of both lists, the first list\'s on a clash of {field}."""',
            f"    seen = {{item.{field} for item in first}}",
            f"    merged = first + [item for item in second if item.{field} not in seen]",
            f'    log.info("merged %d {noun}s", len(merged))',
            "    return merged",
        ]
    return "\n\n" + "\n".join(body) + "\n"


def generate(seed: int = 0, n_files: int = 6) -> dict[str, str]:
    """`n_files` modules (file name → source), each about one noun, plus the project's errors module."""
    rng = random.Random(seed)
    files = {
        "errors.py": '"""The project\'s one exception."""\n\n\nclass HouseError(RuntimeError):\n    pass\n'
    }
    if not 0 <= n_files <= len(NOUNS) + len(MORE_NOUNS):
        raise ValueError(f"n_files must be between 0 and {len(NOUNS) + len(MORE_NOUNS)}, got {n_files}")
    nouns = rng.sample(NOUNS, min(n_files, len(NOUNS)))
    if n_files > len(NOUNS):
        nouns += rng.sample(MORE_NOUNS, n_files - len(NOUNS))
    for noun in nouns:
        fields = rng.sample(FIELDS, 3)
        parts = [
            HEADER.format(title=f"{noun.capitalize()}s: loading, saving and checking them"),
            _record(noun, fields),
        ]
        for verb in rng.sample(VERBS, 4):
            parts.append(_function(verb, noun, rng.choice(fields)))
        files[f"{noun}s.py"] = "".join(parts)
    return files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--files", type=int, default=6)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in generate(args.seed, args.files).items():
        (args.out / name).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
