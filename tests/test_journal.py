"""The completion journal (server/journal.py): an inline completion is committed by a fsync'd line, before its
answer, and reaches DuckDB afterwards; nothing acknowledged is lost, and nothing forgotten comes back."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from reinf.journal import Journal
from reinf.paths import UnsafePath
from reinf.store import Store

FIELDS = {
    "kind": "completion",
    "client": "test",
    "model": "m",
    "adapter_version": 0,
    "prompt": "<fim_prefix>def f():\n    <fim_suffix><fim_middle>",
    "context": {"uri": "file:///a.py"},
    "response": "return 1",
    "finish_reason": "stop",
    "timings": {"generate_ms": 1.0},
}


def _killed_after(path: Path, steps: str) -> list[str]:
    """Run `steps` on a Store at `path` in a child process that is then killed (SIGKILL); what it printed."""
    head = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from reinf.store import Store
        FIELDS = {FIELDS!r}
        store = Store(Path({str(path)!r}))
        """
    )
    code = head + textwrap.dedent(steps) + "\nos.kill(os.getpid(), signal.SIGKILL)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == -9, out.stderr
    return out.stdout.split()


def _history_total(store: Store) -> int:
    return store.history(limit=10, offset=0, unrated_only=False, kind=None)[1]


def test_a_journaled_completion_killed_before_duckdb_had_it_is_there_after_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "reinf.duckdb"
    Store(db).close()
    ids = _killed_after(
        db, "for _ in range(3):\n    print(store.journal_interaction(**FIELDS), flush=True)\n"
    )
    assert len(ids) == 3
    journal = tmp_path / "reinf.journal"
    assert len(journal.read_text().splitlines()) == 3, "the rows were taken in before the kill"
    assert journal.stat().st_mode & 0o777 == 0o600
    store = Store(db)
    try:
        assert store.count_interactions() == 3
        for iid in ids:  # the accept or dismiss that the editor sends for what it showed
            assert store.get_interaction(iid)["response"] == "return 1"
            store.add_completion_event(iid, "dismissed", shown_ms=800)
        assert journal.read_bytes() == b"", "the journal is emptied once DuckDB has its rows"
    finally:
        store.close()
    store = Store(db)  # taken in once: a second start adds nothing
    assert store.count_interactions() == 3
    store.close()


def test_every_read_and_write_sees_a_journaled_completion_at_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "reinf.duckdb")
    try:
        iid = store.journal_interaction(**FIELDS)
        assert store.journal_waiting()
        assert store.count_interactions() == 1
        items, total = store.history(limit=10, offset=0, unrated_only=False, kind=None)
        assert total == 1 and items[0]["interaction_id"] == iid
        assert not store.journal_waiting()
        assert store.count_interactions() == 1, "counted twice once DuckDB had it"
        second = store.journal_interaction(**FIELDS)
        assert store.add_completion_event(second, "accepted", accepted_chars=8) > 0
        assert store.export(tmp_path / "all.jsonl", "jsonl") == 2
    finally:
        store.close()


def test_a_forgotten_completion_does_not_come_back_from_the_journal_after_a_crash(tmp_path: Path) -> None:
    db = tmp_path / "reinf.duckdb"
    Store(db).close()
    later = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
    _killed_after(
        db,
        f"""
        from datetime import datetime
        store.journal_interaction(**FIELDS)
        store.journal_interaction(**FIELDS)
        store.forget(datetime.fromisoformat({later!r}))
        """,
    )
    store = Store(db)
    try:
        assert store.count_interactions() == 0
        assert _history_total(store) == 0
    finally:
        store.close()


def test_rows_journaled_while_others_went_in_are_all_that_the_file_keeps(tmp_path: Path) -> None:
    path = tmp_path / "reinf.journal"
    journal = Journal(path)
    for i in range(3):
        journal.append({"n": i})
    journal.taken_in(2)  # the oldest two are in DuckDB; the third was appended meanwhile
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"n": 2}]
    assert journal.pending() == [{"n": 2}]
    assert path.stat().st_mode & 0o777 == 0o600
    journal.append({"n": 3})  # appends reach the rewritten file
    assert len(path.read_text().splitlines()) == 2
    journal.taken_in(2)
    assert path.read_bytes() == b""
    journal.close()


def test_a_torn_line_and_planted_lines_are_skipped_and_the_good_rows_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "reinf.duckdb"
    Store(db).close()
    ids = _killed_after(db, "print(store.journal_interaction(**FIELDS), flush=True)\n")
    journal = tmp_path / "reinf.journal"
    good = journal.read_text().splitlines()[0]
    planted = json.loads(good) | {"id": "p" * 32, "kind": "override", "prompt": "SECRET-PLANTED"}
    extra = json.loads(good) | {"id": "q" * 32, "trust_remote_code": True}
    torn = good[: len(good) // 2]  # an append that a kill cut short: it was never acknowledged
    journal.write_text("\n".join([good, json.dumps(planted), json.dumps(extra), "not json", torn]))
    with caplog.at_level(logging.WARNING, logger="reinf.journal"):
        store = Store(db)
    try:
        assert store.count_interactions() == 1
        assert store.get_interaction(ids[0]) is not None
        assert store.get_interaction("p" * 32) is None
        assert store.get_interaction("q" * 32) is None
    finally:
        store.close()
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "3 line(s)" in warned, warned  # the torn last line is not counted among them
    assert "SECRET-PLANTED" not in warned


def test_a_journal_that_others_can_write_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "reinf.duckdb"
    Store(db).close()
    journal = tmp_path / "reinf.journal"
    journal.write_text("")
    os.chmod(journal, 0o666)
    with pytest.raises(UnsafePath, match="completion journal"):
        Store(db)
