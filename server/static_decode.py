"""The engine's fast decode path on CUDA: a static KV cache and a compiled one-token step.

Eager decoding of a small model on a GPU is bound by kernel launches and Python, not by arithmetic: a
Qwen2.5-0.5B-shaped model spends about 17 ms a token that way on an H100 machine. With the KV cache in fixed
buffers the one-token step has fixed shapes and addresses, so it can be compiled (inductor) and recorded once as
one CUDA graph, whose replay is a single call: 1.6 ms a token there. `graphs="capture"` (the default) records
that graph itself, with the token and position in fixed input buffers; `graphs="compiler"` leaves it to
torch.compile's "reduce-overhead" mode, which measured about 0.5 ms a token slower (bench/gpu_latency.py times
both). The prompt is prefilled eagerly into the same cache.

The engine takes this path on CUDA, for the base model and for the base with its LoRA adapter merged into its
weights (lora.py), only after `check()` has shown that the static path gives the eager path's logits. An
adapter is written into the same weight tensors, so the recorded graph stays valid for every adapter and is only
checked again. Any failure switches the path off, with the reason in `note`: a compiler problem costs speed,
never correctness. On the CPU it can run uncompiled (`compile=False`), which is how the tests check its
bookkeeping.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

# Our own CUDA graph of the compiled step, or torch.compile's "reduce-overhead" graphs.
GRAPHS = ("capture", "compiler")
CHECK_STEPS = 6  # teacher-forced steps compared with eager decoding (graphs are recorded on the 2nd or 3rd)
CHECK_TOLERANCE = 2e-2  # mean |Δlogit| / mean |logit|, loose enough for bf16 kernels that sum differently


class StaticDecoder:
    """Prefill + one-token steps of `model` (a transformers causal LM) over a static cache of `max_len` tokens."""

    def __init__(self, model: Any, max_len: int, *, compile: bool = True, graphs: str = "capture") -> None:
        from transformers import StaticCache

        if graphs not in GRAPHS:
            raise ValueError(f"graphs must be one of {', '.join(GRAPHS)}, got {graphs!r}")
        self.model = model
        self.max_len = max_len
        self.device = next(model.parameters()).device
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self.cache = StaticCache(config=self.model.config, max_cache_len=max_len)
        self.graphs = graphs if compile and self.device.type == "cuda" else "none"
        mode = "reduce-overhead" if self.graphs == "compiler" else "default"
        self._step = torch.compile(self._forward, mode=mode, dynamic=False) if compile else self._forward
        # The step's inputs live in fixed buffers, so that a recorded graph reads each step's token and position.
        self._ids = torch.zeros((1, 1), dtype=torch.long, device=self.device)
        self._at = torch.zeros((1, 1), dtype=torch.long, device=self.device)
        self._graph: Any = None  # torch.cuda.CUDAGraph, recorded on the first step (graphs == "capture")
        self._out: torch.Tensor | None = None
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
        if self.graphs == "capture" and self._graph is None:
            self._record()
        self.cache.reset()
        self._pos = ids.shape[1]
        pos = torch.arange(self._pos, device=ids.device)[None]
        return self._forward(ids, pos)[0]

    def step(self, token_id: int) -> torch.Tensor:
        """Feed one token; the next token's logits `[V]`."""
        if self._pos >= self.max_len:
            raise ValueError(f"the static cache holds {self.max_len} tokens and is full")
        self._ids.fill_(token_id)
        self._at.fill_(self._pos)
        self._pos += 1
        if self._graph is not None:
            self._graph.replay()
            out = self._out
        else:
            if self.graphs == "compiler":
                torch.compiler.cudagraph_mark_step_begin()
            out = self._step(self._ids, self._at)
        return out[0].clone()  # a replayed graph overwrites its output on the next step

    def _record(self) -> None:
        """Record the compiled step as one CUDA graph: replaying it costs one call, whatever the model's size.

        Every run of the step writes the cache, so this runs on a throwaway sequence that prefill() then empties:
        one token prefilled, two steps to compile and warm up (on a side stream, as capture wants), the capture."""
        self.cache.reset()
        self._ids.zero_()
        self._forward(self._ids, torch.zeros_like(self._at))  # allocates the cache's tensors
        self._at.fill_(1)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._step(self._ids, self._at)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._out = self._step(self._ids, self._at)
        self._graph = graph

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
                got = self.step(int(nxt))
                out = self.model(input_ids=nxt, use_cache=True, **{self._cache_kw: past}, **self._extra)
                past, want = getattr(out, self._cache_kw), out.logits[0, -1]
                worst = max(worst, _relative_error(got, want))
        except Exception as exc:  # noqa: BLE001 - any failure means: decode eagerly, and say why
            return self._off(f"static decoding failed: {type(exc).__name__}: {exc}")
        if not worst < CHECK_TOLERANCE:
            return self._off(f"static decoding differs from eager decoding by {worst:.3g} (relative)")
        self.ready = True
        how = {"capture": "one CUDA graph", "compiler": "CUDA graphs (torch.compile)", "none": "static cache"}
        self.note = f"{how[self.graphs]}, checked (relative error {worst:.2g})"
        return True

    def weights_changed(self) -> None:
        """The model's weights were overwritten in place (an adapter merged or taken out): check again before serving. A decoder
        that had failed its check stays off."""
        if self.ready:
            self.ready, self.note = False, "not checked yet"

    def _off(self, why: str) -> bool:
        self.ready, self.note = False, why[:400]
        log.warning("fast decoding is off: %s", self.note)
        return False


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.float(), want.float()
    return float((got - want).abs().mean() / want.abs().mean().clamp(min=1e-6))
