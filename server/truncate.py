"""Where an inline completion ends: the end of the statement or block at the cursor, as a person would stop.

`Scope.at(prefix, suffix, language, limits)` reads the cursor's surroundings once. While the model generates,
`scope.ended(text)` says whether the text already runs past the end (the decode loop stops there); afterwards
`scope.finish(text, finish_reason)` cuts it to the part worth showing, or "" when nothing is.

Two families of rules. Indentation languages (Python and the like) end a block suggestion at the first line that
dedents below the cursor's block, or at a second definition (`def`, `class`, a decorator) at the block's own
level. Bracket languages end it once the brackets opened in the suggestion are closed again and the statement
has ended (`;`, `}`, or a line end the language treats as one). In both, a bracket that closes one opened before
the cursor ends the suggestion when the document already has that closer after the cursor, a cut never leaves a
half identifier, trailing whitespace goes, and a suggestion that only repeats the text after the cursor is
dropped. The cursor in the middle of a line gets a single-line suggestion; several lines only where the rest of
the line is empty and the line is empty or opens a block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import CompletionsConfig

INDENT_LANGUAGES = frozenset({"python", "cython", "starlark", "coffeescript", "nim", "yaml", "jupyter"})
# Languages whose statements may end at a line end unless the line plainly continues (Go inserts semicolons
# there; JavaScript and TypeScript code is often written without them).
NEWLINE_ENDS = frozenset(
    {"go", "rust", "kotlin", "swift", "scala", "ruby", "lua", "shellscript", "r", "javascript", "typescript"}
)
_OPEN = {"(": ")", "[": "]", "{": "}"}
_CLOSE = {v: k for k, v in _OPEN.items()}
_DEFINITION = re.compile(r"(async\s+def|def|class)\b|@\w")
# A line ending in one of these continues on the next line; a line starting with one continues the one before.
_CONTINUES_AFTER = tuple(",([{=+-*/%&|^<>!?:.\\")
_CONTINUATION_WORDS = ("else", "catch", "finally", "while")
_CONTINUES_BEFORE = re.compile(r"(\.|\?|:|&&|\|\||\+|-(?!-)|\*|/(?!/)|(else|catch|finally|while)\b)")


def _ident(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _indent(line: str) -> int:
    """Indentation width, a tab counting as 4 columns."""
    n = 0
    for ch in line:
        if ch == " ":
            n += 1
        elif ch == "\t":
            n += 4
        else:
            break
    return n


@dataclass(frozen=True)
class Limits:
    max_lines: int = 8
    max_chars: int = 400
    multiline: bool = True


class _Scanner:
    """Bracket depth through code, skipping strings and comments (good enough for suggestions a few lines long).
    `quote`: the string open where the text starts (a docstring the cursor is in)."""

    def __init__(self, language: str, quote: str = "") -> None:
        self.hash_comments = language in INDENT_LANGUAGES or language in ("ruby", "shellscript", "r", "perl")
        self.slash_comments = not self.hash_comments or language == "php"
        self.backtick = language in ("javascript", "typescript", "javascriptreact", "typescriptreact", "go")
        self.triple_quotes = language in INDENT_LANGUAGES
        self.stack: list[str] = []
        self.quote = quote  # the open string's quote ('"""' for a docstring), "" outside strings
        self.block_comment = False
        self.line_comment = False
        self.escaped = False
        self.skip = 0  # the rest of a triple quote, already read

    def feed(self, text: str, i: int) -> str:
        """Advance over text[i]; returns "open", "close", "underflow" (closes a bracket opened before the
        cursor), "code" or "skip" (inside a string or comment)."""
        if self.skip:
            self.skip -= 1
            return "skip"
        ch = text[i]
        nxt = text[i + 1] if i + 1 < len(text) else ""
        if ch == "\n":
            self.line_comment = False
            if self.quote in ("'", '"') and not self.escaped:
                self.quote = ""  # an unterminated one-line string ends with its line
            self.escaped = False
            return "code"
        if self.line_comment:
            return "skip"
        if self.block_comment:
            if ch == "*" and nxt == "/":
                self.block_comment = False
            return "skip"
        if self.quote:
            if self.escaped:
                self.escaped = False
            elif ch == "\\":
                self.escaped = True
            elif text.startswith(self.quote, i):
                self.skip = len(self.quote) - 1
                self.quote = ""
            return "skip"
        if ch == "#" and self.hash_comments:
            self.line_comment = True
            return "skip"
        if ch == "/" and self.slash_comments and nxt in ("/", "*"):
            self.line_comment, self.block_comment = nxt == "/", nxt == "*"
            return "skip"
        if ch in ('"', "'") or (ch == "`" and self.backtick):
            # A Rust lifetime ('a) is not a character literal: one opens only if it closes within 3 characters.
            if ch == "'" and not self.hash_comments and "'" not in text[i + 1 : i + 5]:
                return "code"
            self.quote = ch * 3 if self.triple_quotes and text.startswith(ch * 3, i) else ch
            self.skip = len(self.quote) - 1
            return "skip"
        if ch in _OPEN:
            self.stack.append(ch)
            return "open"
        if ch in _CLOSE:
            if self.stack and self.stack[-1] == _CLOSE[ch]:
                self.stack.pop()
                return "close"
            if not self.stack:
                return "underflow"
            return "close"  # a mismatched closer: leave the depth as it is
        return "code"

    @property
    def in_text(self) -> bool:
        """Inside a string or a comment (a colon in a docstring opens no block)."""
        return bool(self.quote or self.line_comment or self.block_comment)

    @property
    def docstring(self) -> str:
        """The quote of the triple-quoted string open here, "" for none."""
        return self.quote if len(self.quote) == 3 else ""


def _scan(line: str, language: str, quote: str = "") -> _Scanner:
    """The scanner after `line`, started inside the string `quote` ("" for none)."""
    scan = _Scanner(language, quote)
    for i in range(len(line)):
        scan.feed(line, i)
    return scan


def _escaped(text: str, j: int) -> bool:
    """Whether text[j] follows an odd number of backslashes."""
    k = j
    while k > 0 and text[k - 1] == "\\":
        k -= 1
    return (j - k) % 2 == 1


def _open_docstring(text: str, language: str) -> str:
    """The quote of the triple-quoted string open at the end of `text`, "" for none. It looks for triple quotes
    (str.find) and reads only the line before each, so that a long prefix costs little."""
    if language not in INDENT_LANGUAGES:
        return ""
    pos, quote = 0, ""
    ahead = {q: text.find(q) for q in ('"""', "'''")}  # the next of each at pos or after, -1: none
    while True:
        for q, j in ahead.items():
            if 0 <= j < pos:
                ahead[q] = text.find(q, pos)
        if quote:
            j = ahead[quote]
            while j > 0 and _escaped(text, j):
                j = text.find(quote, j + 1)
            if j < 0:
                return quote
            pos, quote = j + 3, ""
            continue
        found = [j for j in ahead.values() if j >= 0]
        if not found:
            return ""
        j = min(found)
        before = text[max(pos, text.rfind("\n", 0, j) + 1) : j]
        if before.strip() and _scan(before, language).in_text:
            pos = j + 3  # in a comment or a one-line string
        else:
            quote, pos = text[j : j + 3], j + 3


@dataclass
class _Cut:
    end: int  # keep text[:end]
    ended: bool  # the scope ended there (True), or a limit or the text's end was reached (False)


class Scope:
    """The cursor's statement or block, and the rules that end a suggestion there."""

    def __init__(self, prefix: str, suffix: str, language: str | None, limits: Limits) -> None:
        self.language = (language or "").lower()
        self.indented = self.language in INDENT_LANGUAGES
        self.limits = limits
        self.line_before = prefix[prefix.rfind("\n") + 1 :]
        nl = suffix.find("\n")
        self.line_after = suffix if nl < 0 else suffix[:nl]
        self.suffix = suffix
        self.suffix_has_code = bool(suffix.strip())
        # A docstring open where the cursor's line starts: its lines are text, not code.
        self.quote_at_line = _open_docstring(
            prefix[-20000 : len(prefix) - len(self.line_before)], self.language
        )
        cursor_line = _scan(self.line_before, self.language, self.quote_at_line)
        self.quote_at_cursor = cursor_line.docstring
        before = self.line_before.strip()
        opens_block = (
            before.endswith(":") if self.indented else before.endswith(("{", "(", "["))
        ) and not cursor_line.in_text
        self.multiline = limits.multiline and not self.line_after.strip() and (not before or opens_block)
        self.mode = "block" if self.multiline else "line"
        # The block the cursor is in: a body opened on this line is deeper than the line.
        self.block_indent = _indent(self.line_before) + (1 if before and opens_block else 0)
        # Indentation languages: the levels open in the code above, to tell a dedent Python would refuse.
        code_above = [line for line in prefix[-4000:].split("\n")[:-1] if _is_code_line(line)]
        self.levels_above = {_indent(line) for line in code_above}
        self.line_above = code_above[-1] if code_above else ""
        self._checked = 0

    @classmethod
    def at(cls, prefix: str, suffix: str, language: str | None, limits: Limits | None = None) -> Scope:
        return cls(prefix, suffix, language, limits or Limits())

    # -- the rules --------------------------------------------------------------------------------

    def _cut(self, text: str, final: bool = False) -> _Cut:
        """Where the suggestion's scope ends in `text`, or how far it may go if the end is not in sight.
        `final`: the text is all there will be (its last line is complete)."""
        scan = _Scanner(self.language, self.quote_at_cursor)
        limit = min(len(text), self.limits.max_chars)
        # A block opened on the cursor line starts the suggestion with a newline: that line does not count.
        max_newlines = self.limits.max_lines - (0 if text[:1] == "\n" else 1)
        newlines, line_start, depth_at_line_start = 0, 0, 0
        statement_done = False  # bracket languages: the last line ended a statement; the next line decides
        previous = text[: text.find("\n")] if "\n" in text else ""  # the last line with code
        for i in range(limit):
            if i == line_start and newlines:
                end = self._before_line(text, i, scan, depth_at_line_start, statement_done)
                if end is not None:
                    return _Cut(end, True)
                line_end = _line_end(text, i)
                line = text[i:line_end]
                if line.strip() and line == previous and (line_end < len(text) or final):
                    return _Cut(i - 1, True)  # the model repeats itself, line after line
                if line.strip():
                    statement_done = False
                    previous = line
            ch = text[i]
            if scan.feed(text, i) == "underflow" and (
                ch in self.line_after or (self.multiline and self.suffix_has_code)
            ):
                return _Cut(i, True)  # the document already has this closer after the cursor
            if ch != "\n":
                continue
            if not self.multiline:
                return _Cut(i, True)
            if newlines >= max_newlines:
                return _Cut(i, False)
            line = text[line_start:i]
            if not self.indented and not scan.stack and not scan.block_comment and line.strip():
                statement_done = self._ends_statement(line)
            newlines += 1
            line_start = i + 1
            depth_at_line_start = len(scan.stack)
        return _Cut(limit, False)

    def _before_line(self, text: str, i: int, scan: _Scanner, depth: int, statement_done: bool) -> int | None:
        """At the start of a new line of the suggestion: where to cut if the scope ends before this line."""
        end = _line_end(text, i)
        line = text[i:end]
        stripped = line.strip()
        if not stripped or scan.quote or scan.block_comment:
            return None
        if self.indented:
            if depth:
                return None  # a continuation line inside brackets
            if _indent(line) < self.block_indent:
                return i - 1  # dedents below the cursor's block
            if _is_code_line(line) and not self._indent_fits(text[:i], _indent(line)):
                return i - 1  # an indentation Python refuses: the model has lost the structure
            if (
                _DEFINITION.match(stripped)
                and _indent(line) <= self.block_indent
                and self._wrote_code(text[:i])
            ):
                return i - 1  # a new definition at the block's level, after code of this one
            return None
        if stripped[0] in _CLOSE and not depth:
            # Closes the block the cursor is in: kept only where the document has nothing after the cursor.
            return i - 1 if self.suffix_has_code else i + line.index(stripped[0]) + 1
        if statement_done and not _CONTINUES_BEFORE.match(stripped):
            if end == len(text) and any(w.startswith(stripped) for w in _CONTINUATION_WORDS):
                return None  # "el" may become "else": wait for more of the line
            return i - 1
        return None

    def _indent_fits(self, before: str, indent: int) -> bool:
        """Whether a code line at `indent` may follow the suggestion so far: deeper only after a line that opens
        a block, shallower only back to a level that is open. Lines inside brackets continue the line above."""
        text = self.line_before + before
        scan, starts, depth = _Scanner(self.language, self.quote_at_line), [0], []
        for j in range(len(text)):
            scan.feed(text, j)
            if text[j] == "\n":
                starts.append(j + 1)
            depth.append(len(scan.stack))
        lines = [text[a : (b - 1 if b else len(text))] for a, b in zip(starts, [*starts[1:], 0], strict=True)]
        logical = [
            line
            for a, line in zip(starts, lines, strict=True)
            if _is_code_line(line) and (a == 0 or not depth[a - 1])
        ]
        last_start = max(
            (a for a in starts if a < len(text) and _is_code_line(text[a : _line_end(text, a)])), default=-1
        )
        last = text[last_start : _line_end(text, last_start)] if last_start >= 0 else self.line_above
        head = logical[-1] if logical else self.line_above
        if indent > _indent(head):
            return _strip_hash_comment(last).rstrip().endswith((":", "(", "[", "{", ",", "\\"))
        return indent == _indent(head) or indent in self.levels_above | {_indent(line) for line in logical}

    def _wrote_code(self, before: str) -> bool:
        """Whether the suggestion (with the cursor line) has anything but decorators before this point."""
        lines = [self.line_before + before.split("\n", 1)[0], *before.split("\n")[1:]]
        return any(line.strip() and not line.strip().startswith(("@", "#")) for line in lines)

    def _ends_statement(self, line: str) -> bool:
        code = _strip_line_comment(line).rstrip()
        if code.endswith((";", "}")):
            return True
        if self.language in NEWLINE_ENDS:
            return bool(code) and not code.endswith(_CONTINUES_AFTER)
        return False

    # -- the two entry points ---------------------------------------------------------------------

    def ended(self, text: str) -> bool:
        """For the decode loop: True once `text` runs past the scope's end or a limit (more tokens are wasted)."""
        if len(text) >= self.limits.max_chars:
            return True
        new = text[self._checked :]
        self._checked = len(text)
        if not any(c in new for c in "\n)]}") and not (self.multiline and "\n" in text):
            return False
        cut = self._cut(text)
        return cut.end < len(text)

    def finish(self, text: str, finish_reason: str = "stop") -> str:
        """The part of `text` to show: cut at the scope's end, never inside an identifier, trimmed; "" for none."""
        cut = self._cut(text, final=True)
        out = text[: cut.end]
        at_line_end = cut.end < len(text) and text[cut.end] == "\n"
        if not cut.ended and not at_line_end and (finish_reason == "length" or cut.end < len(text)):
            out = self._back_off(out)
        out = "\n".join(line.rstrip() for line in out.split("\n")).rstrip()
        tail = self.line_after.strip()
        if tail and out.endswith(tail):
            out = out[: len(out) - len(tail)].rstrip()  # the auto-closed tail is in the document already
        if not out.strip() or self._repeats_suffix(out):
            return ""
        return out

    def _back_off(self, out: str) -> str:
        """A suggestion cut by a limit: drop the unfinished last line of a block, or the unfinished last word."""
        if self.multiline and "\n" in out.strip("\n"):
            return out[: out.rfind("\n")]
        j = len(out)
        while j > 0 and _ident(out[j - 1]):
            j -= 1
        return out[:j]

    def _repeats_suffix(self, out: str) -> bool:
        mine = [line.strip() for line in out.split("\n") if line.strip()]
        theirs = [line.strip() for line in self.suffix.split("\n") if line.strip()][: len(mine)]
        if mine == theirs:
            return True
        tail = self.line_after.strip()
        return len(mine) == 1 and bool(tail) and tail.startswith(mine[0])


def _line_end(text: str, i: int) -> int:
    j = text.find("\n", i)
    return len(text) if j < 0 else j


def _is_code_line(line: str) -> bool:
    """A line Python reads for indentation (not blank, not only a comment)."""
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _strip_hash_comment(line: str) -> str:
    j = line.find("#")
    return line if j < 0 else line[:j]


def _strip_line_comment(line: str) -> str:
    j = line.find("//")
    return line if j < 0 else line[:j]


def completion_scope(cfg: CompletionsConfig, prefix: str, suffix: str, language: str | None) -> Scope:
    """The scope at a cursor with the configured limits for its language."""
    max_lines, max_chars = cfg.limits_for(language)
    return Scope(prefix, suffix, language, Limits(max_lines, max_chars, cfg.multiline))


def first_statement(text: str, language: str | None) -> tuple[str, bool]:
    """The first statement the user wrote in `text`, and whether they wrote on past it: any line breaks it
    starts with (a block opened at the cursor), then lines up to the first line end outside brackets, template
    strings, block comments and triple-quoted strings after something was written. The statement ends there when
    more follows; otherwise `text` is all there is and it is returned whole."""
    scan = _Scanner((language or "").lower())
    wrote = False
    for i in range(len(text) - len(text.lstrip("\n")), len(text)):
        ch = text[i]
        if ch == "\n" and wrote:
            open_ = scan.stack or scan.quote == "`" or scan.block_comment
            if not open_ and not any(text.count(q, 0, i) % 2 for q in ('"""', "'''")):
                if not text[i:].strip():
                    break
                return text[:i].rstrip(), True
        scan.feed(text, i)
        wrote = wrote or not ch.isspace()
    return text, False
