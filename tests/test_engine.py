"""The engine on the real tiny test model, and the FIM templates per family."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

from reinf.engine import AdapterError, Engine, _Stream, load_causal_lm, load_tokenizer, pick_device
from reinf.fim import TEMPLATES, detect_template, get_template

PREFIX = "import os\nimport sys\n\n\nclass Foo:\n    def __init__(self):\n        self."
SUFFIX = "\n\n    def bar(self):\n        return 1\n"

# -- FIM templates ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("qwen", "<|fim_prefix|>a = <|fim_suffix|>\nb<|fim_middle|>"),
        ("reinf", "<|fim_prefix|>a = <|fim_suffix|>\nb<|fim_middle|>"),
        ("starcoder", "<fim_prefix>a = <fim_suffix>\nb<fim_middle>"),
        ("deepseek", "<｜fim▁begin｜>a = <｜fim▁hole｜>\nb<｜fim▁end｜>"),
        ("codellama", "<PRE> a =  <SUF>\nb <MID>"),
        ("plain", "a = "),
    ],
)
def test_fim_template_renders_prefix_suffix_middle(name, expected):
    assert TEMPLATES[name].render("a = ", "\nb") == expected


@pytest.mark.parametrize(
    ("vocab", "model_name", "expected", "stop"),
    [
        ({"<|fim_prefix|>", "<|file_sep|>"}, "/home/me/models/coder-0.5b", "qwen", "<|file_sep|>"),
        ({"<|fim_prefix|>", "<|im_start|>"}, "Qwen/Qwen2.5-Coder-0.5B-Instruct", "reinf", "<|im_start|>"),
        ({"<fim_prefix>", "<fim_suffix>"}, "bigcode/starcoder2-3b", "starcoder", "<file_sep>"),
        ({"<｜fim▁begin｜>"}, "deepseek-ai/deepseek-coder-1.3b-base", "deepseek", "<｜end▁of▁sentence｜>"),
        ({"▁<PRE>", "▁<SUF>"}, "codellama/CodeLlama-7b-hf", "codellama", "<EOT>"),
        (set(), "some/starcoder-finetune", "plain", "<file_sep>"),  # no FIM tokens: the name does not count
        (set(), "gpt2", "plain", "<|endoftext|>"),
    ],
)
def test_fim_template_is_detected_from_the_tokens_not_the_name(vocab, model_name, expected, stop):
    template = detect_template(vocab, model_name)
    assert template.name == expected
    assert stop in template.stop


def test_fim_template_setting_overrides_detection_and_rejects_unknown_names():
    assert get_template("deepseek", {"<|fim_prefix|>"}, "qwen").name == "deepseek"
    with pytest.raises(ValueError, match="model.fim_template must be auto or one of"):
        get_template("santacoder", set(), "")


# -- streaming text ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok(tiny_model_path):
    return load_tokenizer(str(tiny_model_path))


def _push_all(tok, text, stops=()):
    deltas: list[str] = []
    stream = _Stream(tok, stops, [], deltas.append)
    stopped = False
    for i in tok(text, add_special_tokens=False)["input_ids"]:
        if stream.push(i):
            stopped = True
            break
    return stream.finish(), deltas, stopped


def test_stream_never_sends_half_a_multibyte_character(tok):
    text = "s = '✓✓ 世界 é'\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert any("\ufffd" in tok.decode(ids[:k]) for k in range(1, len(ids)))  # some prefix splits a character
    final, deltas, _ = _push_all(tok, text)
    assert final == text == "".join(deltas)
    assert not any("\ufffd" in d for d in deltas)


def test_stream_stops_at_a_stop_string_and_holds_back_its_start(tok):
    final, deltas, stopped = _push_all(tok, "x = 1<|fim_pad|>junk", stops=("<|fim_pad|>",))
    assert stopped and final == "x = 1" == "".join(deltas)
    # "<" could begin "<|fim_pad|>", so it is not sent until the next token shows it does not.
    stream = _Stream(tok, ("<|fim_pad|>",), [], None)
    for i in tok("a <", add_special_tokens=False)["input_ids"]:
        assert not stream.push(i)
    assert stream.sent == "a "
    for i in tok(" b", add_special_tokens=False)["input_ids"]:
        stream.push(i)
    assert stream.sent == "a < b" == stream.finish()


# -- engine on the tiny model --------------------------------------------------------------------


def test_device_and_loaders(tiny_model_path):
    assert pick_device("cpu") == "cpu"
    assert pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_causal_lm(str(tiny_model_path), "cpu", "auto")
    assert next(model.parameters()).dtype == torch.float32 and not model.training


def test_streamed_deltas_join_to_the_final_text(tiny_engine):
    deltas: list[str] = []
    g = tiny_engine.complete(PREFIX, SUFFIX, max_tokens=20, temperature=0, on_delta=deltas.append)
    assert g.n_new_tokens > 0 and len(deltas) > 1
    assert "".join(deltas) == g.text
    assert g.prompt == f"<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>"
    assert g.finish_reason in ("stop", "length") and g.generate_ms > 0
    assert g.n_prompt_tokens == len(tiny_engine.tokenizer(g.prompt)["input_ids"])


def test_greedy_is_deterministic_and_length_is_reported(tiny_engine):
    a = tiny_engine.complete(PREFIX, SUFFIX, max_tokens=12, temperature=0)
    b = tiny_engine.complete(PREFIX, SUFFIX, max_tokens=12, temperature=0)
    assert a.text == b.text
    assert a.finish_reason == "length" and a.n_new_tokens == 12


def test_sampling_varies(tiny_engine):
    torch.manual_seed(0)
    texts = {tiny_engine.complete(PREFIX, "", max_tokens=8, temperature=1.5).text for _ in range(4)}
    assert len(texts) > 1


def test_a_seeded_engine_answers_the_same_requests_the_same_way(tiny_model_config):
    """model.seed: two daemons given the same requests in the same order sample the same answers, and one
    engine's successive answers still differ (the seed starts a stream; it does not fix each answer)."""
    from dataclasses import replace

    from reinf.engine import Engine

    def answers(seed: int) -> list[str]:
        engine = Engine(replace(tiny_model_config, seed=seed))
        torch.seed()  # a fresh global generator: a seeded engine does not draw from it
        return [engine.complete(PREFIX, "", max_tokens=8, temperature=1.5).text for _ in range(4)]

    first = answers(7)
    assert answers(7) == first and len(set(first)) > 1
    assert answers(8) != first


def test_cancel_stops_generation_early(tiny_engine):
    full = tiny_engine.complete(PREFIX, SUFFIX, max_tokens=40, temperature=0)
    assert full.n_new_tokens == 40  # precondition: without cancel it runs to the limit
    cancel = threading.Event()
    deltas: list[str] = []

    def on_delta(d: str) -> None:
        deltas.append(d)
        if len(deltas) == 3:
            cancel.set()

    g = tiny_engine.complete(PREFIX, SUFFIX, max_tokens=40, temperature=0, cancel=cancel, on_delta=on_delta)
    assert g.finish_reason == "cancelled"
    assert g.n_new_tokens < 10
    assert g.text == "".join(deltas) and full.text.startswith(g.text)


def test_a_stop_check_ends_generation_at_the_token_it_fires_on(tiny_engine):
    full = tiny_engine.complete(PREFIX, SUFFIX, max_tokens=40, temperature=0)
    assert full.n_new_tokens == 40 and len(full.text) > 8  # precondition: unchecked, it runs to the limit
    seen: list[str] = []

    def stop(text: str) -> bool:
        seen.append(text)
        return len(text) >= 8

    g = tiny_engine.complete(PREFIX, SUFFIX, max_tokens=40, temperature=0, stop=stop)
    assert g.finish_reason == "stop" and g.n_new_tokens == len(seen) < 40
    assert g.text == seen[-1] and full.text.startswith(g.text) and len(g.text) >= 8


def test_long_prompts_are_cut_from_the_left_to_fit_the_context(tiny_engine):
    prefix = "".join(f"value_{i} = {i}\n" for i in range(400)) + "total = "
    g = tiny_engine.complete(prefix, "\nprint(total)\n" * 50, max_tokens=16, temperature=0)
    assert g.n_prompt_tokens + 16 <= tiny_engine.context_tokens
    assert g.prompt.startswith("<|fim_prefix|>") and g.prompt.endswith("<|fim_middle|>")
    kept_prefix = g.prompt[len("<|fim_prefix|>") : g.prompt.index("<|fim_suffix|>")]
    assert prefix.endswith(kept_prefix) and "value_399 = 399\ntotal = " in kept_prefix
    assert "value_0 = 0" not in kept_prefix
    assert "print(total)" in g.prompt  # some of the suffix survives


def test_chat_uses_the_chat_template(tiny_engine):
    deltas: list[str] = []
    messages = [{"role": "user", "content": "Write a Python function add(a, b): Return the sum."}]
    g = tiny_engine.chat(messages, max_tokens=10, temperature=0, on_delta=deltas.append)
    assert (
        g.prompt
        == "<|im_start|>user\nWrite a Python function add(a, b): Return the sum.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert g.n_new_tokens > 0 and g.text == "".join(deltas)
    assert "<|im_end|>" not in g.text
    with pytest.raises(ValueError, match="messages must be"):
        tiny_engine.chat([{"role": "user"}], max_tokens=4, temperature=0)


def test_chat_drops_old_turns_when_too_long(tiny_engine):
    old = [{"role": "user", "content": "x = 1\n" * 100}, {"role": "assistant", "content": "ok"}]
    g = tiny_engine.chat([*old, {"role": "user", "content": "last question"}], max_tokens=8, temperature=0)
    assert "last question" in g.prompt and "x = 1" not in g.prompt
    assert g.n_prompt_tokens + 8 <= tiny_engine.context_tokens


# -- LoRA adapters -------------------------------------------------------------------------------


def _make_adapter(model_path, out, seed: int, r: int = 4, use_rslora: bool = False):
    """A LoRA adapter on the test model whose B matrices are random, so it changes what the model says."""
    from peft import LoraConfig, get_peft_model

    base = load_causal_lm(str(model_path), "cpu")
    targets = ["q_proj", "v_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(
        base, LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, use_rslora=use_rslora)
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return _make_adapter(tiny_model_path, root / "v1", 1), _make_adapter(tiny_model_path, root / "v2", 2)


def _greedy(engine: Engine) -> str:
    return engine.complete(PREFIX, SUFFIX, max_tokens=16, temperature=0).text


def _weights(engine: Engine) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in engine.model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_adapter_changes_output_and_reverting_restores_it(tiny_engine, adapters):
    v1, v2 = adapters
    base_text, base_weights = _greedy(tiny_engine), _weights(tiny_engine)
    tiny_engine.set_adapter(1, v1)
    assert tiny_engine.adapter_version == 1
    g1 = tiny_engine.complete(PREFIX, SUFFIX, max_tokens=16, temperature=0)
    assert g1.text != base_text and g1.adapter_version == 1
    assert not _same(_weights(tiny_engine), base_weights)  # merged into the base's own weights
    tiny_engine.set_adapter(2, v2)
    v2_text = _greedy(tiny_engine)
    assert v2_text != g1.text
    assert not any("lora_" in k for k in tiny_engine.model.state_dict())  # no LoRA layers: nothing per token
    tiny_engine.set_adapter(1, v1)  # back to v1 gives v1's output again
    assert _greedy(tiny_engine) == g1.text
    tiny_engine.set_adapter(0, None)
    assert tiny_engine.adapter_version == 0 and _same(_weights(tiny_engine), base_weights)  # bit for bit
    assert _greedy(tiny_engine) == base_text


@pytest.mark.parametrize("rslora", [False, True])
def test_a_merged_adapter_computes_what_peft_computes(tiny_engine, tiny_model_path, tmp_path, rslora):
    """The merge (W + α/r·BA) against PEFT's own LoRA layers, on the logits of a whole prompt."""
    from peft import PeftModel

    path = _make_adapter(tiny_model_path, tmp_path / "v", 5, r=8, use_rslora=rslora)
    ids = torch.tensor([load_tokenizer(str(tiny_model_path)).encode(PREFIX)])
    with torch.no_grad():
        base = tiny_engine.model(input_ids=ids).logits
        want = PeftModel.from_pretrained(load_causal_lm(str(tiny_model_path), "cpu"), str(path))(
            input_ids=ids
        )
        tiny_engine.set_adapter(1, path)
        got = tiny_engine.model(input_ids=ids).logits
    assert (want.logits - base).abs().max() > 0.1  # the adapter matters
    torch.testing.assert_close(got, want.logits, rtol=1e-4, atol=1e-4)


def test_a_merged_adapter_on_conv1d_layers_computes_what_peft_computes(tmp_path):
    """GPT-2's attention and MLP are Conv1D layers (weights stored in × out): PEFT marks them fan_in_fan_out."""
    import copy

    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    from reinf.lora import MergedAdapters, read_adapter

    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2)).eval()
    peft_model = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"])
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)
    peft_model.save_pretrained(tmp_path / "a")
    assert peft_model.peft_config["default"].fan_in_fan_out
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        want = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "a"))(input_ids=ids).logits
        MergedAdapters(base).merge(read_adapter(tmp_path / "a", base))
        got = base(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_an_adapter_that_cannot_be_merged_is_refused_by_name(
    tiny_engine, tiny_model_path, adapters, tmp_path
):
    import json

    v1, _ = adapters
    base_weights = _weights(tiny_engine)

    def variant(name: str, **config) -> Path:  # noqa: ANN003
        folder = shutil.copytree(v1, tmp_path / name)
        (folder / "adapter_config.json").write_text(
            json.dumps(json.loads((v1 / "adapter_config.json").read_text()) | config)
        )
        return folder

    with pytest.raises(AdapterError, match="DoRA are not supported"):
        tiny_engine.set_adapter(2, variant("dora", use_dora=True))
    with pytest.raises(AdapterError, match="only LoRA adapters can be served; this one is IA3"):
        tiny_engine.set_adapter(2, variant("ia3", peft_type="IA3"))
    other = tmp_path / "other"
    _make_adapter(tiny_model_path, other, 1)
    from safetensors.torch import load_file, save_file

    weights = load_file(other / "adapter_model.safetensors")
    key = next(k for k in weights if "lora_A" in k)
    save_file({**weights, key: torch.zeros(4, 7)}, other / "adapter_model.safetensors")
    with pytest.raises(AdapterError, match=r"does not fit the base's weight .*another model"):
        tiny_engine.set_adapter(2, other)
    renamed = {k.replace("layers.0.", "layers.9."): v for k, v in weights.items()}
    save_file(renamed, other / "adapter_model.safetensors")
    with pytest.raises(AdapterError, match="layers.9.* matches no linear layer of the base"):
        tiny_engine.set_adapter(2, other)
    assert tiny_engine.adapter_version == 0 and _same(_weights(tiny_engine), base_weights)


def test_the_adapter_cost_benchmark_compares_merged_with_peft_layers(tmp_path):
    """bench/adapter_cost.py, a few short requests: the merged adapter says what PEFT's layers say."""
    import json
    import subprocess
    import sys

    from tests.daemon_proc import REPO

    out = tmp_path / "adapter_cost.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "adapter_cost.py"), "--runs", "2", "--tokens", "8", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["same_text_merged_and_layers"] and set(result["paths"]) == {"base", "merged", "peft_layers"}
    assert all(p["n"] == 2 for p in result["paths"].values())


def test_a_corrupt_or_missing_adapter_raises_and_keeps_the_current_one(tiny_engine, adapters, tmp_path):
    v1, _ = adapters
    base_text = _greedy(tiny_engine)
    bad = shutil.copytree(v1, tmp_path / "bad")
    (bad / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterError, match="could not load adapter v3"):
        tiny_engine.set_adapter(3, bad)  # from the base: the base must come back unchanged
    assert tiny_engine.adapter_version == 0 and _greedy(tiny_engine) == base_text
    tiny_engine.set_adapter(1, v1)
    v1_text = _greedy(tiny_engine)
    with pytest.raises(AdapterError, match="could not load adapter v3"):
        tiny_engine.set_adapter(3, bad)
    with pytest.raises(AdapterError, match="does not exist"):
        tiny_engine.set_adapter(4, tmp_path / "nowhere")
    assert tiny_engine.adapter_version == 1 and _greedy(tiny_engine) == v1_text


def test_adapter_swap_waits_for_the_generation_in_progress(tiny_engine, adapters):
    v1, _ = adapters
    base_text = tiny_engine.complete(PREFIX, SUFFIX, max_tokens=24, temperature=0).text
    started = threading.Event()
    result = {}

    def slow_delta(_: str) -> None:
        started.set()
        time.sleep(0.01)

    def run() -> None:
        result["g"] = tiny_engine.complete(PREFIX, SUFFIX, max_tokens=24, temperature=0, on_delta=slow_delta)

    worker = threading.Thread(target=run)
    worker.start()
    assert started.wait(10)
    tiny_engine.set_adapter(1, v1)  # blocks until the generation finishes
    worker.join()
    assert result["g"].text == base_text and result["g"].adapter_version == 0
    assert tiny_engine.adapter_version == 1
