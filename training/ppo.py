"""PPO on the policy's LoRA adapter, one file read top to bottom (after CleanRL's ppo.py).

Symbols, as in Schulman et al. 2017 and Ziegler et al. 2019:
  x prompt, y = (y_1..y_T) response, π_θ policy (base + LoRA), π_ref reference (same base, adapter off),
  V_φ value head on the policy's last hidden state, r(x, y) reward-model score, β KL coefficient,
  δ_t TD error, A_t advantage (GAE), R_t return, ε clip range.

Only fresh rollouts of the current policy are optimised here. Ratings of answers that other adapters or other
models wrote train the reward model (reward.py) but never enter this loss as if π_θ had written them: their
log-probabilities under π_θ are not the ones they were sampled with, and PPO's ratio would be wrong.

Only torch (and lm.py) are imported, so `bench/ppo_step.py` runs this file without the rest of reinf.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.utils.checkpoint
from torch import nn

from .lm import CompiledDecoder, hidden_states, lm_head, merged_adapter, pad_left, sample, use_adapter


@dataclass
class PPOArgs:
    """Hyperparameters; `run.py` fills them from `[training]`."""

    ppo_steps: int = 8  # rollout + update rounds
    batch_size: int = 8  # rollouts per step
    minibatch_size: int = 4
    ppo_epochs: int = 4  # passes over each batch
    learning_rate: float = 1e-4
    max_response_tokens: int = 48
    temperature: float = 1.0  # sampling temperature; the training forward divides logits by it too
    init_kl_coef: float = 0.05  # β at the start
    target_kl: float = 6.0  # nats per response the adaptive β steers towards
    kl_horizon: int = 1024  # responses over which β moves by at most ±20 %
    clip_range: float = 0.2  # ε
    clip_range_value: float = 0.2
    vf_coef: float = 0.1
    ptx_coef: float = 0.0  # weight of the extra loss `train(ptx=...)` adds to each minibatch (PPO-ptx)
    gamma: float = 1.0
    lam: float = 0.95
    max_grad_norm: float = 1.0
    seed: int = 0
    compile_sampling: bool = False  # static KV cache + torch.compile for rollouts (worth it on a GPU)


# -- the maths: pure functions, checked in tests/test_ppo_math.py against hand-worked numbers ------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x − mean) / std over the tokens in `mask`; padding stays 0."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log π(y_t | x, y_<t) for the chosen tokens: `[B, T, V]`, `[B, T]` → `[B, T]`."""
    return torch.gather(logits.log_softmax(-1), -1, tokens.unsqueeze(-1)).squeeze(-1)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(π_θ ‖ π_ref) from log-probabilities of tokens sampled from π_θ.

    k1 = log π_θ − log π_ref (unbiased, can be negative); k3 = (ρ − 1) − log ρ with ρ = π_ref / π_θ
    (unbiased, never negative; Schulman's "Approximating KL divergence"); mse = ½ (log π_θ − log π_ref)².
    """
    log_ratio = logprobs - ref_logprobs
    if kind == "k1":
        return log_ratio
    if kind == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    if kind == "mse":
        return 0.5 * log_ratio**2
    raise ValueError(f"kl_penalty kind must be k1, k3 or mse, got {kind!r}")


def token_rewards(score: torch.Tensor, kl: torch.Tensor, beta: float, mask: torch.Tensor) -> torch.Tensor:
    """r_t = −β·KL_t on every response token, plus the reward model's score r(x, y) on the last one."""
    rewards = -beta * kl * mask
    last = mask.sum(1).long() - 1
    rewards[torch.arange(len(score)), last] += score
    return rewards


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens `[B, T]` (right-padded; padding is terminal).

    δ_t = r_t + γ V_{t+1} − V_t,   A_t = δ_t + γ λ A_{t+1},   R_t = A_t + V_t.
    """
    steps = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(steps)):
        not_last = mask[:, t + 1] if t + 1 < steps else torch.zeros_like(mask[:, 0])
        next_value = values[:, t + 1] * not_last if t + 1 < steps else torch.zeros_like(values[:, 0])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv * not_last) * mask[:, t]
        advantages[:, t] = next_adv
    returns = (advantages + values) * mask
    return advantages, returns


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L^CLIP = −E[min(ρ_t A_t, clip(ρ_t, 1−ε, 1+ε) A_t)], ρ_t = π_θ / π_θ_old.

    Returns (loss, clip fraction, approximate KL(π_θ_old ‖ π_θ) by k3) for the log.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean(((ratio - 1.0).abs() > clip_range).float(), mask)
        approx_kl = masked_mean(kl_penalty(old_logprobs, logprobs, "k3"), mask)
    return loss, clipfrac, approx_kl


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> torch.Tensor:
    """L^V = ½ E[max((V − R)², (V_old + clip(V − V_old, −ε, ε) − R)²)]."""
    clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


def adaptive_kl_coef(beta: float, kl: float, target: float, n: int, horizon: int) -> float:
    """Ziegler et al.'s controller: β ← β (1 + clip(KL/target − 1, −0.2, 0.2) · n / horizon)."""
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return beta * (1.0 + error * n / horizon)


# -- the model pieces -------------------------------------------------------------------------------------


class ValueHead(nn.Module):
    """V_φ(s_t): a linear layer on the policy's last hidden state, starting at 0."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(h.float()).squeeze(-1)


LOGIT_CHUNK = 2**25  # logits held at once (128 MiB in float32): a 151,936-word vocabulary needs chunks


def _head_logprobs(
    head: nn.Module, h: torch.Tensor, tokens: torch.Tensor, temperature: float
) -> torch.Tensor:
    logits = head(h).float()
    if temperature != 1.0:
        logits = logits / max(temperature, 1e-6)
    return logprobs_from_logits(logits, tokens)


def response_logprobs(
    model: nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    context: int,
    temperature: float,
    value_head: ValueHead | None = None,
    chunk: int = LOGIT_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(y_t | ·) for the response tokens `ids[:, context:]`, and V(s_t) if a value head is given.

    The LM head runs on response positions only, so the prompt never costs a vocabulary-sized logit, and
    over a few positions at a time, recomputed in the backward pass, so a large vocabulary never holds more
    than `chunk` logits (and their gradients) in memory at once.
    """
    h = hidden_states(model, ids, mask)[:, context - 1 : -1]  # the state that emits each response token
    tokens, head = ids[:, context:], lm_head(model)
    step = max(1, chunk // (h.shape[0] * head.out_features))
    if step >= h.shape[1]:
        logprobs = _head_logprobs(head, h, tokens, temperature)
    else:
        parts = []
        for i in range(0, h.shape[1], step):
            args = (head, h[:, i : i + step], tokens[:, i : i + step], temperature)
            if torch.is_grad_enabled():
                parts.append(torch.utils.checkpoint.checkpoint(_head_logprobs, *args, use_reentrant=False))
            else:
                parts.append(_head_logprobs(*args))
        logprobs = torch.cat(parts, 1)
    return logprobs, (value_head(h) if value_head is not None else None)


@dataclass
class Rollout:
    """One batch of fresh samples from π_θ and what PPO needs to learn from it."""

    prompt_index: list[int]  # into the prompt list given to `train`
    ids: torch.Tensor  # [B, P + T]: left-padded prompt, then right-padded response
    mask: torch.Tensor
    context: int  # P, where the responses start
    response_ids: torch.Tensor  # [B, T]
    response_mask: torch.Tensor
    scores: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    logprobs: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    ref_logprobs: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    values: torch.Tensor = field(default_factory=lambda: torch.empty(0))


RewardFn = Callable[[Rollout], torch.Tensor]


def _chunks(n: int, size: int) -> Iterator[slice]:
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


# -- the loop ---------------------------------------------------------------------------------------------


def train(
    model: nn.Module,
    value_head: ValueHead,
    prompts: Sequence[Sequence[int]],
    prompt_batches: Iterator[list[int]],
    reward_fn: RewardFn,
    args: PPOArgs,
    *,
    pad_id: int,
    stop_ids: Sequence[int],
    on_step: Callable[[int, dict], None] | None = None,
    reference: str | None = None,
    ptx: Callable[[], torch.Tensor] | None = None,
) -> list[dict]:
    """Run `args.ppo_steps` rounds of rollout → score → GAE → clipped updates on the active LoRA adapter.

    `model` is a PEFT model whose active adapter is the policy; `reward_fn(rollout)` returns r(x, y) per
    response. π_ref is the adapter named `reference`, or the plain base when None. `ptx()`, when given, is a
    loss on other data (InstructGPT's PPO-ptx) added to every minibatch's loss with weight `args.ptx_coef`.
    Returns one dict of statistics per step.
    """
    device = next(value_head.parameters()).device
    generator = torch.Generator(device=device).manual_seed(args.seed)
    params = [p for p in model.parameters() if p.requires_grad] + list(value_head.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, eps=1e-5, weight_decay=0.0)
    beta = args.init_kl_coef
    history = []
    decoders: dict[tuple[int, int], CompiledDecoder] = {}
    model.eval()  # dropout off: the old and new log-probabilities must come from the same function

    for step in range(args.ppo_steps):
        t0 = time.perf_counter()

        # 1. Rollout: y ~ π_θ(· | x) for a batch of prompts.
        index = next(prompt_batches)
        q_ids, q_mask = pad_left([prompts[i] for i in index], pad_id, device)
        if args.compile_sampling:  # one compiled decoder per (batch, prompt width); each costs a compile
            shape = (len(index), q_ids.shape[1] + args.max_response_tokens)
            if shape not in decoders:
                decoders[shape] = CompiledDecoder(model, shape[1])
        with merged_adapter(model):
            r_ids, r_mask = sample(
                model,
                q_ids,
                q_mask,
                max_new_tokens=args.max_response_tokens,
                temperature=args.temperature,
                stop_ids=stop_ids,
                pad_id=pad_id,
                generator=generator,
                compiled=decoders.get(shape) if args.compile_sampling else None,
            )
        ro = Rollout(
            index, torch.cat([q_ids, r_ids], 1), torch.cat([q_mask, r_mask], 1), q_ids.shape[1], r_ids, r_mask
        )
        t_sample = time.perf_counter()

        # 2. Score: r(x, y) from the reward model; log π_θ_old, V_old and log π_ref on the same tokens.
        with torch.no_grad():
            ro.scores = reward_fn(ro).to(device=device, dtype=torch.float32)
            old = [
                response_logprobs(model, ro.ids[s], ro.mask[s], ro.context, args.temperature, value_head)
                for s in _chunks(len(index), args.minibatch_size)
            ]
            ro.logprobs = torch.cat([lp for lp, _ in old])
            ro.values = torch.cat([v for _, v in old])
            with use_adapter(model, reference):
                ro.ref_logprobs = torch.cat(
                    [
                        response_logprobs(model, ro.ids[s], ro.mask[s], ro.context, args.temperature)[0]
                        for s in _chunks(len(index), args.minibatch_size)
                    ]
                )
        mask = ro.response_mask.float()

        # 3. Rewards: r_t = −β·KL_t per token, plus r(x, y) on the last token.
        kl = kl_penalty(ro.logprobs, ro.ref_logprobs, "k1") * mask
        rewards = token_rewards(ro.scores, kl, beta, mask)

        # 4. Advantages: GAE on the rewards and the old values, whitened over the batch.
        advantages, returns = gae(rewards, ro.values, mask, args.gamma, args.lam)
        advantages = masked_whiten(advantages, mask)
        t_score = time.perf_counter()

        # 5. Update: K epochs of clipped surrogate + clipped value loss over shuffled minibatches.
        logs = {"pg_loss": [], "vf_loss": [], "clipfrac": [], "approx_kl": []}
        if ptx is not None and args.ptx_coef > 0:
            logs["ptx_loss"] = []
        for _epoch in range(args.ppo_epochs):
            order = torch.randperm(
                len(index), generator=torch.Generator().manual_seed(args.seed + step * 1000 + _epoch)
            )
            for s in _chunks(len(index), args.minibatch_size):
                mb = order[s].to(device)
                logprobs, values = response_logprobs(
                    model, ro.ids[mb], ro.mask[mb], ro.context, args.temperature, value_head
                )
                pg_loss, clipfrac, approx_kl = clipped_policy_loss(
                    logprobs, ro.logprobs[mb], advantages[mb], mask[mb], args.clip_range
                )
                vf_loss = clipped_value_loss(
                    values, ro.values[mb], returns[mb], mask[mb], args.clip_range_value
                )
                loss = pg_loss + args.vf_coef * vf_loss
                if "ptx_loss" in logs:
                    ptx_loss = ptx()
                    loss = loss + args.ptx_coef * ptx_loss
                    logs["ptx_loss"].append(ptx_loss.item())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(params, args.max_grad_norm)
                optimizer.step()
                for k, v in (
                    ("pg_loss", pg_loss),
                    ("vf_loss", vf_loss),
                    ("clipfrac", clipfrac),
                    ("approx_kl", approx_kl),
                ):
                    logs[k].append(v.item())

        # 6. Move β so that the KL per response drifts towards the target.
        seq_kl = float(kl.sum(1).mean())
        beta_used = beta
        beta = adaptive_kl_coef(beta, seq_kl, args.target_kl, len(index), args.kl_horizon)

        stats = {
            "step": step,
            "score": float(ro.scores.mean()),
            "kl": seq_kl,
            "beta": beta_used,
            "response_tokens": float(mask.sum(1).mean()),
            **{k: sum(v) / max(len(v), 1) for k, v in logs.items()},
            "time_s": time.perf_counter() - t0,
            "sample_s": t_sample - t0,
            "score_s": t_score - t_sample,
        }
        if args.compile_sampling:
            stats["decode"] = decoders[shape].note
        if not all(math.isfinite(v) for v in stats.values() if isinstance(v, float)):
            raise FloatingPointError(f"PPO step {step} produced a non-finite statistic: {stats}")
        history.append(stats)
        if on_step is not None:
            on_step(step, stats)
    return history
