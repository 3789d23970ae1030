"""The security model of DESIGN.md, one measure at a time (SECURITY.md says what each one covers).

Token auth in constant time and before any work; loopback only; a private REINF_HOME; secrets redacted
before they reach the disk; no remote code; export, and a forget that leaves no copy behind; encryption at
rest only where it is secure; strict CSPs for the two web pages.
"""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import os
import re
import secrets
import socket
import stat
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from unittest import mock

import duckdb
import pytest

import reinf.daemon as daemon_module
from reinf.config import Config, ConfigError, ModelConfig, load_config
from reinf.store import Store

from .daemon_proc import REPO, DaemonProcess, daemon_env
from .test_redact import CASES as SECRETS
from .test_wire_fuzz import Wire, frame


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    """A daemon whose home was made world-readable before it started: it must tighten it."""
    home = tmp_path_factory.mktemp("security") / "home"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    Store(home / "reinf.duckdb").close()
    os.chmod(home / "reinf.duckdb", 0o644)
    d = DaemonProcess(home, daemon_env(home)).start()
    yield d
    d.stop()


def files_under(root: Path) -> list[Path]:
    return [Path(dirpath) / name for dirpath, dirs, files in os.walk(root) for name in dirs + files]


def holding(root: Path, needle: bytes) -> list[str]:
    """The files under `root` whose bytes contain `needle`."""
    return [str(p.relative_to(root)) for p in files_under(root) if p.is_file() and needle in p.read_bytes()]


# -- the token ----------------------------------------------------------------------------------------


class _FakeBackend:
    loop = None
    engine = mock.Mock(model_name="fake")

    def attach(self, client: Any) -> None:
        pass

    def detach(self, client: Any) -> None:
        pass

    def answered(self) -> None:
        pass

    def close(self) -> None:
        pass


def _daemon_in_process(tmp_path: Path, **server: Any) -> daemon_module.Daemon:
    cfg = Config(home=tmp_path / "home")
    for key, value in server.items():
        setattr(cfg.server, key, value)
    return daemon_module.Daemon(cfg, backend=_FakeBackend())


def test_the_token_is_decided_by_hmac_compare_digest(tmp_path: Path) -> None:
    """The answer comes from hmac.compare_digest (constant time), never from == on the strings."""
    d = _daemon_in_process(tmp_path)
    calls: list[tuple[bytes, bytes]] = []

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return a != b  # the opposite of the truth: the result must follow this, not the strings

    def init(token: Any) -> dict[str, Any]:
        return {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {"initializationOptions": {"token": token}},
        }

    with mock.patch.object(daemon_module.hmac, "compare_digest", spy):
        assert d._check_token(init(d.token)) is False
        assert d._check_token(init("x" * len(d.token))) is True
    assert calls == [(d.token.encode(), d.token.encode()), (b"x" * len(d.token), d.token.encode())]
    assert d._check_token(init(d.token)) and not d._check_token(init(d.token[:-1]))


def test_each_daemon_gets_a_fresh_long_token(tmp_path: Path) -> None:
    tokens = {_daemon_in_process(tmp_path).token for _ in range(3)}
    assert len(tokens) == 3
    assert all(len(t) >= 43 and re.fullmatch(r"[A-Za-z0-9_-]+", t) for t in tokens)  # 32 random bytes


def _serve_connections(d: daemon_module.Daemon, body: Any) -> Any:
    async def main() -> Any:
        server = await asyncio.start_server(d._connection, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await body(port)
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(main())


async def _exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), timeout)  # until the daemon closes
    finally:
        writer.close()


def test_nothing_is_built_for_a_connection_before_the_token(tmp_path: Path) -> None:
    d = _daemon_in_process(tmp_path, auth_timeout_s=0.5)
    built = []
    real_build = daemon_module.build_server

    def spy(backend: Any) -> Any:
        built.append(backend)
        return real_build(mock.MagicMock())

    async def body(port: int) -> None:
        wrong = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {"initializationOptions": {"token": "no"}},
        }
        status = {"jsonrpc": "2.0", "id": 1, "method": "reinf/status", "params": {}}
        for data in (frame(wrong), frame(status), b"", b"Content-Length: 10\r\n\r\n{"):
            answer = await _exchange(port, data)
            assert b"-32001" in answer, answer  # refused (or timed out), and closed
        assert built == [], "a language server was built for a connection without the token"
        good = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {"capabilities": {}, "initializationOptions": {"token": d.token}},
        }
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(frame(good))
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.close()
        assert len(built) == 1  # the control: with the token, it is built

    with mock.patch.object(daemon_module, "build_server", spy):
        _serve_connections(d, body)


def test_a_connection_that_says_nothing_is_closed(tmp_path: Path) -> None:
    d = _daemon_in_process(tmp_path, auth_timeout_s=0.5)

    async def body(port: int) -> float:
        t0 = time.monotonic()
        answer = await _exchange(port, b"", timeout=20)
        assert b"-32001" in answer and b"within 0.5 s" in answer, answer
        return time.monotonic() - t0

    assert _serve_connections(d, body) < 15


def test_unauthenticated_connections_hear_no_broadcasts(daemon: DaemonProcess) -> None:
    port, token = daemon.info["port"], daemon.info["token"]
    silent = socket.create_connection(("127.0.0.1", port), timeout=10)
    listener = Wire(port, token)  # the control: an authenticated connection hears it
    try:
        with daemon.client() as c:
            c.request("reinf/rollback", {"version": 0})
        heard = listener.read(10)
        while heard.get("method") != "reinf/adapterChanged":
            heard = listener.read(10)
        assert heard["params"]["adapter_version"] == 0
        silent.settimeout(2)
        with pytest.raises(TimeoutError):
            silent.recv(1)
    finally:
        silent.close()
        listener.close()


# -- loopback only --------------------------------------------------------------------------------------


def test_the_daemon_listens_on_loopback_only(daemon: DaemonProcess) -> None:
    port = daemon.info["port"]
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if int(hexport, 16) == port and state == "0A":  # LISTEN
                listening.append(addr)
    assert listening == ["0100007F"], listening  # 127.0.0.1 and nothing else
    assert daemon.info["host"] == "127.0.0.1"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "0", "192.168.1.10", "10.0.0.1", "example.com"])
def test_a_non_loopback_host_is_refused_without_the_flag(tmp_path: Path, host: str) -> None:
    with pytest.raises(ConfigError, match="allow_remote"):
        load_config(tmp_path, environ={"REINF_SERVER_HOST": host})
    cfg = load_config(tmp_path, environ={"REINF_SERVER_HOST": host, "REINF_SERVER_ALLOW_REMOTE": "true"})
    assert cfg.server.host == host


def test_reinf_serve_refuses_a_public_bind_before_it_binds(tmp_path: Path) -> None:
    home = tmp_path / "home"
    out = subprocess.run(
        [sys.executable, "-m", "reinf", "serve", "--host", "0.0.0.0"],
        env=daemon_env(home),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "allow_remote" in out.stderr, out.stderr[-2000:]
    assert not (home / "daemon.json").exists()


def test_the_flag_binds_elsewhere_only_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """192.0.2.1 is TEST-NET-1, never this machine's address: the bind fails, so nothing is ever exposed,
    but the warning comes first. (`reinf serve --host H --allow-remote` sets these same two keys.)"""
    cfg = load_config(
        tmp_path / "home", overrides={"server": {"host": "192.0.2.1", "allow_remote": True}}, environ={}
    )
    d = daemon_module.Daemon(cfg, backend=_FakeBackend())
    with caplog.at_level(logging.WARNING, logger="reinf.daemon"), pytest.raises(OSError):
        asyncio.run(d.serve())
    assert "non-loopback address 192.0.2.1" in caplog.text
    assert not (tmp_path / "home" / "daemon.json").exists()


# -- files --------------------------------------------------------------------------------------------------


def _wait_idle(client: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while client.status()["training"]["state"] != "idle":
        assert time.monotonic() < deadline, "the training run never ended"
        time.sleep(0.2)


def test_home_is_0700_and_everything_in_it_is_private(daemon: DaemonProcess) -> None:
    with daemon.client() as c:
        r = c.chat("def private():", max_tokens=4)
        c.rate(r["interaction_id"], stars=4)
        c.request("reinf/retrain", {})  # a run folder with its snapshot, config and log
        c.request("reinf/cancelTraining", {})
        _wait_idle(c)
    assert stat.S_IMODE(daemon.home.stat().st_mode) == 0o700  # it was 0755 before the daemon started
    assert stat.S_IMODE((daemon.home / "reinf.duckdb").stat().st_mode) == 0o600  # it was 0644
    paths = files_under(daemon.home)
    assert any(p.name == "data.parquet" for p in paths) and any(p.name == "daemon.json" for p in paths)
    loose = [
        f"{p.relative_to(daemon.home)} {stat.S_IMODE(p.stat().st_mode):o}"
        for p in paths
        if not p.is_symlink() and stat.S_IMODE(p.stat().st_mode) & 0o077
    ]
    assert not loose, f"readable by others: {loose}"


def test_an_export_is_private_whatever_the_umask(daemon: DaemonProcess, tmp_path: Path) -> None:
    with daemon.client() as c:
        for fmt in ("jsonl", "parquet"):
            out = tmp_path / f"all.{fmt}"
            c.request("reinf/export", {"format": fmt, "path": str(out)})
            assert stat.S_IMODE(out.stat().st_mode) == 0o600


# -- redaction ------------------------------------------------------------------------------------------


def test_secrets_are_redacted_in_every_stored_field(daemon: DaemonProcess, tmp_path: Path) -> None:
    """Each known secret format, in the prompt, the context (selection, file, cells, uri), the comment and
    an inline completion's document: none reaches the store, its WAL, an export or the history."""
    marker = f"visible-{secrets.token_hex(8)}"  # the control: ordinary text in the same fields is stored
    blob = "\n".join(f"{name} = {value!r}" for name, value in SECRETS.items()) + f"\n# {marker}\n"
    uri = f"https://admin:{'hunter2' + 'secret'}@example.com/{marker}.py"
    with daemon.client() as c:
        r = c.chat(
            f"Explain this:\n{blob}",
            max_tokens=2,
            context={
                "uri": uri,
                "language": "python",
                "selection": blob,
                "file": blob,
                "cells": [blob, blob],
            },
        )
        c.rate(r["interaction_id"], stars=1, comment=f"it leaked {blob}")
        doc = f"file:///tmp/{marker}.py"
        c.open_document(doc, blob + "def f():\n    ")
        c.inline_completion(doc, blob.count("\n") + 1, 4)
        out = tmp_path / "export.jsonl"
        c.request("reinf/export", {"format": "jsonl", "path": str(out)})
        history = json.dumps(c.request("reinf/history", {"limit": 500}))
    exported = out.read_text()
    assert marker in exported and marker in history
    for name, value in {**SECRETS, "url_password": "hunter2secret"}.items():
        assert value not in exported and value not in history, f"{name} leaked: {where(value, exported)}"
        assert not holding(daemon.home, value.encode()), (
            f"{name} is on disk in {holding(daemon.home, value.encode())}"
        )
    assert holding(daemon.home, marker.encode()), (
        "the control text is not on disk either: the check proves nothing"
    )


def test_a_prompt_cut_inside_a_secret_keeps_no_piece_of_it(daemon: DaemonProcess) -> None:
    """The model's context holds only the end of a long document, so the cut lands inside a private key:
    the key's tail and END line reach the model's prompt, where no pattern sees a key any more."""
    body = "\n".join(secrets.token_urlsafe(48) for _ in range(40))
    key = f"-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----"
    marker = f"visible-{secrets.token_hex(8)}"
    text = f'KEY = """{key}"""\n# {marker}\n'
    with daemon.client() as c:
        c.chat(f"Explain this:\n{text}", max_tokens=2)
        doc = f"file:///tmp/{marker}.py"
        c.open_document(doc, text + "def f():\n    ")
        c.inline_completion(doc, text.count("\n") + 1, 4)
        history = c.request("reinf/history", {"limit": 500})["items"]
    mine = [item for item in history if marker in json.dumps(item)]
    prompts = [item["model_prompt"] for item in mine]
    assert any(item["kind"] == "chat" for item in mine), "the chat was not stored"
    assert all(marker in p and len(p) < len(key) for p in prompts), "no prompt was cut: this proves nothing"
    lines = body.splitlines()
    for item in mine:
        for field, value in item.items():
            leaked = [line for line in lines if line in json.dumps(value)]
            assert not leaked, f"{item['kind']}.{field} holds {len(leaked)} lines of the key: {leaked[-1]}"
    for line in lines[-3:]:
        assert not holding(daemon.home, line.encode()), f"a line of the key is on disk: {line}"


def where(value: str, exported: str) -> list[str]:
    """Which row kinds and fields of an export hold `value`, with a little context."""
    found = []
    for row in map(json.loads, exported.splitlines()):
        for field, text in row.items():
            text = json.dumps(text) if not isinstance(text, str) else text
            if value in text:
                i = text.index(value)
                found.append(f"{row['kind']}.{field}: ...{text[max(0, i - 60) : i + len(value) + 20]!r}")
    return found


# -- no remote code ----------------------------------------------------------------------------------


def test_trust_remote_code_is_off_by_default() -> None:
    assert ModelConfig().trust_remote_code is False
    assert Config().model.trust_remote_code is False


def test_no_code_turns_trust_remote_code_on() -> None:
    """Every call in server/, training/ and jupyter-ext/ passes the config's value, never a literal True."""
    offenders = []
    for folder in ("server", "training", "jupyter-ext"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call):
                    for kw in node.keywords:
                        if (
                            kw.arg == "trust_remote_code"
                            and isinstance(kw.value, ast.Constant)
                            and kw.value.value
                        ):
                            offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, offenders


def test_a_model_that_ships_code_is_refused_and_its_code_never_runs(tmp_path: Path) -> None:
    from reinf.engine import Engine

    model = tmp_path / "evil-model"
    model.mkdir()
    ran = tmp_path / "the-code-ran"
    code = f"open({str(ran)!r}, 'w').write('pwned')\n"
    (model / "configuration_evil.py").write_text(
        code + "from transformers import PretrainedConfig\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n"
    )
    (model / "modeling_evil.py").write_text(code)
    (model / "tokenization_evil.py").write_text(code)
    (model / "config.json").write_text(
        json.dumps(
            {
                "model_type": "evil",
                "architectures": ["EvilModel"],
                "auto_map": {
                    "AutoConfig": "configuration_evil.EvilConfig",
                    "AutoModelForCausalLM": "modeling_evil.EvilModel",
                    "AutoTokenizer": ["tokenization_evil.EvilTokenizer", None],
                },
            }
        )
    )
    (model / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "EvilTokenizer",
                "auto_map": {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]},
            }
        )
    )
    with pytest.raises(Exception, match="trust_remote_code"):
        Engine(ModelConfig(name=str(model), device="cpu"))
    assert not ran.exists(), "the model's own code was executed"


# -- export and forget ---------------------------------------------------------------------------------


def test_forget_scrubs_the_examples_that_run_metrics_keep_in_the_store(tmp_path: Path) -> None:
    """The gate's example (a held-out prompt and the answers to it) is stored with the run's metrics, and with the
    published adapter's evaluation."""
    path = tmp_path / "r.duckdb"
    marker = f"held-out-prompt-{secrets.token_hex(8)}"
    s = Store(path)
    s.add_interaction(kind="chat", client="t", model="m", adapter_version=0, prompt=marker, context={},
                      response="r", finish_reason="stop", timings={})  # fmt: skip
    run = s.create_run("manual", 1, 1)
    s.update_run(run, state="rejected", finished=True,
                 metrics={"decision": "reject", "gate": {"kl_to_base": 0.5, "example": {"prompt": marker}}})  # fmt: skip
    s.add_adapter(1, run, str(tmp_path / "v1"), "active", {"kl_to_base": 0.5, "example": {"active": marker}})
    s.close()
    assert holding(tmp_path, marker.encode()), "the control: the text is in the file before"
    s = Store(path)
    assert s.forget(datetime.now(timezone.utc) + timedelta(minutes=1)) == 1
    assert s.list_runs()[0]["metrics"] == {"decision": "reject", "gate": {"kl_to_base": 0.5}}
    assert s.list_adapters()[0]["eval"] == {"kl_to_base": 0.5}
    s.close()
    assert not holding(tmp_path, marker.encode())


# -- encryption at rest -----------------------------------------------------------------------------


def _httpfs_loads() -> bool:
    try:
        duckdb.connect(":memory:").execute("LOAD httpfs")
        return True
    except duckdb.Error:
        return False


def test_encryption_where_it_cannot_be_secure_is_refused_at_start(tmp_path: Path) -> None:
    if _httpfs_loads():
        pytest.skip("httpfs loads here, so encryption is allowed (see the next test)")
    home = tmp_path / "home"
    out = subprocess.run(
        [sys.executable, "-m", "reinf", "serve"],
        env=daemon_env(home, store_encryption_key="k" * 32),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "httpfs" in out.stderr and "insecure" in out.stderr, out.stderr[-2000:]
    assert not (home / "reinf.duckdb").exists() and not (home / "daemon.json").exists()


def test_encryption_where_it_is_secure_keeps_no_plaintext(tmp_path: Path) -> None:
    if not _httpfs_loads():
        pytest.skip("DuckDB's httpfs extension cannot be loaded here (offline), so encryption is refused")
    marker = f"secret-text-{secrets.token_hex(8)}"
    path = tmp_path / "r.duckdb"
    s = Store(path, encryption_key="k" * 32)
    s.add_interaction(
        kind="chat",
        client="t",
        model="m",
        adapter_version=0,
        prompt=marker,
        context={},
        response=marker,
        finish_reason="stop",
        timings={},
    )
    s.close()
    assert marker.encode() not in path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do, as long as it is not plaintext
        duckdb.connect(str(path)).execute("SELECT * FROM interactions").fetchall()


# -- content security policies ------------------------------------------------------------------------


def csp_problems(policy: str, *, own: set[str]) -> list[str]:
    """What is wrong with `policy` for a page that may load only its own files (`own` names them)."""
    directives = {}
    for part in policy.split(";"):
        words = part.split()
        if words:
            directives[words[0]] = words[1:]
    problems = []
    if directives.get("default-src") != ["'none'"]:
        problems.append(f"default-src is {directives.get('default-src')}, not 'none'")
    for name, sources in directives.items():
        for src in sources:
            if src in own or src in ("'none'", "'self'", "data:") and name in ("img-src", "font-src"):
                continue
            if src.startswith("'nonce-") and name == "script-src":
                continue
            if src in ("'none'", "'self'"):
                continue
            problems.append(f"{name} allows {src}")
    for name in ("script-src", "base-uri", "form-action"):
        if name not in directives:
            problems.append(f"no {name}: it falls back to default-src only for script-src")
    if directives.get("script-src") and "data:" in directives["script-src"]:
        problems.append("script-src allows data:")
    return problems


def test_the_vscode_webview_csp_is_strict_and_every_webview_uses_it() -> None:
    src = REPO / "vscode-extension" / "src"
    builder = (src / "webviewHtml.ts").read_text()
    body = re.search(r"export function contentSecurityPolicy\([^)]*\)[^{]*\{(.*?)\n\}", builder, re.S)
    assert body, "contentSecurityPolicy() not found in webviewHtml.ts"
    parts = re.findall(r"[`\"]([^`\"]+)[`\"]", body.group(1))
    policy = "; ".join(p for p in parts if p != "; ").replace("${cspSource}", "CSP_SOURCE")
    policy = policy.replace("${nonce}", "NONCE")
    assert not csp_problems(policy, own={"CSP_SOURCE"}), (policy, csp_problems(policy, own={"CSP_SOURCE"}))
    assert "connect-src 'none'" in policy and "frame-src 'none'" in policy
    assert '<meta http-equiv="Content-Security-Policy"' in builder
    # No webview gets its HTML from anywhere but that builder.
    writers = [
        str(p.relative_to(src))
        for p in src.rglob("*.ts")
        if "test" not in p.parts and re.search(r"\.html\s*=(?!=)", p.read_text())
    ]
    assert writers == ["webviewShell.ts"], writers
    assert "webviewHtml(" in (src / "webviewShell.ts").read_text()


def test_the_jupyter_page_csp_is_strict() -> None:
    """The header itself is checked over HTTP on a real Jupyter server in tests/test_jupyter_server.py;
    this holds the policy to the same rules as the webview's."""
    from reinf.jupyter.handlers import CSP

    assert not csp_problems(CSP, own=set()), csp_problems(CSP, own=set())
    assert "frame-ancestors 'self'" in CSP and "connect-src 'self'" in CSP


# -- forget: last, since it forgets everything the tests above stored -------------------------------------


def test_forget_leaves_no_copy_of_the_text_anywhere_in_home(daemon: DaemonProcess) -> None:
    """After `forget`, the prompt, the response and the comment are gone from every file under REINF_HOME:
    the DuckDB file, its WAL, and the Parquet snapshots that training runs were given."""
    home = daemon.home
    prompt = f"forget-me-{secrets.token_hex(12)}"
    comment = f"and-this-{secrets.token_hex(12)}"
    with daemon.client() as c:
        r = c.chat(f"# {prompt}\n", max_tokens=4)
        c.rate(r["interaction_id"], stars=2, comment=comment)
        c.request("reinf/retrain", {})
        c.request("reinf/cancelTraining", {})
        _wait_idle(c)
        # A run that reaches the gate keeps an example (a held-out prompt, the answers) in its metrics.json.
        finished = home / "runs" / "9999"
        finished.mkdir(mode=0o700)
        example = {"prompt": f"# {prompt}\n", "candidate": "x", "active": "y"}
        (finished / "metrics.json").write_text(
            json.dumps({"decision": "reject", "gate": {"example": example}})
        )
        for needle in (prompt, comment):  # the control: the text is there to be found before
            assert holding(home, needle.encode()), needle
        before = (datetime.now(timezone.utc) + timedelta(minutes=1)).isoformat()
        assert c.request("reinf/forget", {"before": before})["deleted"] >= 1
        assert c.request("reinf/history", {"limit": 10})["total"] == 0
        assert c.status()["ratings_total"] == 0
        for needle in (prompt, comment):
            assert not holding(home, needle.encode()), (
                f"{needle} is still in {holding(home, needle.encode())}"
            )
    assert json.loads((finished / "metrics.json").read_text()) == {"decision": "reject", "gate": {}}
    daemon.stop()
    for needle in (prompt, comment):  # and after the daemon has checkpointed and closed
        assert not holding(home, needle.encode()), f"{needle} is still in {holding(home, needle.encode())}"
