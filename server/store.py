"""The DuckDB store. The daemon holds the only read-write connection; every write commits before it returns
(an inline completion's commit is its journal line: server/journal.py)."""

from __future__ import annotations

import bisect
import errno
import json
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb

from .journal import FIELDS, Journal, row_values
from .migrations import migrate
from .paths import open_unnamed, publish_unnamed, staging_dir


class StoreError(RuntimeError):
    """A store operation that could not be done; the message says why."""


class UnknownInteraction(StoreError):
    pass


class RefusedEvent(StoreError):
    """A completion event that cannot be true of its interaction; `field` names the parameter at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# An inline completion ends once: accepted, typed through, or dismissed. Partial accepts may come before an
# accept of the rest.
COMPLETION_EVENTS = ("accepted", "partially_accepted", "typed_through", "dismissed")
FINAL_EVENTS = ("accepted", "typed_through", "dismissed")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _json_or_none(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


# The newest explicit rating of each interaction counts. A client may send thumbs, stars and a comment in
# separate calls, so each field takes its newest non-empty value; implicit events add a weak signal.
_LATEST_EXPLICIT = """
    SELECT interaction_id, max(id) AS id, max(ts) AS ts,
           arg_max(thumbs, id) FILTER (WHERE thumbs IS NOT NULL) AS thumbs,
           arg_max(stars, id) FILTER (WHERE stars IS NOT NULL) AS stars,
           arg_max(comment, id) FILTER (WHERE comment IS NOT NULL) AS comment
    FROM ratings WHERE source = 'explicit' GROUP BY interaction_id
"""

_SNAPSHOT = f"""
    SELECT i.id AS interaction_id, i.ts, i.kind, i.model, i.adapter_version, i.prompt, i.response,
           CAST(i.context AS VARCHAR) AS context,
           e.thumbs, e.stars, e.comment, e.id AS rating_id,
           coalesce(imp.accepted, 0) AS accepted, coalesce(imp.dismissed, 0) AS dismissed,
           coalesce(imp.partially_accepted, 0) AS partially_accepted,
           coalesce(imp.typed_through, 0) AS typed_through, imp.last_event_id,
           cor.typed, cor.typed_truncated
    FROM interactions i
    LEFT JOIN ({_LATEST_EXPLICIT}) e ON e.interaction_id = i.id
    LEFT JOIN (
        SELECT interaction_id,
               count(*) FILTER (WHERE event = 'accepted') AS accepted,
               count(*) FILTER (WHERE event = 'dismissed') AS dismissed,
               count(*) FILTER (WHERE event = 'partially_accepted') AS partially_accepted,
               count(*) FILTER (WHERE event = 'typed_through') AS typed_through,
               max(id) AS last_event_id
        FROM ratings WHERE source = 'implicit' GROUP BY interaction_id
    ) imp ON imp.interaction_id = i.id
    LEFT JOIN (
        SELECT interaction_id, arg_max(typed, id) AS typed, arg_max(truncated, id) AS typed_truncated
        FROM corrections GROUP BY interaction_id
    ) cor ON cor.interaction_id = i.id
    WHERE e.id IS NOT NULL OR imp.interaction_id IS NOT NULL
    ORDER BY i.ts
"""


class Store:
    """All reads and writes of `reinf.duckdb`. Thread-safe: one lock serialises the one connection."""

    def __init__(self, path: Path, encryption_key: str = "") -> None:
        self.path = Path(path)
        self._lock = _Lock(self._take_in)
        self._encrypted = bool(encryption_key)
        self._journal: Journal | None = None
        self._con = _Connection(
            self.path, lambda: self._open(encryption_key), on_reopen=self._load_explicit_ids
        )
        for p in (self.path, self.path.with_name(self.path.name + ".wal")):
            if p.exists():
                os.chmod(p, 0o600)
        with self._lock:
            migrate(self._con)
            self._load_explicit_ids()
        # An encrypted store gets no journal: the file would hold in plain text what the database encrypts.
        if not self._encrypted:
            self._journal = Journal(self.path.with_name(self.path.stem + ".journal"))
            self.take_in_journal()  # what a crash left in it goes in now

    def _open(self, encryption_key: str) -> duckdb.DuckDBPyConnection:
        old_umask = os.umask(0o077)
        try:
            con = self._connect(encryption_key)
        finally:
            os.umask(old_umask)
        # Small writes and reads gain nothing from DuckDB's worker threads, and the inference thread needs the
        # other core.
        con.execute("SET threads TO 1")
        return con

    def _connect(self, encryption_key: str) -> duckdb.DuckDBPyConnection:
        try:
            if not encryption_key:
                return duckdb.connect(str(self.path))
            con = duckdb.connect(":memory:")
            try:
                con.execute("LOAD httpfs")
            except duckdb.Error as exc:
                con.close()
                raise StoreError(
                    "store.encryption_key is set, but DuckDB can encrypt securely only with its httpfs "
                    "extension loaded, and it could not be loaded here "
                    f"({str(exc).splitlines()[0]}). reinf refuses DuckDB's insecure fallback: install httpfs "
                    "(INSTALL httpfs) or unset store.encryption_key."
                ) from exc
            con.execute(f"ATTACH '{self.path}' AS reinf (ENCRYPTION_KEY ?)", [encryption_key])
            con.execute("USE reinf")
            return con
        except (duckdb.IOException, duckdb.FatalException) as exc:
            raise StoreError(f"cannot open the store at {self.path}: {_first_line(exc)}") from exc

    def close(self) -> None:
        try:
            with self._lock:
                self._con.execute("CHECKPOINT")
        except (duckdb.Error, StoreError):
            pass  # what the journal still holds is taken in at the next start
        with self._lock.without_taking_in():
            self._con.close()
        if self._journal is not None:
            self._journal.close()

    def _write(self, sql: str, params: list[Any] | None = None) -> list[tuple]:
        """Run one write statement; DuckDB autocommits it, so it is durable when this returns."""
        with self._lock, self._commit_errors():
            return self._con.execute(sql, params or []).fetchall()

    @contextmanager
    def _commit_errors(self) -> Iterator[None]:
        """A commit that cannot be written (a full disk, a read-only file system) becomes a clear StoreError."""
        try:
            yield
        except (duckdb.IOException, duckdb.TransactionException) as exc:
            detail = str(exc).split("Failed to commit: ")[-1]
            raise StoreError(
                f"could not write to the store {self.path}: {detail}; nothing was stored"
            ) from exc

    def _read(self, sql: str, params: list[Any] | None = None) -> list[tuple]:
        with self._lock:
            return self._con.execute(sql, params or []).fetchall()

    def _read_dicts(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._con.execute(sql, params or [])
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    # -- interactions ---------------------------------------------------------------------------

    def add_interaction(self, **fields: Any) -> str:
        """Store one completion, chat or ask (`_row`'s fields) in DuckDB; returns its id."""
        row = _row(**fields)
        self._write(f"INSERT INTO interactions VALUES ({', '.join('?' * len(FIELDS))})", row_values(row))
        self._n_interactions += 1
        return row["id"]

    def journal_interaction(self, **fields: Any) -> str:
        """Commit one interaction (`_row`'s fields) to the journal, without waiting for DuckDB or for this
        store's lock; returns its id. Every later statement sees it (it is taken in first)."""
        if self._journal is None:
            return self.add_interaction(**fields)
        row = _row(**fields)
        try:
            self._journal.append(row)
        except OSError as exc:
            raise StoreError(
                f"could not write to the store's journal {self._journal.path}: {exc.strerror}; nothing was stored"
            ) from exc
        return row["id"]

    def journal_waiting(self) -> bool:
        """Whether the journal holds rows that DuckDB does not have yet."""
        return self._journal is not None and len(self._journal) > 0

    def take_in_journal(self) -> None:
        """Move what the journal holds into DuckDB now (the writer does this after each completion)."""
        with self._lock:
            pass

    def _take_in(self) -> None:
        """The journal's waiting rows, into DuckDB in one transaction; called as the store's lock is taken."""
        journal = self._journal
        if journal is None or not len(journal):
            return
        rows = journal.pending()
        insert = f"INSERT OR IGNORE INTO interactions VALUES ({', '.join('?' * len(FIELDS))}) RETURNING id"
        with self._commit_errors():
            self._con.execute("BEGIN TRANSACTION")
            try:
                added = sum(len(self._con.execute(insert, row_values(r)).fetchall()) for r in rows)
                self._con.execute("COMMIT")
            except BaseException:
                self._con.rollback()
                raise
        self._n_interactions += added
        journal.taken_in(len(rows))

    def get_interaction(self, interaction_id: str) -> dict[str, Any] | None:
        rows = self._read_dicts("SELECT * FROM interactions WHERE id = ?", [interaction_id])
        if not rows:
            return None
        row = rows[0]
        row["context"] = _json_or_none(row["context"])
        row["timings"] = _json_or_none(row["timings"])
        row["ts"] = _iso(row["ts"])
        return row

    # The counts that reinf/status reports are kept in memory and read without the lock, so that status never
    # waits for an export or a forget that holds the connection.

    def count_interactions(self) -> int:
        return self._n_interactions + (len(self._journal) if self._journal is not None else 0)

    # -- ratings --------------------------------------------------------------------------------

    def add_rating(
        self,
        interaction_id: str,
        *,
        thumbs: str | None = None,
        stars: int | None = None,
        comment: str | None = None,
        source: str = "explicit",
        event: str | None = None,
    ) -> int:
        """Append a rating (explicit) or an implicit event; committed before it returns."""
        with self._lock:
            # One autocommitted statement: checks the interaction and appends, atomically.
            with self._commit_errors():
                rows = self._con.execute(
                    "INSERT INTO ratings (interaction_id, ts, thumbs, stars, comment, source, event) "
                    "SELECT ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM interactions WHERE id = ?) RETURNING id",
                    [interaction_id, _now(), thumbs, stars, comment, source, event, interaction_id],
                ).fetchall()
            if not rows:
                raise UnknownInteraction(f"unknown interaction_id {interaction_id!r}")
            rating_id = int(rows[0][0])
            if source == "explicit":
                self._explicit_ids.append(rating_id)
                if interaction_id not in self._first_rating:
                    self._first_rating[interaction_id] = rating_id
                    self._first_rating_ids.append(rating_id)
        return rating_id

    def add_completion_event(
        self,
        interaction_id: str,
        event: str,
        *,
        shown_ms: int | None = None,
        accepted_chars: int | None = None,
        accepted_words: int | None = None,
        typed_chars: int | None = None,
    ) -> int:
        """Append what happened to an inline completion (an implicit rating with typed columns); committed before
        it returns. Refused, with nothing written, for an interaction that is not a completion or has ended."""
        with self._lock:
            found = self._con.execute(
                "SELECT kind FROM interactions WHERE id = ?", [interaction_id]
            ).fetchall()
            if not found:
                raise UnknownInteraction(f"unknown interaction_id {interaction_id!r}")
            if found[0][0] != "completion":
                raise RefusedEvent(
                    "interaction_id",
                    f"interaction {interaction_id} is a {found[0][0]}, not an inline completion; "
                    "rate it with reinf/rate",
                )
            earlier = self._con.execute(
                "SELECT event FROM ratings WHERE interaction_id = ? AND source = 'implicit' AND event IN "
                f"({', '.join('?' * len(FINAL_EVENTS))}) LIMIT 1",
                [interaction_id, *FINAL_EVENTS],
            ).fetchall()
            if earlier:
                raise RefusedEvent(
                    "event",
                    f"{event!r} cannot follow {earlier[0][0]!r}: completion {interaction_id} has already ended",
                )
            with self._commit_errors():
                rows = self._con.execute(
                    "INSERT INTO ratings (interaction_id, ts, source, event, shown_ms, accepted_chars, "
                    "accepted_words, typed_chars) VALUES (?, ?, 'implicit', ?, ?, ?, ?, ?) RETURNING id",
                    [interaction_id, _now(), event, shown_ms, accepted_chars, accepted_words, typed_chars],
                ).fetchall()
            return int(rows[0][0])

    def acceptance(self, active_version: int, since: datetime) -> dict[str, Any]:
        """How often shown inline completions were accepted: those made since `since`, those the active adapter
        made, and the base's. A completion counts once, as accepted if it was, whatever came before."""
        buckets = {
            "last_7_days": "i.ts >= ?",
            "active": "i.adapter_version = ?",
            "base": "i.adapter_version = 0",
        }
        aggregates = ", ".join(
            f"count(*) FILTER (WHERE {cond}), count(*) FILTER (WHERE {cond} AND accepted), "
            f"count(*) FILTER (WHERE {cond} AND partial AND NOT accepted)"
            for cond in buckets.values()
        )
        row = self._read(
            f"""SELECT {aggregates} FROM (
                SELECT interaction_id, bool_or(event = 'accepted') AS accepted,
                       bool_or(event = 'partially_accepted') AS partial
                FROM ratings WHERE source = 'implicit' AND event IN ({", ".join("?" * len(COMPLETION_EVENTS))})
                GROUP BY interaction_id
            ) ev JOIN interactions i ON i.id = ev.interaction_id WHERE i.kind = 'completion'""",
            [since, since, since, active_version, active_version, active_version, *COMPLETION_EVENTS],
        )[0]
        out: dict[str, Any] = {}
        for n, name in enumerate(buckets):
            shown, accepted, partial = (int(v) for v in row[3 * n : 3 * n + 3])
            rate = round(accepted / shown, 4) if shown else None
            out[name] = {"shown": shown, "accepted": accepted, "partially_accepted": partial, "rate": rate}
        out["active"]["adapter_version"] = active_version
        return out

    def add_correction(self, interaction_id: str, event: str, typed: str, truncated: bool, ended: str) -> int:
        """Store what the user wrote instead of a completion (already redacted); committed before it returns."""
        with self._lock, self._commit_errors():
            rows = self._con.execute(
                "INSERT INTO corrections (interaction_id, ts, event, typed, truncated, ended) "
                "SELECT ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM interactions WHERE id = ?) RETURNING id",
                [interaction_id, _now(), event, typed, truncated, ended, interaction_id],
            ).fetchall()
        if not rows:
            raise UnknownInteraction(f"unknown interaction_id {interaction_id!r}")
        return int(rows[0][0])

    def _load_explicit_ids(self) -> None:
        # Explicit rating ids, ascending, and each rated interaction's first one: counts for status and the
        # training threshold without a query.
        rows = self._con.execute("SELECT id FROM ratings WHERE source = 'explicit' ORDER BY id").fetchall()
        self._explicit_ids = [int(r[0]) for r in rows]
        rows = self._con.execute(
            "SELECT interaction_id, min(id) AS first FROM ratings WHERE source = 'explicit' "
            "GROUP BY interaction_id ORDER BY first"
        ).fetchall()
        self._first_rating = {r[0]: int(r[1]) for r in rows}
        self._first_rating_ids = [int(r[1]) for r in rows]
        self._n_interactions = int(self._con.execute("SELECT count(*) FROM interactions").fetchone()[0])
        self._refresh_last_run()

    def ratings_total(self) -> int:
        """How many answers the user has rated: thumbs, stars and a comment on one answer, or a re-rating of it,
        count once, as they do towards the next training run."""
        return len(self._first_rating)

    def max_rating_id(self) -> int:
        with self._lock:
            return self._explicit_ids[-1] if self._explicit_ids else 0

    def rated_since(self, watermark: int) -> int:
        """How many interactions got their first explicit rating after rating id `watermark`: the training
        threshold counts judgements, so thumbs, stars and a comment on one answer count once, and so does any
        number of re-ratings of it."""
        ids = self._first_rating_ids
        return len(ids) - bisect.bisect_right(ids, watermark)

    def completions_since_last_run(self) -> int:
        """Inline suggestions that got their final event (accepted, typed through, dismissed) since the newest
        training run started: what `training.min_new_completions` counts."""
        events = ", ".join(f"'{e}'" for e in FINAL_EVENTS)
        rows = self._read(
            f"SELECT count(*) FROM ratings WHERE source = 'implicit' AND event IN ({events}) "
            "AND ts > coalesce((SELECT max(started) FROM training_runs), TIMESTAMPTZ '1970-01-01 00:00:00+00')"
        )
        return int(rows[0][0])

    def ratings_timeline(self) -> list[dict[str, Any]]:
        rows = self._read_dicts(
            "SELECT CAST(date_trunc('day', ts) AS DATE) AS day, count(*) AS count, avg(stars) AS mean_stars, "
            "count(*) FILTER (WHERE thumbs = 'up') AS thumbs_up, "
            "count(*) FILTER (WHERE thumbs = 'down') AS thumbs_down "
            "FROM ratings WHERE source = 'explicit' GROUP BY 1 ORDER BY 1"
        )
        for r in rows:
            r["day"] = r["day"].isoformat()
        return rows

    # -- history --------------------------------------------------------------------------------

    def history(
        self, *, limit: int = 20, offset: int = 0, unrated_only: bool = False, kind: str | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """Newest interactions first, each with its counting rating (if any)."""
        where, params = [], []
        if unrated_only:
            where.append("e.id IS NULL")
        if kind:
            where.append("i.kind = ?")
            params.append(kind)
        cond = ("WHERE " + " AND ".join(where)) if where else ""
        base = f"FROM interactions i LEFT JOIN ({_LATEST_EXPLICIT}) e ON e.interaction_id = i.id {cond}"
        total = self._read(f"SELECT count(*) {base}", params)[0][0]
        rows = self._read_dicts(
            f"SELECT i.id AS interaction_id, i.kind, i.ts, i.prompt, i.response, i.model, i.adapter_version, "
            f"CAST(i.context AS VARCHAR) AS context, "
            f"e.thumbs, e.stars, e.comment, e.id AS rating_id {base} ORDER BY i.ts DESC, i.id LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        items = []
        for r in rows:
            rating = None
            if r.pop("rating_id") is not None:
                rating = {"thumbs": r["thumbs"], "stars": r["stars"], "comment": r["comment"]}
            for k in ("thumbs", "stars", "comment"):
                r.pop(k)
            r["ts"] = _iso(r["ts"])
            r["rating"] = rating
            # `prompt` is what the user asked or typed; `model_prompt` is the exact text the model saw.
            context = _json_or_none(r.pop("context")) or {}
            r["model_prompt"] = r["prompt"]
            r["prompt"] = _display_prompt(context, r["prompt"])
            # Where a completion was asked for, so a review queue can say "main.py, line 12".
            r["uri"], r["line"] = context.get("uri"), context.get("line")
            items.append(r)
        return items, total

    # -- export, snapshot, forget ---------------------------------------------------------------

    def export_snapshot(self, out: Path) -> int:
        """Write the trainer's Parquet snapshot: interactions joined to their counting rating and implicit events."""
        with self._lock:
            n = self._con.execute(f"SELECT count(*) FROM ({_SNAPSHOT})").fetchone()[0]
            self._con.execute(f"COPY ({_SNAPSHOT}) TO '{_sql_path(out)}' (FORMAT parquet)")
        os.chmod(out, 0o600)
        return int(n)

    def export(self, out: Path, fmt: str) -> int:
        """Export every interaction with its ratings (all of them, as a list) to Parquet or JSONL."""
        query = """
            SELECT i.id AS interaction_id, i.ts, i.kind, i.client, i.model, i.adapter_version, i.prompt,
                   CAST(i.context AS VARCHAR) AS context, i.response, i.finish_reason,
                   CAST(i.timings AS VARCHAR) AS timings,
                   list(struct_pack(id := r.id, ts := r.ts, thumbs := r.thumbs, stars := r.stars,
                                    comment := r.comment, source := r.source, event := r.event,
                                    shown_ms := r.shown_ms, accepted_chars := r.accepted_chars,
                                    accepted_words := r.accepted_words, typed_chars := r.typed_chars)
                        ORDER BY r.id) FILTER (WHERE r.id IS NOT NULL) AS ratings,
                   (SELECT list(struct_pack(id := c.id, ts := c.ts, event := c.event, typed := c.typed,
                                            truncated := c.truncated, ended := c.ended) ORDER BY c.id)
                    FROM corrections c WHERE c.interaction_id = i.id) AS corrections
            FROM interactions i LEFT JOIN ratings r ON r.interaction_id = i.id
            GROUP BY ALL ORDER BY i.ts
        """
        if fmt not in ("parquet", "jsonl"):
            raise StoreError(f"export format must be parquet or jsonl, got {fmt!r}")
        # DuckDB writes into a private staging folder of the home; the result is copied into an unnamed file
        # next to `out` and renamed into place. Killed at any point, no half export is left at `out`'s folder,
        # and a path that cannot be written is found before any work (OSError, for the caller to name).
        fd, named = open_unnamed(out.parent)
        staging = staging_dir(self.path.parent)
        try:
            tmp = staging / f"export.{fmt}"
            with self._lock:
                n = self._con.execute(f"SELECT count(*) FROM ({query})").fetchone()[0]
                opts = "(FORMAT parquet)" if fmt == "parquet" else "(FORMAT json)"
                try:
                    self._con.execute(f"COPY ({query}) TO '{_sql_path(tmp)}' {opts}")
                except duckdb.IOException as exc:  # the home's disk: full, most likely
                    raise OSError(
                        errno.ENOSPC if "space" in str(exc) else errno.EIO, str(exc), str(tmp)
                    ) from None
            publish_unnamed(fd, named, tmp, out)
        except BaseException:
            if named is not None:
                named.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
            shutil.rmtree(staging, ignore_errors=True)
        return int(n)

    def forget(self, before: datetime) -> int:
        """Delete interactions (and their ratings) older than `before`, then checkpoint so the text is gone."""
        with self._lock:
            self._con.execute("BEGIN TRANSACTION")
            try:
                ids = "SELECT id FROM interactions WHERE ts < ?"
                self._con.execute(f"DELETE FROM ratings WHERE interaction_id IN ({ids})", [before])
                self._con.execute(f"DELETE FROM corrections WHERE interaction_id IN ({ids})", [before])
                n = self._con.execute(
                    "DELETE FROM interactions WHERE ts < ? RETURNING id", [before]
                ).fetchall()
                # A run's metrics keep the gate's example: a held-out prompt and the answers to it.
                self._con.execute(
                    "UPDATE training_runs SET metrics = json_merge_patch(metrics, ?) "
                    "WHERE json_extract(metrics, '$.gate.example') IS NOT NULL",
                    [json.dumps({"gate": {"example": None}})],
                )
                # A published adapter's evaluation is that gate's, example included.
                self._con.execute(
                    "UPDATE adapters SET eval = json_merge_patch(eval, ?) "
                    "WHERE json_extract(eval, '$.example') IS NOT NULL",
                    [json.dumps({"example": None})],
                )
                self._con.execute("COMMIT")
            except BaseException:
                self._con.rollback()
                raise
            self._compact()
            self._load_explicit_ids()
        return len(n)

    def first_rating_before(self, before: datetime) -> int | None:
        """The lowest id of the ratings that `forget(before)` deletes; None when it deletes none."""
        rows = self._read(
            "SELECT min(r.id) FROM ratings r JOIN interactions i ON r.interaction_id = i.id WHERE i.ts < ?",
            [before],
        )
        return None if rows[0][0] is None else int(rows[0][0])

    def runs_trained_on(self, rating_id: int) -> set[int]:
        """The runs whose data included rating `rating_id` or a later one (each exports every rating so far).
        A run from before watermarks were recorded (0) counts too: what it saw is unknown."""
        rows = self._read(
            "SELECT id FROM training_runs WHERE coalesce(rating_watermark, 0) = 0 OR rating_watermark >= ?",
            [rating_id],
        )
        return {int(r[0]) for r in rows}

    def _compact(self) -> None:
        """Rewrite the database file so deleted text does not linger in freed blocks."""
        tmp = self.path.with_name(f".{self.path.name}.compact")
        tmp.unlink(missing_ok=True)
        current = self._con.execute("SELECT current_database()").fetchone()[0]
        self._con.execute("CHECKPOINT")
        old = os.umask(0o077)
        try:
            self._con.execute(f"ATTACH '{_sql_path(tmp)}' AS reinf_compact")
            self._con.execute(f'COPY FROM DATABASE "{current}" TO reinf_compact')
            self._con.execute("DETACH reinf_compact")
        finally:
            os.umask(old)
        if self._encrypted:
            tmp.unlink(missing_ok=True)  # an encrypted file holds no readable text; keep it as it is
            return

        def replace() -> None:
            os.replace(tmp, self.path)
            self.path.with_name(self.path.name + ".wal").unlink(missing_ok=True)

        self._con.reopen_after(replace)

    # -- training runs and adapters -------------------------------------------------------------

    def create_run(self, trigger: str, n_ratings: int, watermark: int) -> int:
        with self._lock:
            rows = self._write(
                "INSERT INTO training_runs (trigger, state, started, n_ratings, rating_watermark, event_watermark, "
                "metrics) VALUES (?, 'queued', ?, ?, ?, (SELECT coalesce(max(id), 0) FROM ratings), '{}') "
                "RETURNING id",
                [trigger, _now(), n_ratings, watermark],
            )
            self._refresh_last_run()
        return int(rows[0][0])

    def update_run(self, run_id: int, **fields: Any) -> None:
        allowed = {"state", "finished", "metrics", "error", "pid", "started"}
        bad = set(fields) - allowed
        if bad:
            raise StoreError(f"cannot update run fields {sorted(bad)}")
        if "metrics" in fields and not isinstance(fields["metrics"], str):
            fields["metrics"] = json.dumps(fields["metrics"])
        if fields.get("finished") is True:
            fields["finished"] = _now()
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._write(f"UPDATE training_runs SET {sets} WHERE id = ?", [*fields.values(), run_id])
            self._refresh_last_run()

    def _refresh_last_run(self) -> None:
        # Read again by whoever changed the runs, under the lock: status then reads it without the lock.
        self._last_run = self.list_runs(limit=1)

    def last_run(self) -> dict[str, Any] | None:
        """The newest run, as of the last change to the runs."""
        cached = self._last_run
        return cached[0] if cached else None

    def get_run(self, run_id: int) -> dict[str, Any] | None:
        rows = self.list_runs(where="r.id = ?", params=[run_id])
        return rows[0] if rows else None

    def list_runs(
        self, limit: int = 20, where: str = "", params: list[Any] | None = None
    ) -> list[dict[str, Any]]:
        cond = f"WHERE {where}" if where else ""
        rows = self._read_dicts(
            f"SELECT r.id AS run_id, r.trigger, r.state, r.started, r.finished, r.n_ratings, r.metrics, r.error, "
            f"r.rating_watermark, r.event_watermark, r.pid, a.version AS adapter_version FROM training_runs r "
            f"LEFT JOIN adapters a ON a.run_id = r.id {cond} ORDER BY r.id DESC LIMIT ?",
            [*(params or []), limit],
        )
        for r in rows:
            r["started"] = _iso(r["started"])
            r["finished"] = _iso(r["finished"])
            r["metrics"] = _json_or_none(r["metrics"]) or {}
        return rows

    def unfinished_runs(self) -> list[dict[str, Any]]:
        return self.list_runs(limit=1000, where="r.state IN ('queued', 'running')")

    def counting_watermark(self) -> int:
        """The rating watermark that new ratings count from: the newest run's, whatever its state (a failed run
        is retried only at the next threshold), except a manual run that the trainer turned down before it used
        any rating (too few, one kind only; its metrics say `used_ratings: false`): it learnt nothing, so the
        ratings it saw still count. A threshold run turned down so does count: otherwise every rating after it
        would start another run that is turned down the same way (all disliked answers did, one run a rating)."""
        rows = self._read(
            "SELECT coalesce(rating_watermark, 0) FROM training_runs "
            "WHERE trigger = 'threshold' "
            "OR coalesce(json_extract_string(metrics, '$.used_ratings'), 'true') <> 'false' "
            "ORDER BY id DESC LIMIT 1"
        )
        return int(rows[0][0]) if rows else 0

    def next_adapter_version(self) -> int:
        return int(self._read("SELECT coalesce(max(version), 0) + 1 FROM adapters")[0][0])

    def add_adapter(self, version: int, run_id: int, path: str, status: str, eval_: dict[str, Any]) -> None:
        with self._lock:
            self._write(
                "INSERT INTO adapters VALUES (?, ?, ?, ?, ?, ?)",
                [version, run_id, _now(), path, status, json.dumps(eval_)],
            )
            self._refresh_last_run()  # its run now has an adapter_version

    def activate_adapter(self, version: int) -> None:
        """Mark `version` active (0 = the base) and retire the previously active one, in one transaction."""
        with self._lock:
            self._con.execute("BEGIN TRANSACTION")
            try:
                self._con.execute("UPDATE adapters SET status = 'retired' WHERE status = 'active'")
                if version:
                    self._con.execute("UPDATE adapters SET status = 'active' WHERE version = ?", [version])
                self._con.execute("COMMIT")
            except BaseException:
                self._con.rollback()
                raise

    def set_adapter_status(self, version: int, status: str) -> None:
        self._write("UPDATE adapters SET status = ? WHERE version = ?", [status, version])

    def list_adapters(self) -> list[dict[str, Any]]:
        rows = self._read_dicts("SELECT * FROM adapters ORDER BY version DESC")
        for r in rows:
            r["created"] = _iso(r["created"])
            r["eval"] = _json_or_none(r["eval"]) or {}
        return rows

    def active_adapter(self) -> dict[str, Any] | None:
        rows = [a for a in self.list_adapters() if a["status"] == "active"]
        return rows[0] if rows else None


def _row(
    *,
    kind: str,
    client: str,
    model: str,
    adapter_version: int,
    prompt: str,
    context: dict[str, Any] | None,
    response: str,
    finish_reason: str,
    timings: dict[str, float],
    interaction_id: str | None = None,
) -> dict[str, Any]:
    """An interactions row, as the journal holds it."""
    return {
        "id": interaction_id or uuid.uuid4().hex,
        "ts": _now().isoformat(),
        "kind": kind,
        "client": client,
        "model": model,
        "adapter_version": int(adapter_version),
        "prompt": prompt,
        "context": json.dumps(context or {}),
        "response": response,
        "finish_reason": finish_reason,
        "timings": json.dumps(timings),
    }


class _Lock:
    """The store's lock (re-entrant), held around every statement. Its outermost acquisition first takes the
    journal's waiting completions into DuckDB, so that no read or write can miss one that was acknowledged, and
    a transaction never starts with some still outside."""

    def __init__(self, take_in: Callable[[], None]) -> None:
        self._lock = threading.RLock()
        self._depth = 0  # changed only by the thread that holds the lock
        self._take_in = take_in
        self._taking_in = True

    def __enter__(self) -> None:
        self._lock.acquire()
        self._depth += 1
        if self._depth == 1 and self._taking_in:
            try:
                self._take_in()
            except BaseException:
                self.__exit__()
                raise

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        self._lock.release()

    @contextmanager
    def without_taking_in(self) -> Iterator[None]:
        """Held without taking anything in (closing the connection)."""
        with self._lock:
            self._taking_in = False
            try:
                yield
            finally:
                self._taking_in = True


class _Connection:
    """The store's one DuckDB connection. After a fatal error (a checkpoint that a full disk could not take, say)
    DuckDB invalidates the database and refuses every later statement until it is opened again, which would
    leave a daemon that holds its port and fails every request. This opens it again at once, and before each
    later statement until that works; meanwhile each request gets a StoreError that says what to do.

    Every statement goes through `execute`, under the store's lock. What DuckDB had committed before the error
    is in the file or its WAL and comes back when the file is opened again; the statement that failed (its
    commit is the checkpoint that could not be written) was not stored."""

    def __init__(
        self,
        path: Path,
        open_: Callable[[], duckdb.DuckDBPyConnection],
        on_reopen: Callable[[], None],
    ) -> None:
        self.path = path
        self._open = open_
        self._on_reopen = on_reopen
        self._con: duckdb.DuckDBPyConnection | None = open_()
        self.reopened = 0  # times the database was opened again after a fatal error

    def execute(self, sql: str, params: list[Any] | None = None) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            self._reopen()
        assert self._con is not None
        try:
            return self._con.execute(sql, params or [])
        except duckdb.FatalException as exc:
            detail = _first_line(exc)
            self._discard()
            try:
                self._reopen()
            except StoreError as again:
                raise StoreError(
                    f"the store {self.path} stopped after a fatal error ({detail}) and cannot be opened again "
                    f"yet ({again}); nothing was stored. Free space on its disk: reinf opens it again at the "
                    "next request, with everything stored before."
                ) from exc
            raise StoreError(
                f"the store {self.path} stopped after a fatal error ({detail}); nothing was stored. reinf "
                "opened it again, with everything stored before: try again"
                + (", after freeing space on its disk." if "space" in detail else ".")
            ) from exc

    def rollback(self) -> None:
        """End a failed transaction; after a reopen there is none to end."""
        try:
            self.execute("ROLLBACK")
        except (duckdb.Error, StoreError):
            pass

    def reopen_after(self, change: Callable[[], None]) -> None:
        """Close the database, `change` its files, and open it again."""
        self._discard()
        change()
        self._con = self._open()

    def close(self) -> None:
        self._discard()

    def _discard(self) -> None:
        con, self._con = self._con, None
        if con is not None:
            try:
                con.close()
            except duckdb.Error:
                pass

    def _reopen(self) -> None:
        self._con = self._open()
        self.reopened += 1
        try:
            self._on_reopen()  # counts kept beside the database are read again from it
        except BaseException:
            self._discard()
            raise


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _display_prompt(context: dict[str, Any], model_prompt: str) -> str:
    messages = context.get("messages") if isinstance(context, dict) else None
    if isinstance(messages, list):
        users = [m.get("content", "") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        if users:
            return users[-1]
    if isinstance(context, dict) and isinstance(context.get("before_cursor"), str):
        return context["before_cursor"]
    return model_prompt


def _sql_path(path: Path) -> str:
    text = str(path)
    if "'" in text:
        raise StoreError(f"paths with a single quote are not supported: {text}")
    return text
