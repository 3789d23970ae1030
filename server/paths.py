"""Where reinf keeps its files, and how it creates them privately (folders 0700, files 0600)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import platformdirs


def reinf_home(environ: Mapping[str, str] | None = None) -> Path:
    """`$REINF_HOME`, else the platform's user data folder."""
    env = os.environ if environ is None else environ
    if env.get("REINF_HOME"):
        return Path(env["REINF_HOME"]).expanduser()
    return Path(platformdirs.user_data_dir("reinf", appauthor=False))


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Built models live here, outside REINF_HOME: `$REINF_CACHE`, else the platform's cache folder."""
    env = os.environ if environ is None else environ
    if env.get("REINF_CACHE"):
        return Path(env["REINF_CACHE"]).expanduser()
    return Path(platformdirs.user_cache_dir("reinf", appauthor=False))


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) and make it 0700."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, data: str | bytes) -> None:
    """Write a file atomically with mode 0600 (temp file in the same folder, then rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    """Write JSON privately and atomically."""
    write_private(path, json.dumps(obj, indent=2, sort_keys=True))


@contextmanager
def atomic_dir(final: Path, *, replace: bool = True) -> Iterator[Path]:
    """Fill a private temporary sibling of `final`, then fsync it and rename it into place: `final` is whole or
    as it was. An error inside the block removes the temporary folder. With `replace`, an existing `final` is
    swapped out (and removed) only once the new one is complete."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700)
    try:
        yield tmp
        fsync_tree(tmp)
        if final.exists():
            if not replace:
                raise FileExistsError(f"{final} already exists")
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under `root`, so that a rename after it publishes whole files."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def relative_to_home(path: Path, home: Path) -> str:
    """How a path under REINF_HOME is stored: relative to it, so a copied or moved home still works."""
    try:
        return str(Path(path).relative_to(home))
    except ValueError:
        return str(path)


def under_home(stored: str, home: Path) -> Path:
    """A stored path back as a real one: relative ones are under `home`; absolute ones (older rows) as given."""
    p = Path(stored)
    return p if p.is_absolute() else home / p


# `reinf serve` exits with this when another daemon has the home (`daemon.lock`): starters then use that one.
ALREADY_RUNNING = 3


def try_lock(path: Path) -> int | None:
    """Take an exclusive lock on `path` (created 0600) without waiting: the open descriptor, which holds the
    lock until it is closed or the process ends, or None when another process holds it."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def wait_lock(path: Path, timeout: float) -> int | None:
    """`try_lock`, retried until `timeout` seconds have passed; None if the lock never came free."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        fd = try_lock(path)
        if fd is not None or time.monotonic() >= deadline:
            return fd
        time.sleep(0.05)
