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


def set_trainable(model: nn.Module, adapter: str | None) -> None:
    """Make exactly the LoRA weights of `adapter` trainable (None: none of them)."""
    for n, p in model.named_parameters():
        if "lora_" in n:
            p.requires_grad_(adapter is not None and f".{adapter}." in n)


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample continuations of left-padded prompts with a KV cache.

    Returns right-padded `(response_ids, response_mask)` `[B, R]`; the mask covers every sampled token up to
    and including the first stop token. A plain loop rather than `generate()`: fewer launches per token, and
    the same positions and temperature as the training forward, so the sampling log-probabilities match it.
    """
    trunk, head = decoder(model), lm_head(model)
    cache_kw = _cache_kwarg(trunk)
    from transformers import DynamicCache

    cache = DynamicCache()
    device = prompt_ids.device
    batch = prompt_ids.shape[0]
    stops = torch.tensor(sorted(set(stop_ids)), device=device, dtype=torch.long)
    mask = prompt_mask
    pos = position_ids(mask)
    step_ids = prompt_ids
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    tokens, alive = [], []
    for _ in range(max_new_tokens):
        out = trunk(
            input_ids=step_ids, attention_mask=mask, position_ids=pos, use_cache=True, **{cache_kw: cache}
        )
        logits = head(out.last_hidden_state[:, -1]).float()
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            nxt = logits.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        tokens.append(nxt)
        alive.append(~done)
        done = done | torch.isin(nxt, stops)
        if bool(done.all()):
            break
        step_ids = nxt[:, None]
        mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], dim=1)
        pos = pos[:, -1:] + 1
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
