"""The few language-model calls the trainer makes: padding, hidden states, sampling, adapter switching.

One frozen base serves every role. A PEFT model holds several LoRA adapters over it (the policy, the reward
model, the active adapter for the gate); `use_adapter(model, None)` switches them all off for the reference.
Only torch, transformers and peft are imported here, so `bench/ppo_step.py` can load this file on its own.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"):
    """Left-pad token lists into `(ids, mask)`, so that every prompt ends at the same column."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s) :] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, so a padded prompt sees the same positions as an unpadded one."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def causal_lm(model: nn.Module) -> nn.Module:
    """The transformers `*ForCausalLM` inside a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def decoder(model: nn.Module) -> nn.Module:
    """The transformer trunk (without the LM head) of a causal LM, wrapped or not."""
    return causal_lm(model).get_decoder()


def lm_head(model: nn.Module) -> nn.Module:
    return causal_lm(model).get_output_embeddings()


def _cache_kwarg(trunk: nn.Module) -> str:
    # transformers 5.2x renamed `past_key_values` to `cache`; accept both so the benchmark runs anywhere.
    params = inspect.signature(trunk.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def hidden_states(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Last-layer hidden states `[B, T, H]` of the trunk, with the adapters as currently switched."""
    out = decoder(model)(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False)
    return out.last_hidden_state


@contextmanager
def use_adapter(model: nn.Module, name: str | None, trainable: str | None = None) -> Iterator[None]:
    """Run a block with adapter `name` active (None: all adapters off, the plain base), then switch back.

    PEFT's switches also flip `requires_grad`; afterwards only adapter `trainable` (default: the one that was
    active before) is left trainable.
    """
    before = model.active_adapter
    try:
        if name is None:
            model.base_model.disable_adapter_layers()
        else:
            model.set_adapter(name)
        yield
    finally:
        if name is None:
            model.base_model.enable_adapter_layers()
        model.set_adapter(before)
        set_trainable(model, trainable if trainable is not None else before)


@contextmanager
def merged_adapter(model: nn.Module) -> Iterator[None]:
    """Fold the active LoRA adapter into the base weights for the block, with the adapter layers off.

    Sampling then costs what the base costs (no extra LoRA kernels per token). Afterwards the base weights
    are restored from a copy, exactly: undoing the merge by subtraction would leave bf16 rounding behind in
    the frozen base, which is also the KL reference.
    """
    from peft.tuners.lora import LoraLayer

    name = model.active_adapter
    saved = []
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoraLayer) and name in m.lora_A:
                w = m.get_base_layer().weight
                saved.append((w, w.detach().clone()))
                w += m.get_delta_weight(name).to(w.dtype)
    model.base_model.disable_adapter_layers()
    try:
        yield
    finally:
        with torch.no_grad():
            for w, orig in saved:
                w.copy_(orig)
        model.base_model.enable_adapter_layers()
        set_trainable(model, name)


def freeze_copy(model: nn.Module, src: str, dst: str) -> None:
    """Add adapter `dst` as a frozen copy of adapter `src`; `src` stays active and trainable."""
    import copy

    model.add_adapter(dst, copy.deepcopy(model.peft_config[src]))
    with torch.no_grad():
        params = dict(model.named_parameters())
        for n, p in params.items():
            if f".{src}." in n:
                params[n.replace(f".{src}.", f".{dst}.")].copy_(p)
    model.set_adapter(src)
    set_trainable(model, src)


def set_trainable(model: nn.Module, adapter: str | None) -> None:
    """Make exactly the LoRA weights of `adapter` trainable (None: none of them)."""
    for n, p in model.named_parameters():
        if "lora_" in n:
            p.requires_grad_(adapter is not None and f".{adapter}." in n)


class CompiledDecoder:
    """One decode step over a static KV cache, compiled (CUDA graphs on a GPU) for one batch and length.

    Eager decoding of a small model is bound by kernel launches, not arithmetic; replaying a captured graph
    removes that. The first steps are checked against the eager step, and any failure or mismatch switches
    this decoder back to eager for good (`note` says why): a compiler problem costs speed, never correctness.
    """

    def __init__(self, model: nn.Module, max_len: int) -> None:
        self.trunk, self.head = decoder(model), lm_head(model)
        self.cache_kw = _cache_kwarg(self.trunk)
        self.checks_left = 3  # CUDA graphs are recorded on a later call than the first: check past that
        self.note = "compiled"
        self.compiled = None
        try:
            from transformers import StaticCache

            self.cache = StaticCache(config=causal_lm(model).config, max_cache_len=max_len)
            mode = "reduce-overhead" if next(model.parameters()).device.type == "cuda" else "default"
            self.compiled = torch.compile(self.step, mode=mode, dynamic=False)
        except Exception as exc:  # noqa: BLE001 - an older transformers or torch: decode eagerly
            self.give_up(f"no static cache: {type(exc).__name__}: {exc}")

    def give_up(self, why: str) -> None:
        self.compiled, self.note = None, f"eager ({why})"[:300]

    def step(
        self, ids: torch.Tensor, pos: torch.Tensor, cache_pos: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        out = self.trunk(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            cache_position=cache_pos,
            use_cache=True,
            **{self.cache_kw: self.cache},
        )
        return self.head(out.last_hidden_state[:, -1]).float()

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.cache.reset()
        width = ids.shape[1]
        out = self.trunk(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids(mask[:, :width]),
            cache_position=torch.arange(width, device=ids.device),
            use_cache=True,
            **{self.cache_kw: self.cache},
        )
        return self.head(out.last_hidden_state[:, -1]).float()

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        if self.compiled is None:
            return self.step(*args)
        if self.checks_left > 0:
            self.checks_left -= 1
            # The eager step writes the slot the compiled step then writes again; put back the position
            # counters (newer transformers keep them in the cache) so that both write the same place.
            counters = [
                c
                for c in (getattr(x, "cumulative_length", None) for x in getattr(self.cache, "layers", []))
                if isinstance(c, torch.Tensor)
            ]
            saved = [c.clone() for c in counters]
            eager = self.step(*args)
            for c, v in zip(counters, saved, strict=True):
                c.copy_(v)
            try:
                torch.compiler.cudagraph_mark_step_begin()
                got = self.compiled(*args).clone()
            except Exception as exc:  # noqa: BLE001 - fall back to eager, and say so
                self.give_up(f"compiling failed: {type(exc).__name__}: {exc}")
                return eager
            err = float((got - eager).abs().mean() / eager.abs().mean().clamp(min=1e-6))
            if not err < 2e-2:
                self.give_up(f"the compiled step differed from the eager one by {err:.3g}")
                return eager
            return got
        torch.compiler.cudagraph_mark_step_begin()
        return self.compiled(*args).clone()


def _pick(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    if temperature > 0:
        probs = torch.softmax(logits / temperature, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return logits.argmax(-1)


@torch.no_grad()
def sample(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    stop_ids: Sequence[int],
    pad_id: int,
    generator: torch.Generator | None = None,
    compiled: CompiledDecoder | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample continuations of left-padded prompts with a KV cache.

    Returns right-padded `(response_ids, response_mask)` `[B, R]`; the mask covers every sampled token up to
    and including the first stop token. A plain loop rather than `generate()`: fewer launches per token, and
    the same positions and temperature as the training forward, so the sampling log-probabilities match it.
    With `compiled` (made for this batch size and prompt width + max_new_tokens), steps use its static cache.
    """
    device = prompt_ids.device
    batch, width = prompt_ids.shape
    stops = torch.tensor(sorted(set(stop_ids)), device=device, dtype=torch.long)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    tokens, alive = [], []
    last_pos = position_ids(prompt_mask)[:, -1:]
    if compiled is not None and compiled.compiled is not None:
        mask = torch.zeros((batch, width + max_new_tokens), dtype=prompt_mask.dtype, device=device)
        mask[:, :width] = prompt_mask
        try:
            logits = compiled.prefill(prompt_ids, mask)
        except Exception as exc:  # noqa: BLE001 - this transformers cannot prefill a static cache: go eager
            compiled.give_up(f"static-cache prefill failed: {type(exc).__name__}: {exc}")
    if compiled is None or compiled.compiled is None:
        compiled = None
        trunk, head = decoder(model), lm_head(model)
        cache_kw = _cache_kwarg(trunk)
        from transformers import DynamicCache

        cache = DynamicCache()
        mask = prompt_mask
        out = trunk(
            input_ids=prompt_ids,
            attention_mask=mask,
            position_ids=position_ids(mask),
            use_cache=True,
            **{cache_kw: cache},
        )
        logits = head(out.last_hidden_state[:, -1]).float()
    for t in range(max_new_tokens):
        nxt = torch.where(
            done, torch.full_like(done, pad_id, dtype=torch.long), _pick(logits, temperature, generator)
        )
        tokens.append(nxt)
        alive.append(~done)
        done = done | torch.isin(nxt, stops)
        if t + 1 == max_new_tokens or (
            len(tokens) % 8 == 0 and bool(done.all())
        ):  # a check waits for the GPU
            break
        last_pos = last_pos + 1
        if compiled is not None:
            mask[:, width + t] = 1
            logits = compiled(nxt[:, None], last_pos, torch.full((1,), width + t, device=device), mask)
        else:
            mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], dim=1)
            out = trunk(
                input_ids=nxt[:, None],
                attention_mask=mask,
                position_ids=last_pos,
                use_cache=True,
                **{cache_kw: cache},
            )
            logits = head(out.last_hidden_state[:, -1]).float()
    return torch.stack(tokens, 1), torch.stack(alive, 1).long()


def stop_token_ids(tokenizer, model: nn.Module | None = None) -> list[int]:
    """End-of-sequence ids: the tokenizer's EOS, the chat end token if any, and the generation config's."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    for tok in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            ids.add(tid)
    gen = getattr(causal_lm(model), "generation_config", None) if model is not None else None
    eos = getattr(gen, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, (list, tuple)):
        ids.update(int(e) for e in eos)
    return sorted(ids)


def decode_responses(tokenizer, ids: torch.Tensor, mask: torch.Tensor, stop_ids: Sequence[int]) -> list[str]:
    """The text of each sampled response, without padding and stop tokens."""
    rows = zip(ids.tolist(), mask.tolist(), strict=True)
    return [
        tokenizer.decode(
            [t for t, k in zip(row, m, strict=True) if k and t not in stop_ids], skip_special_tokens=True
        )
        for row, m in rows
    ]
