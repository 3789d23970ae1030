"""The daemon over real TCP and stdio, with real LSP clients, a real DuckDB file and the test-preset model."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import stat
import sys
import threading
from pathlib import Path

import pytest
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.lsp.client import LanguageClient

from reinf.client import Client, DaemonUnavailable, RpcError

from .daemon_proc import DaemonProcess, daemon_env, long_context_model


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("daemon") / "home"
    # Greedy decoding: the tiny test model's answers are then the same on every machine.
    d = DaemonProcess(home, daemon_env(home, model_temperature="0", model_chat_temperature="0")).start()
    yield d
    d.stop()


def _frame(obj: object) -> bytes:
    body = json.dumps(obj).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def _read_frame(sock: socket.socket) -> dict:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = int(head.split(b":")[1])
    while len(rest) < length:
        rest += sock.recv(4096)
    return json.loads(rest[:length])


def test_files_are_private(daemon: DaemonProcess) -> None:
    assert stat.S_IMODE(daemon.home.stat().st_mode) == 0o700
    for name in ("daemon.json", "reinf.duckdb"):
        assert stat.S_IMODE((daemon.home / name).stat().st_mode) == 0o600, name
    info = daemon.info
    assert info["host"] == "127.0.0.1" and len(info["token"]) >= 32


def test_wrong_token_and_requests_before_initialize_are_refused(daemon: DaemonProcess) -> None:
    for first in (
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {"capabilities": {}, "initializationOptions": {"token": "wrong"}},
        },
        {"jsonrpc": "2.0", "id": 1, "method": "reinf/status", "params": {}},
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"capabilities": {}}},
    ):
        with socket.create_connection(("127.0.0.1", daemon.info["port"]), timeout=10) as s:
            s.sendall(_frame(first))
            answer = _read_frame(s)
            assert answer["error"]["code"] == -32001 and "token" in answer["error"]["message"]
            # The connection is closed after the refusal.
            assert s.recv(1) == b""
    with pytest.raises((RpcError, DaemonUnavailable)):  # with a wrong token, the daemon's proof fails first
        Client("127.0.0.1", daemon.info["port"], "not-the-token")


def test_chat_streams_and_is_stored_with_model_adapter_and_timings(daemon: DaemonProcess) -> None:
    with daemon.client() as c:
        deltas: list[str] = []
        r = c.chat("def add(a, b):", on_delta=deltas.append, max_tokens=24, temperature=0)
        assert r["finish_reason"] in ("stop", "length")
        assert "".join(deltas) == r["text"] and len(deltas) >= 1
        assert r["model"] == "reinf-tiny-test" and r["adapter_version"] == 0
        assert set(r["timings"]) == {"queue_ms", "prompt_ms", "generate_ms", "total_ms"}
        assert r["timings"]["total_ms"] >= r["timings"]["generate_ms"] > 0
        items = c.request("reinf/history", {"limit": 50})["items"]
        stored = next(i for i in items if i["interaction_id"] == r["interaction_id"])
        assert stored["response"] == r["text"] and stored["kind"] == "chat"
        assert "def add(a, b):" in stored["prompt"]


def test_rate_validates_every_field_and_writes_nothing_on_error(daemon: DaemonProcess) -> None:
    with daemon.client() as c:
        iid = c.chat("x = ", max_tokens=4)["interaction_id"]
        before = c.status()["ratings_total"]
        bad = [
            ({"interaction_id": iid, "stars": 7}, "stars"),
            ({"interaction_id": iid, "stars": "4"}, "stars"),
            ({"interaction_id": iid, "thumbs": "sideways"}, "thumbs"),
            ({"interaction_id": iid}, "at least one"),
            ({"stars": 3}, "interaction_id"),
            ({"interaction_id": "does-not-exist", "stars": 3}, "unknown interaction_id"),
            ({"interaction_id": iid, "stars": 3, "colour": "red"}, "colour"),
            ({"interaction_id": iid, "comment": "x" * (256 * 1024 + 1)}, "over the limit"),
        ]
        for params, needle in bad:
            with pytest.raises(RpcError) as err:
                c.request("reinf/rate", params)
            assert err.value.code == -32602, params
            assert needle in err.value.message, (params, err.value.message)
        assert c.status()["ratings_total"] == before
        ok = c.rate(iid, thumbs="up", stars=4, comment="nice")
        assert ok["ratings_total"] == before + 1 and ok["rating_id"] > 0
        item = next(
            i for i in c.request("reinf/history", {"limit": 50})["items"] if i["interaction_id"] == iid
        )
        assert item["rating"] == {"thumbs": "up", "stars": 4, "comment": "nice"}


def test_other_methods_refuse_bad_params(daemon: DaemonProcess) -> None:
    with daemon.client() as c:
        for method, params, needle in [
            ("reinf/chat", {"messages": []}, "messages"),
            ("reinf/chat", {"messages": [{"role": "robot", "content": "x"}]}, "role"),
            ("reinf/chat", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
            ("reinf/chat", {"messages": [{"role": "user", "content": "x"}], "temperature": 9}, "temperature"),
            ("reinf/chat", {"messages": [{"role": "user", "content": "y" * 300_000}]}, "over the limit"),
            ("reinf/history", {"limit": -1}, "limit"),
            ("reinf/history", {"kind": "poem"}, "kind"),
            ("reinf/export", {"format": "csv", "path": "/tmp/x"}, "format"),
            ("reinf/export", {"format": "jsonl", "path": "relative.jsonl"}, "absolute"),
            ("reinf/forget", {"before": "yesterday"}, "ISO date"),
            (
                "reinf/forget",
                {"before": "2026-01-01", "keep_adapters": "yes"},
                "keep_adapters must be true or false",
            ),
        ]:
            with pytest.raises(RpcError) as err:
                c.request(method, params)
            assert err.value.code == -32602 and needle in err.value.message, (method, err.value.message)


def test_secrets_are_redacted_before_they_are_stored(daemon: DaemonProcess) -> None:
    key = "AKIA" + "ABCDEFGHIJKLMNOP"
    with daemon.client() as c:
        r = c.chat(f"aws_key = '{key}'\nprint(aws_key)", max_tokens=4)
        c.rate(r["interaction_id"], stars=2, comment=f"leaked {key}")
        item = next(
            i
            for i in c.request("reinf/history", {"limit": 50})["items"]
            if i["interaction_id"] == r["interaction_id"]
        )
    assert key not in item["prompt"] and "[REDACTED" in item["prompt"]
    assert key not in item["rating"]["comment"]


def _run_async(coro_fn) -> None:  # noqa: ANN001
    """asyncio.run in a thread of its own: a browser test in the same session may own this thread's loop."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(coro_fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(exc)

    t = threading.Thread(target=target)
    t.start()
    t.join(300)
    assert not t.is_alive(), "the LSP session did not finish"
    if errors:
        raise errors[0]


async def _lsp_session(client: LanguageClient, token: str | None) -> None:
    opts = {"client": "pygls-test"} | ({"token": token} if token else {})
    result = await client.initialize_async(
        types.InitializeParams(capabilities=types.ClientCapabilities(), initialization_options=opts)
    )
    assert result.capabilities.inline_completion_provider is not None
    client.initialized(types.InitializedParams())
    uri = "file:///tmp/example.py"
    text = "import os\n\n\ndef read_config(path):\n    "
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)
        )
    )
    pos = types.Position(line=4, character=4)
    inline = await client.text_document_inline_completion_async(
        types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=pos,
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
        )
    )
    items = inline.items if isinstance(inline, types.InlineCompletionList) else inline
    assert items, "the tiny model produced no inline completion"
    cmd = items[0].command
    assert cmd.command == "reinf.accepted" and cmd.arguments[0]["interaction_id"]
    completion = await client.text_document_completion_async(
        types.CompletionParams(text_document=types.TextDocumentIdentifier(uri=uri), position=pos)
    )
    assert completion.items and completion.items[0].command.command == "reinf.completionAccepted"
    # With VS Code's suggest widget open on "return", only an item that extends it is drawn: the daemon completes
    # as if the entry were inserted and replaces the entry's range.
    selected = types.SelectedCompletionInfo(range=types.Range(start=pos, end=pos), text="return ")
    consistent = await client.text_document_inline_completion_async(
        types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=pos,
            context=types.InlineCompletionContext(
                trigger_kind=types.InlineCompletionTriggerKind.Automatic, selected_completion_info=selected
            ),
        )
    )
    drawn = consistent.items if isinstance(consistent, types.InlineCompletionList) else consistent
    assert drawn, "no completion after the selected entry"
    assert drawn[0].insert_text.startswith("return ") and len(drawn[0].insert_text) > len("return ")
    assert drawn[0].range == selected.range
    # A textDocument/completion client runs the item's command on the server once the item is inserted.
    accepted = completion.items[0].command
    done = await client.workspace_execute_command_async(
        types.ExecuteCommandParams(command=accepted.command, arguments=accepted.arguments)
    )
    assert done["rating_id"] > 0
    # Sent as a request, feedback that cannot be true is answered with -32602 naming the field.
    again = {"interaction_id": accepted.arguments[0]["interaction_id"], "event": "dismissed"}
    with pytest.raises(JsonRpcException, match="event") as refused:
        await client.protocol.send_request_async("reinf/feedback", again)
    assert refused.value.code == -32602
    client.protocol.notify(
        "reinf/feedback",
        {
            "interaction_id": cmd.arguments[0]["interaction_id"],
            "event": "accepted",
            "accepted_chars": 5,
            "shown_ms": 900,
        },
    )
    await client.shutdown_async(None)
    client.exit(None)


def test_real_lsp_client_over_tcp_completes_and_feedback_is_stored(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    async def main() -> None:
        client = LanguageClient("pygls-test", "1")
        await client.start_tcp("127.0.0.1", daemon.info["port"])
        await _lsp_session(client, daemon.info["token"])
        await client.stop()

    _run_async(main)
    with daemon.client() as c:
        out = tmp_path / "export.jsonl"
        c.request("reinf/export", {"format": "jsonl", "path": str(out)})
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    completions = [r for r in rows if r["kind"] == "completion" and r["client"] == "pygls-test"]
    assert len(completions) >= 2
    events = [x["event"] for r in completions for x in (r["ratings"] or [])]
    assert "accepted" in events
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_what_is_typed_after_a_dismissal_is_stored_as_a_correction(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """The daemon follows didChange at the dismissed suggestion's place and keeps what was written there."""
    uri = "file:///tmp/corrected.py"
    text = "import os\n\n\ndef home():\n    "

    async def main() -> None:
        client = LanguageClient("pygls-test", "1")
        await client.start_tcp("127.0.0.1", daemon.info["port"])
        await client.initialize_async(
            types.InitializeParams(
                capabilities=types.ClientCapabilities(),
                initialization_options={"token": daemon.info["token"]},
            )
        )
        client.initialized(types.InitializedParams())
        doc = types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)
        client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=doc))
        pos = types.Position(line=4, character=4)
        inline = await client.text_document_inline_completion_async(
            types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(uri=uri),
                position=pos,
                context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked),
            )
        )
        items = inline.items if isinstance(inline, types.InlineCompletionList) else inline
        assert items, "the tiny model produced no inline completion"
        iid = items[0].command.arguments[0]["interaction_id"]
        await client.protocol.send_request_async(
            "reinf/feedback", {"interaction_id": iid, "event": "dismissed", "shown_ms": 700}
        )
        typed = 'return os.environ["HOME"]'
        # Typed one character at a time, then an edit at the top of the file: the user moved on.
        edits = [(types.Position(line=4, character=4 + i), ch) for i, ch in enumerate(typed)]
        for version, (at, ch) in enumerate([*edits, (types.Position(line=0, character=0), "#\n")], start=2):
            client.text_document_did_change(
                types.DidChangeTextDocumentParams(
                    text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
                    content_changes=[
                        types.TextDocumentContentChangePartial(range=types.Range(start=at, end=at), text=ch)
                    ],
                )
            )
        await client.protocol.send_request_async("reinf/status", {})  # the changes were read before this
        await client.shutdown_async(None)
        client.exit(None)
        await client.stop()

    _run_async(main)
    with daemon.client() as c:
        out = tmp_path / "export.jsonl"
        c.request("reinf/export", {"format": "jsonl", "path": str(out)})
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    corrected = [
        r for r in rows if r["context"] and json.loads(r["context"]).get("uri") == uri and r["corrections"]
    ]
    assert len(corrected) == 1
    assert [(x["typed"], x["event"], x["ended"], x["truncated"]) for x in corrected[0]["corrections"]] == [
        ('return os.environ["HOME"]', "dismissed", "moved", False)
    ]


def test_real_lsp_client_over_stdio(daemon: DaemonProcess) -> None:
    async def main() -> None:
        client = LanguageClient("pygls-test", "1")
        await client.start_io(
            sys.executable,
            "-m",
            "reinf",
            "lsp",
            "--stdio",
            env={**daemon.env, "REINF_HOME": str(daemon.home)},
        )
        await _lsp_session(client, None)  # the stdio bridge adds the token itself
        await client.stop()

    _run_async(main)


def test_a_document_over_the_size_limit_is_refused_and_a_completion_in_it_says_why(
    daemon: DaemonProcess,
) -> None:
    uri = "file:///tmp/big.py"
    big = "x = 1\n" * 200_000  # 1.2 MB, over the default 1 MiB
    with daemon.client() as c:
        shown: list[dict] = []
        c.on_notification("window/showMessage", shown.append)
        c.open_document(uri, big)
        with pytest.raises(RpcError) as err:
            c.inline_completion(uri, 200_000, 0)
        assert err.value.code == -32602 and "server.max_document_bytes" in err.value.message
        assert "1200000 bytes" in err.value.message
        assert any("server.max_document_bytes" in m["message"] for m in shown)
        # Replaced by a small text, it completes again.
        c.notify(
            "textDocument/didChange",
            {"textDocument": {"uri": uri, "version": 2}, "contentChanges": [{"text": "def f():\n    "}]},
        )
        c.inline_completion(uri, 1, 4)
        # An edit that takes it over the limit refuses it again.
        c.notify(
            "textDocument/didChange",
            {
                "textDocument": {"uri": uri, "version": 3},
                "contentChanges": [
                    {
                        "range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 0}},
                        "text": big,
                    }
                ],
            },
        )
        with pytest.raises(RpcError, match="server.max_document_bytes"):
            c.inline_completion(uri, 1, 4)


def test_several_clients_at_once(daemon: DaemonProcess) -> None:
    results: dict[int, dict] = {}
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            with daemon.client(f"c{n}") as c:
                r = c.chat(f"def f{n}():", max_tokens=8)
                results[n] = c.rate(r["interaction_id"], stars=1 + n % 5)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(results) == 5
    assert len({r["rating_id"] for r in results.values()}) == 5


@pytest.fixture(scope="module")
def long_daemon(tmp_path_factory: pytest.TempPathFactory):
    """A daemon whose chats can run long: greedy decoding on this model runs to max_tokens (4096 tokens, about
    half a minute here) instead of stopping at a stop token."""
    root = tmp_path_factory.mktemp("long")
    model = long_context_model(root / "long-model")
    home = root / "home"
    env = daemon_env(
        home,
        model_name=str(model),
        model_max_context_tokens="65536",
        model_temperature="0",
        model_chat_temperature="0",
    )
    d = DaemonProcess(home, env).start()
    yield d
    d.stop()


def _start_long_chat(c: Client, token: str) -> tuple[int, threading.Event, list[str]]:
    """Send a chat of 4096 tokens and wait until it streams; returns its id, its done event and its deltas."""
    streamed = threading.Event()
    deltas: list[str] = []

    def on_progress(value: dict) -> None:
        deltas.append(value["delta"])
        streamed.set()

    c._progress[token] = on_progress
    msg_id, done = c.request_async(
        "reinf/chat",
        {
            "messages": [{"role": "user", "content": "write a long module"}],
            "max_tokens": 4096,
            "partialResultToken": token,
        },
    )
    assert streamed.wait(60), "the chat never started streaming"
    return msg_id, done, deltas


def test_cancel_stops_generation_early(long_daemon: DaemonProcess) -> None:
    with long_daemon.client() as c:
        before = c.status()["interactions_total"]
        msg_id, done, deltas = _start_long_chat(c, "cancel-test")
        c.notify("$/cancelRequest", {"id": msg_id})
        assert done.wait(60), "a cancelled chat never answered"
        answer = c._pending.pop(msg_id)
        # A chat stopped while it generates answers with what it had, marked cancelled, and is stored (the
        # chat panel's Stop and an interrupted %%ask keep the partial answer to rate).
        assert answer["result"]["finish_reason"] == "cancelled", answer
        partial = answer["result"]["text"]
        # One inference thread: this chat is answered only after the cancelled one stopped generating, so
        # the deltas streamed by then are all it ever made. Uncancelled it streams one per token, 4096.
        r = c.chat("x = ", max_tokens=4)
        assert r["finish_reason"] == "length" and r["interaction_id"]
        assert len(deltas) < 1000, f"the cancelled chat went on for {len(deltas)} tokens"
        assert partial == "".join(deltas)  # the answer is what streamed, no more
        assert c.status()["interactions_total"] == before + 2


def test_a_rollback_waiting_for_a_long_chat_holds_up_no_other_client(long_daemon: DaemonProcess) -> None:
    with long_daemon.client("chatter") as chatter, long_daemon.client("roller") as roller:
        chat_id, chat_done, _ = _start_long_chat(chatter, "rollback-test")
        # The swap is a job behind the chat on the inference thread: the rollback waits for the chat.
        rollback_id, rollback_done = roller.request_async("reinf/rollback", {"version": 0})
        # Meanwhile a new client connects, asks for its status and lists the history: all answered at once.
        with long_daemon.client("watcher") as watcher:
            assert watcher.status()["model"].endswith("long-model")
            watcher.request("reinf/history", {"limit": 5})
            assert not rollback_done.is_set() and not chat_done.is_set(), "the status waited for the chat"
        chatter.notify("$/cancelRequest", {"id": chat_id})
        assert rollback_done.wait(60), "the rollback never finished"
        assert roller._pending.pop(rollback_id)["result"] == {"adapter_version": 0}


def test_a_stopped_chat_answers_with_what_it_had_and_stores_it(daemon: DaemonProcess) -> None:
    """Stop in an editor (`$/cancelRequest` once text has streamed): the answer so far comes back, finish
    reason "cancelled", and is stored, so it can be rated."""
    streamed: list[str] = []
    stop = threading.Event()

    def on_progress(value: dict) -> None:
        streamed.append(value["delta"])
        stop.set()  # stop as soon as the first text has arrived

    with daemon.client() as c:
        r = c.request(
            "reinf/chat",
            {"messages": [{"role": "user", "content": "write a long module"}], "max_tokens": 4000},
            on_progress=on_progress,
            cancel=stop,
            timeout=60,
        )
        assert r["finish_reason"] == "cancelled"
        assert r["text"] and r["text"].startswith(streamed[0])
        out = daemon.home / "stopped.jsonl"
        c.request("reinf/export", {"format": "jsonl", "path": str(out)})
    rows = {row["interaction_id"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert rows[r["interaction_id"]]["finish_reason"] == "cancelled"
    assert rows[r["interaction_id"]]["response"] == r["text"]


def test_garbage_and_vanishing_clients_do_not_take_the_daemon_down(daemon: DaemonProcess) -> None:
    port = daemon.info["port"]
    junk = [
        b"\x00\xff" * 100,
        b"Content-Length: abc\r\n\r\n{}",
        b"Content-Length: 99999999999\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"Content-Length: 5\r\n\r\n{{{{{",
    ]
    for payload in junk:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(10)
            try:
                while s.recv(4096):
                    pass
            except OSError:
                pass
    # A client that goes away in the middle of a generation.
    c = daemon.client()
    c.request_async("reinf/chat", {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 200})
    c._sock.close()
    with daemon.client() as c2:
        assert c2.status()["model"] == "reinf-tiny-test"
    assert daemon.proc.poll() is None


def test_restart_and_kill9_keep_every_acknowledged_rating(tmp_path: Path) -> None:
    home = tmp_path / "home"
    d = DaemonProcess(home, daemon_env(home)).start()
    acked = []
    with d.client() as c:
        for i in range(3):
            r = c.chat(f"# task {i}\n", max_tokens=4)
            acked.append((r["interaction_id"], c.rate(r["interaction_id"], stars=1 + i)["rating_id"]))
    d.stop()
    d.start()
    with d.client() as c:
        r = c.chat("# after restart\n", max_tokens=4)
        acked.append((r["interaction_id"], c.rate(r["interaction_id"], thumbs="down")["rating_id"]))
    d.kill9()
    d.start()
    with d.client() as c:
        items = {i["interaction_id"]: i for i in c.request("reinf/history", {"limit": 100})["items"]}
        assert c.status()["ratings_total"] == 4
    d.stop()
    for iid, _ in acked:
        assert items[iid]["rating"] is not None


def test_kill9_after_acknowledged_completions_loses_none_of_their_feedback(tmp_path: Path) -> None:
    home = tmp_path / "home"
    d = DaemonProcess(home, daemon_env(home)).start()
    try:
        uri = "file:///tmp/crash.py"
        with d.client() as c:
            c.open_document(uri, "import os\n\n\ndef read_config(path):\n    ")
            shown = []
            for _ in range(15):
                items = c.inline_completion(uri, 4, 4)
                if items:
                    shown.append(items[0]["command"]["arguments"][0]["interaction_id"])
            assert shown, "the tiny model produced no completion"
            d.kill9()  # straight after the last answer
        d.start()
        with d.client() as c:
            for iid in shown:  # what the editor sends once the user accepts or dismisses what it showed
                c.notify("reinf/feedback", {"interaction_id": iid, "event": "dismissed"})
                c.rate(iid, thumbs="down")  # answered with an error if the completion were unknown
            out = tmp_path / "after.jsonl"
            c.request("reinf/export", {"format": "jsonl", "path": str(out)})
    finally:
        d.stop()
    rows = {r["interaction_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    for iid in shown:
        events = [x["event"] for x in rows[iid]["ratings"]]
        assert "dismissed" in events, (iid, events)


def test_cli_status_history_rate_and_export(daemon: DaemonProcess, tmp_path: Path) -> None:
    import subprocess

    env = {**daemon.env, "REINF_HOME": str(daemon.home)}

    def reinf(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "reinf", *args], env=env, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    status = reinf("status")
    assert "reinf-tiny-test" in status
    assert re.search(
        r"completions +accepted (\d+% of \d+|none shown) in the last 7 days; base \(active\)", status
    )
    with daemon.client() as c:
        iid = c.chat("def cli():", max_tokens=4)["interaction_id"]
    assert iid in reinf("history", "-n", "50", "--unrated")
    assert "stored" in reinf("rate", iid, "--stars", "5", "--comment", "from the cli")
    assert iid not in reinf("history", "-n", "50", "--unrated")
    out = tmp_path / "all.parquet"
    assert "exported" in reinf("export", str(out))
    import pyarrow.parquet as pq

    rows = pq.read_table(out).to_pylist()
    assert any(r["interaction_id"] == iid and r["ratings"][-1]["stars"] == 5 for r in rows)
    bad = subprocess.run(
        [sys.executable, "-m", "reinf", "rate", iid, "--stars", "9"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "stars must be between 1 and 5" in bad.stderr


def test_connect_without_a_daemon_says_so(tmp_path: Path) -> None:
    with pytest.raises(DaemonUnavailable, match="no reinf daemon is running"):
        Client.connect(tmp_path / "nothing-here", start=False)


def test_second_daemon_on_the_same_home_is_refused(daemon: DaemonProcess) -> None:
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "reinf", "serve"],
        env={**daemon.env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "already running" in out.stderr
    assert daemon.proc.poll() is None and os.path.exists(daemon.home / "daemon.json")
