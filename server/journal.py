"""The completion journal: how an inline completion is committed without waiting for DuckDB.

An answered completion must survive a crash, or the accept or dismiss that follows it finds nothing. A DuckDB
insert and commit costs about a millisecond on this path, several under load; appending one line to a file and
fsyncing it costs about 0.15 ms. So a completion's row is appended here and fsync'd before the answer (that
append is its commit), and the store moves it into DuckDB soon after, on its writer, and before any statement
that could miss it (`Store` takes it in whenever its lock is taken). The file is emptied once nothing in it is
waiting; what a crash leaves in it is taken in at the next start.

The file is 0600 in REINF_HOME, like the database, and holds the same redacted text. At start-up it is read as
a file reinf did not necessarily write: a line that is not a well-formed row is skipped and logged (without its
text); a torn last line is one whose append was never acknowledged."""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from .paths import read_private_file, write_all, write_private

log = logging.getLogger(__name__)

# A row's fields and their types, in the interactions table's column order.
FIELDS: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "ts": (str,),
    "kind": (str,),
    "client": (str, type(None)),
    "model": (str,),
    "adapter_version": (int,),
    "prompt": (str,),
    "context": (str,),
    "response": (str,),
    "finish_reason": (str, type(None)),
    "timings": (str,),
}
KINDS = ("completion", "chat", "ask")


class Journal:
    """Rows appended (and fsync'd) but not yet in DuckDB, in order. Thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._pending = _read_rows(path)
        self._fd = self._open()

    def _open(self) -> int:
        return os.open(
            self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )

    def append(self, row: dict[str, Any]) -> None:
        """Commit one row: it is on disk when this returns."""
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            write_all(self._fd, line)
            os.fdatasync(self._fd)
            self._pending.append(row)

    def pending(self) -> list[dict[str, Any]]:
        """The rows waiting for DuckDB, oldest first."""
        with self._lock:
            return list(self._pending)

    def __len__(self) -> int:
        return len(self._pending)

    def taken_in(self, n: int) -> None:
        """The oldest `n` pending rows are committed to DuckDB: drop them from the file. When none is left the
        file is emptied; when rows were appended meanwhile it is rewritten with only those, so that a row once
        in DuckDB (and maybe forgotten since) is never taken in again."""
        with self._lock:
            del self._pending[:n]
            if not self._pending:
                os.ftruncate(self._fd, 0)
                os.fsync(self._fd)
                return
            lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self._pending)
            os.close(self._fd)
            write_private(self.path, lines)
            self._fd = self._open()

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def row_values(row: dict[str, Any]) -> list[Any]:
    """A journal row as the interactions table's column values."""
    return [datetime.fromisoformat(row["ts"]) if k == "ts" else row[k] for k in FIELDS]


def _read_rows(path: Path) -> list[dict[str, Any]]:
    data = read_private_file(path, "the completion journal")
    if not data:
        return []
    rows, skipped = [], 0
    lines = data.split(b"\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        row = _parse(line)
        if row is None:
            if n < len(lines) or data.endswith(b"\n"):  # a torn last line was never acknowledged
                skipped += 1
            continue
        rows.append(row)
    if skipped:
        log.warning(
            "the completion journal %s had %d line(s) that are not a stored row; skipped", path, skipped
        )
    return rows


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if not isinstance(row, dict) or set(row) != set(FIELDS):
        return None
    for key, types in FIELDS.items():
        if not isinstance(row[key], types) or isinstance(row[key], bool):
            return None
    if row["kind"] not in KINDS:
        return None
    try:
        datetime.fromisoformat(row["ts"])
    except ValueError:
        return None
    return row
