"""Schema history: small numbered functions, each applied once and recorded in `migrations`."""

from __future__ import annotations

from collections.abc import Callable

import duckdb


def m001_initial(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("""
        CREATE TABLE interactions (
            id VARCHAR PRIMARY KEY,
            ts TIMESTAMPTZ NOT NULL,
            kind VARCHAR NOT NULL CHECK (kind IN ('completion', 'chat', 'ask')),
            client VARCHAR,
            model VARCHAR NOT NULL,
            adapter_version INTEGER NOT NULL,
            prompt VARCHAR NOT NULL,
            context JSON,
            response VARCHAR NOT NULL,
            finish_reason VARCHAR,
            timings JSON
        )""")
    con.execute("CREATE SEQUENCE ratings_id_seq START 1")
    con.execute("""
        CREATE TABLE ratings (
            id BIGINT PRIMARY KEY DEFAULT nextval('ratings_id_seq'),
            interaction_id VARCHAR NOT NULL,
            ts TIMESTAMPTZ NOT NULL,
            thumbs VARCHAR CHECK (thumbs IS NULL OR thumbs IN ('up', 'down')),
            stars INTEGER CHECK (stars IS NULL OR stars BETWEEN 1 AND 5),
            comment VARCHAR,
            source VARCHAR NOT NULL CHECK (source IN ('explicit', 'implicit')),
            event VARCHAR
        )""")
    con.execute("CREATE SEQUENCE training_runs_id_seq START 1")
    con.execute("""
        CREATE TABLE training_runs (
            id BIGINT PRIMARY KEY DEFAULT nextval('training_runs_id_seq'),
            trigger VARCHAR NOT NULL CHECK (trigger IN ('threshold', 'manual')),
            state VARCHAR NOT NULL
                CHECK (state IN ('queued', 'running', 'published', 'rejected', 'failed', 'cancelled')),
            started TIMESTAMPTZ,
            finished TIMESTAMPTZ,
            n_ratings INTEGER,
            metrics JSON,
            error VARCHAR
        )""")
    con.execute("""
        CREATE TABLE adapters (
            version INTEGER PRIMARY KEY,
            run_id BIGINT,
            created TIMESTAMPTZ NOT NULL,
            path VARCHAR NOT NULL,
            status VARCHAR NOT NULL CHECK (status IN ('candidate', 'active', 'rejected', 'retired')),
            eval JSON
        )""")
    con.execute("CREATE INDEX ratings_interaction ON ratings (interaction_id)")


def m002_rating_watermark(con: duckdb.DuckDBPyConnection) -> None:
    # The highest rating id a run saw, so "ratings until the next training" counts only newer ones.
    con.execute("ALTER TABLE training_runs ADD COLUMN rating_watermark BIGINT DEFAULT 0")
    con.execute("ALTER TABLE training_runs ADD COLUMN pid INTEGER")


def m003_forgotten_adapters(con: duckdb.DuckDBPyConnection) -> None:
    # `forget` deletes the adapters trained on forgotten ratings. Their rows stay, as 'forgotten', so that no
    # version number is used twice. DuckDB cannot change a CHECK constraint in place: the table is rebuilt.
    con.execute("""
        CREATE TABLE adapters_new (
            version INTEGER PRIMARY KEY,
            run_id BIGINT,
            created TIMESTAMPTZ NOT NULL,
            path VARCHAR NOT NULL,
            status VARCHAR NOT NULL
                CHECK (status IN ('candidate', 'active', 'rejected', 'retired', 'forgotten')),
            eval JSON
        )""")
    con.execute("INSERT INTO adapters_new SELECT version, run_id, created, path, status, eval FROM adapters")
    con.execute("DROP TABLE adapters")
    con.execute("ALTER TABLE adapters_new RENAME TO adapters")


def m004_completion_events(con: duckdb.DuckDBPyConnection) -> None:
    # What happened to an inline completion, in typed columns of its implicit rating: how long it was on screen
    # with the editor focused, how much of it went in through accept commands (characters, words) and how much
    # the user typed through by hand. Details stored before this migration as JSON in `comment` move there.
    for column in ("shown_ms", "accepted_chars", "accepted_words", "typed_chars"):
        con.execute(f"ALTER TABLE ratings ADD COLUMN {column} INTEGER")
    con.execute("""
        UPDATE ratings SET
            shown_ms = TRY_CAST(json_extract_string(comment, '$.shown_ms') AS INTEGER),
            accepted_chars = TRY_CAST(json_extract_string(comment, '$.accepted_chars') AS INTEGER),
            comment = NULL
        WHERE source = 'implicit' AND json_valid(comment) AND left(comment, 1) = '{'
    """)
    # What the user wrote at a suggestion's place after dismissing, partly accepting or typing through it.
    con.execute("CREATE SEQUENCE corrections_id_seq START 1")
    con.execute("""
        CREATE TABLE corrections (
            id BIGINT PRIMARY KEY DEFAULT nextval('corrections_id_seq'),
            interaction_id VARCHAR NOT NULL,
            ts TIMESTAMPTZ NOT NULL,
            event VARCHAR NOT NULL,
            typed VARCHAR NOT NULL,
            truncated BOOLEAN NOT NULL,
            ended VARCHAR NOT NULL CHECK (ended IN ('moved', 'lines', 'timeout', 'size', 'closed'))
        )""")
    con.execute("CREATE INDEX corrections_interaction ON corrections (interaction_id)")


def m005_event_watermark(con: duckdb.DuckDBPyConnection) -> None:
    # The highest id in `ratings` of any kind (implicit events too) when a run started: the completion events
    # after it are new to the adapter that run made. 0: not recorded (a run from before this migration).
    con.execute("ALTER TABLE training_runs ADD COLUMN event_watermark BIGINT DEFAULT 0")


MIGRATIONS: list[Callable[[duckdb.DuckDBPyConnection], None]] = [
    m001_initial,
    m002_rating_watermark,
    m003_forgotten_adapters,
    m004_completion_events,
    m005_event_watermark,
]


def migrate(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Apply the migrations not yet recorded, each in its own transaction. Returns the names applied."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS migrations (name VARCHAR PRIMARY KEY, applied TIMESTAMPTZ DEFAULT now())"
    )
    done = {row[0] for row in con.execute("SELECT name FROM migrations").fetchall()}
    applied = []
    for fn in MIGRATIONS:
        if fn.__name__ in done:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            fn(con)
            con.execute("INSERT INTO migrations (name) VALUES (?)", [fn.__name__])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        applied.append(fn.__name__)
    return applied
