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
from .paths import ALREADY_RUNNING, private_dir, reinf_home, wait_lock


class ReinfError(Exception):
    """Base of the client's errors."""


class DaemonUnavailable(ReinfError):
    """No daemon answers, and none could be started."""


class RpcError(ReinfError):
    """The daemon answered a request with an error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{message} (error {code})")
        self.code = code
        self.message = message
        self.data = data


def read_daemon_info(home: Path) -> dict[str, Any] | None:
    try:
        return json.loads((home / "daemon.json").read_text())
    except (OSError, ValueError):
        return None


def start_daemon(home: Path, timeout: float = 300.0, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Use the daemon that answers for `home`, else start `reinf serve` in the background and wait until one
    answers. Starters take `start.lock` in turn, so two at once start one daemon; one started by something
    else at the same moment (an editor running `reinf serve`) wins or loses the daemon's own lock, and the
    loser's starter then uses the winner."""
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
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reinf", "serve"],
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
            raise DaemonUnavailable(f"reinf serve exited with code {rc}; log {log_path}:\n{tail}")
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
        if not (info and _answers(info)):
            if not start:
                raise DaemonUnavailable(
                    f"no reinf daemon is running for {home}; start one with `reinf serve` (or `make run`)"
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
            except Exception:  # a user's callback must not stop the reader
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
