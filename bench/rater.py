"""The simulated user of the learning benchmark: a rater with a hidden taste who gives 1–5 stars, with noise.

The taste lives here, in `bench/`, and never reaches the system under test: the daemon and its trainer see
only the stars that `bench/learning.py` sends through `reinf/rate`. Each taste is something a small code model
can express in its answers (their length, whether they print, annotate or document), and each is calibrated
so that some of the base model's answers already please the rater and most do not.

Noise is a deterministic function of (seed, prompt, response): the same rater rates the same answer the same
way, so that before/after comparisons differ only through the answers.

    from bench.rater import Rater
    Rater("concise", seed=0).stars(prompt, response)  # → 1..5
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

LIKED = 4  # a rating of 4 or more counts as satisfied

_FENCE = re.compile(r"^```[\w+-]*\s*$", re.M)
_DEF = re.compile(r"^\s*(?:async\s+)?def\s+\w+\s*\((?P<params>[^)]*)\)\s*(?P<ret>->\s*[^:]+)?:", re.M)
_FUNCTION = re.compile(r"^\s*(?:async\s+)?def\s+\w", re.M)
_PRINT = re.compile(r"(?<![\w.])(?:print|pprint)\s*\(")
_DOCSTRING = re.compile(r'^\s*(?:"""|\'\'\')', re.M)


def code_of(response: str) -> str:
    """The code in an answer: the inside of its fenced block(s) when it has one, else the whole text."""
    parts = _FENCE.split(response)
    if len(parts) >= 2:
        return "\n".join(part.strip("\n") for part in parts[1::2])
    return response


def code_lines(response: str) -> int:
    """Non-blank lines of code."""
    return sum(1 for line in code_of(response).splitlines() if line.strip())


def is_finished(response: str) -> bool:
    """An answer that opens a code fence closes it (an answer cut off at the token limit does not)."""
    return len(_FENCE.findall(response)) % 2 == 0


def has_function(response: str) -> bool:
    """The answer defines a function (every benchmark prompt asks for one)."""
    return bool(_FUNCTION.search(code_of(response)))


def has_comment(response: str) -> bool:
    """Some line of the code is a `#` comment."""
    return any(line.lstrip().startswith("#") for line in code_of(response).splitlines())


def has_print(response: str) -> bool:
    return bool(_PRINT.search(code_of(response)))


def has_type_hints(response: str) -> bool:
    """Some function in the answer declares its return type (`-> T`)."""
    return any(m.group("ret") for m in _DEF.finditer(code_of(response)))


def docstring_lines(response: str) -> int:
    """Lines taken by the first docstring (0 when there is none; 1 for a one-line docstring)."""
    code = code_of(response)
    m = _DOCSTRING.search(code)
    if m is None:
        return 0
    quote = code[m.end() - 3 : m.end()]
    end = code.find(quote, m.end())
    if end < 0:
        return code.count("\n", m.end()) + 1  # never closed: all the rest
    return code.count("\n", m.start(), end) + 1


# -- tastes: response text → stars before noise ------------------------------------------------------------


# Every taste gives 1 star to an answer that writes no function at all: an empty or off-topic answer is never
# what the user asked for, however short it is.


def concise(response: str) -> int:
    """Prefers short answers: a function in a few lines, finished."""
    if not has_function(response):
        return 1
    n = code_lines(response)
    stars = 5 if n <= 5 else 4 if n <= 7 else 3 if n <= 10 else 2 if n <= 14 else 1
    return stars if is_finished(response) else min(stars, 2)


def no_print(response: str) -> int:
    """Dislikes print-debugging, and answers cut off mid-way."""
    if not has_function(response) or has_print(response):
        return 1
    return 5 if is_finished(response) else 3


def type_hints(response: str) -> int:
    """Prefers type hints: a return annotation on the function it writes."""
    if not has_function(response):
        return 1
    return 5 if has_type_hints(response) else 2


def short_docstring(response: str) -> int:
    """Prefers a one- or two-line docstring; a long rambling one or none at all is worse."""
    if not has_function(response):
        return 1
    n = docstring_lines(response)
    return {0: 2, 1: 5, 2: 4, 3: 3}.get(n, 1)


def commented(response: str) -> int:
    """Likes code that explains itself with `#` comments."""
    if not has_function(response):
        return 1
    return 5 if has_comment(response) else 2


TASTES: dict[str, Callable[[str], int]] = {
    "concise": concise,
    "no_print": no_print,
    "type_hints": type_hints,
    "short_docstring": short_docstring,
    "commented": commented,
}


@dataclass(frozen=True)
class Rater:
    """A user with one hidden taste. `noise` is the chance that a rating is off by one star either way."""

    taste: str
    seed: int = 0
    noise: float = 0.15

    def __post_init__(self) -> None:
        if self.taste not in TASTES:
            raise ValueError(f"unknown taste {self.taste!r}; known: {', '.join(TASTES)}")
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"noise must be a probability in [0, 1], got {self.noise}")

    def true_stars(self, response: str) -> int:
        """What the taste alone says, without noise."""
        return TASTES[self.taste](response)

    def stars(self, prompt: str, response: str) -> int:
        """The rating the user gives: the taste's stars, moved one star up or down with chance `noise`."""
        stars = self.true_stars(response)
        key = f"{self.seed}\0{self.taste}\0{prompt}\0{response}".encode()
        rng = random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))
        if rng.random() < self.noise:
            stars += rng.choice((-1, 1))
        return min(5, max(1, stars))

    def satisfied(self, prompt: str, response: str) -> bool:
        return self.stars(prompt, response) >= LIKED


def satisfaction(
    rater: Rater, ask: Callable[[str], str], prompts: list[str], samples: int = 1
) -> dict[str, object]:
    """Ask each prompt `samples` times through `ask(prompt) → answer` and let the rater judge every answer.

    Returns the share of answers rated 4 or more, the mean stars, and a few examples to read."""
    stars, examples = [], []
    for _ in range(samples):
        for prompt in prompts:
            answer = ask(prompt)
            s = rater.stars(prompt, answer)
            stars.append(s)
            if len(examples) < 3:
                examples.append({"prompt": prompt, "answer": answer, "stars": s})
    return {
        "satisfaction": sum(s >= LIKED for s in stars) / len(stars),
        "mean_stars": sum(stars) / len(stars),
        "n": len(stars),
        "examples": examples,
    }
