"""Is the daemon that daemon.json names really there? Its pid alive and a reinf daemon, and whatever listens on
its port able to prove it knows the token before a client sends it."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import socket
from pathlib import Path
from typing import Any

CHALLENGE = "reinf/challenge"
_PROOF_CONTEXT = b"reinf daemon proof:"  # so that the answer is good for nothing but this check


def challenge_proof(token: str, nonce: str) -> str:
    """HMAC-SHA256 of the client's nonce under the token; only a holder of the token can compute it."""
    key = token.encode("utf-8", "surrogatepass")
    return hmac.new(key, _PROOF_CONTEXT + nonce.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def is_reinf_daemon(pid: Any) -> bool:
    """True when `pid` is a live process of this user that runs `reinf serve` (checked in /proc where there
    is one; elsewhere, that it is alive and ours). A pid from a stale daemon.json may be dead or reused."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # alive, but another user's
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():
        return True
    try:
        if proc.stat().st_uid != os.geteuid():
            return False
        argv = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"serve" in argv and any(a == b"reinf" or a.endswith((b"/reinf", b"reinf.__main__")) for a in argv)


class NotTheDaemon(ConnectionError):
    """What listens on the recorded port could not prove that it knows the token."""


def prove(sock: socket.socket, token: str, timeout: float = 10.0) -> None:
    """Ask the server on `sock` to prove it knows `token` (before anything else is sent on it); raises
    NotTheDaemon when it cannot. Reads exactly its one answer, so the socket is ready for initialize."""
    nonce = secrets.token_urlsafe(24)
    body = json.dumps(
        {"jsonrpc": "2.0", "id": "reinf-challenge", "method": CHALLENGE, "params": {"nonce": nonce}}
    )
    old = sock.gettimeout()
    sock.settimeout(timeout)
    try:
        sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body.encode())
        answer = _read_one(sock)
    except (OSError, ValueError) as exc:
        raise NotTheDaemon(f"it gave no valid answer to the challenge ({exc})") from None
    finally:
        sock.settimeout(old)
    result = answer.get("result") if isinstance(answer, dict) else None
    proof = result.get("proof") if isinstance(result, dict) else None
    if not isinstance(proof, str) or not hmac.compare_digest(proof, challenge_proof(token, nonce)):
        raise NotTheDaemon("it could not prove that it knows the token")


def _read_one(sock: socket.socket) -> Any:
    """One framed message, read byte by byte up to its body so that nothing after it is consumed."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        c = sock.recv(1)
        if not c:
            raise ValueError("the connection closed")
        head += c
        if len(head) > 4096:
            raise ValueError("the header is too long")
    length = None
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length is None or not 0 <= length <= 65536:
        raise ValueError("no usable Content-Length")
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            raise ValueError("the connection closed")
        body += chunk
    return json.loads(body)
