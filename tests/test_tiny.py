"""The offline tiny-model builder and model name resolution."""

from __future__ import annotations

import json
import math

import pytest
from transformers import AutoTokenizer

from reinf.models import COMMITTED_TINY, TINY, resolve_model_path

CODE = (
    "class Parser:\n"
    '    """Reads CamelCase and snake_case."""\n'
    "\n"
    "    def parse(self, Text: str) -> list[str]:\n"
    "\tif not Text:  \n"
    "\t\treturn []   # tabs, trailing spaces\n"
    "        return [w for w in Text.split('  ') if w]\r\n"
    "\n\n\n"
    'GREETING = "héllo wörld ✓ 世界"\n'
)


@pytest.fixture(scope="module")
def tok(tiny_model_path):
    return AutoTokenizer.from_pretrained(tiny_model_path)


def test_tokenizer_round_trips_indented_code_exactly(tok):
    ids = tok(CODE, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == CODE
    assert len(ids) < len(CODE.encode())  # BPE merged something: it is not just bytes


def test_special_tokens_are_single_tokens_and_survive_decoding(tok):
    for t in (
        "<|fim_prefix|>",
        "<|fim_suffix|>",
        "<|fim_middle|>",
        "<|fim_pad|>",
        "<|im_start|>",
        "<|im_end|>",
    ):
        ids = tok(f"x{t}y", add_special_tokens=False)["input_ids"]
        assert tok.convert_ids_to_tokens(ids)[1] == t
        assert tok.decode(ids) == f"x{t}y"
    assert tok.eos_token == "<|endoftext|>"
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id


def test_chat_template_is_chatml(tok):
    text = tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "def f():"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert (
        text
        == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\ndef f():<|im_end|>\n<|im_start|>assistant\n"
    )


def test_build_info_reports_a_model_that_learned(tiny_model_path):
    info = json.loads((tiny_model_path / "build_info.json").read_text())
    assert info["preset"] == "test" and info["steps"] > 0 and info["tokens"] > 0
    assert "--preset test" in info["command"]
    # Uniform guessing over the vocabulary scores ln(vocab); training must beat it clearly on held-out files.
    assert info["heldout_loss"] < math.log(info["hyperparameters"]["vocab_size"]) - 1.0
    assert (tiny_model_path / "model.safetensors").is_file()


def test_build_is_deterministic_for_a_seed(tmp_path):
    from reinf.training.tiny import build

    small = {"corpus_every": 40, "eval_batches": 1, "vocab_size": 512}
    a = build("test", tmp_path / "a", seed=3, steps=2, quiet=True, overrides=small)
    b = build("test", tmp_path / "b", seed=3, steps=2, quiet=True, overrides=small)
    c = build("test", tmp_path / "c", seed=4, steps=2, quiet=True, overrides=small)
    weights = [(tmp_path / n / "model.safetensors").read_bytes() for n in "abc"]
    assert weights[0] == weights[1]
    assert weights[0] != weights[2]
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (
        tmp_path / "b" / "tokenizer.json"
    ).read_bytes()
    assert a["heldout_loss"] == b["heldout_loss"]
    assert c["seed"] == 4
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary folders were renamed or removed


def test_committed_default_model_is_used_when_nothing_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("REINF_CACHE", str(tmp_path))
    if not (COMMITTED_TINY / "model.safetensors").is_file():
        pytest.skip("no committed reinf-tiny in this checkout")
    assert resolve_model_path(TINY) == str(COMMITTED_TINY)
    info = json.loads((COMMITTED_TINY / "build_info.json").read_text())
    assert info["preset"] == "default" and "--preset default" in info["command"] and "seed" in info
    size = sum(f.stat().st_size for f in COMMITTED_TINY.iterdir())
    assert size <= 25 * 1024 * 1024


def test_a_cached_build_wins_over_the_committed_model(tmp_path, monkeypatch, tiny_model_path):
    import shutil

    monkeypatch.setenv("REINF_CACHE", str(tmp_path))
    shutil.copytree(tiny_model_path, tmp_path / "models" / TINY)
    assert resolve_model_path(TINY) == str(tmp_path / "models" / TINY)


def test_a_model_folder_resolves_to_itself(tmp_path, tiny_model_path):
    # Hub ids and .gguf files are resolved to local folders too (tests/test_models.py).
    assert resolve_model_path(str(tiny_model_path)) == str(tiny_model_path)
