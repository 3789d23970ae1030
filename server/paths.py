"""Where reinf keeps its files, and how it creates them privately (folders 0700, files 0600)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
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
    """Write a file atomically with mode 0600: a fresh temp file in the same folder, then rename.

    The temp file gets a random name and is created exclusively without following links (mkstemp:
    O_CREAT|O_EXCL|O_NOFOLLOW), so a file or symlink planted under a name that could be guessed is never
    written through; the rename replaces a link at `path` itself rather than the file it points to."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class UnsafePath(OSError):
    """A file or folder that reinf would trust belongs to someone else, or others can write it."""


def check_owned(path: Path, what: str, st: os.stat_result | None = None) -> os.stat_result | None:
    """Refuse `path` when another user owns it or group or others can write it; None when it does not exist.

    Such a file may have been planted (a config that turns on trust_remote_code or turns redaction off, a
    daemon.json that points at an impostor): it is refused with what to fix, never read."""
    if st is None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
    mine = os.geteuid()
    if st.st_uid != mine:
        raise UnsafePath(
            f"{what} {path} belongs to uid {st.st_uid}, not to you (uid {mine}), so it may have been planted; "
            f"reinf will not use it. Check it, then remove it or `chown` it to yourself."
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        mode = "700" if stat.S_ISDIR(st.st_mode) else "600"
        raise UnsafePath(
            f"{what} {path} is writable by others (mode {stat.S_IMODE(st.st_mode):04o}), so what is in it may "
            f"have been planted; reinf will not use it. Check it, then `chmod {mode} {path}`."
        )
    return st


def check_home(home: Path) -> None:
    """Refuse a REINF_HOME that is not a folder of this user's that only they can write (nothing if absent).

    Run before anything in the home is read: files planted while it was writable would be obeyed."""
    st = check_owned(home, "REINF_HOME")
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"REINF_HOME {home} is not a folder; point REINF_HOME at a folder of your own")


def open_private_file(path: Path, what: str) -> int | None:
    """Open `path` for reading and refuse it as check_owned does, or when it is not a plain file.

    None when it does not exist. The checks run on the open file (a link is followed, and what it points at
    is checked), so nothing can be swapped in between the check and the read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a planted FIFO must not hang the read
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise UnsafePath(f"{what} {path} is a folder; remove it or put a file there") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a plain file"
            raise UnsafePath(f"{what} {path} is {kind}; remove it or put a file there")
        check_owned(path, what, st)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_private_file(path: Path, what: str) -> bytes | None:
    """The bytes of `path` after open_private_file's checks; None when it does not exist."""
    fd = open_private_file(path, what)
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def write_json(path: Path, obj: Any) -> None:
    """Write JSON privately and atomically."""
    write_private(path, json.dumps(obj, indent=2, sort_keys=True))


def staging_dir(home: Path) -> Path:
    """A fresh private folder under `$REINF_HOME/tmp`, which the daemon empties at start-up: what a process
    killed mid-write leaves there is removed then, never seen as a result."""
    return Path(tempfile.mkdtemp(dir=private_dir(home / "tmp")))


def open_unnamed(folder: Path) -> tuple[int, Path | None]:
    """A new, empty 0600 file in `folder` for `publish_unnamed`: unnamed (O_TMPFILE) where the file system
    allows, so a process killed before it is published leaves nothing; else a random name made exclusively.
    Raises OSError as opening would (permission denied, read-only, no such folder)."""
    try:
        return os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o600), None
    except (AttributeError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
    fd, name = tempfile.mkstemp(prefix=".reinf-", suffix=".tmp", dir=folder)
    return fd, Path(name)


def publish_unnamed(fd: int, named: Path | None, src: Path, out: Path) -> None:
    """Copy `src` into the file from `open_unnamed`, fsync it, and put it at `out` in one rename (which
    replaces a link there rather than writing through it)."""
    _copy_synced(src, fd)
    if named is None:
        named = out.with_name(f".{out.name}.{os.urandom(8).hex()}.tmp")
        try:
            os.link(f"/proc/self/fd/{fd}", named, follow_symlinks=True)
        except OSError:  # a file system that cannot name an unnamed file (overlayfs): a named one, then
            fd2, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
            named = Path(name)
            try:
                _copy_synced(src, fd2)
            except BaseException:
                named.unlink(missing_ok=True)
                raise
            finally:
                os.close(fd2)
    try:
        os.replace(named, out)
    except BaseException:
        named.unlink(missing_ok=True)
        raise


def _copy_synced(src: Path, fd: int) -> None:
    with open(src, "rb") as fh:
        while chunk := fh.read(1 << 20):
            write_all(fd, chunk)
    os.fsync(fd)


def write_all(fd: int, data: bytes) -> None:
    """All of `data` to `fd` (os.write may take part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def export_problem(out: Path, exc: OSError) -> Exception:
    """The protocol error for an export that could not be written: -32602 naming the path when another path
    would do (permission denied, read-only, no such folder), -32603 when the disk is full."""
    from pygls.exceptions import JsonRpcInternalError

    from .validate import InvalidParams

    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return JsonRpcInternalError(
            f"reinf/export: could not write {str(out)!r}: no space left on the disk that holds "
            f"{exc.filename or out.parent}; nothing was written there; free some space and export again"
        )
    return InvalidParams(f"reinf/export: path: cannot write {str(out)!r}: {exc.strerror or exc}")


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
