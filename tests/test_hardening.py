"""Attacks a hostile local process or a clumsy user would make, each reproduced and shown to hold.

SECURITY.md says what each measure covers; each test here failed before its measure was in place."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

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
