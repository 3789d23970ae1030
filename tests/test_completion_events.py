"""What happened to an inline completion: typed columns, refusals that write nothing, corrections."""

from __future__ import annotations

import asyncio
import sys
import time
import types
from typing import Any

import duckdb
import pytest
from pygls.exceptions import JsonRpcException

from reinf.config import Config
from reinf.migrations import MIGRATIONS

from .test_fuzz import FakeEngine, FakeScheduler


@pytest.fixture
def backend(tmp_path):
    cfg = Config(home=tmp_path / "home")
    fake = types.ModuleType("reinf.scheduler")
    fake.Scheduler = FakeScheduler
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "reinf.scheduler", fake)
        from reinf.backend import Backend

        b = Backend(cfg, engine=FakeEngine())
    yield b
    b.close()


def _feedback(backend: Any, params: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(backend.feedback(params))


def _interaction(backend: Any, kind: str = "completion", response: str = "return total") -> str:
    return backend.store.add_interaction(
        kind=kind,
        client="test",
        model="m",
        adapter_version=0,
        prompt="<|fim_prefix|>def f():\n    <|fim_suffix|><|fim_middle|>",
        context={},
        response=response,
        finish_reason="stop",
        timings={},
    )


def _rows(backend: Any) -> list[tuple]:
    return backend.store._read(
        "SELECT event, shown_ms, accepted_chars, accepted_words, typed_chars, comment FROM ratings ORDER BY id"
    )


def test_each_kind_of_event_is_stored_in_typed_columns(backend: Any) -> None:
    ids = [_interaction(backend) for _ in range(4)]
    _feedback(backend, {"interaction_id": ids[0], "event": "accepted", "accepted_chars": 12, "shown_ms": 900})
    _feedback(
        backend,
        {
            "interaction_id": ids[1],
            "event": "partially_accepted",
            "accepted_chars": 6,
            "accepted_words": 1,
            "shown_ms": 700,
        },
    )
    _feedback(
        backend, {"interaction_id": ids[2], "event": "typed_through", "typed_chars": 3, "shown_ms": 500}
    )
    _feedback(backend, {"interaction_id": ids[3], "event": "dismissed", "shown_ms": 400})
    assert _rows(backend) == [
        ("accepted", 900, 12, None, None, None),
        ("partially_accepted", 700, 6, 1, None, None),
        ("typed_through", 500, None, None, 3, None),
        ("dismissed", 400, None, None, None, None),
    ]


def test_a_partial_accept_may_be_followed_by_an_accept_of_the_rest(backend: Any) -> None:
    iid = _interaction(backend)
    _feedback(backend, {"interaction_id": iid, "event": "partially_accepted", "accepted_chars": 6})
    _feedback(backend, {"interaction_id": iid, "event": "accepted", "accepted_chars": 12})
    assert [r[0] for r in _rows(backend)] == ["partially_accepted", "accepted"]


@pytest.mark.parametrize(
    ("first", "then"),
    [("accepted", "dismissed"), ("dismissed", "accepted"), ("typed_through", "partially_accepted")],
)
def test_an_event_after_the_completion_ended_is_refused_and_nothing_is_written(
    backend: Any, first: str, then: str
) -> None:
    iid = _interaction(backend)
    _feedback(backend, {"interaction_id": iid, "event": first})
    with pytest.raises(JsonRpcException, match=f"event: '{then}' cannot follow '{first}'") as exc:
        _feedback(backend, {"interaction_id": iid, "event": then})
    assert exc.value.code == -32602
    assert [r[0] for r in _rows(backend)] == [first]


def test_feedback_about_a_chat_is_refused_naming_interaction_id(backend: Any) -> None:
    iid = _interaction(backend, kind="chat")
    with pytest.raises(
        JsonRpcException, match="interaction_id: .* is a chat, not an inline completion"
    ) as exc:
        _feedback(backend, {"interaction_id": iid, "event": "dismissed"})
    assert exc.value.code == -32602
    assert _rows(backend) == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"event": "accepted", "accepted_words": -1}, "accepted_words"),
        ({"event": "accepted", "typed_chars": "3"}, "typed_chars"),
        ({"event": "shown"}, "event"),
        ({"event": "dismissed", "shown": 3}, "shown"),
    ],
)
def test_bad_fields_are_named(backend: Any, params: dict[str, Any], field: str) -> None:
    iid = _interaction(backend)
    with pytest.raises(JsonRpcException, match=field):
        _feedback(backend, {"interaction_id": iid, **params})
    assert _rows(backend) == []


def test_details_stored_as_json_comments_move_into_the_columns(tmp_path) -> None:
    """A store from before m004 keeps its implicit events' details, now in columns, and its explicit comments."""
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE migrations (name VARCHAR PRIMARY KEY, applied TIMESTAMPTZ DEFAULT now())")
    for fn in MIGRATIONS[:3]:
        fn(con)
        con.execute("INSERT INTO migrations (name) VALUES (?)", [fn.__name__])
    con.execute(
        "INSERT INTO interactions VALUES ('c1', now(), 'completion', 'x', 'm', 0, 'p', '{}', 'r', 'stop', '{}')"
    )
    con.execute(
        "INSERT INTO ratings (interaction_id, ts, source, event, comment) VALUES "
        """('c1', now(), 'implicit', 'accepted', '{"accepted_chars": 5, "shown_ms": 900}'), """
        "('c1', now(), 'explicit', NULL, '{not json, a user''s words}')"
    )
    con.close()
    from reinf.store import Store

    store = Store(path)
    rows = store._read("SELECT source, event, shown_ms, accepted_chars, comment FROM ratings ORDER BY id")
    store.close()
    assert rows == [
        ("implicit", "accepted", 900, 5, None),
        ("explicit", None, None, None, "{not json, a user's words}"),
    ]


# -- corrections -------------------------------------------------------------------------------------

PREFIX = "def total(items):\n    "
SUFFIX = "\n\n\ndef other():\n    pass\n"


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _follower(**cfg: Any):
    from reinf.config import CompletionsConfig
    from reinf.corrections import Corrections

    written: list[Any] = []
    clock = Clock()
    doc = {"text": PREFIX + SUFFIX}
    c = Corrections(CompletionsConfig(**cfg), written.append, clock=clock)
    c.offered(
        "i1",
        conn="c",
        uri="u",
        prefix=PREFIX,
        suffix=SUFFIX,
        suggestion="return 0",
        source=lambda: doc["text"],
    )
    return c, written, clock, doc


def _type(c: Any, doc: dict[str, str], text: str) -> None:
    """Type `text` at the cursor one character at a time, as the editor reports it."""
    for ch in text:
        middle = doc["text"][len(PREFIX) : len(doc["text"]) - len(SUFFIX)]
        doc["text"] = PREFIX + middle + ch + SUFFIX
        c.changed("c", "u", doc["text"])


def test_what_the_user_types_after_a_dismissal_is_kept_when_they_move_on() -> None:
    c, written, _, doc = _follower()
    c.event("i1", "dismissed")
    _type(c, doc, "return sum(items)")
    assert written == []
    doc["text"] = "import math\n" + doc["text"]  # an edit elsewhere: they moved on
    c.changed("c", "u", doc["text"])
    assert [(w.typed, w.truncated, w.ended, w.event) for w in written] == [
        ("return sum(items)", False, "moved", "dismissed")
    ]
    assert c.following == []


def test_a_correction_ends_with_the_suggestions_last_line() -> None:
    c, written, _, doc = _follower()
    c.event("i1", "partially_accepted")
    _type(c, doc, "return sum(items)\n    x = 1")
    assert [(w.typed, w.ended) for w in written] == [("return sum(items)", "lines")]


def test_a_new_line_after_a_one_line_suggestion_is_not_part_of_its_correction() -> None:
    c, written, _, doc = _follower()
    c.event("i1", "dismissed")
    _type(c, doc, "\n    x = 1")
    assert written == [] and c.following == []


def test_a_correction_longer_than_the_bound_is_cut_and_says_so() -> None:
    c, written, _, doc = _follower(correction_max_chars=10)
    c.event("i1", "typed_through")
    _type(c, doc, "return sum(item.price for item in items)")
    assert [(w.typed, w.truncated, w.ended) for w in written] == [("return sum", True, "size")]


def test_time_runs_out_and_the_correction_so_far_is_kept() -> None:
    c, written, clock, doc = _follower(correction_timeout_s=5)
    c.event("i1", "dismissed")
    _type(c, doc, "ret")
    clock.t = 6
    c.expire()
    assert [(w.typed, w.ended) for w in written] == [("ret", "timeout")]


def test_a_daemon_that_stops_keeps_the_corrections_being_followed() -> None:
    c, written, _, doc = _follower()
    c.event("i1", "typed_through")
    _type(c, doc, "return 3")
    c.close()
    assert [(w.typed, w.ended) for w in written] == [("return 3", "closed")]


def test_moving_away_without_writing_stores_nothing_and_stops_following() -> None:
    c, written, _, doc = _follower()
    c.event("i1", "dismissed")
    c.changed("c", "u", "# new first line\n" + doc["text"])
    _type(c, doc, "return 1")
    assert written == [] and c.following == []


def test_an_accepted_suggestion_is_not_followed_and_the_opt_out_follows_nothing() -> None:
    c, written, _, doc = _follower()
    c.event("i1", "accepted")
    assert c.following == []
    c, written, _, doc = _follower(corrections=False)
    c.event("i1", "dismissed")
    _type(c, doc, "return 1\n")
    assert c.following == [] and written == []


def test_other_documents_and_connections_do_not_disturb_a_correction() -> None:
    c, written, _, doc = _follower()
    c.event("i1", "dismissed")
    c.changed("c", "other", "anything")
    c.changed("c2", "u", "anything")
    _type(c, doc, "return 2")
    c.closed("c", "u")
    assert [(w.typed, w.ended) for w in written] == [("return 2", "closed")]


def test_the_backend_stores_a_redacted_correction_with_the_fim_prompt_and_suggestion(backend: Any) -> None:
    doc = {"text": PREFIX + SUFFIX}
    result = asyncio.run(
        backend.complete(
            PREFIX, SUFFIX, client="t", uri="u", language="python", conn="c", source=lambda: doc["text"]
        )
    )
    assert result is not None
    iid = result["interaction_id"]
    _feedback(backend, {"interaction_id": iid, "event": "dismissed", "shown_ms": 800})
    key = "sk-" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6"
    doc["text"] = PREFIX + f'return call("{key}")' + SUFFIX
    backend.corrections.changed("c", "u", doc["text"])
    backend.corrections.closed("c", "u")
    backend._writer.submit(lambda: None).result()  # the writes queued so far are done
    rows = backend.store._read(
        "SELECT i.prompt, i.response, c.typed, c.event, c.truncated FROM corrections c "
        "JOIN interactions i ON i.id = c.interaction_id"
    )
    assert len(rows) == 1
    prompt, response, typed, event, truncated = rows[0]
    assert PREFIX in prompt and response == result["text"] and event == "dismissed" and not truncated
    assert typed.startswith('return call("') and key not in typed
    # The trainer's snapshot carries the pair (FIM prompt, suggested, typed); forget removes the correction.
    out = backend.cfg.home / "snapshot.parquet"
    backend.store.export_snapshot(out)
    snap = duckdb.sql(f"SELECT prompt, response, typed, typed_truncated, dismissed FROM '{out}'").fetchall()
    assert snap == [(prompt, response, typed, False, 1)]
    # ... and the id of its newest event, which says whether the active adapter's run saw it.
    ((last,),) = duckdb.sql(f"SELECT last_event_id FROM '{out}'").fetchall()
    assert last == backend.store._read("SELECT max(id) FROM ratings WHERE interaction_id = ?", [iid])[0][0]
    asyncio.run(backend.forget({"before": "2999-01-01T00:00:00+00:00", "keep_adapters": True}))
    assert backend.store._read("SELECT count(*) FROM corrections") == [(0,)]


def test_status_reports_the_acceptance_rate_by_week_active_adapter_and_base(backend: Any) -> None:
    from reinf.cli import acceptance_text

    def completion(version: int, *events: str) -> None:
        iid = backend.store.add_interaction(
            kind="completion",
            client="t",
            model="m",
            adapter_version=version,
            prompt="p",
            context={},
            response="r",
            finish_reason="stop",
            timings={},
        )
        for event in events:
            _feedback(backend, {"interaction_id": iid, "event": event})

    for events in [("accepted",), ("dismissed",), ("dismissed",), ("partially_accepted", "accepted")]:
        completion(0, *events)
    completion(3, "accepted")
    completion(3, "partially_accepted")
    completion(3)  # never reported on: not counted as shown
    backend.engine.adapter_version = 3
    acc = asyncio.run(backend.status())["acceptance"]
    assert acc["base"] == {"shown": 4, "accepted": 2, "partially_accepted": 0, "rate": 0.5}
    assert acc["active"] == {
        "shown": 2,
        "accepted": 1,
        "partially_accepted": 1,
        "rate": 0.5,
        "adapter_version": 3,
    }
    assert acc["last_7_days"]["shown"] == 6 and acc["last_7_days"]["accepted"] == 3
    assert (
        acceptance_text(acc)
        == "accepted 50% of 6 in the last 7 days; since adapter v3: 50% of 2; base: 50% of 4"
    )


def test_a_suggestion_s_final_event_counts_towards_the_completions_threshold(backend: Any) -> None:
    iid = _interaction(backend)
    _feedback(backend, {"interaction_id": iid, "event": "partially_accepted", "accepted_chars": 3})
    backend._io.submit(lambda: None).result()
    assert backend.scheduler.completions == 0  # not over yet
    _feedback(backend, {"interaction_id": iid, "event": "dismissed"})
    deadline = time.monotonic() + 5
    while backend.scheduler.completions == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backend.scheduler.completions == 1
