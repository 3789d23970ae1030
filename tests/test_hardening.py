"""Attacks a hostile local process or a clumsy user would make, each reproduced and shown to hold.

SECURITY.md says what each measure covers; each test here failed before its measure was in place."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import reinf.client as client_module
import reinf.daemon as daemon_module
from reinf.client import Client, DaemonUnavailable, RpcError
from reinf.config import ConfigError, load_config
from reinf.paths import write_json
from reinf.store import Store, StoreError

from .daemon_proc import DaemonProcess, daemon_env
from .test_redact import CASES


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("hardening") / "home"
    d = DaemonProcess(home, daemon_env(home, model_max_new_tokens="4", model_seed="0")).start()
    yield d
    d.stop()


def files_under(root: Path) -> list[Path]:
    return [Path(dirpath) / name for dirpath, _, names in os.walk(root) for name in names]


def on_disk(root: Path, needle: str) -> list[str]:
    return [
        str(p.relative_to(root))
        for p in files_under(root)
        if p.is_file() and needle.encode() in p.read_bytes()
    ]


# -- redaction -------------------------------------------------------------------------------------------


def test_keys_typed_one_character_at_a_time_never_reach_the_store(daemon: DaemonProcess) -> None:
    """Each keystroke is a didChange edit and fires an inline completion, as VS Code does: the completions
    fired at 19 of an AWS key's 20 characters, and at 39 of a GitHub token's 40, stored all but the last."""
    keys = {"aws": CASES["aws_access_key"], "github": CASES["github_token"]}
    uri = "file:///tmp/typed_keys.py"
    lines = ["import boto3", "aws = Client(key='')", "gh = Github('')", "# control-text-typed-keys", ""]
    with daemon.client() as c:
        c.open_document(uri, "\n".join(lines))
        version, fired = 1, 0
        for line, key in enumerate(keys.values(), start=1):
            col = lines[line].index("''") + 1
            for i, ch in enumerate(key):
                version += 1
                pos = {"line": line, "character": col + i}
                c.notify(
                    "textDocument/didChange",
                    {
                        "textDocument": {"uri": uri, "version": version},
                        "contentChanges": [{"range": {"start": pos, "end": pos}, "text": ch}],
                    },
                )
                c.inline_completion(uri, line, col + i + 1)
                fired += 1
        items = c.request("reinf/history", {"limit": 500, "kind": "completion"})["items"]
    stored = json.dumps(items)
    assert len(items) >= fired // 4, (
        f"only {len(items)} of {fired} completions were stored: this proves little"
    )
    assert "control-text-typed-keys" in stored  # the document reached the store, ordinary text intact
    for name, key in keys.items():
        marker = 4
        for n in range(marker + 1, len(key) + 1):
            assert key[:n] not in stored, f"{n} of the {name} key's {len(key)} characters were stored"
        assert not on_disk(daemon.home, key[: marker + 6]), f"a piece of the {name} key is on disk"
    assert on_disk(daemon.home, "control-text-typed-keys"), (
        "the control is not on disk: the check proves nothing"
    )


def test_a_secret_straddling_the_cursor_is_not_stored(daemon: DaemonProcess) -> None:
    """The prefix and the suffix of a completion's document were searched for secrets apart."""
    key = CASES["npm_token"]
    uri = "file:///tmp/straddle.py"
    text = f"import os\nNPM = '{key}'\n# control-text-straddle\n"
    col = len("NPM = '") + len(key) // 2
    with daemon.client() as c:
        c.open_document(uri, text)
        c.inline_completion(uri, 1, col)
        items = c.request("reinf/history", {"limit": 500, "kind": "completion"})["items"]
    mine = [i for i in items if "control-text-straddle" in json.dumps(i)]
    assert mine, "the completion was not stored"
    for i in range(len(key) - 8 + 1):
        assert key[i : i + 8] not in json.dumps(mine), f"{key[i : i + 8]!r} of the token was stored"


def test_the_client_name_is_redacted(daemon: DaemonProcess) -> None:
    """initializationOptions.client is stored with every interaction."""
    key = CASES["github_token"]
    with daemon.client(name=f"ext {key}") as c:
        c.chat("hello control-text-client", max_tokens=2)
        out = json.dumps(c.request("reinf/history", {"limit": 500}))
    assert "control-text-client" in out
    assert not on_disk(daemon.home, key), "the client's name put a token on disk"


# -- files planted in a home that was once writable ---------------------------------------------------------

LONG = bool(os.environ.get("REINF_LONG"))
PLANTED = "[model]\ntrust_remote_code = true\n[server]\nredact_secrets = false\n"
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")


def _home(tmp_path: Path, mode: int = 0o700) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    os.chmod(home, mode)
    return home


def test_a_config_in_a_home_writable_by_others_is_not_read(tmp_path: Path) -> None:
    """The config was read before the home was made private: a planted one turned on remote code."""
    home = _home(tmp_path, 0o777)
    (home / "config.toml").write_text(PLANTED)
    with pytest.raises(ConfigError, match=r"REINF_HOME .* is writable by others .*chmod 700"):
        load_config(home, environ={})


def test_a_config_writable_by_others_is_refused(tmp_path: Path) -> None:
    home = _home(tmp_path)
    (home / "config.toml").write_text(PLANTED)
    os.chmod(home / "config.toml", 0o666)
    with pytest.raises(ConfigError, match=r"config .*config.toml is writable by others .*chmod 600"):
        load_config(home, environ={})
    os.chmod(home / "config.toml", 0o600)  # what the message says to do
    assert load_config(home, environ={}).model.trust_remote_code is True


@root_only
def test_a_config_or_a_home_of_another_user_is_refused(tmp_path: Path) -> None:
    home = _home(tmp_path)
    (home / "config.toml").write_text(PLANTED)
    os.chown(home / "config.toml", 65534, 65534)
    with pytest.raises(ConfigError, match=r"config.toml belongs to uid 65534, not to you"):
        load_config(home, environ={})
    os.chown(home / "config.toml", 0, 0)
    os.chown(home, 65534, 65534)
    with pytest.raises(ConfigError, match=r"REINF_HOME .* belongs to uid 65534"):
        load_config(home, environ={})


def test_reinf_serve_names_the_planted_config_in_one_line(tmp_path: Path) -> None:
    home = _home(tmp_path)
    (home / "config.toml").write_text(PLANTED)
    os.chmod(home / "config.toml", 0o646)
    r = subprocess.run(
        [sys.executable, "-m", "reinf", "serve"],
        env=daemon_env(home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "config.toml is writable by others" in r.stderr and not (home / "daemon.json").exists()


def test_a_daemon_json_planted_by_others_is_refused_by_the_client(tmp_path: Path) -> None:
    """A daemon.json that points at an impostor's port would get the token and every prompt."""
    home = _home(tmp_path)
    info = home / "daemon.json"
    info.write_text(json.dumps({"port": 9, "token": "x", "pid": 1}))
    os.chmod(info, 0o666)
    with pytest.raises(DaemonUnavailable, match=r"daemon.json .* is writable by others"):
        Client.connect(home, start=False)
    r = subprocess.run(
        [sys.executable, "-m", "reinf", "--no-start", "status"],
        env=daemon_env(home),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and "is writable by others" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_symlink_planted_at_a_temp_name_is_never_written_through(tmp_path: Path) -> None:
    """daemon.json was written through `.daemon.json.<pid>.tmp`, opened with O_CREAT|O_TRUNC: a symlink
    planted there received the token, and one to a file outside the home overwrote it."""
    home = _home(tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_text("the attacker's file")
    for pid in {os.getpid(), os.getpid() + 1}:
        (home / f".daemon.json.{pid}.tmp").symlink_to(outside)
    write_json(home / "daemon.json", {"token": "the-token"})
    assert outside.read_text() == "the attacker's file"
    assert json.loads((home / "daemon.json").read_text()) == {"token": "the-token"}
    assert stat.S_IMODE((home / "daemon.json").stat().st_mode) == 0o600


def test_the_daemon_log_is_never_opened_through_a_planted_symlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Client.connect` starts a daemon with its output appended to daemon.log."""
    home = _home(tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_text("")
    (home / "daemon.log").symlink_to(outside)

    class Exited:
        returncode = 1

        def __init__(self, *args: object, stdout: object = None, **kw: object) -> None:
            stdout.write(b"the daemon's output\n")  # type: ignore[attr-defined]
            stdout.flush()  # type: ignore[attr-defined]

        def poll(self) -> int:
            return 1

    monkeypatch.setattr(client_module.subprocess, "Popen", Exited)
    with pytest.raises(DaemonUnavailable):
        client_module.start_daemon(home, timeout=5)
    assert outside.read_text() == ""


# -- config validation ----------------------------------------------------------------------------------

BAD_CONFIGS = {
    "latin-1": (b'[model]\nname = "caf\xe9"\n', r"config.toml is not UTF-8 text \(byte 0xe9 on line 2\)"),
    "utf-16": ("[server]\nport = 1\n".encode("utf-16"), r"config.toml is UTF-16 text; TOML must be UTF-8"),
    "port-high": (b"[server]\nport = 70000\n", r"server.port must be an integer from 0 to 65535 .*got 70000"),
    "port-low": (b"[server]\nport = -1\n", r"server.port must be an integer from 0 to 65535"),
    "log-level": (
        b'[server]\nlog_level = "LOUD"\n',
        r"server.log_level must be one of DEBUG, INFO, .*'LOUD'",
    ),
    "timeout-nan": (
        b"[server]\nauth_timeout_s = nan\n",
        r"server.auth_timeout_s must be a finite number, got nan",
    ),
    "timeout-inf": (
        b"[server]\nauth_timeout_s = inf\n",
        r"server.auth_timeout_s must be a finite number, got inf",
    ),
    "message-bytes": (
        b"[server]\nmax_message_bytes = -1\n",
        r"server.max_message_bytes must be an integer from 1024",
    ),
    "field-over-message": (
        b"[server]\nmax_message_bytes = 2048\nmax_field_bytes = 4096\n",
        r"server.max_field_bytes \(4096\) must not exceed server.max_message_bytes",
    ),
    "temperature-nan": (
        b"[model]\ntemperature = nan\n",
        r"model.temperature must be a finite number, got nan",
    ),
    "temperature-high": (
        b"[model]\ntemperature = 7.5\n",
        r"model.temperature must be a number from 0 to 2 .*7.5",
    ),
    "max-new-tokens": (b"[model]\nmax_new_tokens = 0\n", r"model.max_new_tokens must be an integer from 1"),
    "learning-rate-nan": (
        b"[training]\nlearning_rate = nan\n",
        r"training.learning_rate must be a finite number",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_a_bad_config_value_is_one_line_naming_the_key_and_its_range(tmp_path: Path, case: str) -> None:
    home = _home(tmp_path)
    data, message = BAD_CONFIGS[case]
    (home / "config.toml").write_bytes(data)
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(home, environ={})
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("REINF_SERVER_AUTH_TIMEOUT_S", "inf", r"server.auth_timeout_s must be a finite number"),
        ("REINF_SERVER_PORT", "99999", r"server.port must be an integer from 0 to 65535"),
        ("REINF_MODEL_TEMPERATURE", "NaN", r"model.temperature must be a finite number"),
    ],
)
def test_a_bad_value_from_the_environment_is_refused_too(
    tmp_path: Path, name: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(_home(tmp_path), environ={name: value})


def test_a_lower_case_log_level_is_accepted(tmp_path: Path) -> None:
    assert (
        load_config(_home(tmp_path), environ={"REINF_SERVER_LOG_LEVEL": "debug"}).server.log_level == "DEBUG"
    )


@pytest.mark.parametrize("case", ["folder", "utf-16", "log-level"])
def test_reinf_serve_says_what_is_wrong_with_the_config_without_a_traceback(
    tmp_path: Path, case: str
) -> None:
    home = _home(tmp_path)
    if case == "folder":
        (home / "config.toml").mkdir()
        expected = "config.toml is a folder"
    else:
        (home / "config.toml").write_bytes(BAD_CONFIGS[case][0])
        expected = "UTF-16" if case == "utf-16" else "server.log_level must be one of"
    r = subprocess.run(
        [sys.executable, "-m", "reinf", "serve"],
        env=daemon_env(home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and expected in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


# -- logs ------------------------------------------------------------------------------------------------


def test_refused_messages_leave_no_user_text_in_the_log(daemon: DaemonProcess) -> None:
    """Unknown ids, unknown method names and refused feedback were logged with their values: five messages
    added megabytes, and whatever text they carried."""
    marker = "leak-" + "x" * 200_000
    before = daemon.log_path.stat().st_size
    with daemon.client() as c:
        for method in ("reinf/rate", f"reinf/{marker}", f"x/{marker}"):
            with pytest.raises(RpcError):
                c.request(method, {"interaction_id": marker, "stars": 3})
        for method in (f"reinf/{marker}", f"x/{marker}", "reinf/feedback", "$/cancelRequest"):
            c.notify(method, {"interaction_id": marker, "event": marker, "id": marker})
        c.notify(
            "reinf/feedback", {"interaction_id": "0" * 32, "event": "accepted", "accepted_chars": marker}
        )
        c.notify(
            "textDocument/didChange",
            {
                "textDocument": {"uri": f"file:///{marker}", "version": 2},
                "contentChanges": [{"text": marker}],
            },
        )
        c.notify("textDocument/didClose", {"textDocument": {"uri": f"file:///{marker}"}})
        c.status()  # every notification before it has been handled
    grown = daemon.log_path.read_bytes()[before:]
    assert b"leak-xxxx" not in grown, grown[:2000]
    assert len(grown) < 8_000, f"ten refused messages added {len(grown)} bytes to the log: {grown[:2000]!r}"


def test_the_log_file_is_rotated_past_its_cap(tmp_path: Path) -> None:
    """The log grew without bound; now daemon.log is moved to daemon.log.1 past --log-max-bytes."""
    home = _home(tmp_path)
    log = home / "daemon.log"
    cap = 16_384
    d = DaemonProcess(home, daemon_env(home))
    proc = subprocess.Popen(
        [sys.executable, "-m", "reinf", "serve", "--log-file", str(log), "--log-max-bytes", str(cap)],
        env=d.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    d.proc = proc
    try:
        deadline = time.monotonic() + 180
        while not (home / "daemon.json").exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the daemon did not start"
            time.sleep(0.1)
        with Client.connect(home, start=False) as c:
            for _ in range(600):  # each is one line of the log: a refused notification
                c.notify("reinf/feedback", {"interaction_id": "0" * 32, "event": "nope"})
            c.status()
        sizes = [p.stat().st_size for p in (log, log.with_name("daemon.log.1"))]
        assert log.with_name("daemon.log.1").exists(), f"never rotated: {sizes}"
        assert all(size <= cap + 4096 for size in sizes), sizes
        assert not log.with_name("daemon.log.2").exists()
        assert stat.S_IMODE(log.stat().st_mode) == 0o600
    finally:
        d.stop()


def test_a_daemon_that_cannot_start_is_one_clear_line_not_its_log(tmp_path: Path) -> None:
    """The Jupyter proxy's 503 carried this message: it was the log's tail, with paths (and a traceback when
    there was one). Now it is one line saying why; the tail stays in `detail`, for a terminal."""
    home = _home(tmp_path)
    (home / "config.toml").write_text("[server]\nport = 70000\n")
    env = {**daemon_env(home)}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        with pytest.raises(DaemonUnavailable) as caught:
            Client.connect(home, start=True, start_timeout=120)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message and str(home) not in message, message
    assert message.startswith("reinf serve exited with code 2: config error: server.port must be"), message
    assert "server.port" in caught.value.detail


# -- smaller: exports, the trainer's config, a second initialize ------------------------------------------


def _no_traceback_since(daemon: DaemonProcess, offset: int) -> None:
    grown = daemon.log_path.read_bytes()[offset:]
    assert b"Traceback" not in grown, grown.decode(errors="replace")[-3000:]


@pytest.mark.parametrize("where", ["/proc/reinf-export.jsonl", "/sys/reinf-export.jsonl"])
def test_an_export_to_a_place_that_cannot_be_written_is_a_clear_error(
    daemon: DaemonProcess, where: str
) -> None:
    offset = daemon.log_path.stat().st_size
    with daemon.client() as c, pytest.raises(RpcError) as caught:
        c.request("reinf/export", {"format": "jsonl", "path": where})
    assert caught.value.code == -32602, caught.value
    assert caught.value.message.startswith(f"reinf/export: path: cannot write '{where}'"), (
        caught.value.message
    )
    _no_traceback_since(daemon, offset)


@root_only
def test_an_export_to_a_full_disk_is_a_clear_error_and_leaves_nothing(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    full = tmp_path / "full"
    full.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        with daemon.client() as c:
            c.chat("something to export " + "x" * 200_000, max_tokens=2)
            with open(full / "filler", "wb", buffering=0) as fh:
                try:
                    while True:
                        fh.write(b"\0" * 4096)
                except OSError:
                    pass
            offset = daemon.log_path.stat().st_size
            with pytest.raises(RpcError) as caught:
                c.request("reinf/export", {"format": "jsonl", "path": str(full / "out.jsonl")})
        assert caught.value.code == -32603, caught.value
        assert "no space left on the disk" in caught.value.message, caught.value.message
        assert sorted(p.name for p in full.iterdir()) == ["filler"]  # no half export, no temp file
        _no_traceback_since(daemon, offset)
    finally:
        subprocess.run(["umount", "-l", str(full)], capture_output=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_at_a_checkpoint_is_survived_and_loses_nothing(tmp_path: Path) -> None:
    """A checkpoint that a full disk cannot take made DuckDB invalidate the database ("database has been
    invalidated"): every later request failed with -32603, even after space was freed."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        home = _home(disk)
        store = Store(home / "reinf.duckdb")
        # A checkpoint every few rows: the first one the full disk cannot take comes early.
        store._con.execute("SET checkpoint_threshold = '64KB'")
        acked: list[str] = []  # the ratings acknowledged, by the interaction each rates

        def rate() -> None:
            iid = store.add_interaction(kind="chat", client="t", model="m", adapter_version=0, prompt="p" * 3000,
                                        context={}, response="r" * 3000, finish_reason="stop", timings={})  # fmt: skip
            store.add_rating(iid, stars=4)
            acked.append(iid)

        for _ in range(5):
            rate()
        # Leave less than the next checkpoint needs (the file grows in 256 KiB blocks) and more than the WAL
        # between checkpoints: commits still fit, and a checkpoint soon does not.
        free = os.statvfs(disk)
        with open(disk / "filler", "wb", buffering=0) as fh:
            fh.write(b"\0" * (free.f_bavail * free.f_frsize - (192 << 10)))
        failure = None
        for _ in range(2000):
            try:
                rate()
            except StoreError as exc:
                failure = str(exc)
                break
        assert failure is not None, "the disk never filled: the test proves nothing"
        assert store._con.reopened >= 1, f"no checkpoint failed, so the test proves nothing: {failure}"
        assert "fatal error" in failure and "nothing was stored" in failure and "space" in failure, failure
        # Still full: each request gets a clear error, never the invalidated database's.
        with pytest.raises(StoreError, match="space"):
            for _ in range(50):
                rate()
        (disk / "filler").unlink()
        rate()  # space again: the same store object works, as the daemon's would, without a restart
        rated = [r[0] for r in store._read("SELECT interaction_id FROM ratings ORDER BY id")]
        assert rated == acked  # every acknowledged rating, and no other
        assert store.ratings_total() == len(acked)  # the counts kept beside the database were read again
        store.close()
        again = Store(home / "reinf.duckdb")
        assert [r[0] for r in again._read("SELECT interaction_id FROM ratings ORDER BY id")] == acked
        again.close()
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


@pytest.mark.skipif(not LONG, reason="about two minutes: in make test-long")
def test_a_killed_export_leaves_no_file_behind(tmp_path: Path) -> None:
    """kill -9 of the daemon in the middle of an export left `.out.jsonl.tmp` next to the export's path."""
    home = _home(tmp_path)
    store = Store(home / "reinf.duckdb")
    text = "y" * 20_000
    for _ in range(3000):
        store.add_interaction(kind="chat", client="t", model="m", adapter_version=0, prompt=text,
                              context={}, response=text, finish_reason="stop", timings={})  # fmt: skip
    store.close()
    out_dir = tmp_path / "exports"
    out_dir.mkdir()
    d = DaemonProcess(home, daemon_env(home)).start()
    try:
        c = d.client()
        c.request_async("reinf/export", {"format": "jsonl", "path": str(out_dir / "out.jsonl")})
        deadline = time.monotonic() + 60
        while not (list(out_dir.iterdir()) or list(home.glob("tmp/*/*"))):  # until it is writing
            assert time.monotonic() < deadline, "the export never started"
            time.sleep(0.001)
        d.kill9()
    finally:
        d.stop()
    assert list(out_dir.iterdir()) == [], "a killed export left a file"
    d.start()  # and the staging folder in the home is emptied at start-up
    try:
        assert not list(home.glob("tmp/*"))
    finally:
        d.stop()


def test_the_trainers_config_never_holds_the_encryption_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from .test_scheduler import Harness

    monkeypatch.setenv("FAKE_MODE", "publish")
    h = Harness(tmp_path)
    h.cfg.store.encryption_key = "the-encryption-key-42"
    h.sched.start()
    try:
        run = h.wait(h.sched.retrain())
        config = (h.cfg.home / "runs" / str(run["run_id"]) / "config.json").read_text()
        assert json.loads(config)["run_id"] == run["run_id"]
        assert "the-encryption-key-42" not in config
    finally:
        h.sched.close()
        h.store.close()


def test_a_second_initialize_with_a_wrong_token_is_refused(daemon: DaemonProcess) -> None:
    """An authenticated connection took a second initialize whatever its token."""
    with daemon.client() as c:
        with pytest.raises(RpcError) as caught:
            c.request(
                "initialize",
                {"processId": None, "capabilities": {}, "initializationOptions": {"token": "wrong"}},
            )
        assert caught.value.code == -32001, caught.value
        assert c.status()["model"]  # the connection, which showed the token once, stays as it was


# -- impostor daemons --------------------------------------------------------------------------------------


class Impostor:
    """Listens on a port and keeps whatever clients send it; answers nothing."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.create_server(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        self.received = b""
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while self.sock.fileno() != -1:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        conn.settimeout(3)
        with conn:
            try:
                while chunk := conn.recv(65536):
                    self.received += chunk
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


def _daemon_json(home: Path, **info: object) -> None:
    write_json(home / "daemon.json", {"host": "127.0.0.1", **info})


def test_a_stale_daemon_json_sends_nothing_to_whoever_holds_its_port(tmp_path: Path) -> None:
    """After kill -9 of the daemon, an impostor on its port got the token and the first prompt from the CLI and
    the Python client. The recorded pid is dead now, so nothing is sent."""
    home = _home(tmp_path)
    d = DaemonProcess(home, daemon_env(home)).start()
    info = d.info
    d.kill9()
    impostor = Impostor(info["port"])
    try:
        with pytest.raises(DaemonUnavailable, match=r"daemon.json names pid \d+, which is not a running"):
            Client.connect(home, start=False, timeout=5)
        r = subprocess.run(
            [sys.executable, "-m", "reinf", "--no-start", "status"],
            env=daemon_env(home),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        time.sleep(0.5)
        assert info["token"].encode() not in impostor.received
    finally:
        impostor.close()


def test_a_listener_that_cannot_prove_the_token_never_receives_it(
    tmp_path: Path, daemon: DaemonProcess
) -> None:
    """The recorded pid is alive and a reinf daemon (another home's), but the port is an impostor's: the
    daemon must prove it knows the token (an HMAC of the client's nonce) before the client sends it."""
    home = _home(tmp_path)
    impostor = Impostor()
    token = "the-token-" + "k" * 30
    _daemon_json(home, port=impostor.port, token=token, pid=daemon.info["pid"])
    try:
        with pytest.raises(DaemonUnavailable, match=r"not the reinf daemon that daemon.json names.*not sent"):
            Client.connect(home, start=False, timeout=3)
        time.sleep(0.5)
        assert b"reinf/challenge" in impostor.received  # the control: the client did reach the impostor
        assert token.encode() not in impostor.received
    finally:
        impostor.close()


def test_the_real_daemon_proves_it_knows_the_token(daemon: DaemonProcess) -> None:
    from reinf.liveness import challenge_proof

    with socket.create_connection(("127.0.0.1", daemon.info["port"]), timeout=10) as s:
        s.sendall(
            _framed({"jsonrpc": "2.0", "id": 1, "method": "reinf/challenge", "params": {"nonce": "n" * 24}})
        )
        answer = json.loads(s.recv(65536).split(b"\r\n\r\n", 1)[1])
    assert answer["result"]["proof"] == challenge_proof(daemon.info["token"], "n" * 24)
    with daemon.client() as c:  # and the client, which checks it, still connects
        assert c.status()["model"]


def _framed(obj: dict) -> bytes:
    body = json.dumps(obj).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


# -- pre-auth floods ---------------------------------------------------------------------------------------


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_unauthenticated_sockets_cannot_make_the_daemon_hold_their_bodies(daemon: DaemonProcess) -> None:
    """Bodies up to 4 MiB were buffered before the token check: 400 sockets took the daemon to 2.1 GB."""
    port, pid = daemon.info["port"], daemon.info["pid"]
    before = _rss(pid)
    socks = []
    try:
        for _ in range(40):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"Content-Length: 4000000\r\n\r\n")
            try:
                s.sendall(b"{" + b" " * (1 << 20))
            except OSError:
                pass  # refused and closed already
            socks.append(s)
        time.sleep(1)
        grown = _rss(pid) - before
        assert grown < 16 << 20, (
            f"40 unauthenticated sockets of 1 MiB each grew the daemon by {grown >> 20} MiB"
        )
        answer = socks[-1].recv(4096)
        assert b"too large before initialize" in answer, answer
    finally:
        for s in socks:
            s.close()


def test_the_auth_timeout_is_one_deadline_for_the_connection(tmp_path: Path) -> None:
    """It restarted on every message, so a message every few seconds kept a socket open for ever."""
    from .test_security import _daemon_in_process, _serve_connections

    d = _daemon_in_process(tmp_path, auth_timeout_s=0.5)

    async def body(port: int) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sent, got = 0, b""
        while sent < 15 and not reader.at_eof():  # 3 s of messages, six times the timeout
            try:
                writer.write(b"Content-Length: 1\r\n\r\n{")
                await writer.drain()
            except ConnectionError:
                break
            sent += 1
            await asyncio.sleep(0.2)
            try:
                got += await asyncio.wait_for(reader.read(65536), 0.01)
            except (asyncio.TimeoutError, ConnectionError):
                pass
        try:
            got += await asyncio.wait_for(reader.read(), 10)
        except ConnectionError:
            pass
        writer.close()
        assert b"within 0.5 s" in got, got[-300:]
        return sent

    assert _serve_connections(d, body) < 15


def test_unauthenticated_connections_are_capped(tmp_path: Path) -> None:
    from .test_security import _daemon_in_process, _serve_connections

    d = _daemon_in_process(tmp_path, auth_timeout_s=5)

    async def body(port: int) -> int:
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(80)]
        busy = 0
        for reader, _ in conns:
            try:
                busy += b"too many connections" in await asyncio.wait_for(reader.read(), 0.5)
            except asyncio.TimeoutError:
                pass
        for _, writer in conns:
            writer.close()
        return busy

    assert _serve_connections(d, body) == 80 - daemon_module.MAX_UNAUTHENTICATED


# -- forget that forgets ----------------------------------------------------------------------------------


def _backend_with_fake_trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """A real Backend (store, scheduler, adapters) on a fake engine, whose trainer is the scheduler tests' fake
    that publishes; and the harness that made its home."""
    from .test_scheduler import Harness

    monkeypatch.setenv("FAKE_MODE", "publish")
    h = Harness(tmp_path)  # a home and a fake trainer that publishes a (fake) PEFT adapter
    h.store.close()
    return _start_backend(h), h


def _start_backend(h: Any) -> Any:
    """A Backend on the harness's home, as the daemon starts one."""
    from reinf.backend import Backend

    from .test_fuzz import FakeEngine

    backend = Backend(h.cfg, engine=FakeEngine())
    backend.scheduler.trainer_command = [sys.executable, str(h.fake)]
    return backend


def _publish_one(backend: Any) -> int:
    """Rate one answer and train on it until adapter v1 serves; the run's id."""
    iid = backend.store.add_interaction(kind="chat", client="t", model="m", adapter_version=0, prompt="forget me",
                                        context={}, response="r", finish_reason="stop", timings={})  # fmt: skip
    asyncio.run(backend.rate({"interaction_id": iid, "stars": 5}))
    run_id = backend.scheduler.retrain("manual")
    deadline = time.monotonic() + 60
    while (
        backend.store.get_run(run_id)["state"] in ("queued", "running") or backend.engine.adapter_version != 1
    ):
        assert time.monotonic() < deadline, backend.store.get_run(run_id)
        time.sleep(0.05)
    return run_id


def test_a_forget_killed_after_its_rewrite_is_finished_at_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forget killed after the database rewrite left the adapter trained on the forgotten ratings serving, and a
    second forget found nothing to delete, so it never untrained. Now the forget is recorded first, and start-up
    finishes it: the adapter, the run's own copy of it and the judge go."""
    from reinf.backend import FORGET_MARKER

    backend, h = _backend_with_fake_trainer(tmp_path, monkeypatch)
    run_id = _publish_one(backend)
    home = h.cfg.home
    (home / "reward_model").mkdir()  # the judge the run trained
    run_copy = home / "runs" / str(run_id) / "adapter"
    assert run_copy.is_dir() and (home / "adapters" / "v1").is_dir()

    def killed(pending: dict[str, Any]) -> dict[str, Any]:
        raise KeyboardInterrupt("killed after the rewrite")

    monkeypatch.setattr(backend, "_after_forget", killed)
    everything = (datetime.now(timezone.utc) + timedelta(minutes=1)).isoformat()
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(backend.forget({"before": everything}))
    # As the kill left it: the text is gone, the adapter trained on it serves.
    assert backend.store.count_interactions() == 0 and backend.engine.adapter_version == 1
    assert (home / FORGET_MARKER).exists()
    backend.close()

    again = _start_backend(h)  # the next start
    try:
        assert not (home / FORGET_MARKER).exists()
        assert again.engine.adapter_version == 0 and again.store.active_adapter() is None
        assert {a["version"]: a["status"] for a in again.store.list_adapters()} == {1: "forgotten"}
        assert not (home / "adapters" / "v1").exists() and not run_copy.exists()
        assert not (home / "reward_model").exists()
        assert again.store.get_run(run_id)["state"] == "published"  # the run's row, its history, stays
    finally:
        again.close()


def test_a_second_forget_finishes_what_a_failed_one_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same interruption, and then, without a restart, the user runs forget again: it untrains."""
    from reinf.backend import FORGET_MARKER

    backend, h = _backend_with_fake_trainer(tmp_path, monkeypatch)
    try:
        _publish_one(backend)
        after_forget = backend._after_forget
        monkeypatch.setattr(
            backend, "_after_forget", lambda pending: (_ for _ in ()).throw(OSError("disk error"))
        )
        everything = (datetime.now(timezone.utc) + timedelta(minutes=1)).isoformat()
        with pytest.raises(OSError):
            asyncio.run(backend.forget({"before": everything}))
        monkeypatch.setattr(backend, "_after_forget", after_forget)
        result = asyncio.run(backend.forget({"before": "2001-01-01T00:00:00+00:00"}))
        assert result["deleted"] == 0 and result["adapters_forgotten"] == [1]
        assert backend.engine.adapter_version == 0 and not (h.cfg.home / FORGET_MARKER).exists()
    finally:
        backend.close()


def test_forget_empties_a_log_that_holds_what_clients_sent(tmp_path: Path) -> None:
    """At DEBUG the daemon logs what clients send; that text stayed in daemon.log after a forget."""
    home = _home(tmp_path)
    env = daemon_env(home, server_log_level="DEBUG")
    marker = f"forget-this-{os.getpid()}-text"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        c = Client.connect(home, start=True, start_timeout=180)  # as clients start it: logging to daemon.log
    try:
        c.chat(f"# {marker}\n", max_tokens=2)
        c.request("reinf/history", {"limit": 5})  # its answer, with the prompt, is logged as it is sent
        log = home / "daemon.log"
        assert marker in log.read_text(errors="replace"), "the control: at DEBUG the text is in the log"
        everything = (datetime.now(timezone.utc) + timedelta(minutes=1)).isoformat()
        assert c.request("reinf/forget", {"before": everything})["logs_discarded"] is True
        for path in (log, log.with_name("daemon.log.1")):
            assert not path.exists() or marker not in path.read_text(errors="replace"), path
        c.status()
        assert "discarded the daemon's log" in log.read_text()  # it logs on, from the new start
    finally:
        c.close()
        pid = json.loads((home / "daemon.json").read_text())["pid"]
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)


def test_a_client_that_never_reads_its_error_answers_is_dropped(tmp_path: Path) -> None:
    """Before the token, each bad message is answered; a client that sent and never read made those answers
    pile up in the daemon's memory (32 MB sent: +159 MB) until the auth timeout. Now the connection is dropped
    once a few of its answers are waiting."""
    from .test_security import _daemon_in_process, _serve_connections

    d = _daemon_in_process(tmp_path, auth_timeout_s=120)
    junk = b"Content-Length: 1\r\n\r\nx" * 4096  # 4096 parse errors, each answered with about 90 bytes

    async def body(port: int) -> tuple[int, float]:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # it reads nothing: keep its buffer small
        sock.connect(("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        t0 = time.monotonic()
        sent = 0
        try:
            while sent < 32 << 20 and time.monotonic() - t0 < 60:
                writer.write(junk)
                await asyncio.wait_for(writer.drain(), 60)
                sent += len(junk)
                await asyncio.sleep(0)
        except (ConnectionError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()
        return sent, time.monotonic() - t0

    sent, seconds = _serve_connections(d, body)
    assert sent < 32 << 20 and seconds < 60, f"still connected after {sent} bytes and {seconds:.1f} s"
