"""A small synchronous client of the daemon, used by the CLI, the Jupyter magic, tests and benchmarks."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .framing import frame, read_frame
from .liveness import NotTheDaemon, is_reinf_daemon, prove
from .paths import (
    ALREADY_RUNNING,
    UnsafePath,
    check_home,
    private_dir,
    read_private_file,
    reinf_home,
    wait_lock,
)


class ReinfError(Exception):
    """Base of the client's errors."""


class DaemonUnavailable(ReinfError):
    """No daemon answers, and none could be started. The message is one line that a page or a notebook may
    show; `detail` (the end of the daemon's log, for a terminal) is kept apart from it."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class RpcError(ReinfError):
    """The daemon answered a request with an error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{message} (error {code})")
        self.code = code
        self.message = message
        self.data = data


def read_daemon_info(home: Path) -> dict[str, Any] | None:
    """The daemon.json of `home`, None when there is none or it is not JSON.

    Refused (DaemonUnavailable, with what to fix) when the home or the file belongs to someone else or others
    can write it: a planted daemon.json would send the token and every prompt to whoever listens there."""
    try:
        check_home(home)
        raw = read_private_file(home / "daemon.json", "daemon.json")
    except UnsafePath as exc:
        raise DaemonUnavailable(str(exc)) from None
    except OSError:
        return None
    try:
        return json.loads(raw) if raw is not None else None
    except ValueError:
        return None


def start_daemon(home: Path, timeout: float = 300.0, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Use the daemon that answers for `home`, else start `reinf serve` in the background and wait until one
    answers. Starters take `start.lock` in turn, so two at once start one daemon; one started by something
    else at the same moment (an editor running `reinf serve`) wins or loses the daemon's own lock, and the
    loser's starter then uses the winner."""
    try:
        check_home(home)
    except UnsafePath as exc:
        raise DaemonUnavailable(str(exc)) from None
    private_dir(home)
    lock = wait_lock(home / "start.lock", timeout)
    if lock is None:
        raise DaemonUnavailable(f"another reinf starter held {home / 'start.lock'} for {timeout:.0f} s")
    try:
        info = read_daemon_info(home)
        if info and _answers(info):
            return info
        return _spawn_and_wait(home, timeout, env)
    finally:
        os.close(lock)


def _spawn_and_wait(home: Path, timeout: float, env: dict[str, str] | None) -> dict[str, Any]:
    log_path = home / "daemon.log"
    environ = {**os.environ, **(env or {}), "REINF_HOME": str(home)}
    try:  # never through a link planted there: the daemon's output would land in the file it points at
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise DaemonUnavailable(f"cannot open {log_path} for the daemon's log: {exc.strerror}") from exc
    with os.fdopen(fd, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reinf", "serve", "--log-file", str(log_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=environ,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = read_daemon_info(home)
        rc = proc.poll()
        # Ours, or (once ours has found the home taken) the daemon that took it.
        if info and (info.get("pid") == proc.pid or rc == ALREADY_RUNNING) and _answers(info):
            return info
        if rc is not None and rc != ALREADY_RUNNING:
            tail = log_path.read_text(errors="replace")[-2000:]
            # `reinf serve` says what stopped it in one line that starts "reinf: "; a traceback stays in the log
            said = [ln[len("reinf: ") :] for ln in tail.splitlines() if ln.startswith("reinf: ")]
            why = f": {said[-1]}" if said else "; its log, daemon.log in REINF_HOME, says why"
            raise DaemonUnavailable(
                f"reinf serve exited with code {rc}{why}",
                detail=f"the end of {log_path}:\n{tail}",
            )
        time.sleep(0.2)
    raise DaemonUnavailable(f"reinf serve did not answer within {timeout:.0f} s; see {log_path}")


def running_daemon(home: Path | None = None) -> dict[str, Any] | None:
    """The daemon.json of the daemon of `home` (default REINF_HOME) if it answers, else None; starts nothing."""
    info = read_daemon_info(Path(home) if home is not None else reinf_home())
    return info if info and _answers(info) else None


def _answers(info: dict[str, Any]) -> bool:
    try:
        with socket.create_connection((info.get("host", "127.0.0.1"), int(info["port"])), timeout=1.0):
            return True
    except (OSError, KeyError, ValueError, TypeError):
        return False


class Client:
    """One authenticated connection. Thread-safe: requests may be sent from any thread."""

    def __init__(
        self, host: str, port: int, token: str, *, client_name: str = "python", timeout: float = 10.0
    ):
        self._sock = socket.create_connection((host, port), timeout=timeout)
        try:  # before the token goes out: a process squatting a dead daemon's port must not receive it
            prove(self._sock, token, timeout=timeout)
        except NotTheDaemon as exc:
            self._sock.close()
            raise DaemonUnavailable(
                f"whatever listens on 127.0.0.1:{port} is not the reinf daemon that daemon.json names: {exc}; "
                "the token was not sent. If a reinf daemon was restarted, connect again; otherwise stop that "
                "process, then start `reinf serve`"
            ) from None
        self._sock.settimeout(None)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, dict[str, Any]] = {}
        self._pending_lock = threading.Lock()
        self._progress: dict[str, Callable[[Any], None]] = {}
        self._handlers: dict[str, list[Callable[[Any], None]]] = {}
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read_loop, name="reinf-client-reader", daemon=True)
        self._reader.start()
        self.server_info = self.request(
            "initialize",
            {
                "processId": os.getpid(),
                "rootUri": None,
                "capabilities": {},
                "clientInfo": {"name": client_name},
                "initializationOptions": {"token": token, "client": client_name},
            },
            timeout=timeout,
        )
        self.notify("initialized", {})

    @classmethod
    def connect(
        cls,
        home: Path | str | None = None,
        *,
        start: bool = True,
        timeout: float = 30.0,
        client_name: str = "python",
        start_timeout: float = 300.0,
    ) -> Client:
        """Connect to the daemon of `home` (default REINF_HOME), starting one if none answers and `start`."""
        home = Path(home) if home is not None else reinf_home()
        info = read_daemon_info(home)
        # a daemon.json left by a daemon that died (kill -9) names a port that anyone may hold now
        if not (info and is_reinf_daemon(info.get("pid")) and _answers(info)):
            if not start:
                stale = (
                    f" (daemon.json names pid {info.get('pid')}, which is not a running reinf daemon)"
                    if info
                    else ""
                )
                raise DaemonUnavailable(
                    f"no reinf daemon is running for {home}{stale}; start one with `reinf serve` (or `make run`)"
                )
            info = start_daemon(home, timeout=start_timeout)
        try:
            return cls(
                info.get("host", "127.0.0.1"),
                int(info["port"]),
                info["token"],
                client_name=client_name,
                timeout=timeout,
            )
        except OSError as exc:
            raise DaemonUnavailable(
                f"cannot reach the reinf daemon at port {info.get('port')}: {exc}"
            ) from exc

    # -- wire --------------------------------------------------------------------------------------

    def _send(self, obj: dict[str, Any]) -> None:
        data = frame(obj)
        with self._send_lock:
            if self._closed.is_set():
                raise DaemonUnavailable("the connection to the reinf daemon is closed")
            self._sock.sendall(data)

    def _read_loop(self) -> None:
        buf = self._sock.makefile("rb")
        try:
            while (body := read_frame(buf)) is not None:
                self._dispatch(json.loads(body))
        except (OSError, ValueError):  # FramingError is a ValueError
            return
        finally:
            self._closed.set()
            with self._pending_lock:
                for slot in self._pending.values():
                    slot.setdefault("error", {"code": -32099, "message": "connection to the daemon closed"})
                    slot["event"].set()

    def _dispatch(self, msg: dict[str, Any]) -> None:
        if "id" in msg and ("result" in msg or "error" in msg):
            with self._pending_lock:
                slot = self._pending.get(msg["id"])
            if slot is not None:
                slot.update(msg)
                slot["event"].set()
            return
        method = msg.get("method")
        params = msg.get("params")
        if method == "$/progress" and isinstance(params, dict):
            callback = self._progress.get(str(params.get("token")))
            if callback is not None:
                callback(params.get("value"))
            return
        if "id" in msg:  # a server → client request: answer it so the server does not wait
            self._send({"jsonrpc": "2.0", "id": msg["id"], "result": None})
        for handler in list(self._handlers.get(method, [])):
            try:
                handler(params)
            except Exception:  # noqa: BLE001 - a user's callback must not stop the reader
                pass

    # -- API ---------------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        on_progress: Callable[[Any], None] | None = None,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
    ) -> Any:
        """Send a request and wait for its result; raises RpcError for an error answer.

        Setting `cancel` sends `$/cancelRequest` and keeps waiting: a stopped chat still answers, with what it
        had generated."""
        msg_id = next(self._ids)
        params = dict(params or {})
        token = None
        if on_progress is not None:
            token = uuid.uuid4().hex
            params["partialResultToken"] = token
            self._progress[token] = on_progress
        slot: dict[str, Any] = {"event": threading.Event()}
        with self._pending_lock:
            self._pending[msg_id] = slot
        try:
            self._send({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
            if cancel is not None:
                threading.Thread(
                    target=self._cancel_when_set, args=(cancel, slot["event"], msg_id), daemon=True
                ).start()
            if not slot["event"].wait(timeout):
                self.notify("$/cancelRequest", {"id": msg_id})
                raise TimeoutError(f"{method} got no answer within {timeout} s")
        finally:
            with self._pending_lock:
                self._pending.pop(msg_id, None)
            if token:
                self._progress.pop(token, None)
        if "error" in slot:
            err = slot["error"]
            if err.get("code") == -32099:
                raise DaemonUnavailable(err["message"])
            raise RpcError(err.get("code", 0), err.get("message", ""), err.get("data"))
        return slot.get("result")

    def _cancel_when_set(self, cancel: threading.Event, answered: threading.Event, msg_id: int) -> None:
        while not answered.is_set():
            if cancel.wait(0.05):
                if not answered.is_set() and not self._closed.is_set():
                    self.notify("$/cancelRequest", {"id": msg_id})
                return

    def request_async(self, method: str, params: dict[str, Any] | None = None) -> tuple[int, threading.Event]:
        """Send a request without waiting (for cancellation tests); returns its id."""
        msg_id = next(self._ids)
        slot: dict[str, Any] = {"event": threading.Event()}
        with self._pending_lock:
            self._pending[msg_id] = slot
        self._send({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params or {}})
        return msg_id, slot["event"]

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        self._send({"jsonrpc": "2.0", "method": method, "params": params or {}})

    def on_notification(self, method: str, callback: Callable[[Any], None]) -> None:
        self._handlers.setdefault(method, []).append(callback)

    @property
    def closed(self) -> bool:
        """True once the connection to the daemon is gone."""
        return self._closed.is_set()

    def close(self) -> None:
        if not self._closed.is_set():
            try:
                self.request("shutdown", timeout=5)
                self.notify("exit")
            except (ReinfError, OSError, TimeoutError):
                pass
        self._closed.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- conveniences --------------------------------------------------------------------------------

    def chat(
        self,
        prompt: str | list[dict[str, str]],
        *,
        on_delta: Callable[[str], None] | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        progress = (lambda v: on_delta(v.get("delta", ""))) if on_delta else None
        return self.request("reinf/chat", {"messages": messages, **params}, on_progress=progress)

    def rate(self, interaction_id: str, **params: Any) -> dict[str, Any]:
        return self.request("reinf/rate", {"interaction_id": interaction_id, **params})

    def status(self) -> dict[str, Any]:
        return self.request("reinf/status", {})

    def open_document(self, uri: str, text: str, language: str = "python", version: int = 1) -> None:
        self.notify(
            "textDocument/didOpen",
            {"textDocument": {"uri": uri, "languageId": language, "version": version, "text": text}},
        )

    def inline_completion(self, uri: str, line: int, character: int, **kw: Any) -> list[dict[str, Any]]:
        result = self.request(
            "textDocument/inlineCompletion",
            {
                "textDocument": {"uri": uri},
                "position": {"line": line, "character": character},
                "context": {"triggerKind": 2},
            },
            **kw,
        )
        return (result or {}).get("items", [])
