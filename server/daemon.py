"""`reinf serve`: the daemon. TCP on loopback, one protocol object per connection over a shared backend.

pygls' own TCP server serves one connection and shuts down when it ends, so the daemon reads each connection
itself: it frames messages with hard limits, refuses anything before an `initialize` with the right token,
and hands well-formed messages to that connection's pygls protocol.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import json
import logging
import os
import secrets
import shutil
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pygls.exceptions import JsonRpcException
from pygls.protocol.json_rpc import JsonRPCNotification, JsonRPCRequestMessage

from .backend import Backend
from .config import Config
from .features import build_server
from .framing import MAX_HEADER_LINE, FramingError, Headers, frame
from .liveness import CHALLENGE, challenge_proof, is_reinf_daemon
from .paths import UnsafePath, check_home, private_dir, read_private_file, try_lock, write_json, write_private

log = logging.getLogger("reinf.daemon")

UNAUTHORIZED = -32001
# Before initialize with the token. VS Code's initialize, the largest a client sends, is about 10 KiB.
PRE_AUTH_MAX_MESSAGE = 64 * 1024
MAX_UNAUTHENTICATED = 64


class DaemonError(RuntimeError):
    pass


class DaemonRunning(DaemonError):
    """Another daemon serves this REINF_HOME, or is starting for it."""


def _error(msg_id: Any, code: int, message: str) -> bytes:
    return frame({"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}})


class _Writer:
    """pygls writes str-encoded bytes here; a closed socket must not raise into the handlers. `after` runs once
    a message is handed to the socket (work that must not delay an answer goes then)."""

    def __init__(self, writer: asyncio.StreamWriter, after: Callable[[], None]) -> None:
        self._w = writer
        self._after = after

    def write(self, data: bytes) -> None:
        if not self._w.is_closing():
            self._w.write(data)
        self._after()

    def close(self) -> None:
        if not self._w.is_closing():
            self._w.close()


class _Notifier:
    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol

    def notify(self, method: str, params: Any) -> None:
        self.protocol.notify(method, params)


class _DropAnsweredErrors(logging.Filter):
    """pygls logs a traceback for every request answered with a JSON-RPC error (a refused parameter, params
    that do not fit an LSP type). The client has the answer; in the log it is noise that any client can grow
    without bound, and it quotes the refused values. Internal errors are still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, JsonRpcException):
            return False
        if isinstance(record.msg, str) and record.msg.startswith(_CLIENT_ECHOES):
            return False
        # what pygls quotes in the rest (method names, ids, params) came from a client: its size, not its text
        if record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.args = tuple(a if isinstance(a, (int, float)) else _described(a) for a in args)
        if isinstance(record.msg, str) and len(record.msg) > 500:
            record.msg = record.msg[:500] + f"... ({len(record.msg)} characters)"
        return True


# pygls messages that only echo what a client sent (an unknown method or id, a body it could not parse): the
# client was answered, or it was a notification that needs none, and the echo grew the log by its size.
_CLIENT_ECHOES = (
    "Unable to deserialize message",
    "Failed to handle request %r, unknown method",
    "Ignoring notification for unknown method",
    "Cancel notification for unknown message id",
    "Received response to unknown message id",
    "Unknown message",
)


def _described(value: Any) -> str:
    return f"<{len(value)} characters>" if isinstance(value, str) else f"<{type(value).__name__}>"


def quiet_pygls(level: str) -> None:
    """Keep user text and the token out of the daemon's log.

    At INFO, pygls logs every message it sends (chat text, history) and the initialize params with the
    token; at WARNING it quotes what clients sent (unknown methods, ids, params), which any client can grow
    without bound. Those stay off unless the daemon runs at DEBUG."""
    if logging.getLevelName(level) == logging.DEBUG:
        return  # asked for: payloads, and what clients sent, in full
    logging.getLogger("pygls").setLevel(logging.WARNING)
    for name in _PYGLS_LOGGERS:
        rpc = logging.getLogger(name)
        if not any(isinstance(f, _DropAnsweredErrors) for f in rpc.filters):
            rpc.addFilter(_DropAnsweredErrors())


# a logger's filter sees only the records logged to it, not its children's
_PYGLS_LOGGERS = (
    "pygls.protocol.json_rpc",
    "pygls.protocol.language_server",
    "pygls.server",
    "pygls.io_",
    "pygls.workspace.workspace",
    "pygls.workspace.text_document",
    "pygls.capabilities",
    "pygls.feature_manager",
)


class Daemon:
    def __init__(self, cfg: Config, backend: Backend | None = None) -> None:
        self.cfg = cfg
        self.token = secrets.token_urlsafe(32)
        self.backend = backend or Backend(cfg)
        self._server: asyncio.base_events.Server | None = None
        self.port: int | None = None
        self.connections = 0
        self.unauthenticated = 0  # connections open now that have not shown the token

    @property
    def info_path(self) -> Path:
        return self.cfg.home / "daemon.json"

    async def serve(self) -> None:
        quiet_pygls(self.cfg.server.log_level)
        self.backend.loop = asyncio.get_running_loop()
        host = self.cfg.server.host
        if host not in ("127.0.0.1", "localhost", "::1"):
            log.warning(
                "binding to non-loopback address %s: anyone who can reach it and has the token can use "
                "this daemon",
                host,
            )
        self._server = await asyncio.start_server(
            self._connection, host, self.cfg.server.port, limit=MAX_HEADER_LINE * 4
        )
        self.port = self._server.sockets[0].getsockname()[1]
        try:
            private_dir(self.cfg.home)
            write_json(
                self.info_path, {"port": self.port, "token": self.token, "pid": os.getpid(), "host": host}
            )
        except OSError as exc:
            raise DaemonError(home_problem(self.cfg.home, exc)) from exc
        log.info(
            "reinf daemon serving %s on %s:%s (home %s)",
            self.backend.engine.model_name,
            host,
            self.port,
            self.cfg.home,
        )
        print(
            f"reinf: serving {self.backend.engine.model_name} on {host}:{self.port}; "
            f"connection details in {self.info_path}",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with self._server:
            await stop.wait()
        log.info("reinf daemon stopping")

    def close(self) -> None:
        try:
            info = json.loads(self.info_path.read_text())
            if info.get("pid") == os.getpid():
                self.info_path.unlink()
        except (OSError, ValueError):
            pass
        self.backend.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        # Nothing is built for a connection until it has shown the token (a language server costs tens of
        # milliseconds of the event loop), and it has server.auth_timeout_s to do so.
        protocol: Any = None
        notifier: _Notifier | None = None
        # Before the token: one deadline for the whole connection (not per message, or a byte every few
        # seconds would keep it forever), a small message limit, a cap on such connections, and the
        # connection dropped when its error answers go unread.
        timeout = self.cfg.server.auth_timeout_s
        deadline = asyncio.get_running_loop().time() + timeout
        self.unauthenticated += 1
        pending = True
        if self.unauthenticated > MAX_UNAUTHENTICATED:
            writer.write(_error(None, UNAUTHORIZED, "Busy: too many connections waiting to authenticate"))
            writer.close()
            self.unauthenticated -= 1
            return
        requests: set[Any] = set()  # the ids of this client's requests, to stop them if it goes away
        try:
            while not writer.is_closing():
                if protocol is None:
                    if writer.transport.get_write_buffer_size() > PRE_AUTH_MAX_MESSAGE:
                        # It sends and never reads: its answers would pile up in memory. Dropped at once with
                        # them (a close would wait, with the socket open, for it to read them).
                        writer.transport.abort()
                        break
                    left = deadline - asyncio.get_running_loop().time()
                    try:
                        if left <= 0:
                            raise asyncio.TimeoutError
                        body = await asyncio.wait_for(
                            self._read_body(reader, writer, PRE_AUTH_MAX_MESSAGE), left
                        )
                    except asyncio.TimeoutError:
                        writer.write(
                            _error(
                                None,
                                UNAUTHORIZED,
                                f"Unauthorized: no initialize with the token within {timeout} s",
                            )
                        )
                        break
                else:
                    body = await self._read_body(reader, writer)
                if body is None:
                    break
                try:
                    data = json.loads(body)
                except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
                    writer.write(_error(None, -32700, "Parse error: the body is not valid JSON"))
                    continue
                if not isinstance(data, dict) or data.get("jsonrpc") != "2.0":
                    msg_id = data.get("id") if isinstance(data, dict) else None
                    writer.write(_error(msg_id, -32600, "Invalid request: expected a JSON-RPC 2.0 object"))
                    continue
                if protocol is None and data.get("method") == CHALLENGE:
                    writer.write(self._answer_challenge(data))
                    await writer.drain()
                    continue
                # A second initialize must carry the token too. It is refused, and the connection (which
                # showed the token once already) stays, with what it was given.
                if (
                    protocol is not None
                    and data.get("method") == "initialize"
                    and not self._check_token(data)
                ):
                    writer.write(
                        _error(
                            data.get("id"),
                            UNAUTHORIZED,
                            "Unauthorized: initialize must carry the token again",
                        )
                    )
                    await writer.drain()
                    continue
                if protocol is None:
                    if not self._check_token(data):
                        writer.write(
                            _error(
                                data.get("id"),
                                UNAUTHORIZED,
                                "Unauthorized: the first request must be initialize with "
                                "initializationOptions.token from daemon.json",
                            )
                        )
                        await writer.drain()
                        break
                if protocol is None:
                    self.unauthenticated -= 1
                    pending = False
                    protocol = build_server(self.backend).protocol
                    protocol.set_writer(_Writer(writer, self.backend.answered))
                    notifier = _Notifier(protocol)
                    self.backend.attach(notifier)
                if "id" in data and "method" in data:
                    if len(requests) > 1000:  # keep only those still going
                        requests &= set(getattr(protocol, "_request_futures", {}))
                    requests.add(data["id"])
                self._dispatch(protocol, data, writer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            if pending:
                self.unauthenticated -= 1
            if notifier is not None:
                self.backend.detach(notifier)
            # A vanished client stops its generations; its notifications (feedback) still finish.
            futures = getattr(protocol, "_request_futures", {})
            for msg_id in requests:
                future = futures.get(msg_id)
                if future is not None:
                    future.cancel()
            writer.close()

    async def _read_body(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int | None = None
    ) -> bytes | None:
        length = await self._read_headers(reader, writer, limit)
        return None if length is None else await reader.readexactly(length)

    async def _read_headers(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int | None = None
    ) -> int | None:
        """Read one header block; returns the content length, or None to close the connection."""
        headers = Headers(strict=True)
        while True:
            line = await reader.readline()
            if not line:
                return None
            try:
                if headers.feed(line):
                    break
            except FramingError as exc:
                writer.write(_error(None, -32700, f"Parse error: {exc}"))
                return None
        length = headers.length or 0  # set: feed() ends a block only after a Content-Length
        if limit is not None and length > limit:
            writer.write(
                _error(None, -32600, f"Request too large before initialize: {length} bytes, over {limit}")
            )
            return None
        if length > self.cfg.server.max_message_bytes:
            writer.write(
                _error(
                    None,
                    -32600,
                    f"Request too large: {length} bytes, over the limit of "
                    f"{self.cfg.server.max_message_bytes} (server.max_message_bytes)",
                )
            )
            return None
        return length

    def _answer_challenge(self, data: dict[str, Any]) -> bytes:
        """Prove to a client that this daemon knows the token, before the client sends it: an impostor on a
        dead daemon's port would otherwise receive the token and the first prompt."""
        params = data.get("params")
        nonce = params.get("nonce") if isinstance(params, dict) else None
        if "id" not in data or not isinstance(nonce, str) or not 16 <= len(nonce) <= 256:
            return _error(
                data.get("id"), -32602, f"{CHALLENGE}: nonce must be a string of 16 to 256 characters"
            )
        proof = challenge_proof(self.token, nonce)
        return frame({"jsonrpc": "2.0", "id": data["id"], "result": {"proof": proof, "pid": os.getpid()}})

    def _check_token(self, data: dict[str, Any]) -> bool:
        if data.get("method") != "initialize" or "id" not in data:
            return False
        params = data.get("params")
        opts = params.get("initializationOptions") if isinstance(params, dict) else None
        token = opts.get("token") if isinstance(opts, dict) else None
        if not isinstance(token, str):
            return False
        # surrogatepass: a token with a lone surrogate is refused like any other, not with UnicodeEncodeError.
        return hmac.compare_digest(token.encode("utf-8", "surrogatepass"), self.token.encode())

    def _dispatch(self, protocol: Any, data: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        method = data.get("method")
        is_response = "id" in data and ("result" in data or "error" in data)
        if not isinstance(method, str) and not is_response:
            writer.write(_error(data.get("id"), -32600, "Invalid request: method must be a string"))
            return
        if getattr(protocol, "_shutdown", False) and method != "exit":
            # pygls drops these silently, which leaves the client waiting for an answer forever.
            if "id" in data and method is not None:
                writer.write(
                    _error(
                        data["id"],
                        -32600,
                        f"Invalid request: {method} after shutdown; only exit is accepted now",
                    )
                )
            return
        try:
            if isinstance(method, str) and method.startswith("reinf/"):
                # pygls turns the params of methods it does not know into lossy namedtuples; keep them JSON.
                params = data.get("params")
                if "id" in data:
                    message = JsonRPCRequestMessage(
                        id=data["id"], method=method, jsonrpc="2.0", params=params
                    )
                else:
                    message = JsonRPCNotification(method=method, jsonrpc="2.0", params=params)
            else:
                message = protocol.structure_message(data)
        except Exception as exc:  # noqa: BLE001 - a message pygls cannot structure is answered, not a crash
            if "id" in data and "method" in data:
                writer.write(_error(data["id"], -32602, f"Invalid params for {data.get('method')}: {exc}"))
            return
        try:
            protocol.handle_message(message)
        except Exception:
            log.exception("unhandled error in %s", data.get("method"))
            if "id" in data and "method" in data:
                writer.write(_error(data["id"], -32603, f"Internal error in {data.get('method')}"))


def daemon_alive(home: Path) -> dict[str, Any] | None:
    """The daemon.json of a daemon that answers on its port, else None."""
    try:
        # one that someone else planted is not a daemon of ours: this daemon writes its own over it
        info = json.loads(read_private_file(home / "daemon.json", "daemon.json") or b"null")
        if not isinstance(info, dict) or not is_reinf_daemon(info.get("pid")):
            return None  # a stale daemon.json: whatever holds its port now is not that daemon
        with socket.create_connection(("127.0.0.1", int(info["port"])), timeout=1.0):
            return info
    except (OSError, ValueError, KeyError, TypeError):
        return None


def home_problem(home: Path, exc: OSError) -> str:
    """What to tell the user when REINF_HOME cannot be written."""
    reason = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is used up",
        errno.EROFS: "it is on a read-only file system",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
    }.get(exc.errno, exc.strerror or str(exc))
    return (
        f"cannot write to REINF_HOME {home}: {reason} ({exc.filename or home}). reinf keeps its database "
        "and daemon.json there: free some space, or point REINF_HOME at a writable folder."
    )


def _check_home_writable(home: Path) -> None:
    """Fail at once, before the model loads, when REINF_HOME cannot be written."""
    probe = home / f".write-test-{os.getpid()}"
    try:
        private_dir(home)
        write_private(probe, b"reinf")
    except OSError as exc:
        raise DaemonError(home_problem(home, exc)) from exc
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


def run_daemon(cfg: Config) -> int:
    """Start the daemon in the foreground until SIGTERM or SIGINT."""
    os.umask(0o077)
    try:
        check_home(cfg.home)
    except UnsafePath as exc:
        raise DaemonError(str(exc)) from None
    _check_home_writable(cfg.home)
    # One daemon per home, whoever starts it: this lock is held for the daemon's life, from before the model
    # loads (the store allows one writer, and a second daemon would lose DuckDB's lock half-way up).
    lock = try_lock(cfg.home / "daemon.lock")
    if lock is None:
        info = daemon_alive(cfg.home) or {}
        raise DaemonRunning(
            f"a reinf daemon is already running for {cfg.home} (pid {info.get('pid') or _lock_owner(cfg.home)}"
            f"{', port ' + str(info['port']) if info.get('port') else ', starting'}); "
            "stop it first or use another REINF_HOME"
        )
    # what a write killed midway left in the staging folder (an export) is not a result of anything
    shutil.rmtree(cfg.home / "tmp", ignore_errors=True)
    try:
        os.ftruncate(lock, 0)
        os.write(lock, str(os.getpid()).encode())
        daemon = Daemon(cfg)
        try:
            asyncio.run(daemon.serve())
        finally:
            daemon.close()
    finally:
        os.close(lock)
    return 0


def _lock_owner(home: Path) -> str:
    try:
        return (home / "daemon.lock").read_text().strip() or "?"
    except OSError:
        return "?"
