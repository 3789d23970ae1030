"""What the trainer learns from: rated examples, held-out splits, prompts to roll out, general text.

Every rating trains the reward model, whoever wrote the answer (an older adapter, the base, another model):
the reward model judges text, not the policy that produced it. PPO never learns from those answers directly;
it samples its own (see ppo.py).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from reinf.truncate import first_statement

MIN_HELDOUT = 4


@dataclass
class Example:
    """One interaction with the rating the reward model regresses on."""

    interaction_id: str
    prompt: str
    response: str
    target: float  # in [-1, 1]
    weight: float  # 1 for an explicit rating, less for implicit events
    explicit: bool
    rating_id: int  # 0 when only implicit events rated it
    adapter_version: int
    finished: bool = True  # the answer ended on a stop token, not at the length cap


def load_snapshot(path: Path) -> list[dict[str, Any]]:
    """The rows of the daemon's `data.parquet`."""
    return pq.read_table(path).to_pylist()


def rating_target(row: dict[str, Any], implicit_weight: float) -> tuple[float, float] | None:
    """Map a row's rating onto `(target in [-1, 1], weight)`; None if it carries no numeric signal.

    Stars 1..5 → −1..1 and thumbs → ±1 (their mean when both are given). Without an explicit rating, implicit
    events count at `implicit_weight`: accepted +1, partially accepted +0.5, dismissed −1, averaged.
    """
    explicit = []
    if row.get("stars") is not None:
        explicit.append((int(row["stars"]) - 3) / 2.0)
    if row.get("thumbs") in ("up", "down"):
        explicit.append(1.0 if row["thumbs"] == "up" else -1.0)
    if explicit:
        return sum(explicit) / len(explicit), 1.0
    acc, part, dis = (int(row.get(k) or 0) for k in ("accepted", "partially_accepted", "dismissed"))
    if acc + part + dis == 0:
        return None
    return (acc + 0.5 * part - dis) / (acc + part + dis), implicit_weight


def examples(rows: Sequence[dict[str, Any]], implicit_weight: float) -> list[Example]:
    out = []
    for row in rows:
        rated = rating_target(row, implicit_weight)
        if rated is None or not row.get("response"):
            continue
        target, weight = rated
        out.append(
            Example(
                interaction_id=str(row["interaction_id"]),
                prompt=str(row["prompt"]),
                response=str(row["response"]),
                target=target,
                weight=weight,
                explicit=weight == 1.0 and row.get("rating_id") is not None,
                rating_id=int(row.get("rating_id") or 0),
                adapter_version=int(row.get("adapter_version") or 0),
                finished=row.get("finish_reason") in (None, "stop"),
            )
        )
    return out


def _unit_hash(key: str) -> float:
    """A stable number in [0, 1) per interaction, so an interaction stays on its side of the split."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def held_out(interaction_id: str, fraction: float) -> bool:
    """Whether the stable hash puts an interaction in the held-out `fraction`."""
    return _unit_hash(interaction_id) < fraction


def split(items: Sequence[Example], fraction: float) -> tuple[list[Example], list[Example]]:
    """(train, held-out). Held-out takes explicit ratings whose hash falls under `fraction`.

    A few more are taken, lowest hash first, until there are at least MIN_HELDOUT and two different ratings
    (when the data has them), so that "better than chance" can be judged at all.
    """
    explicit = sorted((e for e in items if e.explicit), key=lambda e: _unit_hash(e.interaction_id))
    held = [e for e in explicit if _unit_hash(e.interaction_id) < fraction]
    rest = [e for e in explicit if e not in held]
    while rest and len(held) < min(MIN_HELDOUT, len(explicit) // 2):
        held.append(rest.pop(0))
    if len({e.target for e in held}) < 2:
        other = next((e for e in rest if held and e.target != held[0].target), None)
        if other is not None and len(rest) > 1:
            held.append(other)
    ids = {e.interaction_id for e in held}
    return [e for e in items if e.interaction_id not in ids], held


@dataclass
class CompletionEvent:
    """An inline suggestion and what became of it. `wanted` is what the user wanted at the cursor: what they
    wrote instead (a correction), or the suggestion itself when they took it whole; None for a plain dismissal."""

    interaction_id: str
    prompt: str  # the FIM prompt exactly as the model was given it
    suggested: str
    outcome: str  # "accepted" | "corrected" | "dismissed"
    wanted: str | None
    # `wanted` is all the user wanted there: they stopped after it (False: a correction cut at the size bound).
    ends: bool = True
    # The rating id of its newest event: an adapter whose run's watermark is below it never saw it.
    event_id: int = 0
    # All the user is known to have had at the cursor: everything they wrote there (up to the store's bound), or
    # the suggestion they took; None for a plain dismissal. A suggestion the user would have taken whole is a
    # prefix of it (the gate's suggestions check).
    written: str | None = None
    language: str | None = None  # the document's language
    mode: str | None = None  # "line" or "block": the kind of suggestion the daemon made there


def completion_events(rows: Sequence[dict[str, Any]]) -> list[CompletionEvent]:
    """The completion rows of a snapshot that say what the user wanted: accepted or typed through whole, corrected
    (what they wrote after a dismissal, a partial accept or typing through), or dismissed with nothing written.
    A partial accept with no correction says too little (how much was taken is not in the snapshot)."""
    out = []
    for row in rows:
        suggested = str(row.get("response") or "")
        if row.get("kind") != "completion" or not suggested or not str(row.get("prompt") or ""):
            continue
        typed = written = row.get("typed") or None
        took = int(row.get("accepted") or 0) > 0 or (int(row.get("typed_through") or 0) > 0 and typed is None)
        went_on = False
        context = _context(row)
        language = context.get("language") if isinstance(context.get("language"), str) else None
        if typed is not None and typed.strip():
            # The editor asks again at the next line, and the lines after the first statement are what the user
            # wanted there: at this cursor they wanted the statement, and stopped where they went on.
            typed, went_on = first_statement(typed, language)
        if typed is not None and typed != suggested and typed.strip():
            outcome, wanted = "corrected", typed
        elif took or typed == suggested:
            outcome, wanted = "accepted", suggested
            written = written if written is not None and written.startswith(suggested) else suggested
        elif int(row.get("dismissed") or 0) > 0:
            outcome, wanted, written = "dismissed", None, None
        else:
            continue
        ends = went_on or not (outcome == "corrected" and bool(row.get("typed_truncated")))
        out.append(
            CompletionEvent(
                str(row["interaction_id"]),
                str(row["prompt"]),
                suggested,
                outcome,
                wanted,
                ends,
                int(row.get("last_event_id") or 0),
                written,
                language,
                context.get("mode") if context.get("mode") in ("line", "block") else None,
            )
        )
    return out


def _context(row: dict[str, Any]) -> dict[str, Any]:
    """Where a completion row was made (its context: language, mode, ...); {} if it does not say."""
    context = row.get("context") or {}
    if isinstance(context, str):
        try:
            context = json.loads(context)
        except ValueError:
            return {}
    return context if isinstance(context, dict) else {}


def new_events(events: Sequence[CompletionEvent], watermark: int | None) -> list[CompletionEvent]:
    """The events after rating id `watermark` (the newest id in `ratings` as the run that made the active adapter
    started): what it has not learnt from yet. All of them when the watermark is unknown (no adapter, or one from
    before event watermarks)."""
    if not watermark:
        return list(events)
    return [e for e in events if e.event_id > watermark]


def split_events(
    events: Sequence[CompletionEvent], fraction: float
) -> tuple[list[CompletionEvent], list[CompletionEvent]]:
    """(train, held-out) by a stable hash of each interaction, as the ratings are split."""
    held = [e for e in events if held_out(e.interaction_id, fraction)]
    ids = {e.interaction_id for e in held}
    return [e for e in events if e.interaction_id not in ids], held


@dataclass
class EventSplit:
    train: list[CompletionEvent]  # all a run may learn from
    held: list[CompletionEvent]  # the gate's: learnt by neither the candidate nor the active adapter
    new: list[CompletionEvent]  # of `train`, those the active adapter has not learnt
    held_out_before: int  # of `new`, those the active adapter's run held out


def split_for_run(
    events: Sequence[CompletionEvent], fraction: float, watermark: int | None, held_after: int | None
) -> EventSplit:
    """The completions of a run. Held out for the gate: the events after the active adapter's `watermark` that
    the stable hash puts in the `fraction`; the active adapter never saw them, and the candidate does not learn
    them. The next run learns them like the rest, so that no correction is kept from the model for good (held
    out for ever, a fifth of what the user wrote would never be learnt), and the gate always judges on what
    the user did with the active adapter's own suggestions. `held_after`: the watermark of the adapter the active
    one was trained from, which its own run held out after; the events it held, between that and `watermark`,
    are new to it. None or 0: it held out every hashed event up to `watermark` (the first adapter's run, or one
    from before this rule)."""
    after = new_events(events, watermark)
    rest, held = split_events(after, fraction)
    held_ids = {e.interaction_id for e in held}
    train = [e for e in events if e.interaction_id not in held_ids]
    if not watermark:
        return EventSplit(train, held, rest, 0)
    lower = held_after or 0
    was_held = [e for e in events if lower < e.event_id <= watermark and held_out(e.interaction_id, fraction)]
    return EventSplit(train, held, rest + was_held, len(was_held))


def replay_sample(
    events: Sequence[CompletionEvent], new: Sequence[CompletionEvent], seed: str, per_new: int
) -> list[CompletionEvent]:
    """`per_new` times as many of the events in `events` but not `new` (capped by how many there are),
    drawn at random with `seed`: what a run goes over again beside the new ones, so that the adapter keeps what
    it learnt from them without fitting every earlier event once more in every run."""
    ids = {e.interaction_id for e in new}
    old = [e for e in events if e.interaction_id not in ids]
    return random.Random(seed).sample(old, min(len(old), per_new * len(new)))


def completion_pairs(events: Sequence[CompletionEvent]) -> list[tuple[str, str, str, bool]]:
    """(FIM prompt, preferred, rejected, preferred ends) for the policy: what the user wrote over the suggestion
    they turned down, and a suggestion they took over an empty one (showing nothing: the rejected text is "",
    which the policy scores as stopping at once). A preferred text that ends is followed by the stop token: at
    that cursor the user wanted this and no more, which is where a suggestion should stop."""
    pairs = []
    for e in events:
        if e.outcome == "corrected" and e.wanted:
            pairs.append((e.prompt, e.wanted, e.suggested, e.ends))
        elif e.outcome == "accepted":
            pairs.append((e.prompt, e.suggested, "", True))
    return pairs


def wanted_texts(events: Sequence[CompletionEvent]) -> list[tuple[str, str, bool]]:
    """(FIM prompt, what the user wanted there, whether it ends) of the events that say what they wanted."""
    return [(e.prompt, e.wanted, e.ends) for e in events if e.wanted]


def judge_pairs(events: Sequence[CompletionEvent]) -> list[tuple[str, str, str]]:
    """(FIM prompt, preferred, rejected) for the judge's pairwise term: what the user wrote over the suggestion,
    and at a prompt asked more than once, a suggestion taken over one dismissed. An empty answer is no pair for
    the judge: it reads the response's states, and there are none."""
    pairs = [(e.prompt, e.wanted, e.suggested) for e in events if e.outcome == "corrected" and e.wanted]
    taken: dict[str, set[str]] = {}
    for e in events:
        if e.outcome == "accepted":
            taken.setdefault(e.prompt, set()).add(e.suggested)
    for e in events:
        if e.outcome == "dismissed":
            pairs += [
                (e.prompt, good, e.suggested)
                for good in sorted(taken.get(e.prompt, ()))
                if good != e.suggested
            ]
    return pairs


def user_prompts(rows: Sequence[dict[str, Any]], heldout_ids: set[str]) -> tuple[list[str], list[str]]:
    """Distinct prompts of the user's interactions: (for rollouts, for the gate), split like the ratings."""
    train, held, seen = [], [], set()
    for row in rows:
        prompt = str(row.get("prompt") or "")
        if not prompt.strip() or prompt in seen:
            continue
        seen.add(prompt)
        iid = str(row["interaction_id"])
        (held if iid in heldout_ids else train).append(prompt)
    return train, held


# General prompts replayed during PPO so that the adapter keeps answering ordinary questions well.
REPLAY_CHAT = [
    "Write a Python function that reverses a string.",
    "Explain what a Python list comprehension is, with an example.",
    "How do I read a file line by line in Python?",
    "Write a function that checks whether a number is prime.",
    "What is the difference between a tuple and a list?",
    "Write a function that merges two sorted lists.",
    "How do I parse JSON in Python?",
    "Write a class for a simple stack with push and pop.",
    "Explain what a decorator does in Python.",
    "Write a function that counts the words in a text.",
    "How can I sort a dictionary by its values?",
    "Write a function that returns the n-th Fibonacci number.",
]
REPLAY_CODE = [
    "def flatten(items):\n    ",
    "import os\n\n\ndef list_python_files(root):\n    ",
    "class Counter:\n    def __init__(self):\n        ",
    "def read_lines(path):\n    with open(path) as fh:\n        ",
    "def is_palindrome(text):\n    ",
    "def chunks(seq, size):\n    ",
]


def replay_prompts(tokenizer: Any) -> list[str]:
    """General prompts: chat questions in the tokenizer's chat template (when it has one) and code prefixes."""
    chats = []
    if getattr(tokenizer, "chat_template", None):
        for q in REPLAY_CHAT:
            chats.append(
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
                )
            )
    else:
        chats = [f"# {q}\n" for q in REPLAY_CHAT]
    return chats + REPLAY_CODE


def prompt_batches(
    n_user: int, n_replay: int, batch_size: int, replay_ratio: float, seed: int
) -> Iterator[list[int]]:
    """Endless batches of indices into `user prompts + replay prompts`: about `replay_ratio` from the replay set."""
    rng = random.Random(seed)
    while True:
        batch = []
        for _ in range(batch_size):
            use_replay = n_user == 0 or (n_replay > 0 and rng.random() < replay_ratio)
            batch.append(n_user + rng.randrange(n_replay) if use_replay else rng.randrange(n_user))
        yield batch


# The gate's general held-out text: standard-library modules that the tiny model builder holds out of its
# training set (for other models they are simply ordinary Python).
GENERAL_FILES = 4
_FALLBACK_TEXT = '''def mean(values):
    """Return the arithmetic mean of a non-empty sequence."""
    values = list(values)
    if not values:
        raise ValueError("mean() of an empty sequence")
    return sum(values) / len(values)


class Stack:
    def __init__(self):
        self._items = []

    def push(self, item):
        self._items.append(item)

    def pop(self):
        return self._items.pop()
'''


def stdlib_texts(split: str, start: int, count: int, max_chars: int) -> list[str]:
    """The start of standard-library modules `start` to `start + count` (by name) of one split of the tiny
    builder ("train", "valid" or "test", see tokenizer_build.split_of). For other models they are simply
    ordinary Python. Empty when the standard library's sources are not there."""
    from .tokenizer_build import split_of, stdlib_root

    root = stdlib_root()
    try:
        names = sorted(
            p.name for p in root.glob("*.py") if split_of(p.name) == split and not p.name.startswith("_")
        )
    except OSError:
        return []
    texts = []
    for name in names[start : start + count]:
        try:
            text = (root / name).read_text(encoding="utf-8", errors="replace")[:max_chars]
        except OSError:
            continue
        if text.strip():
            texts.append(text)
    return texts


def general_texts(max_chars: int = 2000) -> list[str]:
    """The gate's general held-out text: the first test-split modules, which the tiny model never trained on."""
    return stdlib_texts("test", 0, GENERAL_FILES, max_chars) or [_FALLBACK_TEXT]


def replay_texts(n_files: int = 32, max_chars: int = 2000) -> list[str]:
    """Ordinary Python for PPO-ptx: training-split modules, so never what the gate's general-loss check or the
    learning benchmark (later test-split modules) measures on."""
    return stdlib_texts("train", 0, n_files, max_chars)
