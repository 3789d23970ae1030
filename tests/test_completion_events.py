"""What happened to an inline completion: typed columns, refusals that write nothing, corrections."""

from __future__ import annotations

import sys
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
    backend.feedback({"interaction_id": ids[0], "event": "accepted", "accepted_chars": 12, "shown_ms": 900})
    backend.feedback(
        {
            "interaction_id": ids[1],
            "event": "partially_accepted",
            "accepted_chars": 6,
            "accepted_words": 1,
            "shown_ms": 700,
        }
    )
    backend.feedback({"interaction_id": ids[2], "event": "typed_through", "typed_chars": 3, "shown_ms": 500})
    backend.feedback({"interaction_id": ids[3], "event": "dismissed", "shown_ms": 400})
    assert _rows(backend) == [
        ("accepted", 900, 12, None, None, None),
        ("partially_accepted", 700, 6, 1, None, None),
        ("typed_through", 500, None, None, 3, None),
        ("dismissed", 400, None, None, None, None),
    ]


def test_a_partial_accept_may_be_followed_by_an_accept_of_the_rest(backend: Any) -> None:
    iid = _interaction(backend)
    backend.feedback({"interaction_id": iid, "event": "partially_accepted", "accepted_chars": 6})
    backend.feedback({"interaction_id": iid, "event": "accepted", "accepted_chars": 12})
    assert [r[0] for r in _rows(backend)] == ["partially_accepted", "accepted"]


@pytest.mark.parametrize(
    ("first", "then"),
    [("accepted", "dismissed"), ("dismissed", "accepted"), ("typed_through", "partially_accepted")],
)
def test_an_event_after_the_completion_ended_is_refused_and_nothing_is_written(
    backend: Any, first: str, then: str
) -> None:
    iid = _interaction(backend)
    backend.feedback({"interaction_id": iid, "event": first})
    with pytest.raises(JsonRpcException, match=f"event: '{then}' cannot follow '{first}'") as exc:
        backend.feedback({"interaction_id": iid, "event": then})
    assert exc.value.code == -32602
    assert [r[0] for r in _rows(backend)] == [first]


def test_feedback_about_a_chat_is_refused_naming_interaction_id(backend: Any) -> None:
    iid = _interaction(backend, kind="chat")
    with pytest.raises(
        JsonRpcException, match="interaction_id: .* is a chat, not an inline completion"
    ) as exc:
        backend.feedback({"interaction_id": iid, "event": "dismissed"})
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
        backend.feedback({"interaction_id": iid, **params})
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
