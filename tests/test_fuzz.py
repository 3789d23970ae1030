"""Property tests of the parameter checks of every `reinf/*` handler.

Each handler is called through the function the daemon registers for it, over a real DuckDB store, with
params that hypothesis derives from a valid request by one mutation (a field replaced by any JSON value,
dropped, or an unknown one added). An oracle written from DESIGN.md says whether the result is valid.
The property: a valid request succeeds and writes once; any other gets -32602 naming the field, and writes
nothing. The engine and the scheduler are stand-ins: only the checks in front of them are under test here.
"""

from __future__ import annotations

import asyncio
import errno
import math
import os
import sys
import types
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pygls.exceptions import JsonRpcException

from reinf.config import Config

LONG = bool(os.environ.get("REINF_LONG"))
EXAMPLES = 1000 if LONG else 50
LIMIT = 64  # server.max_field_bytes for these tests, small so that hypothesis reaches it
TOKENS = ("partialResultToken", "workDoneToken")

SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


# -- stand-ins for the engine and the scheduler -------------------------------------------------------


class FakeEngine:
    model_name = "fake-model"
    device = "cpu"
    adapter_version = 0

    def set_adapter(self, version: int, path: Path | None) -> None:
        self.adapter_version = version

    def chat(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int,
        temperature: float,
        cancel: Any,
        on_delta: Callable[[str], None] | None = None,
    ) -> Any:
        text = "ok"
        if on_delta is not None:
            on_delta(text)
        prompt = "\n".join(m["content"] for m in messages)
        return types.SimpleNamespace(text=text, prompt=prompt, finish_reason="stop", generate_ms=0.1)

    def complete(self, prefix: str, suffix: str, **kw: Any) -> Any:
        return types.SimpleNamespace(text="pass", prompt=prefix, finish_reason="stop", generate_ms=0.1)


class FakeScheduler:
    def __init__(self, cfg: Config, store: Any, adapters: Any, broadcast: Any) -> None:
        self.runs = 0
        self.completions = 0

    def start(self) -> None:
        pass

    def note_rating(self) -> None:
        pass

    def note_completion(self) -> None:
        self.completions += 1

    def until_next_training(self) -> int:
        return 1000

    def status(self) -> dict[str, Any]:
        return {"state": "idle"}

    def last_run(self) -> None:
        return None

    def retrain(self, trigger: str, fresh_judge: bool = False) -> int:
        self.runs += 1
        return self.runs

    def cancel(self) -> bool:
        return False

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """The registered handlers of one connection, over a real store, and the backend behind them."""
    home = tmp_path_factory.mktemp("fuzz") / "home"
    cfg = Config(home=home)
    cfg.server.max_field_bytes = LIMIT
    import reinf.scheduler

    fake = types.ModuleType("reinf.scheduler")
    fake.__dict__.update({k: v for k, v in vars(reinf.scheduler).items() if not k.startswith("__")})
    fake.Scheduler = FakeScheduler
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "reinf.scheduler", fake)
        from reinf.backend import Backend
        from reinf.features import build_server

        backend = Backend(cfg, engine=FakeEngine())
        ls = build_server(backend)
    # Parameters are what is fuzzed here; rollback itself is tested in test_scheduler.py.
    backend.adapters.rollback = lambda version=None: version or 0
    iid = backend.store.add_interaction(
        kind="chat",
        client="fuzz",
        model="m",
        adapter_version=0,
        prompt="p",
        context={},
        response="r",
        finish_reason="stop",
        timings={},
    )
    ns = types.SimpleNamespace(backend=backend, features=ls.protocol.fm.features, iid=iid, home=home)
    yield ns
    backend.close()


def counts(backend: Any) -> tuple[int, ...]:
    one = backend.store._read
    return (
        one("SELECT count(*) FROM interactions")[0][0],
        one("SELECT count(*) FROM ratings")[0][0],
        one("SELECT count(*) FROM training_runs")[0][0],
        one("SELECT count(*) FROM adapters")[0][0],
    )


def call(server: Any, method: str, params: Any) -> Any:
    fn = server.features[method]
    if asyncio.iscoroutinefunction(fn):
        return asyncio.run(fn(params))
    return fn(params)


# -- strategies ---------------------------------------------------------------------------------------

NASTY = ["\x00", "\ud800", "\udc80", "'", '"', "\u202e", "\ufeff", "é", "\n", "🙂"]
text = st.one_of(
    st.text(max_size=12),
    st.builds(lambda a, b, c: a + b + c, st.text(max_size=6), st.sampled_from(NASTY), st.text(max_size=6)),
    st.builds(
        lambda ch, n: ch * n, st.sampled_from(["x", "é", "🙂"]), st.integers(LIMIT // 4 - 2, LIMIT + 2)
    ),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.integers(-3, 10),
    st.floats(allow_nan=True, allow_infinity=True),
    text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)


def mutations(valid: st.SearchStrategy[dict[str, Any]], fields: list[str]) -> st.SearchStrategy[tuple]:
    """(params, the field that was changed or None): a valid request, or one changed in one place."""

    @st.composite
    def build(draw: Any) -> tuple[Any, str | None]:
        params = dict(draw(valid))
        op = draw(st.sampled_from(["keep", "replace", "replace", "drop", "add", "not-an-object"]))
        if op == "replace" and fields:
            field = draw(st.sampled_from(fields))
            params[field] = draw(json_values | st.sampled_from([None, True, 0, -1, 1, 5, 6, 2**31, "", []]))
            return params, field
        if op == "drop" and params:
            field = draw(st.sampled_from(sorted(params)))
            del params[field]
            return params, field
        if op == "add":
            field = draw(text.filter(lambda k: k not in fields))
            params[field] = draw(json_values)
            return params, field
        if op == "not-an-object":
            value = draw(st.lists(scalars, max_size=2) | scalars)
            return value, None if value is None else "params"  # null params stand for {}
        return params, None

    return build()


# -- the oracle, written from DESIGN.md -------------------------------------------------------------------


def is_text(v: Any) -> bool:
    if not isinstance(v, str):
        return False
    try:
        return len(v.encode("utf-8")) <= LIMIT
    except UnicodeEncodeError:  # a lone surrogate is not text that can be stored
        return False


def opt_text(v: Any) -> bool:
    return v is None or is_text(v)


def opt_choice(v: Any, choices: tuple[str, ...]) -> bool:
    return v is None or (is_text(v) and v in choices)


def opt_int(v: Any, lo: int, hi: int) -> bool:
    return v is None or (type(v) is int and lo <= v <= hi)


def opt_number(v: Any, lo: float, hi: float) -> bool:
    return v is None or (type(v) in (int, float) and not math.isnan(v) and lo <= v <= hi)


def object_with(params: Any, allowed: set[str]) -> dict[str, Any] | None:
    """The params as a dict if they are an object with only allowed fields (None stands for {})."""
    if params is None:
        return {}
    if not isinstance(params, dict) or set(params) - allowed - set(TOKENS):
        return None
    return params


def ok_messages(v: Any) -> bool:
    if not isinstance(v, list) or not v:
        return False
    for m in v:
        if not isinstance(m, dict) or set(m) - {"role", "content"}:
            return False
        if not opt_choice(m.get("role"), ("system", "user", "assistant")) or m.get("role") is None:
            return False
        if not is_text(m.get("content")):
            return False
    return v[-1]["role"] == "user"


def ok_context(v: Any) -> bool:
    if v is None:
        return True
    if not isinstance(v, dict) or set(v) - {"uri", "language", "selection", "cells", "file"}:
        return False
    if not all(opt_text(v.get(k)) for k in ("uri", "language", "selection", "file")):
        return False
    cells = v.get("cells")
    if cells is None:
        return True
    return (
        isinstance(cells, list)
        and len(cells) <= 200
        and all(is_text(c) for c in cells)
        and sum(len(c.encode()) for c in cells) <= LIMIT
    )


def ok_chat(p: Any, _: Any) -> bool:
    p = object_with(p, {"messages", "kind", "context", "max_tokens", "temperature"})
    return (
        p is not None
        and ok_messages(p.get("messages"))
        and opt_choice(p.get("kind"), ("chat", "ask"))
        and ok_context(p.get("context"))
        and opt_int(p.get("max_tokens"), 1, 4096)
        and opt_number(p.get("temperature"), 0.0, 2.0)
    )


def ok_rate(p: Any, server: Any) -> bool:
    p = object_with(p, {"interaction_id", "thumbs", "stars", "comment"})
    return (
        p is not None
        and p.get("interaction_id") == server.iid
        and opt_choice(p.get("thumbs"), ("up", "down"))
        and opt_int(p.get("stars"), 1, 5)
        and opt_text(p.get("comment"))
        and (p.get("thumbs") is not None or p.get("stars") is not None or bool(p.get("comment")))
    )


FEEDBACK_FIELDS = ["interaction_id", "event", "accepted_chars", "accepted_words", "typed_chars", "shown_ms"]


def ok_feedback(p: Any, completion_id: str) -> bool:
    p = object_with(p, set(FEEDBACK_FIELDS))
    return (
        p is not None
        and p.get("interaction_id") == completion_id
        and p.get("event") in ("accepted", "dismissed", "partially_accepted", "typed_through")
        and all(opt_int(p.get(k), 0, 10_000_000) for k in ("accepted_chars", "accepted_words", "typed_chars"))
        and opt_int(p.get("shown_ms"), 0, 86_400_000)
    )


def ok_history(p: Any, _: Any) -> bool:
    p = object_with(p, {"limit", "offset", "unrated_only", "kind"})
    return (
        p is not None
        and opt_int(p.get("limit"), 1, Config().server.history_limit_max)
        and opt_int(p.get("offset"), 0, 2**31)
        and (p.get("unrated_only") is None or type(p.get("unrated_only")) is bool)
        and opt_choice(p.get("kind"), ("completion", "chat", "ask"))
    )


def ok_runs(p: Any, _: Any) -> bool:
    p = object_with(p, {"limit"})
    return p is not None and opt_int(p.get("limit"), 1, 1000)


def ok_empty(p: Any, _: Any) -> bool:
    return object_with(p, set()) is not None


def ok_rollback(p: Any, _: Any) -> bool:
    p = object_with(p, {"version"})
    return p is not None and opt_int(p.get("version"), 0, 2**31)


def ok_export(p: Any, _: Any) -> bool:
    p = object_with(p, {"format", "path"})
    if p is None or not opt_choice(p.get("format"), ("parquet", "jsonl")) or not is_text(p.get("path")):
        return False
    path = p["path"]
    if "\x00" in path or "'" in path or not os.path.isabs(path):
        return False
    return os.path.isdir(os.path.dirname(path)) and not os.path.isdir(path)


# -- valid requests -----------------------------------------------------------------------------------

short_text = st.text(alphabet="abc xyz_()=:\n", max_size=20)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"]), "content": short_text}
)
valid_chat = st.fixed_dictionaries(
    {
        "messages": st.builds(
            lambda ms, last: [*ms, {"role": "user", "content": last}],
            st.lists(message, max_size=2),
            short_text,
        )
    },
    optional={
        "kind": st.sampled_from(["chat", "ask"]),
        "context": st.fixed_dictionaries(
            {},
            optional={
                "uri": short_text,
                "language": short_text,
                "selection": short_text,
                "cells": st.lists(st.text("ab", max_size=8), max_size=3),
            },
        ),
        "max_tokens": st.integers(1, 4096),
        "temperature": st.floats(0.0, 2.0),
        "partialResultToken": short_text,
    },
)


def valid_rate(server: Any) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"interaction_id": st.just(server.iid)},
        optional={
            "thumbs": st.sampled_from(["up", "down"]),
            "stars": st.integers(1, 5),
            "comment": short_text,
        },
    ).filter(lambda p: len(p) > 1)


def valid_feedback(server: Any) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "interaction_id": st.just(server.iid),
            "event": st.sampled_from(["accepted", "dismissed", "partially_accepted", "typed_through"]),
        },
        optional={
            "accepted_chars": st.integers(0, 10_000_000),
            "accepted_words": st.integers(0, 10_000_000),
            "typed_chars": st.integers(0, 10_000_000),
            "shown_ms": st.integers(0, 86_400_000),
        },
    )


valid_history = st.fixed_dictionaries(
    {},
    optional={
        "limit": st.integers(1, 500),
        "offset": st.integers(0, 2**31),
        "unrated_only": st.booleans(),
        "kind": st.sampled_from(["completion", "chat", "ask"]),
    },
)
valid_runs = st.fixed_dictionaries({}, optional={"limit": st.integers(1, 1000)})
valid_rollback = st.fixed_dictionaries({}, optional={"version": st.integers(0, 2**31)})


def valid_export(server: Any) -> st.SearchStrategy[dict[str, Any]]:
    folder = server.home.parent / "exports"
    folder.mkdir(exist_ok=True)
    names = st.text(alphabet="abcxyz-_.", min_size=1, max_size=12).filter(lambda n: n not in (".", ".."))
    return st.fixed_dictionaries(
        {"path": names.map(lambda n: str(folder / n))},
        optional={"format": st.sampled_from(["parquet", "jsonl"])},
    )


# -- the property --------------------------------------------------------------------------------------


def check(
    server: Any,
    method: str,
    case: tuple[Any, str | None],
    oracle: Callable[[Any, Any], bool],
    writes: tuple[int, ...] = (0, 0, 0, 0),
) -> None:
    params, field = case
    expected = oracle(params, server)
    before = counts(server.backend)
    try:
        call(server, method, params)
    except JsonRpcException as exc:
        assert exc.code == -32602, f"{method} {params!r}: error {exc.code} {exc}, not -32602"
        assert not expected, f"{method} refused valid params {params!r}: {exc}"
        message = str(exc)
        assert message.startswith(method), message
        if field is not None:
            assert field in message or "at least one" in message, f"{message!r} does not name {field!r}"
        assert counts(server.backend) == before, f"{method} {params!r} was refused but wrote"
        return
    except Exception as exc:  # anything but a JSON-RPC error would reach the client as an internal error
        raise AssertionError(f"{method} {params!r} raised {type(exc).__name__}: {exc}") from exc
    assert expected, f"{method} accepted invalid params {params!r}"
    after = counts(server.backend)
    assert tuple(a - b for a, b in zip(after, before, strict=True)) == writes, (
        f"{method} {params!r} wrote {before}->{after}"
    )


@SETTINGS
@given(data=st.data())
def test_chat(server: Any, data: st.DataObject) -> None:
    fields = ["messages", "kind", "context", "max_tokens", "temperature"]
    check(server, "reinf/chat", data.draw(mutations(valid_chat, fields)), ok_chat, writes=(1, 0, 0, 0))


@SETTINGS
@given(data=st.data())
def test_chat_message_items(server: Any, data: st.DataObject) -> None:
    """One message of the list, or one key of the context, changed to anything."""
    params = data.draw(valid_chat)
    where = data.draw(st.sampled_from(["message", "context"]))
    if where == "message":
        i = data.draw(st.integers(0, len(params["messages"]) - 1))
        key = data.draw(st.sampled_from(["role", "content", "extra"]))
        params["messages"][i] = {**params["messages"][i], key: data.draw(json_values)}
    else:
        key = data.draw(st.sampled_from(["uri", "language", "selection", "cells", "file", "extra"]))
        params["context"] = {**params.get("context", {}), key: data.draw(json_values)}
    check(
        server,
        "reinf/chat",
        (params, "messages" if where == "message" else "context"),
        ok_chat,
        writes=(1, 0, 0, 0),
    )


@SETTINGS
@given(data=st.data())
def test_rate(server: Any, data: st.DataObject) -> None:
    fields = ["interaction_id", "thumbs", "stars", "comment"]
    check(
        server, "reinf/rate", data.draw(mutations(valid_rate(server), fields)), ok_rate, writes=(0, 1, 0, 0)
    )


@SETTINGS
@given(data=st.data())
def test_feedback(server: Any, data: st.DataObject) -> None:
    """A notification: the daemon answers nothing, so the backend's own check is what is tested. Each example
    is about a fresh completion (an event ends one, and the fixture's own interaction is a chat)."""
    params, field = data.draw(mutations(valid_feedback(server), FEEDBACK_FIELDS))
    completion_id = server.backend.store.add_interaction(
        kind="completion",
        client="fuzz",
        model="m",
        adapter_version=0,
        prompt="p",
        context={},
        response="r",
        finish_reason="stop",
        timings={},
    )
    if isinstance(params, dict) and params.get("interaction_id") == server.iid:
        params = {**params, "interaction_id": completion_id}
    expected = ok_feedback(params, completion_id)
    before = counts(server.backend)
    try:
        asyncio.run(server.backend.feedback(params))
    except JsonRpcException as exc:
        assert exc.code == -32602 and not expected, f"{params!r}: {exc}"
        assert field is None or field in str(exc), str(exc)
        assert counts(server.backend) == before
        return
    assert expected, f"reinf/feedback accepted invalid params {params!r}"
    assert counts(server.backend)[1] == before[1] + 1


@SETTINGS
@given(data=st.data())
def test_history(server: Any, data: st.DataObject) -> None:
    fields = ["limit", "offset", "unrated_only", "kind"]
    check(server, "reinf/history", data.draw(mutations(valid_history, fields)), ok_history)


@SETTINGS
@given(data=st.data())
def test_runs(server: Any, data: st.DataObject) -> None:
    check(server, "reinf/runs", data.draw(mutations(valid_runs, ["limit"])), ok_runs)


@SETTINGS
@given(data=st.data())
def test_rollback(server: Any, data: st.DataObject) -> None:
    check(server, "reinf/rollback", data.draw(mutations(valid_rollback, ["version"])), ok_rollback)


@pytest.mark.parametrize(
    "method", ["reinf/adapters", "reinf/ratingsTimeline", "reinf/retrain", "reinf/cancelTraining"]
)
def test_methods_without_params(server: Any, method: str) -> None:
    @SETTINGS
    @given(case=mutations(st.just({}), []))
    def run(case: tuple[Any, str | None]) -> None:
        check(server, method, case, ok_empty)

    run()


@SETTINGS
@given(data=st.data())
def test_export(server: Any, data: st.DataObject) -> None:
    fields = ["format", "path"]
    case = data.draw(mutations(valid_export(server), fields))
    params, field = case
    if field == "path" and isinstance(params, dict) and data.draw(st.booleans()):
        # Paths that are wrong in the ways a filesystem notices.
        folder = server.home.parent / "exports"
        params["path"] = data.draw(
            st.sampled_from(
                [
                    str(folder),
                    "/",
                    "relative.jsonl",
                    str(folder / "missing" / "x.jsonl"),
                    str(folder / "a\x00b"),
                    str(folder / "it's.jsonl"),
                    str(folder / "\udc80.jsonl"),
                    str(server.home / "reinf.duckdb" / "x"),
                ]
            )
        )
    check(server, "reinf/export", case, ok_export)


@SETTINGS
@given(data=st.data())
def test_forget(server: Any, data: st.DataObject) -> None:
    """Dates before 2001 delete nothing here; anything that is not an ISO date is refused, naming `before`."""
    valid = st.fixed_dictionaries(
        {
            "before": st.one_of(
                st.datetimes(datetime(1971, 1, 1), datetime(2000, 12, 31)).map(datetime.isoformat),
                st.datetimes(
                    datetime(1971, 1, 1), datetime(2000, 12, 31), timezones=st.just(timezone.utc)
                ).map(datetime.isoformat),
                st.dates(max_value=datetime(2000, 1, 1).date()).map(str),
            )
        }
    )
    params, field = data.draw(mutations(valid, ["before"]))
    before = counts(server.backend)
    try:
        result = call(server, "reinf/forget", params)
    except JsonRpcException as exc:
        assert exc.code == -32602, f"{params!r}: {exc.code} {exc}"
        assert "before" in str(exc) or "params" in str(exc) or (field is not None and field in str(exc)), str(
            exc
        )
        assert counts(server.backend) == before
        return
    except Exception as exc:
        raise AssertionError(f"reinf/forget {params!r} raised {type(exc).__name__}: {exc}") from exc
    # Only ISO dates that parse get this far, and they are all older than every row here.
    assert isinstance(params, dict) and set(params) - set(TOKENS) == {"before"}
    datetime.fromisoformat(params["before"])
    assert result["deleted"] == 0 and counts(server.backend) == before


def test_every_reinf_method_is_fuzzed(server: Any) -> None:
    """A new reinf/* handler must get a property test here (status takes no params and ignores them)."""
    fuzzed = {
        "reinf/chat",
        "reinf/rate",
        "reinf/feedback",
        "reinf/history",
        "reinf/runs",
        "reinf/rollback",
        "reinf/adapters",
        "reinf/ratingsTimeline",
        "reinf/retrain",
        "reinf/cancelTraining",
        "reinf/export",
        "reinf/forget",
        "reinf/status",
    }
    registered = {m for m in server.features if m.startswith("reinf/")}
    assert registered <= fuzzed, f"reinf/* handlers without a property test: {sorted(registered - fuzzed)}"


@pytest.mark.parametrize("bad", ["\ud800", "a\udfffb", "\udc80"])
def test_lone_surrogates_are_refused_not_crashed_on(server: Any, bad: str) -> None:
    """JSON can carry \\ud800; it is not storable text, so it must be a -32602, not an internal error."""
    check(
        server,
        "reinf/rate",
        ({"interaction_id": server.iid, "comment": bad}, "comment"),
        ok_rate,
        writes=(0, 1, 0, 0),
    )
    chat = {"messages": [{"role": "user", "content": "x"}], "context": {"cells": [bad]}}
    check(server, "reinf/chat", (chat, "context"), ok_chat, writes=(1, 0, 0, 0))


@pytest.mark.parametrize(
    "before", ["0001-01-01", "0001-01-01T00:00:00", "0001-01-01T00:00:00+05:00", "1000-01-01T00:00:00-12:00"]
)
def test_forget_at_the_edge_of_the_calendar_is_an_answer_not_a_crash(server: Any, before: str) -> None:
    before_counts = counts(server.backend)
    try:
        result = call(server, "reinf/forget", {"before": before})
    except JsonRpcException as exc:
        assert exc.code == -32602 and "before" in str(exc), str(exc)
    else:
        assert result["deleted"] == 0
    assert counts(server.backend) == before_counts


def test_a_completion_is_stored_before_its_answer_and_a_failed_write_is_an_error(server: Any) -> None:
    from reinf.store import StoreError

    backend = server.backend
    before = counts(backend)
    answer = asyncio.run(
        backend.complete("def f():\n    ", "", client="t", uri="file:///a.py", language="python")
    )
    assert counts(backend)[0] == before[0] + 1  # committed by the time it is answered
    rating = asyncio.run(backend.rate({"interaction_id": answer["interaction_id"], "stars": 4}))
    assert rating["rating_id"] > 0 and counts(backend)[:2] == (before[0] + 1, before[1] + 1)

    # A commit that fails (the journal's append on a full disk) is the answer's error: the client never sees a
    # completion that was not stored.
    journal = backend.store._journal
    real = journal.append
    journal.append = lambda row: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
    try:
        with pytest.raises(StoreError, match="journal .*No space left on device; nothing was stored"):
            asyncio.run(backend.complete("x = ", "", client="t", uri="file:///a.py", language="python"))
    finally:
        journal.append = real
    assert counts(backend)[:2] == (before[0] + 1, before[1] + 1)
