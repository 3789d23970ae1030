"""The vLLM backend against a stand-in server (tests/fake_vllm.py): prompts, streaming, stops, cancel, adapter
names and swaps, and every bad input the daemon must survive. The real vLLM is in test_vllm_real.py."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from reinf import vllm_engine
from reinf.adapters import AdapterError
from reinf.backend import Backend, NotAvailable
from reinf.config import Config, ConfigError, ModelConfig, load_config
from reinf.vllm import free_port
from reinf.vllm_engine import VllmEngine, home_prefix
from tests.fake_vllm import FakeVllm

PREFIX = "import os\n\n\ndef main():\n    "
SUFFIX = "\n\nmain()\n"


@pytest.fixture
def fake(tiny_model_path):
    server = FakeVllm(str(tiny_model_path))
    yield server
    server.close()


def _cfg(tmp_path: Path, model_path: Path, url: str, **model) -> Config:
    cfg = Config(home=tmp_path / "home")
    cfg.model = ModelConfig(
        name=str(model_path), backend="vllm", vllm_url=url, max_context_tokens=128, **model
    )
    return cfg


@pytest.fixture
def engine(fake, tiny_model_path, tmp_path):
    e = VllmEngine(_cfg(tmp_path, tiny_model_path, fake.url))
    yield e
    e.close()


def _adapter(folder: Path, rank: int = 8) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "peft_type": "LORA"}))
    (folder / "adapter_model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    return folder


def test_config_names_the_key_of_every_bad_backend_setting(tmp_path):
    bad = {
        "REINF_MODEL_BACKEND": ("llama", "model.backend must be"),
        "REINF_MODEL_VLLM_URL": ("ftp://127.0.0.1:8000", "model.vllm_url must look like"),
    }
    for key, (value, msg) in bad.items():
        with pytest.raises(ConfigError, match=msg):
            load_config(tmp_path, environ={key: value})
    cases = [
        ({"vllm_url": "http://127.0.0.1:8000/v1"}, "no /v1"),
        ({"vllm_url": "http://10.0.0.5:8000"}, "in the clear"),
        ({"vllm_url": "http://127.0.0.1:80x"}, "bad port"),
        (
            {"vllm_url": "http://127.0.0.1:8000", "vllm_args": "--enforce-eager"},
            "model.vllm_args applies only",
        ),
        ({"vllm_args": "--port 9000"}, "must not set --port"),
        ({"vllm_args": "--max-lora-rank 12"}, "--max-lora-rank must be one of"),
        ({"vllm_args": "--x 'unclosed"}, "model.vllm_args is not a valid argument list"),
    ]
    for model, msg in cases:
        with pytest.raises(ConfigError, match=msg):
            load_config(tmp_path, overrides={"model": {"backend": "vllm", **model}})
    ok = load_config(
        tmp_path, overrides={"model": {"backend": "vllm", "vllm_url": "https://gpu.example:8443"}}
    )
    assert ok.model.vllm_url == "https://gpu.example:8443"
    assert load_config(tmp_path).model.backend == "local"


def test_a_completion_sends_the_local_engines_prompt_ids_and_streams_until_a_stop(engine, fake, tiny_engine):
    fake.script = ["x = 1", "\n", "y <|fim", "_pad|> never sent", "no"]
    deltas: list[str] = []
    gen = engine.complete(PREFIX, SUFFIX, max_tokens=12, temperature=0, on_delta=deltas.append)
    assert gen.text == "x = 1\ny " and "".join(deltas) == gen.text and gen.finish_reason == "stop"
    # The prompt the local engine would build, as the ids the local engine would feed.
    local_prompt, local_ids = tiny_engine.prompts.fim(PREFIX, SUFFIX, tiny_engine.context_tokens - 12)
    sent = fake.requests[-1]
    assert gen.prompt == local_prompt and sent["prompt"] == local_ids
    assert sent["model"] == engine.model_name and sent["stream"] is True and sent["max_tokens"] == 12
    assert tiny_engine.tokenizer.convert_tokens_to_ids("<|fim_pad|>") in sent["stop_token_ids"]
    assert set(tiny_engine._eos_ids) <= set(sent["stop_token_ids"]) and sent["skip_special_tokens"] is False
    assert sent["temperature"] == 0 and sent["top_p"] == 1.0


def test_long_prompts_are_cut_as_the_local_engine_cuts_them(engine, fake, tiny_engine):
    long_prefix = "x = 1\n" * 400
    gen = engine.complete(long_prefix, SUFFIX, max_tokens=8, temperature=0)
    assert len(fake.requests[-1]["prompt"]) <= engine.context_tokens - 8
    assert gen.prompt == tiny_engine.prompts.fim(long_prefix, SUFFIX, tiny_engine.context_tokens - 8)[0]


def test_chat_uses_the_chat_template_and_streams(engine, fake, tiny_engine):
    fake.script = ["Hel", "lo", "<|im_end|>", "after"]
    deltas: list[str] = []
    msgs = [{"role": "user", "content": "hi"}]
    gen = engine.chat(msgs, max_tokens=8, temperature=0.5, on_delta=deltas.append)
    assert gen.text == "Hello" and deltas and "".join(deltas) == "Hello"
    assert fake.requests[-1]["prompt"] == tiny_engine.prompts.chat([dict(m) for m in msgs], 128 - 8)[1]


def test_a_stop_check_closes_the_stream(engine, fake):
    fake.script = ["a\n", "b\n", "c\n", *["d\n"] * 50]
    fake.delay_s = 0.02
    gen = engine.complete(PREFIX, SUFFIX, max_tokens=60, temperature=0, stop=lambda t: t.count("\n") >= 2)
    assert gen.text == "a\nb\n" and gen.finish_reason == "stop"
    assert fake.disconnected.wait(5), "vLLM kept generating after the daemon had what it wanted"


def test_cancel_closes_the_stream_and_keeps_what_came(engine, fake):
    fake.script = ["tok "] * 200
    fake.delay_s = 0.02
    cancel = threading.Event()
    got: list[str] = []

    def on_delta(d: str) -> None:
        got.append(d)
        if len(got) == 3:
            cancel.set()

    t0 = time.monotonic()
    gen = engine.complete(PREFIX, SUFFIX, max_tokens=200, temperature=0, cancel=cancel, on_delta=on_delta)
    assert gen.finish_reason == "cancelled" and 3 <= len(got) < 20 and time.monotonic() - t0 < 2
    assert fake.disconnected.wait(5)


def test_adapters_load_under_a_per_home_versioned_name_and_the_old_one_is_unloaded_later(
    engine, fake, tmp_path, monkeypatch
):
    monkeypatch.setattr(vllm_engine, "UNLOAD_GRACE_S", 0.3)
    prefix = home_prefix(tmp_path / "home")
    assert prefix != home_prefix(tmp_path / "other-home") and engine.prefix == prefix
    v1, v2 = _adapter(tmp_path / "a1"), _adapter(tmp_path / "a2")
    engine.set_adapter(1, v1)
    assert fake.adapters == {f"{prefix}-v1": str(v1)}
    gen = engine.complete(PREFIX, SUFFIX, max_tokens=4, temperature=0)
    assert fake.requests[-1]["model"] == f"{prefix}-v1" and gen.adapter_version == 1
    engine.set_adapter(2, v2)
    engine.complete(PREFIX, SUFFIX, max_tokens=4, temperature=0)
    assert fake.requests[-1]["model"] == f"{prefix}-v2"
    assert f"{prefix}-v1" in fake.adapters  # requests sent to v1 a moment ago still finish
    deadline = time.monotonic() + 5
    while f"{prefix}-v1" in fake.adapters and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(fake.adapters) == [f"{prefix}-v2"] and fake.unloads == [f"{prefix}-v1"]
    engine.set_adapter(0, None)  # rollback to the base
    engine.complete(PREFIX, SUFFIX, max_tokens=4, temperature=0)
    assert fake.requests[-1]["model"] == engine.model_name and engine.adapter_version == 0


def test_a_refused_adapter_keeps_the_current_one_and_says_why(engine, fake, tmp_path):
    engine.set_adapter(1, _adapter(tmp_path / "a1"))
    with pytest.raises(AdapterError, match=r"LoRA rank 16 is greater than max_lora_rank 8.*still serving v1"):
        engine.set_adapter(2, _adapter(tmp_path / "a2", rank=16))
    engine.complete(PREFIX, SUFFIX, max_tokens=4, temperature=0)
    assert fake.requests[-1]["model"].endswith("-v1") and engine.adapter_version == 1
    with pytest.raises(AdapterError, match="has no adapter_config.json"):
        engine.set_adapter(3, tmp_path)
    engine.max_lora_rank = 8  # as when the daemon started vLLM: checked before vLLM is asked
    with pytest.raises(AdapterError, match=r"rank 16 is above vLLM's --max-lora-rank 8 \(set a larger"):
        engine.set_adapter(4, _adapter(tmp_path / "a4", rank=16))


def test_a_restarted_server_gets_the_adapter_back_and_stale_names_of_this_home_go(
    fake, tiny_model_path, tmp_path, monkeypatch
):
    monkeypatch.setattr(vllm_engine, "WATCH_EVERY_S", 0.1)
    prefix = home_prefix(tmp_path / "home")
    fake.adapters = {f"{prefix}-v7": "/gone", "reinf-someoneelse-v1": "/theirs"}
    engine = VllmEngine(_cfg(tmp_path, tiny_model_path, fake.url))
    try:
        assert fake.adapters == {"reinf-someoneelse-v1": "/theirs"}  # another home's adapter is left alone
        engine.set_adapter(1, _adapter(tmp_path / "a1"))
        fake.adapters.clear()  # what a restart of vLLM does to runtime-loaded adapters
        deadline = time.monotonic() + 5
        while f"{prefix}-v1" not in fake.adapters and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f"{prefix}-v1" in fake.adapters
    finally:
        engine.close()


def test_a_url_that_does_not_answer_is_reported_and_served_once_it_answers(
    tiny_model_path, tmp_path, monkeypatch
):
    monkeypatch.setattr(vllm_engine, "WATCH_EVERY_S", 0.1)
    port = free_port()
    engine = VllmEngine(_cfg(tmp_path, tiny_model_path, f"http://127.0.0.1:{port}"))
    fake = None
    try:
        assert f"vLLM at http://127.0.0.1:{port} does not answer" in engine.health
        with pytest.raises(NotAvailable, match="does not answer"):
            engine.complete(PREFIX, SUFFIX, max_tokens=4, temperature=0)
        engine.set_adapter(1, _adapter(tmp_path / "a1"))  # waits for the server, not refused
        fake = FakeVllm(str(tiny_model_path), port=port)
        deadline = time.monotonic() + 10
        while engine.health != "ready" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.health == "ready" and list(fake.adapters) == [f"{engine.prefix}-v1"]
        engine.complete(PREFIX, SUFFIX, max_tokens=4, temperature=0)
        assert fake.requests[-1]["model"] == f"{engine.prefix}-v1"
    finally:
        engine.close()
        if fake is not None:
            fake.close()


def test_a_server_of_another_model_is_named(tiny_model_path, tmp_path):
    fake = FakeVllm("Qwen/Qwen2.5-Coder-0.5B-Instruct")
    engine = VllmEngine(_cfg(tmp_path, tiny_model_path, fake.url))
    try:
        assert "serves 'Qwen/Qwen2.5-Coder-0.5B-Instruct', not model.name" in engine.health
        with pytest.raises(NotAvailable, match="not model.name"):
            engine.chat([{"role": "user", "content": "hi"}], max_tokens=4, temperature=0)
    finally:
        engine.close()
        fake.close()


def test_the_daemon_keeps_its_adapter_and_serves_everything_else_while_vllm_is_down(
    tiny_model_path, tmp_path
):
    """Start-up with the active adapter and no vLLM: nothing is marked rejected, status says why."""
    cfg = _cfg(tmp_path, tiny_model_path, f"http://127.0.0.1:{free_port()}")
    backend = Backend(cfg)
    try:
        a1 = _adapter(tmp_path / "a1")
        backend.adapters.publish(1, a1, {}, lambda: False)
    finally:
        backend.close()
    backend = Backend(cfg)  # a restart, vLLM still down
    try:
        status = backend._status()
        assert status["adapter_version"] == 1 and status["backend"]["name"] == "vllm"
        assert "does not answer" in status["backend"]["health"]
        assert [a["status"] for a in backend.store.list_adapters()] == ["active"]
    finally:
        backend.close()


def test_a_daemon_with_vllm_status_names_the_backend(fake, tiny_model_path, tmp_path):
    from reinf.cli import vllm_status_text

    backend = Backend(_cfg(tmp_path, tiny_model_path, fake.url))
    try:
        status = backend._status()
        b = status["backend"]
        assert status["device"] == "vllm" and b["url"] == fake.url and b["health"] == "ready"
        assert vllm_status_text(b) == f"vLLM at {fake.url} (external): ready, serving {tiny_model_path}"
    finally:
        backend.close()


def test_an_adapter_that_waited_for_the_server_and_is_refused_serves_the_base_and_says_so(
    tiny_model_path, tmp_path, monkeypatch
):
    monkeypatch.setattr(vllm_engine, "WATCH_EVERY_S", 0.1)
    port = free_port()
    engine = VllmEngine(_cfg(tmp_path, tiny_model_path, f"http://127.0.0.1:{port}"))
    fake = None
    try:
        engine.set_adapter(1, _adapter(tmp_path / "a1", rank=16))
        fake = FakeVllm(str(tiny_model_path), port=port)
        deadline = time.monotonic() + 10
        while engine.health != "ready" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "greater than max_lora_rank 8" in engine.backend_status()["problem"]
        gen = engine.complete(PREFIX, SUFFIX, max_tokens=4, temperature=0)
        assert fake.requests[-1]["model"] == engine.model_name and gen.adapter_version == 0
    finally:
        engine.close()
        if fake is not None:
            fake.close()
