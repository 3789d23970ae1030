"""The reinf/* protocol, declared once: each method's params, with their limits, and its result, as attrs classes.

`@method(name, Params, Result)` on a Backend coroutine registers it: the wrapper reads the raw params into a
`Params` instance (every field checked, unknown fields refused, each refusal a -32602 naming the field) and
calls the method with it. `features.py` serves every registered method; `tests/test_protocol.py` checks these
classes against `vscode-extension/src/protocol.ts` and against what the backend really answers.

A field's type says what JSON it takes (`str`, `int`, `float`, `bool`, a `Literal` of strings, or one of the
structured readers below); its metadata holds the limits. `X | None` fields are optional. A bound may name a
`[server]` setting (`"history_limit_max"`), read when the request is.
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Literal, TypeVar

import attrs

from .validate import InvalidParams, Params

T = TypeVar("T")
Bound = int | float | str  # a number, or the name of a [server] setting


def _field(default: Any = None, **limits: Any) -> Any:
    return attrs.field(default=default, metadata=limits)


def required(**limits: Any) -> Any:
    """A field the request must carry."""
    return attrs.field(metadata={"required": True, **limits})


def optional(default: Any = None, **limits: Any) -> Any:
    """A field the request may leave out (or send as null): `default` then."""
    return _field(default, **limits)


# -- the structured parts of params ------------------------------------------------------------------------


@attrs.frozen
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


@attrs.frozen
class ChatContext:
    """What the editor or notebook adds to a chat: where the user is, what they selected, the file or cells."""

    uri: str | None = None
    language: str | None = None
    selection: str | None = None
    file: str | None = None
    cells: list[str] | None = None


# -- params ------------------------------------------------------------------------------------------------


@attrs.frozen
class NoParams:
    """A method that takes nothing: any field is refused."""


@attrs.frozen
class ChatParams:
    messages: list[ChatMessage] = required()
    kind: Literal["chat", "ask"] = optional("chat")
    context: ChatContext | None = optional()
    max_tokens: int | None = optional(lo=1, hi=4096)  # None: model.chat_max_new_tokens
    temperature: float | None = optional(lo=0.0, hi=2.0)  # None: model.chat_temperature


@attrs.frozen
class RateParams:
    interaction_id: str = required()
    thumbs: Literal["up", "down"] | None = optional()
    stars: int | None = optional(lo=1, hi=5)
    comment: str | None = optional()


FeedbackEvent = Literal["accepted", "partially_accepted", "typed_through", "dismissed"]


@attrs.frozen
class FeedbackParams:
    interaction_id: str = required()
    event: FeedbackEvent = required()
    accepted_chars: int | None = optional(lo=0, hi=10_000_000)
    accepted_words: int | None = optional(lo=0, hi=10_000_000)
    typed_chars: int | None = optional(lo=0, hi=10_000_000)
    shown_ms: int | None = optional(lo=0, hi=86_400_000)  # on screen with the editor focused


@attrs.frozen
class HistoryParams:
    limit: int = optional(20, lo=1, hi="history_limit_max")
    offset: int = optional(0, lo=0, hi=2**31)
    unrated_only: bool = optional(False)
    kind: Literal["completion", "chat", "ask"] | None = optional()


@attrs.frozen
class RunsParams:
    limit: int = optional(20, lo=1, hi=1000)


@attrs.frozen
class RetrainParams:
    fresh_judge: bool = optional(False)  # train a new judge, whatever the saved one says


@attrs.frozen
class RollbackParams:
    version: int | None = optional(lo=0, hi=2**31)  # None: the previous good adapter


@attrs.frozen
class ExportParams:
    path: str = required()  # absolute; the file is written by the daemon
    format: Literal["parquet", "jsonl"] = optional("parquet")


@attrs.frozen
class ForgetParams:
    before: datetime = required()  # ISO date or date-time; without a zone, the daemon's local time
    keep_adapters: bool = optional(False)


# -- results -----------------------------------------------------------------------------------------------


@attrs.frozen
class Timings:
    queue_ms: float | None = None
    prompt_ms: float | None = None
    generate_ms: float | None = None
    total_ms: float | None = None


@attrs.frozen
class ChatResult:
    interaction_id: str
    text: str
    finish_reason: str
    model: str
    adapter_version: int
    timings: Timings


@attrs.frozen
class ChatDelta:
    """The value of each `$/progress` notification of a chat with a partialResultToken."""

    interaction_id: str
    delta: str


@attrs.frozen
class RateResult:
    rating_id: int
    ratings_total: int
    until_next_training: int


@attrs.frozen
class FeedbackResult:
    rating_id: int


@attrs.frozen
class RunTiming:
    trigger: str | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None


@attrs.frozen
class TrainingState(RunTiming):
    state: Literal["idle", "running"] = "idle"
    run_id: int | None = None
    phase: str | None = None
    progress: float | None = None
    message: str | None = None


@attrs.frozen
class RunInfo:
    run_id: int
    state: str
    trigger: str
    started: str | None
    finished: str | None
    n_ratings: int | None
    metrics: dict[str, Any]
    error: str | None
    rating_watermark: int | None
    event_watermark: (
        int | None
    )  # the newest rating or event id as it started: later events are new to its adapter
    pid: int | None
    adapter_version: int | None


@attrs.frozen
class AcceptanceBucket:
    shown: int
    accepted: int
    partially_accepted: int
    rate: float | None


@attrs.frozen
class ActiveAcceptance(AcceptanceBucket):
    adapter_version: int = 0


@attrs.frozen
class Acceptance:
    last_7_days: AcceptanceBucket
    active: ActiveAcceptance
    base: AcceptanceBucket


@attrs.frozen
class BackendStatus:
    """Who generates: the daemon's own engine ("local"), or a vLLM server: its URL, whether it serves, the name
    requests go to in it (the base model's, or this home's adapter's), and why an adapter would not load."""

    name: Literal["local", "vllm"]
    url: str | None = None
    health: str | None = None
    started_by_daemon: bool | None = None
    serving: str | None = None
    adapter_prefix: str | None = None
    pid: int | None = None
    log: str | None = None
    restarts: int | None = None
    problem: str | None = None


@attrs.frozen
class StatusResult:
    model: str
    device: str
    completions: dict[str, Any] | None
    adapter_version: int
    ratings_total: int
    interactions_total: int
    until_next_training: int
    training: TrainingState
    last_run: RunInfo | None
    acceptance: Acceptance
    backend: BackendStatus


@attrs.frozen
class Rating:
    thumbs: Literal["up", "down"] | None
    stars: int | None
    comment: str | None


@attrs.frozen
class HistoryItem:
    interaction_id: str
    kind: str
    ts: str
    prompt: str  # as the user saw it
    model_prompt: str  # as the model was given it
    response: str
    model: str
    adapter_version: int
    rating: Rating | None
    uri: str | None
    line: int | None


@attrs.frozen
class HistoryResult:
    items: list[HistoryItem]
    total: int


@attrs.frozen
class RunsResult:
    runs: list[RunInfo]


@attrs.frozen
class AdapterInfo:
    version: int
    run_id: int | None
    created: str | None
    path: str
    status: Literal["active", "retired", "rejected", "forgotten"]
    eval: dict[str, Any]


@attrs.frozen
class AdaptersResult:
    adapters: list[AdapterInfo]
    active: int


@attrs.frozen
class TimelinePoint:
    """Explicit ratings given on one day."""

    day: str
    count: int
    mean_stars: float | None
    thumbs_up: int
    thumbs_down: int


@attrs.frozen
class TimelineResult:
    points: list[TimelinePoint]


@attrs.frozen
class RetrainResult:
    run_id: int


@attrs.frozen
class CancelResult:
    cancelled: bool


@attrs.frozen
class RollbackResult:
    adapter_version: int


@attrs.frozen
class ExportResult:
    path: str
    rows: int


@attrs.frozen
class ForgetResult:
    deleted: int
    training_cancelled: bool
    adapters_forgotten: list[int]
    reward_model_deleted: bool
    logs_discarded: bool
    adapter_version: int
    ratings_kept: int


# -- notifications from the daemon -------------------------------------------------------------------------


@attrs.frozen
class TrainingProgress(RunTiming):
    """`reinf/trainingProgress`: a run's state as it goes, and once more when it ends."""

    run_id: int = 0
    state: str = "running"
    phase: str | None = None
    progress: float | None = None
    message: str | None = None


@attrs.frozen
class AdapterChanged:
    """`reinf/adapterChanged`: the adapter now serving, and why."""

    adapter_version: int
    reason: str | None = None


@attrs.frozen
class AcceptedArg:
    """The argument of the `reinf.accepted` command on each `textDocument/completion` item."""

    interaction_id: str
    text: str


# -- registration ------------------------------------------------------------------------------------------


@attrs.frozen
class Method:
    name: str
    params: type
    result: type
    attr: str  # the Backend attribute that serves it


METHODS: dict[str, Method] = {}


def method(
    name: str, params: type, result: type
) -> Callable[[Callable[[Any, Any], Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """Register a Backend coroutine as the handler of `name`: it is called with the request's params read
    into `params` (refused with -32602 if they do not fit), and answers a `result`."""

    def wrap(fn: Callable[[Any, Any], Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        if name in METHODS and METHODS[name].attr != fn.__name__:
            raise ValueError(f"{name} is declared twice: by {METHODS[name].attr} and {fn.__name__}")
        METHODS[name] = Method(name, params, result, fn.__name__)

        @functools.wraps(fn)
        async def handler(self: Any, raw: Any = None, **kw: Any) -> T:
            return await fn(self, decode(params, raw, name, self.cfg.server), **kw)

        return handler

    return wrap


# A notification (the editors' way) as well as a request: Backend.queue_feedback decodes it itself.
METHODS["reinf/feedback"] = Method("reinf/feedback", FeedbackParams, FeedbackResult, "feedback")


def decode(cls: type[T], raw: Any, name: str, server: Any) -> T:
    """Read `raw` (a request's params) into `cls`; InvalidParams names the field at fault."""
    fields = attrs.fields(cls)
    p = Params(raw, name, server.max_field_bytes, {f.name for f in fields})
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields:
        value = _read(p, f.name, p.p.get(f.name), hints[f.name], f.metadata, server)
        if value is None:
            if f.metadata.get("required"):
                raise InvalidParams(f"{name}: {f.name} is required")
            continue  # the default
        values[f.name] = value
    return cls(**values)


def _read(p: Params, name: str, value: Any, hint: Any, limits: Any, server: Any) -> Any:
    kind, _ = _unwrap(hint)
    if value is None:
        return None
    if kind is str:
        return p.text(name, value)
    if typing.get_origin(kind) is Literal:
        text = p.text(name, value)
        choices = typing.get_args(kind)
        if text not in choices:
            raise InvalidParams(f"{p.method}: {name} must be one of {', '.join(choices)}, got {text!r}")
        return text
    lo, hi = (_bound(limits.get(k), server) for k in ("lo", "hi"))
    if kind is bool:
        return p.bool(name)
    if kind is int:
        return p.int(name, lo, hi)
    if kind is float:
        return p.float(name, lo, hi)
    if kind is datetime:
        return _date(p, name, value)
    if kind == list[ChatMessage]:
        return [ChatMessage(**m) for m in p.messages(name)]
    if kind is ChatContext:
        return ChatContext(**p.context(name))
    raise TypeError(f"{p.method}: no reader for {name}: {hint}")  # a declaration error, found by the tests


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
        return typing.Union[tuple(args)], True  # noqa: UP007 - built from a tuple at run time
    return hint, False


def _bound(value: Bound | None, server: Any) -> Any:
    return getattr(server, value) if isinstance(value, str) else value


def _date(p: Params, name: str, value: Any) -> datetime:
    text = p.text(name, value, allow_empty=False)
    assert text is not None
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidParams(f"{p.method}: {name} must be an ISO date, got {text!r}") from exc
    if when.tzinfo is None:
        try:
            when = when.astimezone()
        except (ValueError, OverflowError) as exc:  # 0001-01-01 in a zone east of UTC is year 0
            raise InvalidParams(f"{p.method}: {name} is out of range: {text!r}") from exc
    return when
