"""The engine's fast decode path on CUDA: a static KV cache and a compiled one-token step.

Eager decoding of a small model on a GPU is bound by kernel launches and Python, not by arithmetic: a
Qwen2.5-0.5B-shaped model spends about 10 ms a token that way. With the KV cache in fixed buffers the one-token
step has fixed shapes and addresses, so `torch.compile(mode="reduce-overhead")` records it once as a CUDA graph
and then replays it. The prompt is prefilled eagerly into the same cache.

The engine takes this path only on CUDA, only for the base model (with a LoRA adapter active it decodes
eagerly), and only after `check()` has shown that the static path gives the eager path's logits. Any failure
there switches it off for good, with the reason in `note`: a compiler problem costs speed, never correctness.
On the CPU it can run uncompiled (`compile=False`), which is how the tests check its bookkeeping.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

CHECK_STEPS = 6  # teacher-forced steps compared with eager decoding (graphs are recorded on the 2nd or 3rd)
CHECK_TOLERANCE = 2e-2  # mean |Δlogit| / mean |logit|, loose enough for bf16 kernels that sum differently


class StaticDecoder:
    """Prefill + one-token steps of `model` (a transformers causal LM) over a static cache of `max_len` tokens."""

    def __init__(self, model: Any, max_len: int, *, compile: bool = True) -> None:
        from transformers import StaticCache

        self.model = model
        self.max_len = max_len
        self.device = next(model.parameters()).device
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self._graphs = compile and self.device.type == "cuda"
        self._step = (
            torch.compile(self._forward, mode="reduce-overhead" if self._graphs else "default", dynamic=False)
            if compile
            else self._forward
        )
        self._pos = 0
        self.ready = False  # set by a passing check()
        self.note = "not checked yet"

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        out = self.model(
            input_ids=ids, position_ids=pos, use_cache=True, **{self._cache_kw: self.cache}, **self._extra
        )
        return out.logits[:, -1]

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """Empty the cache, run the prompt `[1, P]` through it eagerly; the next token's logits `[V]`."""
        if ids.shape[0] != 1 or ids.shape[1] >= self.max_len:
            raise ValueError(
                f"prefill takes one prompt shorter than {self.max_len} tokens, got {tuple(ids.shape)}"
            )
        self.cache.reset()
        self._pos = ids.shape[1]
        pos = torch.arange(self._pos, device=ids.device)[None]
        return self._forward(ids, pos)[0]

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Feed one token `[1, 1]`; the next token's logits `[V]`."""
        if self._pos >= self.max_len:
            raise ValueError(f"the static cache holds {self.max_len} tokens and is full")
        pos = torch.tensor([[self._pos]], device=ids.device)
        self._pos += 1
        if self._graphs:
            torch.compiler.cudagraph_mark_step_begin()
        return self._step(ids, pos)[0].clone()  # a replayed graph overwrites its output on the next step

    @torch.inference_mode()
    def check(self, prompt_ids: list[int]) -> bool:
        """Compare with eager decoding (dynamic cache), teacher-forced on the eager greedy tokens; on any error or
        mismatch switch this decoder off. Also compiles and records the graph, so call it before timing."""
        try:
            ids = torch.tensor([prompt_ids], device=self.device)
            out = self.model(input_ids=ids, use_cache=True, **self._extra)
            past, want = getattr(out, self._cache_kw), out.logits[0, -1]
            got = self.prefill(ids)
            worst = _relative_error(got, want)
            for _ in range(CHECK_STEPS):
                nxt = want.argmax().view(1, 1)
                got = self.step(nxt)
                out = self.model(input_ids=nxt, use_cache=True, **{self._cache_kw: past}, **self._extra)
                past, want = getattr(out, self._cache_kw), out.logits[0, -1]
                worst = max(worst, _relative_error(got, want))
        except Exception as exc:  # noqa: BLE001 - any failure means: decode eagerly, and say why
            return self._off(f"static decoding failed: {type(exc).__name__}: {exc}")
        if not worst < CHECK_TOLERANCE:
            return self._off(f"static decoding differs from eager decoding by {worst:.3g} (relative)")
        self.ready = True
        self.note = (
            f"{'CUDA graphs' if self._graphs else 'static cache'}, checked (relative error {worst:.2g})"
        )
        return True

    def _off(self, why: str) -> bool:
        self.ready, self.note = False, why[:400]
        log.warning("fast decoding is off: %s", self.note)
        return False


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.float(), want.float()
    return float((got - want).abs().mean() / want.abs().mean().clamp(min=1e-6))
