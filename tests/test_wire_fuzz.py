"""Wire-level fuzz against a real daemon: garbage bytes, wrong Content-Length, invalid JSON, requests before
`initialize`, huge payloads, bad params for every method.

The properties: the daemon never dies; every well-framed request gets exactly one answer, an error where it is
bad; a notification gets none; nothing refused writes anything; the daemon's log shows no traceback.
`make test` sends a few thousand messages, `make test-long` (REINF_LONG=1) over 100,000.
"""

from __future__ import annotations

import json
import os
import random
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from .daemon_proc import DaemonProcess, daemon_env

LONG = bool(os.environ.get("REINF_LONG"))
MESSAGES = 100_000 if LONG else 3_000
BATCH = 200
MAX_MESSAGE = 4 * 1024 * 1024  # server.max_message_bytes default
MAX_FIELD = 256 * 1024  # server.max_field_bytes default


def frame(obj: Any) -> bytes:
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


class Wire:
    """A raw connection that reads framed answers; `token` given, it sends initialize first."""

    def __init__(self, port: int, token: str | None = None, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        if token is not None:
            self.send(
                frame(
                    {
                        "jsonrpc": "2.0",
                        "id": "init",
                        "method": "initialize",
                        "params": {"capabilities": {}, "initializationOptions": {"token": token}},
                    }
                )
            )
            answer = self.read()
            assert answer is not None and "result" in answer, answer
            self.send(frame({"jsonrpc": "2.0", "method": "initialized", "params": {}}))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def read(self, timeout: float = 30.0) -> dict[str, Any] | None:
        """The next message, or None when the daemon closed the connection. A timeout raises."""
        deadline = time.monotonic() + timeout
        try:
            while b"\r\n\r\n" not in self.buf:
                if not self._fill(deadline):
                    return None
            head, _, rest = self.buf.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            self.buf = rest
            while len(self.buf) < length:
                if not self._fill(deadline):
                    return None
        except (ConnectionResetError, BrokenPipeError):
            return None
        except TimeoutError as exc:
            raise TimeoutError(f"no answer from the daemon within {timeout} s") from exc
        body, self.buf = self.buf[:length], self.buf[length:]
        return json.loads(body)

    def read_until_closed(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        out = []
        while (msg := self.read(timeout)) is not None:
            out.append(msg)
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("wire") / "home"
    d = DaemonProcess(home, daemon_env(home)).start()
    with d.client("setup") as c:
        d.interaction_id = c.chat("def fuzz():", max_tokens=2)["interaction_id"]
    yield d
    d.stop()


def stored(d: DaemonProcess) -> tuple[int, int]:
    with d.client("check") as c:
        s = c.status()
    return s["interactions_total"], s["ratings_total"]


def log_offset(d: DaemonProcess) -> int:
    return d.log_path.stat().st_size


def new_log(d: DaemonProcess, offset: int) -> str:
    with open(d.log_path, "rb") as fh:
        fh.seek(offset)
        return fh.read().decode(errors="replace")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# -- message generators ------------------------------------------------------------------------------


def junk(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value."""
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 5, 6, 2**31, 2**63, -(2**70), rng.randint(-1000, 1000)])
    if kind == 3:
        return rng.choice([0.5, -1e308, 1e308, 3.0, float(rng.random())])
    if kind in (4, 5):
        alphabet = "ab\x00\u202e'\"\\/\n🙂é{}[]:"
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
    if kind in (6, 7):
        return [junk(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {junk_key(rng): junk(rng, depth + 1) for _ in range(rng.randrange(4))}


def junk_key(rng: random.Random) -> str:
    return "zz_" + "".join(rng.choice("abcxyz_\u00e9") for _ in range(rng.randrange(1, 8)))


# Values that break exactly one rule of each reinf/* method (DESIGN.md's protocol table).
BAD_FIELDS: dict[str, list[tuple[str, list[Any]]]] = {
    "reinf/rate": [
        ("stars", [0, 6, "4", True, 2.5, None]),
        ("thumbs", ["sideways", 1, ["up"]]),
        ("interaction_id", [None, 7, "", "f" * 32]),
        ("comment", [5, {"a": 1}, "x" * (MAX_FIELD + 1)]),
    ],
    "reinf/chat": [
        (
            "messages",
            [
                [],
                5,
                "hi",
                [{"role": "robot", "content": "x"}],
                [{"role": "user"}],
                [{"role": "assistant", "content": "x"}],
                [{"role": "user", "content": 3}],
            ],
        ),
        ("max_tokens", [0, -1, 4097, "8", 1.5]),
        ("temperature", [-0.1, 2.5, "0.2", True]),
        ("kind", ["poem", 1]),
        ("context", [5, {"cells": "x"}, {"colour": "red"}, {"uri": 1}]),
    ],
    "reinf/history": [
        ("limit", [0, -1, 10**6, "1", True]),
        ("offset", [-1, "0", 2**40]),
        ("kind", ["poem", 0]),
        ("unrated_only", ["yes", 1]),
    ],
    "reinf/runs": [("limit", [0, 1001, "5"])],
    "reinf/rollback": [("version", [-1, "1", 2.5, 2**40])],
    "reinf/export": [("format", ["csv", 1]), ("path", ["relative.jsonl", 5, "/no/such/folder/x.jsonl", "/"])],
    "reinf/forget": [("before", ["yesterday", 5, "", "2024-13-45"])],
    "reinf/adapters": [],
    "reinf/ratingsTimeline": [],
    "reinf/retrain": [],
    "reinf/cancelTraining": [],
}
VALID_BASE: dict[str, dict[str, Any]] = {
    "reinf/rate": {"interaction_id": "IID", "stars": 3},
    "reinf/chat": {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1},
    "reinf/history": {"limit": 1},
    "reinf/runs": {"limit": 1},
    "reinf/rollback": {},
    "reinf/export": {"path": "/tmp/reinf-never-written.jsonl"},
    "reinf/forget": {"before": "2001-01-01"},
    "reinf/adapters": {},
    "reinf/ratingsTimeline": {},
    "reinf/retrain": {},
    "reinf/cancelTraining": {},
}
READS = [
    ("reinf/history", {"limit": 1}),
    ("reinf/runs", {}),
    ("reinf/status", {}),
    ("reinf/adapters", {}),
    ("reinf/ratingsTimeline", {}),
]


class Batch:
    """Frames for one authenticated connection, and the answers they must get."""

    def __init__(self, rng: random.Random, interaction_id: str, first_id: int) -> None:
        self.rng = rng
        self.iid = interaction_id
        self.next_id = first_id
        self.frames: list[bytes] = []
        self.expect: dict[str, tuple[str, set[int]]] = {}  # json(id) -> ("error", codes) | ("result", ())
        self.null_errors = 0
        self.kinds: Counter[str] = Counter()

    def _id(self) -> Any:
        self.next_id += 1
        return self.next_id if self.rng.random() < 0.8 else f"s-{self.next_id}"

    def request(
        self, method: str, params: Any, outcome: str, codes: set[int] = frozenset(), **extra: Any
    ) -> None:
        msg_id = self._id()
        self.frames.append(
            frame({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params, **extra})
        )
        self.expect[json.dumps(msg_id)] = (outcome, set(codes))

    def add_one(self) -> None:
        rng = self.rng
        kind = rng.choices(
            [
                "bad-params",
                "not-an-object",
                "unknown-field",
                "read",
                "unknown-method",
                "bad-json",
                "not-rpc",
                "notification",
                "lsp-bad-params",
                "bad-method",
                "over-field-limit",
            ],
            weights=[30, 6, 10, 10, 6, 10, 6, 10, 5, 4, 1],
        )[0]
        self.kinds[kind] += 1
        methods = sorted(BAD_FIELDS)
        if kind == "bad-params":
            method = rng.choice([m for m in methods if BAD_FIELDS[m]])
            field, values = rng.choice(BAD_FIELDS[method])
            params = {**VALID_BASE[method], field: rng.choice(values)}
            if params.get("interaction_id") == "IID":
                params["interaction_id"] = self.iid
            self.request(method, params, "error", {-32602})
        elif kind == "not-an-object":
            self.request(rng.choice(methods), rng.choice([[], [1], 5, "x", True]), "error", {-32602})
        elif kind == "unknown-field":
            method = rng.choice(methods)
            params = {**VALID_BASE[method], junk_key(rng): junk(rng)}
            if params.get("interaction_id") == "IID":
                params["interaction_id"] = self.iid
            self.request(method, params, "error", {-32602})
        elif kind == "read":
            method, params = rng.choice(READS)
            self.request(method, params, "result")
        elif kind == "unknown-method":
            self.request(
                rng.choice(["reinf/", "x-fuzz/", "textDocument/"]) + junk_key(rng),
                junk(rng),
                "error",
                {-32601},
            )
        elif kind == "bad-json":
            body = rng.choice(
                [
                    b"{",
                    b"}",
                    b"[1,",
                    b'{"jsonrpc": "2.0", "id": 1, "method": "reinf/status"',
                    b'{"a": 1} trailing',
                    b"\xff\xfe\x00",
                    b"nul\x00l",
                    b"",
                    b"{'single': 'quotes'}",
                    bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))) + b"\x80{",
                    b"[" * 200_000 + b"]" * 200_000,
                ]
            )
            self.frames.append(frame(body))
            self.null_errors += 1
        elif kind == "not-rpc":
            msg_id = self._id()
            body = rng.choice(
                [
                    [1, 2],
                    5,
                    "hello",
                    None,
                    {"jsonrpc": "1.0", "id": msg_id, "method": "reinf/status"},
                    {"id": msg_id, "method": "reinf/status"},
                    [{"jsonrpc": "2.0", "id": msg_id, "method": "reinf/status"}],
                ]
            )
            self.frames.append(frame(body))
            if isinstance(body, dict):
                self.expect[json.dumps(msg_id)] = ("error", {-32600})
            else:
                self.null_errors += 1
        elif kind == "notification":
            method = rng.choice(
                [
                    "reinf/feedback",
                    "reinf/rate",
                    "x-fuzz/note",
                    "textDocument/didChange",
                    "textDocument/didClose",
                    "$/cancelRequest",
                    "$/setTrace",
                    "initialized",
                ]
            )
            self.frames.append(frame({"jsonrpc": "2.0", "method": method, "params": junk(rng)}))
        elif kind == "lsp-bad-params":
            method = rng.choice(["textDocument/completion", "textDocument/inlineCompletion", "initialize"])
            self.request(
                method,
                rng.choice([5, [], {"textDocument": 5}, {"position": {"line": "x"}}]),
                "error",
                {-32602, -32001} if method == "initialize" else {-32602},  # a re-initialize needs the token
            )
        elif kind == "bad-method":
            msg_id = self._id()
            method = rng.choice([5, None, [], {}, True, 1.5, ["reinf/status"]])
            self.frames.append(frame({"jsonrpc": "2.0", "id": msg_id, "method": method}))
            self.expect[json.dumps(msg_id)] = ("error", {-32600})
        elif kind == "over-field-limit":
            self.request(
                "reinf/chat",
                {"messages": [{"role": "user", "content": "y" * (MAX_FIELD + 1)}]},
                "error",
                {-32602},
            )

    def payload(self) -> bytes:
        return b"".join(self.frames)


def run_batch(port: int, token: str, batch: Batch, rng: random.Random) -> None:
    wire = Wire(port, token)
    try:
        sentinel = "sentinel"
        data = batch.payload() + frame(
            {"jsonrpc": "2.0", "id": sentinel, "method": "reinf/runs", "params": {}}
        )
        if rng.random() < 0.1:  # the same frames dribbled a few bytes at a time
            i = 0
            while i < len(data):
                n = rng.randrange(1, 4096)
                wire.send(data[i : i + n])
                i += n
        else:
            wire.send(data)
        answers: dict[str, dict[str, Any]] = {}
        null_errors = 0
        waiting = set(batch.expect) | {json.dumps(sentinel)}
        while waiting:
            msg = wire.read(60)
            assert msg is not None, (
                f"the daemon closed an authenticated connection; still waiting for {waiting}"
            )
            if "method" in msg:  # a notification from the daemon (window/showMessage and the like)
                continue
            key = json.dumps(msg.get("id"))
            if msg.get("id") is None:
                assert msg["error"]["code"] in (-32700, -32600), msg
                null_errors += 1
                continue
            assert key not in answers, f"two answers to one request: {answers[key]} and {msg}"
            assert key in waiting, f"an answer to nothing that was asked: {msg}"
            answers[key] = msg
            waiting.discard(key)
        assert null_errors == batch.null_errors, (null_errors, batch.null_errors)
        for key, (outcome, codes) in batch.expect.items():
            msg = answers[key]
            if outcome == "result":
                assert "result" in msg, msg
            else:
                assert "error" in msg and msg["error"]["code"] in codes, (key, msg)
                assert isinstance(msg["error"].get("message"), str) and msg["error"]["message"], msg
    finally:
        wire.close()


# -- connections that end badly ---------------------------------------------------------------------


def framing_attack(port: int, token: str | None, rng: random.Random) -> int:
    """One connection that sends something badly framed; returns the number of frames it sent."""
    wire = Wire(port, token)
    attack = rng.choice(
        [
            "garbage",
            "short-length",
            "long-length",
            "nan-length",
            "negative-length",
            "no-length",
            "too-big",
            "long-header",
            "lf-only",
            "many-headers",
            "half-frame",
        ]
    )
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "reinf/status", "params": {}}).encode()
    expect_error = True
    if attack == "garbage":
        wire.send(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000))))
        expect_error = False  # bytes that are not a header at all need no answer, only a close
    elif attack == "short-length":
        wire.send(b"Content-Length: %d\r\n\r\n" % (len(body) - 5) + body)
    elif attack == "long-length":
        wire.send(b"Content-Length: %d\r\n\r\n" % (len(body) + 50) + body)
        expect_error = False  # the daemon waits for the rest of the body until the client goes
    elif attack == "nan-length":
        wire.send(b"Content-Length: twelve\r\n\r\n" + body)
    elif attack == "negative-length":
        wire.send(b"Content-Length: -5\r\n\r\n" + body)
    elif attack == "no-length":
        wire.send(b"Content-Type: application/json\r\n\r\n" + body)
    elif attack == "too-big":
        wire.send(b"Content-Length: %d\r\n\r\n" % (MAX_MESSAGE + 1) + body)
    elif attack == "long-header":
        wire.send(b"X-Fuzz: " + b"a" * 2000 + b"\r\n")
    elif attack == "lf-only":
        wire.send(b"Content-Length: %d\n\n" % len(body) + body)
    elif attack == "many-headers":
        wire.send(b"".join(b"X-%d: y\r\n" % i for i in range(40)) + b"\r\n")
    elif attack == "half-frame":
        wire.send(b"Content-Len")
        expect_error = False
    wire.sock.shutdown(socket.SHUT_WR)
    answers = wire.read_until_closed(30)
    wire.close()
    errors = [a for a in answers if "error" in a]
    if expect_error:
        assert errors and errors[0]["error"]["code"] in (-32700, -32600), (attack, answers)
    assert not any("result" in a for a in answers), (attack, answers)
    return 1


def test_fuzz_the_wire(daemon: DaemonProcess) -> None:
    port, token = daemon.info["port"], daemon.info["token"]
    rng = random.Random(int(os.environ.get("REINF_FUZZ_SEED", "0")) or random.randrange(1 << 30))
    before = stored(daemon)
    offset = log_offset(daemon)
    rss0 = rss_kib(daemon.proc.pid)
    sent, batches, kinds = 0, 0, Counter()
    t0 = time.monotonic()
    while sent < MESSAGES:
        batch = Batch(rng, daemon.interaction_id, first_id=sent * 10)
        for _ in range(BATCH):
            batch.add_one()
        run_batch(port, token, batch, rng)
        sent += len(batch.frames) + 3  # + initialize, initialized, sentinel
        kinds.update(batch.kinds)
        batches += 1
        for _ in range(rng.randrange(1, 4)):
            sent += framing_attack(port, token if rng.random() < 0.5 else None, rng)
        assert daemon.proc.poll() is None, f"the daemon died:\n{daemon.log()}"
    elapsed = time.monotonic() - t0
    rss1 = rss_kib(daemon.proc.pid)
    print(
        f"\nwire fuzz: {sent} messages in {batches} connections and {elapsed:.1f} s "
        f"({sent / elapsed:.0f}/s); RSS {rss0 // 1024} -> {rss1 // 1024} MiB; {dict(kinds)}"
    )
    assert daemon.proc.poll() is None
    assert stored(daemon) == before, "a refused request wrote to the store"
    log = new_log(daemon, offset)
    assert "Traceback" not in log, log[-4000:]
    # A leak per connection or per message would show over 100k messages; 300 MiB is far above the noise.
    assert rss1 - rss0 < 300 * 1024, (rss0, rss1)


def test_requests_before_initialize_are_refused_and_write_nothing(daemon: DaemonProcess) -> None:
    port = daemon.info["port"]
    before = stored(daemon)
    valid_rate = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "reinf/rate",
        "params": {"interaction_id": daemon.interaction_id, "stars": 5},
    }
    valid_chat = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "reinf/chat",
        "params": {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1},
    }
    firsts = [
        valid_rate,
        valid_chat,
        {
            "jsonrpc": "2.0",
            "method": "reinf/feedback",
            "params": {"interaction_id": daemon.interaction_id, "event": "accepted"},
        },
        {
            "jsonrpc": "2.0",
            "id": 3,
            "method": "initialize",
            "params": {"initializationOptions": {"token": ""}},
        },
        {
            "jsonrpc": "2.0",
            "id": 4,
            "method": "initialize",
            "params": {"initializationOptions": {"token": daemon.info["token"][:-1]}},
        },
        {
            "jsonrpc": "2.0",
            "id": 5,
            "method": "initialize",
            "params": {"initializationOptions": {"token": daemon.info["token"] + "x"}},
        },
        {
            "jsonrpc": "2.0",
            "id": 6,
            "method": "initialize",
            "params": {"initializationOptions": {"token": 12345}},
        },
        {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "initialize",
            "params": {"initializationOptions": {"token": "\ud800"}},
        },
        {"jsonrpc": "2.0", "id": 8, "method": "initialize", "params": {"token": daemon.info["token"]}},
        # The right token, but in a notification: it must be a request.
        {
            "jsonrpc": "2.0",
            "method": "initialize",
            "params": {"initializationOptions": {"token": daemon.info["token"]}},
        },
    ]
    for first in firsts:
        wire = Wire(port)
        # The refused message is followed by a valid rating: nothing after the refusal may be read either.
        wire.send(frame(first) + frame(valid_rate))
        answers = wire.read_until_closed(30)
        wire.close()
        assert len(answers) == 1, (first, answers)
        assert answers[0]["error"]["code"] == -32001 and "token" in answers[0]["error"]["message"], answers
        assert answers[0]["id"] == first.get("id"), answers
    assert stored(daemon) == before


def test_huge_payloads(daemon: DaemonProcess) -> None:
    port, token = daemon.info["port"], daemon.info["token"]
    before = stored(daemon)
    wire = Wire(port, token)
    # Just under the message limit, with one field over the field limit: -32602, and the connection lives.
    big = "z" * (MAX_MESSAGE - 1024)
    wire.send(
        frame(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "reinf/rate",
                "params": {"interaction_id": daemon.interaction_id, "comment": big},
            }
        )
    )
    answer = wire.read(60)
    assert answer["error"]["code"] == -32602 and "over the limit" in answer["error"]["message"], answer
    assert len(json.dumps(answer)) < 4096, "the refusal echoed the payload back"
    # Many fields, each under the limit, a whole message of them: refused for the unknown fields.
    wire.send(
        frame(
            {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "reinf/history",
                "params": {f"k{i}": "v" * 100 for i in range(30_000)},
            }
        )
    )
    answer = wire.read(60)
    assert answer["error"]["code"] == -32602 and len(json.dumps(answer)) < MAX_MESSAGE, answer["error"][
        "code"
    ]
    wire.send(frame({"jsonrpc": "2.0", "id": 3, "method": "reinf/status", "params": {}}))
    assert "result" in wire.read(60)
    # Over the message limit: refused from the header alone, before the body is read, and closed.
    wire.send(b"Content-Length: %d\r\n\r\n" % (MAX_MESSAGE + 1))
    answers = wire.read_until_closed(30)
    assert answers and answers[0]["error"]["code"] == -32600 and "too large" in answers[0]["error"]["message"]
    wire.close()
    # The same before initialize.
    wire = Wire(port)
    wire.send(b"Content-Length: 999999999999\r\n\r\n")
    assert wire.read_until_closed(30)[0]["error"]["code"] == -32600
    wire.close()
    assert daemon.proc.poll() is None and stored(daemon) == before


def test_many_connections_that_vanish(daemon: DaemonProcess) -> None:
    """Clients that connect and go at every point of a frame, some mid-request, leave the daemon serving."""
    port, token = daemon.info["port"], daemon.info["token"]
    rng = random.Random(7)
    n = 400 if LONG else 60
    full = frame({"jsonrpc": "2.0", "id": 1, "method": "reinf/history", "params": {"limit": 5}})
    for _ in range(n):
        wire = Wire(port, token if rng.random() < 0.7 else None)
        wire.send(full[: rng.randrange(len(full) + 1)])
        if rng.random() < 0.5:
            wire.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        wire.close()  # with SO_LINGER 0 this is a reset, not a clean close
    with daemon.client("after") as c:
        assert c.status()["model"]
    assert daemon.proc.poll() is None
