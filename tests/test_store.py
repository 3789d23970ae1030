"""The DuckDB store on real files: migrations, committed writes, snapshot, export, forget."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from reinf.migrations import MIGRATIONS
from reinf.store import Store, StoreError, UnknownInteraction


def _interaction(
    store: Store, prompt: str = "def f():", response: str = "    return 1", kind: str = "chat"
) -> str:
    return store.add_interaction(
        kind=kind,
        client="test",
        model="m",
        adapter_version=0,
        prompt=prompt,
        context={"uri": "file:///a.py"},
        response=response,
        finish_reason="stop",
        timings={"queue_ms": 0.1, "generate_ms": 1.0, "total_ms": 1.2},
    )


def test_migrations_run_once_and_are_recorded(tmp_path: Path) -> None:
    path = tmp_path / "r.duckdb"
    Store(path).close()
    Store(path).close()
    con = duckdb.connect(str(path))
    names = [r[0] for r in con.execute("SELECT name FROM migrations ORDER BY name").fetchall()]
    assert names == [fn.__name__ for fn in MIGRATIONS]


def test_a_database_from_before_forgotten_adapters_is_upgraded_with_its_adapters(tmp_path: Path) -> None:
    from reinf.migrations import m001_initial, m002_rating_watermark

    path = tmp_path / "r.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE migrations (name VARCHAR PRIMARY KEY, applied TIMESTAMPTZ DEFAULT now())")
    for fn in (m001_initial, m002_rating_watermark):
        fn(con)
        con.execute("INSERT INTO migrations (name) VALUES (?)", [fn.__name__])
    con.execute("INSERT INTO adapters VALUES (1, 1, now(), '/a/v1', 'active', '{\"kl_to_base\": 2.0}')")
    with pytest.raises(duckdb.Error):
        con.execute("UPDATE adapters SET status = 'forgotten'")
    con.close()
    s = Store(path)
    assert [(a["version"], a["status"], a["eval"]) for a in s.list_adapters()] == [
        (1, "active", {"kl_to_base": 2.0})
    ]
    s.set_adapter_status(1, "forgotten")
    with pytest.raises(duckdb.Error):
        s.set_adapter_status(1, "lost")
    assert s.list_adapters()[0]["status"] == "forgotten"


def test_ratings_are_append_only_and_the_newest_value_of_each_field_counts(tmp_path: Path) -> None:
    s = Store(tmp_path / "r.duckdb")
    iid = _interaction(s)
    s.add_rating(iid, thumbs="up")
    s.add_rating(iid, stars=2)
    s.add_rating(iid, stars=4, comment="better")
    s.add_rating(iid, source="implicit", event="accepted")
    items, total = s.history()
    assert total == 1 and items[0]["rating"] == {"thumbs": "up", "stars": 4, "comment": "better"}
    assert s.ratings_total() == 1  # one answer rated, three times: as the training threshold counts it
    out = tmp_path / "snap.parquet"
    assert s.export_snapshot(out) == 1
    row = pq.read_table(out).to_pylist()[0]
    assert (row["stars"], row["thumbs"], row["accepted"]) == (4, "up", 1)


def test_unknown_interaction_and_bad_values_write_nothing(tmp_path: Path) -> None:
    s = Store(tmp_path / "r.duckdb")
    iid = _interaction(s)
    with pytest.raises(UnknownInteraction):
        s.add_rating("nope", stars=3)
    with pytest.raises(duckdb.Error):
        s.add_rating(iid, stars=9)
    assert s.ratings_total() == 0


def test_unrated_filter_and_paging(tmp_path: Path) -> None:
    s = Store(tmp_path / "r.duckdb")
    ids = [_interaction(s, prompt=f"p{i}") for i in range(5)]
    s.add_rating(ids[0], stars=5)
    items, total = s.history(unrated_only=True, limit=2)
    assert total == 4 and len(items) == 2 and ids[0] not in {i["interaction_id"] for i in items}


def test_export_jsonl_and_forget_really_deletes(tmp_path: Path) -> None:
    path = tmp_path / "r.duckdb"
    s = Store(path)
    secret_text = "a very particular sentence to forget"
    old = _interaction(s, prompt=secret_text)
    s.add_rating(old, stars=1)
    s._write("UPDATE interactions SET ts = ts - INTERVAL 10 DAY WHERE id = ?", [old])
    keep = _interaction(s, prompt="keep me")
    out = tmp_path / "e.jsonl"
    assert s.export(out, "jsonl") == 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["interaction_id"] for r in rows} == {old, keep}
    assert s.forget(datetime.now(timezone.utc) - timedelta(days=1)) == 1
    assert s.get_interaction(old) is None and s.get_interaction(keep) is not None
    assert s.ratings_total() == 0
    s.close()
    assert secret_text.encode() not in path.read_bytes()


def test_runs_and_adapters(tmp_path: Path) -> None:
    s = Store(tmp_path / "r.duckdb")
    run = s.create_run("manual", 3, watermark=0)
    s.update_run(run, state="running")
    assert [r["run_id"] for r in s.unfinished_runs()] == [run]
    s.update_run(run, state="published", finished=True, metrics={"decision": "publish"})
    v = s.next_adapter_version()
    s.add_adapter(v, run, "/x/v1", "candidate", {"reward": 1.0})
    s.activate_adapter(v)
    assert s.active_adapter()["version"] == v and s.list_runs()[0]["adapter_version"] == v
    s.activate_adapter(0)
    assert s.active_adapter() is None
    with pytest.raises(StoreError):
        s.update_run(run, colour="red")


def test_encryption_refuses_the_insecure_fallback(tmp_path: Path) -> None:
    try:
        duckdb.connect(":memory:").execute("LOAD httpfs")
        pytest.skip("httpfs is available here, so encryption is allowed")
    except duckdb.Error:
        pass
    with pytest.raises(StoreError, match="httpfs"):
        Store(tmp_path / "r.duckdb", encryption_key="k" * 32)
    assert not (tmp_path / "r.duckdb").exists()
