"""The daemon's own log file: everything it prints, capped in size by rotation (daemon.log, daemon.log.1)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

DEFAULT_MAX_BYTES = 5 * 1024 * 1024  # per file; with one older file kept, the log never passes 10 MiB


class _Rotate(logging.Handler):
    """After each record, when the log is past its cap, move it to `<name>.1` and start a new one.

    The file is the process's stdout and stderr (fds 1 and 2), so tracebacks, warnings and prints land in it
    too, and are rotated with it."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        super().__init__()
        self.path, self.max_bytes = path, max_bytes

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if os.fstat(2).st_size <= self.max_bytes:
                return
            sys.stdout.flush()
            sys.stderr.flush()
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            _point_stdio_at(self.path)
        except OSError:
            self.handleError(record)


def _point_stdio_at(path: Path) -> None:
    # O_NOFOLLOW: a symlink planted at the log's name must not receive the log
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)


def log_to_file(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Send this process's stdout, stderr and log records to `path`, rotated past `max_bytes`."""
    sys.stdout.flush()
    sys.stderr.flush()
    _point_stdio_at(path)
    logging.getLogger().addHandler(_Rotate(path, max_bytes))


def discard_logs() -> list[Path]:
    """Empty this process's log file and delete its older one; the paths emptied (none when the log is not a
    file). `forget` calls it: at DEBUG the log holds what clients sent."""
    emptied = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _Rotate):
            sys.stdout.flush()
            sys.stderr.flush()
            handler.path.with_name(handler.path.name + ".1").unlink(missing_ok=True)
            os.ftruncate(2, 0)  # fds 1 and 2 are the log, opened to append: writes go on from the new end
            emptied.append(handler.path)
    return emptied
