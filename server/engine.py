"""The engine: one base model (plus the active LoRA adapter) that streams completions and chat replies."""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .adapters import AdapterError
from .config import ModelConfig
from .fim import FimTemplate, PromptCodec, get_template, tokenizer_vocab
from .lora import LoraLayer, MergedAdapters, read_adapter
from .models import resolve_model, resolve_model_path
from .prompts import Prompts

log = logging.getLogger(__name__)

CHAT_STOPS = ("<|im_end|>", "<|endoftext|>", "<|im_start|>")


class ChatUnavailable(RuntimeError):
    """Chat on a model that has no chat template (a base model): the protocol answers "not available"."""


@dataclass
class Generation:
    text: str
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt: str  # the rendered prompt, after truncation
    n_prompt_tokens: int
    n_new_tokens: int
    generate_ms: float  # the generation itself
    adapter_version: int = 0  # the adapter that produced it (0 = base)
    prompt_ms: float = 0.0  # building and encoding the prompt, before the generation


def pick_device(cfg_device: str = "auto") -> str:
    """ "auto" is CUDA when torch sees a GPU, else CPU; an explicit CUDA device must exist."""
    if cfg_device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if cfg_device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"model.device = {cfg_device!r} but torch sees no CUDA device; use auto or cpu")
    return cfg_device


# bench/cpu_dtype.py, one thread on a CPU with AVX512-BF16: Qwen2.5-Coder-0.5B decodes 2.1x faster in bfloat16
# (221 vs 464 ms a token, the same greedy text) in half the memory; SmolLM2-135M is level (1.07x slower). So on
# such a CPU a model of this size or more loads in bfloat16, and smaller ones (reinf-tiny) stay in float32.
CPU_BF16_MIN_PARAMS = 300_000_000


def resolve_dtype(dtype: str, device: str, n_params: int | None = None) -> torch.dtype:
    """ "auto" is bfloat16 on CUDA; on CPU, bfloat16 for a model of CPU_BF16_MIN_PARAMS or more where the CPU
    computes in bfloat16 natively, else float32."""
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16
        big = n_params is not None and n_params >= CPU_BF16_MIN_PARAMS
        return torch.bfloat16 if big and cpu_has_bf16() else torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in dtypes:
        raise ValueError(f"model.dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
    return dtypes[dtype]


def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX); without them bfloat16 is emulated."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _n_params(folder: str) -> int | None:
    """The parameter count of a saved model, from its safetensors headers (no weights are read)."""
    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        with safe_open(str(f), "pt") as st:
            for key in st.keys():  # safe_open is not a mapping
                n = 1
                for d in st.get_slice(key).get_shape():
                    n *= d
                total += n
    return total


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """A Hugging Face tokenizer by hub id, folder or reinf model name, with a pad token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(name_or_path: str, device: str, dtype: str = "auto", trust_remote_code: bool = False):
    """An `AutoModelForCausalLM` by hub id, folder or reinf model name, on `device`, in eval mode."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(
        path,
        dtype=resolve_dtype(dtype, device, _n_params(path) if dtype == "auto" else None),
        trust_remote_code=trust_remote_code,
    )
    return model.to(device).eval()


class _Stream:
    """Turns generated token ids into text deltas that never change once sent.

    Text is held back while it ends in an incomplete UTF-8 character (decoded as U+FFFD) or could be
    the start of a stop string."""

    def __init__(self, tokenizer: Any, stops: Iterable[str], anchor: list[int], on_delta):
        self.tok = tokenizer
        self.stops = tuple(s for s in stops if s)
        self.on_delta = on_delta
        self.ids: list[int] = []
        self.sent = ""
        self.text = ""  # everything generated so far, up to any stop string
        # Decoding after the prompt's last token keeps a leading space that SentencePiece would drop.
        anchor_text = self._decode(anchor)
        self.anchor, self.anchor_text = (anchor, anchor_text) if "\ufffd" not in anchor_text else ([], "")

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _text(self) -> tuple[str, bool]:
        full = self._decode(self.anchor + self.ids)
        text = full[len(self.anchor_text) :] if full.startswith(self.anchor_text) else self._decode(self.ids)
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        return (text[: min(hits)], True) if hits else (text, False)

    def push(self, token_id: int) -> bool:
        """Add a token; send what is now stable. True when a stop string has appeared."""
        self.ids.append(token_id)
        text, stopped = self._text()
        self.text = text
        if not stopped:
            text = text.rstrip("\ufffd")
            hold = max((n for s in self.stops for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
            text = text[: len(text) - hold]
        self._send(text)
        return stopped

    def _send(self, text: str) -> None:
        if len(text) > len(self.sent) and text.startswith(self.sent):
            delta, self.sent = text[len(self.sent) :], text
            if self.on_delta is not None:
                self.on_delta(delta)

    def finish(self) -> str:
        """Send the rest and return the whole text (equal to the deltas joined, barring a tokenizer that
        rewrites earlier text, which is logged)."""
        text, _ = self._text()
        self._send(text)
        if text != self.sent:
            log.warning("streamed text and final text differ; the tokenizer rewrote earlier text")
        return text


class Engine:
    """Base model + active adapter; `complete`, `chat` and `set_adapter` are serialized by one lock."""

    def __init__(self, cfg: ModelConfig, *, fast_decode: bool | None = None):
        self.cfg = cfg
        self.model_name = cfg.name
        self.device = pick_device(cfg.device)
        if self.device == "cpu":
            torch.set_num_threads(max(1, cfg.inference_threads))
        self.resolved = resolve_model(cfg.name)
        self.path = str(self.resolved.path)
        log.info("loading %s on %s", self.resolved.describe(), self.device)
        self.tokenizer = load_tokenizer(cfg.tokenizer or self.path, cfg.trust_remote_code)
        self.model = load_causal_lm(self.path, self.device, cfg.dtype, cfg.trust_remote_code)
        # The active adapter is merged into the base's weights (lora.py): the model's modules never change.
        self.adapter_version = 0
        self._merged = MergedAdapters(self.model)
        self._layers: list[LoraLayer] = []
        self._lock = threading.Lock()
        self._rng = None if cfg.seed < 0 else torch.Generator(self.device).manual_seed(cfg.seed)
        vocab = tokenizer_vocab(self.tokenizer)
        self.fim: FimTemplate = get_template(cfg.fim_template, vocab, cfg.name)
        # Prompts become ids through the codec the trainer uses too (fim.encode_prompt), BOS included.
        self._codec = self.tokenizer._reinf_prompt_codec = PromptCodec(self.tokenizer, vocab)
        self.prompts = Prompts(self.tokenizer, self.fim, self._codec)
        log.info("completions: %s", self.fim.describe())
        self._eos_ids = self._collect_eos_ids()
        self._stop_ids: dict[tuple[str, ...], set[int]] = {}
        # transformers 5.2x renamed `past_key_values` to `cache`; older ones and remote code use the old name.
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        positions = getattr(self.model.config, "max_position_embeddings", None) or getattr(
            self.model.config, "n_positions", None
        )
        self.context_tokens = min(cfg.max_context_tokens, positions or cfg.max_context_tokens)
        # The fast path (static_decode.py): a static KV cache and, on CUDA, a decode step replayed as a CUDA graph.
        # On by default on CUDA only; `fast_decode=True` elsewhere runs it uncompiled (how the tests check it).
        self.fast_decode = self.device.startswith("cuda") if fast_decode is None else fast_decode
        self._fast = None
        self._fast_made = False
        self._fast_error = ""

    # -- generation ----------------------------------------------------------------------------------

    def complete(
        self,
        prefix: str,
        suffix: str,
        *,
        max_tokens: int,
        temperature: float,
        cancel: threading.Event | None = None,
        on_delta: Callable[[str], None] | None = None,
        stop: Callable[[str], bool] | None = None,
    ) -> Generation:
        """Fill in the code between `prefix` and `suffix` (the cursor), streaming text to `on_delta`.

        `stop(text)` is asked after every token; True ends generation there (the suggestion's scope has ended)."""
        max_tokens, budget = self._budget(max_tokens, temperature)
        t0 = time.perf_counter()
        prompt, ids = self.prompts.fim(prefix, suffix, budget)
        prompt_ms = (time.perf_counter() - t0) * 1000.0
        stops = (*self.fim.stop, self.tokenizer.eos_token or "")
        gen = self._generate(prompt, ids, stops, max_tokens, temperature, cancel, on_delta, stop)
        gen.prompt_ms = prompt_ms
        return gen

    def chat(
        self,
        messages: list[dict],
        *,
        max_tokens: int,
        temperature: float,
        cancel: threading.Event | None = None,
        on_delta: Callable[[str], None] | None = None,
    ) -> Generation:
        """Answer the last message of a conversation ({"role", "content"} dicts) with the chat template."""
        if not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise ValueError("messages must be a non-empty list of {'role': str, 'content': str}")
        if not getattr(self.tokenizer, "chat_template", None):
            raise ChatUnavailable(
                f"chat is not available: model {self.model_name} has no chat template (a base model); inline "
                "completions work, and an instruct model (e.g. smollm2-135m-instruct) chats"
            )
        max_tokens, budget = self._budget(max_tokens, temperature)
        t0 = time.perf_counter()
        prompt, ids = self.prompts.chat([dict(m) for m in messages], budget)
        prompt_ms = (time.perf_counter() - t0) * 1000.0
        stops = (*CHAT_STOPS, self.tokenizer.eos_token or "")
        gen = self._generate(prompt, ids, stops, max_tokens, temperature, cancel, on_delta)
        gen.prompt_ms = prompt_ms
        return gen

    def _budget(self, max_tokens: int, temperature: float) -> tuple[int, int]:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be 0 (greedy) or more, got {temperature}")
        max_tokens = min(max_tokens, self.context_tokens // 2)
        return max_tokens, self.context_tokens - max_tokens

    def _generate(
        self, prompt, ids, stops, max_tokens, temperature, cancel, on_delta, stop=None
    ) -> Generation:
        with self._lock:
            t0 = time.perf_counter()
            stop_ids = self._eos_ids | self._token_ids(stops)
            stream = _Stream(self.tokenizer, stops, ids[-1:], on_delta)
            finish, n_new = "length", 0
            fast = self._fast_decoder()
            with torch.inference_mode():
                inputs = torch.tensor([ids], dtype=torch.long, device=self.device)
                past, next_id = None, -1
                while n_new < max_tokens:
                    if cancel is not None and cancel.is_set():
                        finish = "cancelled"
                        break
                    if fast is not None:
                        logits = fast.step(next_id) if past is not None else fast.prefill(inputs)
                        past = fast.cache
                    else:
                        out = self.model(
                            input_ids=inputs, use_cache=True, **{self._cache_kw: past}, **self._extra
                        )
                        past = getattr(out, self._cache_kw)
                        logits = out.logits[0, -1]
                    next_id = _pick(logits, temperature, self._rng)
                    if next_id in stop_ids:
                        finish = "stop"
                        break
                    n_new += 1
                    if stream.push(next_id) or (stop is not None and stop(stream.text)):
                        finish = "stop"
                        break
                    if fast is None:  # the fast path takes the token id itself, into its own buffer
                        inputs = torch.tensor([[next_id]], dtype=torch.long, device=self.device)
            text = stream.finish()
            return Generation(
                text=text,
                finish_reason=finish,
                prompt=prompt,
                n_prompt_tokens=len(ids),
                n_new_tokens=n_new,
                generate_ms=(time.perf_counter() - t0) * 1000.0,
                adapter_version=self.adapter_version,
            )

    # -- the fast path (static_decode.py) --------------------------------------------------------------

    def _make_fast_decoder(self, graphs: str = "capture") -> None:
        from .static_decode import StaticDecoder

        self._fast, self._fast_made, self._fast_error = None, True, ""
        compiled = self.device.startswith("cuda")
        try:
            # The old decoder's graphs go (bench/gpu_latency.py makes one of each kind).
            if compiled:
                torch._dynamo.reset()
            self._fast = StaticDecoder(self.model, self.context_tokens, compile=compiled, graphs=graphs)
        except Exception as exc:  # noqa: BLE001 - an older transformers or torch: decode eagerly
            self._fast_error = f"fast decoding is off: {type(exc).__name__}: {exc}"[:400]
            log.warning("%s", self._fast_error)

    def _fast_decoder(self):
        """The checked static decoder for the model as it is now, else None: decode eagerly.

        Made and compiled once: an adapter is written into the same weights, so the decoder keeps its graphs and
        only checks them again."""
        if not self.fast_decode:
            return None
        if not self._fast_made:
            self._make_fast_decoder()
        fast = self._fast
        if fast is None:
            return None
        if not fast.ready and fast.note == "not checked yet":
            t0 = time.perf_counter()
            fast.check(self._check_ids())
            if not fast.ready and fast.graphs == "capture":  # recording our graph failed: try torch.compile's
                first = fast.note
                self._make_fast_decoder(graphs="compiler")
                fast = self._fast
                if fast is None:
                    return None
                fast.check(self._check_ids())
                fast.note = f"{fast.note} (recording one CUDA graph: {first})"[:800]
            log.info("fast decoding on %s: %s (%.1f s)", self.device, fast.note, time.perf_counter() - t0)
        return fast if fast.ready else None

    def _check_ids(self) -> list[int]:
        return self.prompts.encode("def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n", special=False)

    def warm_up(self) -> str:
        """Compile and check the fast decode path now rather than on the first request; says which path serves."""
        with self._lock:
            fast = self._fast_decoder()
            if fast is not None:
                return fast.note
            if self._fast is not None:
                return self._fast.note
            return self._fast_error or f"eager decoding on {self.device}"

    def _collect_eos_ids(self) -> set[int]:
        found: set[int] = set()
        gen = getattr(self.model, "generation_config", None)
        for value in (
            getattr(gen, "eos_token_id", None),
            self.model.config.eos_token_id,
            self.tokenizer.eos_token_id,
        ):
            if isinstance(value, int):
                found.add(value)
            elif isinstance(value, (list, tuple)):
                found.update(v for v in value if isinstance(v, int))
        return found

    def _token_ids(self, texts: Iterable[str]) -> set[int]:
        """Ids of the stop strings that are single tokens of this vocabulary (worked out once per set of stops:
        `get_vocab()` builds a dict of the whole vocabulary, about 140 ms for 151936 entries on 2 cores)."""
        key = tuple(texts)
        if key not in self._stop_ids:
            vocab = self.tokenizer.get_vocab()
            self._stop_ids[key] = {vocab[t] for t in key if t in vocab}
        return self._stop_ids[key]

    # -- adapters ------------------------------------------------------------------------------------

    def set_adapter(self, version: int, path: Path | None) -> None:
        """Make LoRA adapter `version` (a PEFT folder) active on the same base; 0 or no path means the base.

        Waits for the generation in progress. On failure raises AdapterError and keeps the current adapter."""
        with self._lock:
            if version == 0 or path is None:
                layers: list[LoraLayer] = []
            else:
                path = Path(path)
                _check_adapter_folder(path)
                try:
                    layers = read_adapter(path, self.model)
                except Exception as exc:  # a bad file is named before any weight is written
                    raise self._refused(version, path, exc) from exc
            try:
                self._merged.merge(layers)
            except Exception as exc:  # out of memory half way, say: put the current adapter back whole
                self._merged.merge(self._layers)
                raise self._refused(version, path, exc) from exc
            self._layers, self.adapter_version = layers, version if layers else 0
            if self._fast is not None:
                self._fast.weights_changed()
            self._fast_decoder()  # check the fast path on the new weights now, not in the next request
            if layers:
                log.info("adapter v%d from %s is active (%d layers merged)", version, path, len(layers))
            else:
                log.info("serving the base model")

    def _refused(self, version: int, path: Path | None, exc: Exception) -> AdapterError:
        current = "the base model" if self.adapter_version == 0 else f"v{self.adapter_version}"
        return AdapterError(f"could not load adapter v{version} from {path}: {exc}; still serving {current}")


def _check_adapter_folder(path: Path) -> None:
    if not path.is_dir():
        raise AdapterError(f"adapter folder {path} does not exist")
    if not (path / "adapter_config.json").is_file():
        raise AdapterError(f"{path} has no adapter_config.json; is it a PEFT adapter folder?")
    if not any((path / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
        raise AdapterError(f"{path} has no adapter_model.safetensors")


def _pick(logits: torch.Tensor, temperature: float, rng: torch.Generator | None = None) -> int:
    """Greedy at temperature 0, else a sample from softmax(logits / temperature), drawn from `rng` if given."""
    if temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=rng))
