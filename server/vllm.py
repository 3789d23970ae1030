"""A vLLM OpenAI-compatible server as the daemon's generator: its HTTP API, and the `vllm serve` child the daemon
starts when `model.vllm_url` is empty.

Everything here blocks (sockets, a child process), so the daemon calls it from worker threads only. The engine
on top of it (vllm_engine.py) keeps prompts, stops and adapters; this module knows no model.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .paths import private_dir

log = logging.getLogger("reinf.vllm")

LOOPBACK = ("127.0.0.1", "localhost", "::1")
# Set by the daemon on the child's command line; the same flags in model.vllm_args would contradict it.
OWN_FLAGS = ("--host", "--port", "--served-model-name", "--api-key", "--enable-lora")
# vLLM accepts only these LoRA ranks for --max-lora-rank (vllm/config/lora.py).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
REQUEST_TIMEOUT_S = 30.0  # a JSON request (models, adapter loads); an adapter load reads its file
STREAM_TIMEOUT_S = 300.0  # the longest wait for the next token of a stream (a long prompt's prefill on a CPU)
LOG_MAX_BYTES = 5 * 1024 * 1024  # vllm.log is moved to vllm.log.1 at a start past this


class VllmUnavailable(RuntimeError):
    """vLLM does not answer, or answered with an error; the message says which server and why."""


def check_vllm_config(m: Any, error: type[Exception]) -> None:
    """Raise `error` naming the key when [model]'s backend settings cannot work."""
    if m.backend not in ("local", "vllm"):
        raise error(f'model.backend must be "local" or "vllm", got {m.backend!r}')
    if m.vllm_url:
        u = urlsplit(m.vllm_url)
        try:
            u.port  # noqa: B018 - raises on a port that is not a number
        except ValueError as exc:
            raise error(f"model.vllm_url has a bad port: {m.vllm_url!r} ({exc})") from None
        if u.scheme not in ("http", "https") or not u.hostname:
            raise error(f"model.vllm_url must look like http://127.0.0.1:8000, got {m.vllm_url!r}")
        if u.path not in ("", "/") or u.query or u.fragment or u.username:
            raise error(
                f"model.vllm_url must be the server's address alone (http://HOST:PORT, no /v1), got {m.vllm_url!r}"
            )
        if u.scheme == "http" and u.hostname not in LOOPBACK:
            raise error(
                f"model.vllm_url = {m.vllm_url!r} would send your code in the clear to another machine: use a "
                "loopback address (an SSH tunnel to the server, say) or https://"
            )
    elif m.vllm_api_key:
        raise error(
            "model.vllm_api_key is for a server at model.vllm_url; the daemon keys the vLLM it starts itself"
        )
    if m.vllm_url:
        for key in ("vllm_command", "vllm_args"):
            if getattr(m, key):
                raise error(
                    f"model.{key} applies only when the daemon starts vLLM itself (model.vllm_url empty)"
                )
    try:
        args = shlex.split(m.vllm_args)
    except ValueError as exc:
        raise error(f"model.vllm_args is not a valid argument list: {exc}") from None
    for arg in args:
        if arg.split("=", 1)[0] in OWN_FLAGS:
            raise error(f"model.vllm_args must not set {arg.split('=', 1)[0]}: the daemon sets it")
    rank = arg_value(args, "--max-lora-rank")
    if rank is not None and (not rank.isdigit() or int(rank) not in VLLM_LORA_RANKS):
        raise error(f"model.vllm_args: --max-lora-rank must be one of {VLLM_LORA_RANKS}, got {rank!r}")


def arg_value(args: list[str], flag: str) -> str | None:
    """The value of `--flag V` or `--flag=V` in an argument list (the last one wins), else None."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def lora_rank_for(rank: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that serves adapters of rank `rank`."""
    for r in VLLM_LORA_RANKS:
        if r >= rank:
            return r
    raise ValueError(f"vLLM serves LoRA ranks up to {VLLM_LORA_RANKS[-1]}; training.lora_r is {rank}")


class Http:
    """JSON requests and server-sent-event streams to one vLLM server. Thread-safe: a connection per call."""

    def __init__(self, url: str, api_key: str = "") -> None:
        self.url = url.rstrip("/")
        u = urlsplit(self.url)
        self._https = u.scheme == "https"
        self._host = u.hostname or "127.0.0.1"
        self._port = u.port or (443 if self._https else 80)
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    def _conn(self, timeout: float) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=timeout)

    def request(self, method: str, path: str, body: Any = None, timeout: float = REQUEST_TIMEOUT_S) -> Any:
        """The answer's JSON (or text); VllmUnavailable when there is no answer or an error status."""
        conn = self._conn(timeout)
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body), headers=self._headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise VllmUnavailable(f"vLLM at {self.url} does not answer ({_why(exc)})") from None
        finally:
            conn.close()
        data = _parse(raw)
        if resp.status >= 400:
            raise VllmUnavailable(
                f"vLLM at {self.url} refused {method} {path}: {error_message(data, resp.status)}"
            )
        return data

    def stream(self, path: str, body: Any, cancel: threading.Event | None = None) -> Iterator[dict[str, Any]]:
        """The events of a `stream: true` request, one JSON object each. Setting `cancel`, or closing the
        iterator, closes the connection, which vLLM takes as the request's abort."""
        conn = self._conn(STREAM_TIMEOUT_S)
        done = threading.Event()

        def watch() -> None:  # a read blocked on the socket ends when the socket is shut
            while not done.wait(0.02):
                if cancel is not None and cancel.is_set():
                    sock = conn.sock
                    if sock is not None:
                        try:
                            sock.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                    return

        try:
            conn.request("POST", path, body=json.dumps(body), headers=self._headers)
            resp = conn.getresponse()
            if resp.status >= 400:
                msg = error_message(_parse(resp.read()), resp.status)
                raise VllmUnavailable(f"vLLM at {self.url} refused the request: {msg}")
            if cancel is not None:
                threading.Thread(target=watch, name="reinf-vllm-cancel", daemon=True).start()
            while True:
                line = resp.readline()
                if not line:
                    if cancel is not None and cancel.is_set():
                        return
                    raise VllmUnavailable(f"vLLM at {self.url} closed the stream before it ended")
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                event = _parse(data)
                if isinstance(event, dict) and "error" in event and not event.get("choices"):
                    raise VllmUnavailable(
                        f"vLLM at {self.url} failed the request: {error_message(event, 500)}"
                    )
                if isinstance(event, dict):
                    yield event
        except (OSError, http.client.HTTPException) as exc:
            if cancel is not None and cancel.is_set():
                return
            raise VllmUnavailable(f"vLLM at {self.url} does not answer ({_why(exc)})") from None
        finally:
            done.set()
            conn.close()


def _parse(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode("utf-8", errors="replace")[:500]


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def error_message(data: Any, status: int) -> str:
    """vLLM's error text: `{"error": {"message"}}`, `{"message"}` or `{"detail"}`, else the status."""
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        for key in ("message", "detail", "error"):
            if data.get(key):
                return str(data[key])
    if isinstance(data, str) and data.strip():
        return data.strip()
    return f"HTTP {status}"


# -- the child process ------------------------------------------------------------------------------------


def find_vllm(command: str) -> list[str]:
    """The command that runs vLLM's CLI: model.vllm_command, else `vllm` on PATH, else this checkout's
    .venv-vllm (made by `make setup-vllm`)."""
    if command:
        return shlex.split(command)
    on_path = shutil.which("vllm")
    if on_path:
        return [on_path]
    local = Path(__file__).resolve().parent.parent / ".venv-vllm" / "bin" / "vllm"
    if local.is_file():
        return [str(local)]
    raise VllmUnavailable(
        "model.backend = vllm starts `vllm serve`, but there is no vllm on PATH nor a .venv-vllm here: install "
        "vLLM (`make setup-vllm` on a CPU, `pip install vllm` on a GPU), set model.vllm_command, or point "
        "model.vllm_url at a running server"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Child:
    """A `vllm serve` process on 127.0.0.1 with its own API key, logging to `log_path` (0600). It dies with the
    daemon: stopped by `stop`, and sent SIGTERM by the kernel if the daemon is killed."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.api_key = secrets.token_urlsafe(24)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.argv = [*argv, "--host", "127.0.0.1", "--port", str(self.port)]
        self.env = {**env, "VLLM_API_KEY": self.api_key}  # in the environment, not on the command line (ps)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        private_dir(self.log_path.parent)
        if self.log_path.exists() and self.log_path.stat().st_size > LOG_MAX_BYTES:
            os.replace(self.log_path, self.log_path.with_name(self.log_path.name + ".1"))
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                env=self.env,
                cwd=self.log_path.parent,
                start_new_session=True,  # its workers are one process group, stopped together
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        finally:
            os.close(fd)
        log.info(
            "started vLLM (pid %d): %s; its log: %s", self.proc.pid, shlex.join(self.argv), self.log_path
        )

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to its process group, then SIGKILL after `timeout`."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


def _die_with_parent() -> None:
    """In the child before exec: ask Linux for SIGTERM when the daemon's thread that started it ends."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
