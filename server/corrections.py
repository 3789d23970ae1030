"""What the user wrote instead of a suggestion: the best label a completion gets (at this cursor, this is what
they wanted).

Every answered completion is offered here with the document around its cursor. When the editor reports it
dismissed, partly accepted or typed through, the daemon follows that document (didChange) for a bounded time
and size. While the text before and after the cursor is as it was, what lies between them is what the user
wrote there. It is kept when they move elsewhere (an edit outside that spot), when it has as many lines as the
suggestion had, when time runs out, or at the size bound, where it is cut and says so.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from .config import CompletionsConfig

# Events after which the user goes on writing at the suggestion's place.
FOLLOWED_EVENTS = ("dismissed", "partially_accepted", "typed_through")


@dataclass
class Correction:
    interaction_id: str
    event: str  # the event it followed
    typed: str  # what the user wrote at the cursor (cut at the size bound when `truncated`)
    truncated: bool
    ended: str  # "moved" | "lines" | "timeout" | "size" | "closed"
    prefix: str = field(repr=False, default="")  # the document around the cursor, to recognise secrets by
    suffix: str = field(repr=False, default="")


@dataclass
class _Offer:
    interaction_id: str
    conn: Hashable
    uri: str
    prefix: str  # the text just before the cursor (all of it, or a window that ends there)
    suffix: str  # the text just after it (all of it, or a window that starts there)
    cursor: int  # the cursor's offset in the document
    after: int  # how much of the document follows the cursor
    lines: int  # how many lines the suggestion had: a correction is not followed past as many
    next_line: bool  # the suggestion began with a line break (a block opened at the cursor)
    source: Callable[[], str | None]  # the document's text now (None once closed)


@dataclass
class _Following:
    offer: _Offer
    event: str
    deadline: float
    typed: str = ""


class Corrections:
    """Offers of recent completions and the corrections being followed. Called on the event loop only."""

    def __init__(
        self,
        cfg: CompletionsConfig,
        write: Callable[[Correction], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        schedule: Callable[[float, Callable[[], None]], object] | None = None,
        keep: int = 32,
    ) -> None:
        self.cfg = cfg
        self._write = write
        self._clock = clock
        self._schedule = schedule
        self._keep = keep
        self._offers: OrderedDict[str, _Offer] = OrderedDict()
        self._following: dict[str, _Following] = {}

    def offered(
        self,
        interaction_id: str,
        *,
        conn: Hashable,
        uri: str,
        prefix: str,
        suffix: str,
        suggestion: str,
        source: Callable[[], str | None],
        cursor: int | None = None,
        after: int | None = None,
    ) -> None:
        """A completion was answered at the cursor between `prefix` and `suffix` of document `uri`."""
        if not self.cfg.corrections:
            return
        lines = suggestion.strip("\n").count("\n") + 1
        next_line = suggestion.startswith("\n")
        cursor = len(prefix) if cursor is None else cursor
        after = len(suffix) if after is None else after
        self._offers[interaction_id] = _Offer(
            interaction_id, conn, uri, prefix, suffix, cursor, after, lines, next_line, source
        )
        while len(self._offers) > self._keep:  # only recent suggestions get feedback
            self._offers.popitem(last=False)

    def event(self, interaction_id: str, event: str) -> None:
        """The editor's feedback on a suggestion: after the followed events, start following its document."""
        offer = self._offers.pop(interaction_id, None)
        if offer is None or event not in FOLLOWED_EVENTS or not self.cfg.corrections:
            return
        timeout = self.cfg.correction_timeout_s
        self._following[interaction_id] = _Following(offer, event, self._clock() + timeout)
        if self._schedule is not None:
            self._schedule(timeout, lambda: self._expire(interaction_id))
        self._look(self._following[interaction_id], offer.source())

    def changed(self, conn: Hashable, uri: str, source: str) -> None:
        """Document `uri` of connection `conn` changed; `source` is its whole text now."""
        for f in [f for f in self._following.values() if f.offer.conn == conn and f.offer.uri == uri]:
            self._look(f, source)
        self.expire()

    def closed(self, conn: Hashable, uri: str) -> None:
        for f in [f for f in self._following.values() if f.offer.conn == conn and f.offer.uri == uri]:
            self._end(f, "closed")
        for iid in [i for i, o in self._offers.items() if o.conn == conn and o.uri == uri]:
            del self._offers[iid]

    def close(self) -> None:
        """The daemon stops: keep what was written so far of every correction being followed."""
        for f in list(self._following.values()):
            self._end(f, "closed")

    def expire(self) -> None:
        """End the corrections whose time is up."""
        now = self._clock()
        for f in [f for f in self._following.values() if f.deadline <= now]:
            self._end(f, "timeout")

    @property
    def following(self) -> list[str]:
        return list(self._following)

    # -------------------------------------------------------------------------------------------

    def _expire(self, interaction_id: str) -> None:
        f = self._following.get(interaction_id)
        if f is not None:
            self._end(f, "timeout")

    def _look(self, f: _Following, source: str | None) -> None:
        o = f.offer
        if source is None:
            self._end(f, "closed")
            return
        end = len(source) - o.after  # where the text that followed the cursor now starts
        if (
            end < o.cursor
            or not source.startswith(o.prefix, o.cursor - len(o.prefix))
            or not source.startswith(o.suffix, end)
        ):
            self._end(f, "moved")  # an edit outside the suggestion's place: the user went elsewhere
            return
        typed = source[o.cursor : end]
        # A suggestion that opened a block starts on the next line; so may what was written instead of it.
        start = len(typed) - len(typed.lstrip("\n")) if o.next_line else 0
        ends = [i for i in range(start, len(typed)) if typed[i] == "\n"]
        if len(ends) >= o.lines:
            f.typed = typed[: ends[o.lines - 1]]
            self._end(f, "lines")  # as many lines as the suggestion had, and the user went on to another
            return
        f.typed = typed
        if len(typed) > self.cfg.correction_max_chars:
            self._end(f, "size")

    def _end(self, f: _Following, why: str) -> None:
        self._following.pop(f.offer.interaction_id, None)
        limit = self.cfg.correction_max_chars
        typed, truncated = f.typed, len(f.typed) > limit
        if truncated:
            typed = typed[:limit]
        if not typed.strip():
            return  # nothing written there: nothing to learn
        o = f.offer
        self._write(Correction(o.interaction_id, f.event, typed, truncated, why, o.prefix, o.suffix))
