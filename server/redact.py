"""Secrets are redacted before anything is stored: API keys, tokens, private keys, passwords in URLs."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

_SECRET_NAMES = (
    r"api[_-]?key|secret|password|passwd|pwd|passphrase|private[_-]?key|token|access[_-]?key|account[_-]?key"
)
_SECRET_NAME = re.compile(_SECRET_NAMES, re.I)
_SECRET_NAME_LOWER = re.compile(_SECRET_NAMES)  # on lower-cased text: re.I made this 10x slower on a document


def _secret_names(text: str) -> list[tuple[int, int]]:
    """The spans of the secret names in `text` (api_key, TOKEN, Password, ...)."""
    lower = text.lower()
    if len(lower) != len(text):  # a letter whose lower case is longer (İ): offsets would not line up
        return [m.span() for m in _SECRET_NAME.finditer(text)]
    return [m.span() for m in _SECRET_NAME_LOWER.finditer(lower)]


# Where a token may start: not right after an ASCII letter or digit. \b would miss a token glued to "_" or to a
# non-ASCII letter (MY_KEY_AKIA..., a model's answer that runs on), and the end needs no boundary at all.
_S = r"(?<![A-Za-z0-9])"

# A line may be a comment that holds an assignment: # API_KEY=..., // password: ..., -- db_password=...
_COMMENT = r"(?:(?:#+|//+|--|;+|/?\*+)[ \t]*)?"

# (name, pattern, replacement). A replacement keeps the surrounding text so the code stays readable.
_PATTERNS: list[tuple[str, re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    (
        "private_key",
        re.compile(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----.*?"
            r"(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)",
            re.S,
        ),
        "[REDACTED:private_key]",
    ),
    (
        "aws_access_key",
        re.compile(_S + r"(?:AKIA|ASIA)[0-9A-Z]{16}(?![A-Z0-9])"),
        "[REDACTED:aws_access_key]",
    ),
    (
        "github_token",
        re.compile(_S + r"(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})"),
        "[REDACTED:github_token]",
    ),
    ("openai_key", re.compile(_S + r"sk-(?:proj-|ant-)?[A-Za-z0-9_\-]{20,}"), "[REDACTED:api_key]"),
    ("slack_token", re.compile(_S + r"xox[abposr]-[A-Za-z0-9-]{10,}"), "[REDACTED:slack_token]"),
    ("google_api_key", re.compile(_S + r"AIza[0-9A-Za-z_\-]{35}"), "[REDACTED:google_api_key]"),
    ("stripe_key", re.compile(_S + r"(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16,}"), "[REDACTED:stripe_key]"),
    ("hf_token", re.compile(_S + r"hf_[A-Za-z0-9]{30,}"), "[REDACTED:hf_token]"),
    ("gitlab_token", re.compile(_S + r"glpat-[A-Za-z0-9_\-]{20,}"), "[REDACTED:gitlab_token]"),
    ("npm_token", re.compile(_S + r"npm_[A-Za-z0-9]{36,}"), "[REDACTED:npm_token]"),
    (
        "azure_key",
        re.compile(r"(?i)(?P<pre>\b(?:AccountKey|SharedAccessKey)=)(?P<secret>[A-Za-z0-9+/]{20,}={0,2})"),
        r"\g<pre>[REDACTED]",
    ),
    (
        "azure_sas",
        # A shared access signature's signature, in a URL's query or a SharedAccessSignature= string.
        re.compile(r"(?i)(?P<pre>(?<![\w])sig=)(?P<secret>[A-Za-z0-9%+/=]{16,})"),
        r"\g<pre>[REDACTED]",
    ),
    (
        "jwt",
        re.compile(_S + r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
        "[REDACTED:jwt]",
    ),
    (
        "url_password",
        re.compile(
            # The password may hold / and @ (unencoded, as people type them): it runs to the last @ that a
            # host name follows; a port (digits, then / or the end) is not a password. Bounded and possessive,
            # so a line of a://b:a://b:... stays linear.
            r"(?P<pre>(?<![a-zA-Z0-9+.-])[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:)(?!\d+(?:[/?#\s'\"]|$))"
            r"(?P<secret>[^\s'\"]{1,128}?)(?P<post>@[A-Za-z0-9.-]{1,253}+(?![@A-Za-z0-9.-]))"
        ),
        r"\g<pre>[REDACTED]\g<post>",
    ),
    (
        "bearer",
        re.compile(r"(?i)(?P<pre>\bbearer\s+)(?P<secret>[A-Za-z0-9._~+/=-]{16,})"),
        r"\g<pre>[REDACTED]",
    ),
    (
        "basic_auth",
        re.compile(
            r"(?i)(?P<pre>\bauthorization['\"]?\s*[:=]\s*['\"]?basic\s+)(?P<secret>[A-Za-z0-9+/]{8,}={0,2})"
        ),
        r"\g<pre>[REDACTED]",
    ),
    (
        "assignment",
        # The name may be quoted itself, as in JSON or a dict literal: {"client_secret": "..."}.
        re.compile(
            r"(?P<pre>(?<![\w.-])(?P<name>[\w.-]+)['\"]?\s*[:=]\s*(?P<q>['\"]))(?P<secret>[^'\"\s]{6,})(?P=q)"
        ),
        lambda m: _if_secret_name(m, m["pre"] + "[REDACTED]" + m["q"]),
    ),
    (
        "env_assignment",
        # Unquoted, a whole line of a .env, shell, INI or YAML file: API_KEY=abc123..., password: hunter2...
        # The value must hold a letter and a digit or symbol, so max_tokens = 100000 and token: my_name stay.
        re.compile(
            r"(?m)(?P<pre>^[ \t]*" + _COMMENT + r"(?:export[ \t]+)?(?P<name>[\w.-]+)[ \t]*[:=][ \t]*)"
            r"(?P<secret>(?=[\w\-+/=@!#$%^&*~.]*[A-Za-z])(?=[\w\-+/=@!#$%^&*~.]*[0-9+/=@!#$%^&*~-])"
            r"[\w\-+/=@!#$%^&*~.]{8,})[ \t]*$"
        ),
        lambda m: _if_secret_name(m, m["pre"] + "[REDACTED]"),
    ),
    (
        "env_quoted",
        # A quoted value with spaces, on a line of its own: PASSWORD="correct horse battery staple". Only a
        # whole line, so a string in code (print("token: ", token)) is not taken for a value.
        re.compile(
            r"(?m)(?P<pre>^[ \t]*"
            + _COMMENT
            + r"(?:export[ \t]+)?(?P<name>[\w.-]+)[ \t]*[:=][ \t]*(?P<q>['\"]))"
            r"(?P<secret>[^'\"\n]{6,})(?P=q)(?=[ \t]*(?:#.*)?$)"
        ),
        lambda m: _if_secret_name(m, m["pre"] + "[REDACTED]" + m["q"]),
    ),
]


def _if_secret_name(m: re.Match[str], replacement: str) -> str:
    # The name is matched whole and checked here: a pattern like [\w.-]*secret[\w.-]* backtracks
    # cubically on a long run such as a.a.a.a... (a minified file), which held the daemon for hours.
    return replacement if _SECRET_NAME.search(m["name"]) else m[0]


PATTERN_NAMES = [name for name, _, _ in _PATTERNS]

# Text that every match of a pattern contains, case-folded: a pattern whose text is absent from the case-folded
# input cannot match and is not run. Running all of them cost about 3 ms per 8 KB of code, on every completion's
# document; most code holds none of these, so most patterns are skipped after a substring search.
_NEEDS: dict[str, tuple[str, ...]] = {
    "private_key": ("private key",),
    "aws_access_key": ("akia", "asia"),
    "github_token": ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    "openai_key": ("sk-",),
    "slack_token": ("xox",),
    "google_api_key": ("aiza",),
    "stripe_key": ("_live_", "_test_"),
    "hf_token": ("hf_",),
    "gitlab_token": ("glpat-",),
    "npm_token": ("npm_",),
    "azure_key": ("accountkey=", "sharedaccesskey="),
    "azure_sas": ("sig=",),
    "jwt": ("eyj",),
    "url_password": ("://",),
    "bearer": ("bearer",),
    "basic_auth": ("authorization",),
}
_NAMED = (
    "assignment",
    "env_assignment",
    "env_quoted",
)  # these redact only under a secret's name (_SECRET_NAME)


def _patterns_for(text: str) -> list[tuple[str, re.Pattern[str], str | Callable[[re.Match[str]], str]]]:
    """The patterns that could match somewhere in `text` (the others are skipped, see _NEEDS)."""
    folded = text.casefold()
    named = _SECRET_NAME_LOWER.search(folded) is not None or (
        len(folded) != len(text) and _SECRET_NAME.search(text) is not None
    )
    return [p for p in _PATTERNS if (named if p[0] in _NAMED else any(n in folded for n in _NEEDS[p[0]]))]


@functools.lru_cache(maxsize=16)  # each named pattern asks for the same text's regions
def _named_regions(text: str) -> tuple[tuple[int, int], ...]:
    """Where a named pattern (_NAMED) can match: the lines that hold a secret's name, each with the two lines
    after it (a value may sit on the line below its name). Run over these alone, the named patterns cost in
    proportion to the lines that name a secret, not to the whole document."""
    regions: list[tuple[int, int]] = []
    for m_start, m_end in _secret_names(text):
        start = text.rfind("\n", 0, m_start) + 1
        if regions and start <= regions[-1][1]:
            start = regions[-1][0]
        end = m_end
        for _ in range(3):
            nl = text.find("\n", end)
            end = len(text) if nl < 0 else nl + 1
        if regions and regions[-1][0] == start:
            regions[-1] = (start, max(end, regions[-1][1]))
        else:
            regions.append((start, end))
    return tuple(regions)


def _matches(name: str, pattern: re.Pattern[str], text: str) -> list[re.Match[str]]:
    if name not in _NAMED:
        return list(pattern.finditer(text))
    return [m for start, end in _named_regions(text) for m in pattern.finditer(text[start:end])]


def _sub(name: str, pattern: re.Pattern[str], repl: Any, text: str) -> str:
    if name not in _NAMED:
        return pattern.sub(repl, text)
    out, at = [], 0
    for start, end in _named_regions(text):
        out += [text[at:start], pattern.sub(repl, text[start:end])]
        at = end
    return "".join([*out, text[at:]])


MIN_FRAGMENT = 8  # a cut-off piece of a secret shorter than this is left alone: it could be ordinary text


def secrets_in(*texts: str) -> set[str]:
    """The secret values that `redact` would replace in `texts`, for `redact(..., secrets=)`."""
    found: set[str] = set()
    for text in texts:
        if not text:
            continue
        for name, pattern, repl in _patterns_for(text):
            for m in _matches(name, pattern, text):
                if callable(repl) and repl(m) == m[0]:
                    continue  # an assignment whose name is not a secret's
                found.add(m["secret"] if "secret" in pattern.groupindex else m[0])
    return {s for s in found if len(s) >= MIN_FRAGMENT}


# The start of a known key's shape, as a completion's prefix ends while the key is typed one character at a
# time: (fixed text, the characters that follow it). Each completion fired on the way stores its prefix, so
# the key would reach the store one character short of whole, where no full pattern knows it.
_SHAPE_STARTS = [
    (r"(?:AKIA|ASIA)", r"[0-9A-Z]"),
    (r"gh[pousr]_", r"[A-Za-z0-9]"),
    (r"github_pat_", r"[A-Za-z0-9_]"),
    (r"sk-(?:proj-|ant-(?:api\d\d-)?)?", r"[A-Za-z0-9_\-]"),
    (r"xox[abposr]-", r"[A-Za-z0-9-]"),
    (r"AIza", r"[0-9A-Za-z_\-]"),
    (r"(?:sk|rk)_(?:live|test)_", r"[0-9A-Za-z]"),
    (r"hf_", r"[A-Za-z0-9]"),
    (r"glpat-", r"[A-Za-z0-9_\-]"),
    (r"npm_", r"[A-Za-z0-9]"),
    (r"eyJ", r"[A-Za-z0-9_.-]"),
    (r"(?i:(?:AccountKey|SharedAccessKey)=)", r"[A-Za-z0-9+/=]"),
    (r"(?i:(?<!\w)sig=)", r"[A-Za-z0-9%+/=]"),
    (r"(?i:\bbearer\s+)", r"[A-Za-z0-9._~+/=-]"),
]
_TYPING = [
    (re.compile(_S + r"(?P<pre>" + fixed + r")(?P<secret>" + body + r"+)\Z"), re.compile(body + "*"))
    for fixed, body in _SHAPE_STARTS
] + [
    # a URL's password: scheme://user:hunt (a port is digits only, and stays)
    (
        re.compile(r"(?P<pre>[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:)(?!\d+\Z)(?P<secret>[^\s@/'\"]+)\Z"),
        re.compile(r"[^\s@'\"]*"),
    ),
]
_TYPING_NAMED = [
    # an open quote after a secret's name: password = "hunt
    re.compile(r"(?P<pre>(?<![\w.-])(?P<name>[\w.-]+)['\"]?\s*[:=]\s*['\"])(?P<secret>[^'\"\n]+)\Z"),
    # a shell or .env line (no spaces around =, as shell requires) or a YAML line: API_KEY=abc1, password: hu
    re.compile(
        r"(?m)(?P<pre>^[ \t]*" + _COMMENT + r"(?:export[ \t]+)?(?P<name>[\w.-]+)(?:=|:[ \t]+))"
        r"(?P<secret>[\w\-+/=@!#$%^&*~.]+)\Z"
    ),
]
_VALUE = re.compile(r"[^\s'\"]*")
_TAIL = 512  # how far back from the cursor a key being typed is looked for: longer than any key's shape
_TYPED_MIN = 3  # a piece shorter than this, after a secret's name, is left: it could be anything


def secrets_at_cursor(prefix: str, suffix: str) -> set[str]:
    """The secrets of a completion's document, split at the cursor, for `redact(..., secrets=)`.

    A secret may straddle the cursor, so the document is searched whole too. And a secret may be being typed:
    when the prefix ends with the start of a known key's shape (ghp_ and one character or more after it) or
    with a value after a secret's name, that start, and what of it the suffix continues, is a secret too.
    The cost: an identifier that begins like a shape (hf_model while it is typed) is stored redacted."""
    found = secrets_in(prefix, suffix, prefix + suffix)
    tail = prefix[-_TAIL:]
    typed: list[tuple[str, str]] = []  # (the piece before the cursor, its continuation after it)
    for pattern, body in _TYPING:
        if (m := pattern.search(tail)) is not None:
            # glued to its fixed text (AKIAZ7X), a piece is found only with it; after ghp_ or = it stands alone
            head = m["pre"] + m["secret"] if m["pre"][-1].isalnum() else m["secret"]
            typed.append((head, body.match(suffix)[0]))
    for pattern in _TYPING_NAMED:
        m = pattern.search(tail)
        if m is None or not _SECRET_NAME.search(m["name"]) or len(m["secret"]) < _TYPED_MIN:
            continue
        unquoted = not m["pre"].endswith(("'", '"'))
        if unquoted and len(m["secret"]) < MIN_FRAGMENT and m["secret"].isalpha():
            continue  # letters only after an unquoted name: code being typed (token: str) more than a secret
        typed.append((m["secret"], _VALUE.match(suffix)[0]))
    for head, rest in typed:
        found |= {head, head + rest}
        if len(rest) >= _TYPED_MIN:
            found.add(rest)
    return found


def redact(text: str, secrets: set[str] | frozenset[str] = frozenset()) -> str:
    """Replace every secret found in `text`, and every piece of `secrets` that was cut off at either end.

    A prompt cut to fit the model's context can start in the middle of a secret (`pm_a1B2...` of an npm
    token), which no pattern recognises any more. Pass the secrets of the uncut text, from `secrets_in`. A
    piece cut at both ends (a window that lies wholly inside one secret) is not found."""
    if not text:
        return text
    for name, pattern, repl in _patterns_for(text):
        text = _sub(name, pattern, repl, text)
    for secret in sorted(secrets, key=len, reverse=True):
        text = _scrub_pieces(text, secret) if len(secret) >= MIN_FRAGMENT else _scrub_whole(text, secret)
    return text


def _scrub_whole(text: str, secret: str) -> str:
    """Replace `secret` where it stands as a whole word: a piece this short is found only whole."""
    if secret not in text:
        return text
    return re.sub(r"(?<![A-Za-z0-9])" + re.escape(secret) + r"(?![A-Za-z0-9])", "[REDACTED]", text)


def _scrub_pieces(text: str, secret: str) -> str:
    """Replace each run of `text` that is the head or the tail of `secret`, MIN_FRAGMENT or more long.

    Linear in len(text) + len(secret), by the Z-algorithm: a search that grew each match character by
    character would cost the square of a 256 KiB field for a secret of one repeated letter."""
    head, tail = secret[:MIN_FRAGMENT], secret[-MIN_FRAGMENT:]
    if head not in text and tail not in text:
        return text
    spans = []
    n = len(secret) + 1
    # z[n + i]: how many characters of the secret's head start at text[i]
    z = _z_array(secret + "\0" + text)
    spans += [(i, i + z[n + i]) for i in range(len(text)) if z[n + i] >= MIN_FRAGMENT]
    # on the reversed strings: how many characters of the secret's tail end just before text[e]
    z = _z_array(secret[::-1] + "\0" + text[::-1])
    spans += [(len(text) - k - z[n + k], len(text) - k) for k in range(len(text)) if z[n + k] >= MIN_FRAGMENT]
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out, last = [], 0
    for start, end in merged:
        out += [text[last:start], "[REDACTED]"]
        last = end
    return "".join(out) + text[last:]


def _z_array(s: str) -> list[int]:
    """z[i] = the length of the longest common prefix of s and s[i:] (z[0] = 0)."""
    z = [0] * len(s)
    left = right = 0
    for i in range(1, len(s)):
        if i < right:
            z[i] = min(right - i, z[i - left])
        while i + z[i] < len(s) and s[z[i]] == s[i + z[i]]:
            z[i] += 1
        if i + z[i] > right:
            left, right = i, i + z[i]
    return z


def redact_obj(value: Any, secrets: set[str] | frozenset[str] = frozenset()) -> Any:
    """Redact every string inside a JSON-like value."""
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, list):
        return [redact_obj(v, secrets) for v in value]
    if isinstance(value, dict):
        return {k: redact_obj(v, secrets) for k, v in value.items()}
    return value
