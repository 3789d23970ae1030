"""One daemon per REINF_HOME, whoever starts it: starters racing each other, and an editor's `reinf serve`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from reinf.client import Client, read_daemon_info
from reinf.paths import ALREADY_RUNNING

from .daemon_proc import daemon_env

ROUNDS = 20 if os.environ.get("REINF_LONG") else 2


def _serving(home: Path) -> list[int]:
    """The pids of `reinf serve` processes for `home`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"reinf" in args and b"serve" in args and f"REINF_HOME={home}".encode() in environ:
            pids.append(int(entry.name))
    return pids


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_starters_at_once_start_one_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, round_: int
) -> None:
    home = tmp_path / "home"
    env = daemon_env(home)
    for key in [k for k in os.environ if k.startswith("REINF_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    ports: dict[str, int] = {}
    errors: list[BaseException] = []

    def starter(name: str) -> None:  # the CLI, the magic and the Jupyter server all start this way
        try:
            with Client.connect(home, start=True, client_name=name, start_timeout=300) as c:
                c.status()
                ports[name] = c._sock.getpeername()[1]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=starter, args=(f"starter-{i}",)) for i in range(2)]
    # And an editor that runs `reinf serve` itself at the same moment, as the VS Code extension does.
    editor_log = tmp_path / "editor.log"
    with open(editor_log, "wb") as out:
        editor = subprocess.Popen(
            [sys.executable, "-m", "reinf", "serve"],
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join(300)
        assert not errors, errors
        info = read_daemon_info(home)
        assert set(ports.values()) == {info["port"]}, (ports, info)
        if editor.poll() is not None:  # it lost to a starter's daemon, and said so
            assert editor.returncode == ALREADY_RUNNING and "already running" in editor_log.read_text()
        # Only the daemon that serves is left, whoever started it.
        deadline = time.monotonic() + 60
        while _serving(home) != [info["pid"]] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _serving(home) == [info["pid"]]
    finally:
        for pid in {*_serving(home), editor.pid}:
            try:
                os.killpg(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        editor.wait(60)
        deadline = time.monotonic() + 60
        while _serving(home) and time.monotonic() < deadline:
            time.sleep(0.2)
