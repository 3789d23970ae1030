"""The warm start before PPO: KTO on the rated answers, liked and disliked; and the likelihood pieces it shares.

A liked answer shows what the user wants and a disliked one what they turn down; KTO moves the policy towards the
first and away from the second at once, and PPO then explores from there with the reward model (InstructGPT's
order: demonstrations first, then RL). The answers come from the reward model's training split, so the held-out
ratings stay unseen by the policy too (the gate reads them). Only the policy adapter learns, and the prompt
tokens are not scored. `Demonstrations` is PPO-ptx's next-token loss on general Python.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from reinf.fim import encode_prompt

from .data import Example
from .lm import hidden_states, lm_head, pad_left, use_adapter
from .ppo import masked_mean, response_logprobs

LIKED_TARGET = 0.5  # 4 stars or more, or a thumbs up (data.rating_target)


def liked(examples: Sequence[Example]) -> list[Example]:
    """The explicitly rated answers the user liked."""
    return [e for e in examples if e.explicit and e.target >= LIKED_TARGET]


def encode(
    tokenizer: Any, ex: Example, max_prompt_tokens: int, max_response_tokens: int, stop_id: int | None
) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) as the policy saw and wrote them; a finished answer ends with the stop token."""
    prompt = encode_prompt(tokenizer, ex.prompt, keep_last=max_prompt_tokens)
    answer = tokenizer(ex.response, add_special_tokens=False)["input_ids"]
    if ex.finished and stop_id is not None:
        answer = answer + [stop_id]
    return prompt, answer[:max_response_tokens]


def encoded(
    tokenizer: Any,
    examples: Sequence[Example],
    max_prompt_tokens: int,
    max_response_tokens: int,
    stop_id: int | None,
) -> list[tuple[list[int], list[int], Example]]:
    """(prompt ids, answer ids, example) of each example with a prompt and an answer left after the cuts."""
    data = [(*encode(tokenizer, e, max_prompt_tokens, max_response_tokens, stop_id), e) for e in examples]
    return [(p, a, e) for p, a, e in data if p and a]


def _logprobs(
    model: nn.Module, batch: Sequence[tuple[list[int], list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(y_t | x, y_<t) of each answer token, and the answer mask, for a batch of (prompt ids, answer ids)."""
    device = next(model.parameters()).device
    q_ids, q_mask = pad_left([p for p, _ in batch], pad_id, device)
    width = max(len(a) for _, a in batch)
    r_ids = torch.full((len(batch), width), pad_id, dtype=torch.long, device=device)
    r_mask = torch.zeros((len(batch), width), dtype=torch.long, device=device)
    for j, (_, a) in enumerate(batch):
        r_ids[j, : len(a)] = torch.tensor(a, device=device)
        r_mask[j, : len(a)] = 1
    logprobs, _ = response_logprobs(
        model, torch.cat([q_ids, r_ids], 1), torch.cat([q_mask, r_mask], 1), q_ids.shape[1], 1.0
    )
    return logprobs, r_mask.float()


def demo_loss(model: nn.Module, batch: Sequence[tuple[list[int], list[int]]], pad_id: int) -> torch.Tensor:
    """−log π(y | x) per answer token, averaged over a batch of (prompt ids, answer ids); prompts not scored."""
    logprobs, mask = _logprobs(model, batch, pad_id)
    return -masked_mean(logprobs, mask)


def answer_logp(model: nn.Module, batch: Sequence[tuple[list[int], list[int]]], pad_id: int) -> torch.Tensor:
    """log π(y | x), summed over each answer's tokens."""
    logprobs, mask = _logprobs(model, batch, pad_id)
    return (logprobs * mask).sum(1)


class Demonstrations:
    """Token sequences as an endless stream of shuffled minibatches, for a loss that keeps what the model knew:
    PPO-ptx's next-token loss (`loss()`), or the distance from the base's own predictions (`kl_to_base()`).

    InstructGPT mixes a pre-training loss into PPO so that RL does not wear away what the model knew; here the
    data is ordinary Python (data.replay_texts).
    """

    def __init__(
        self,
        model: nn.Module,
        data: list[tuple[list[int], list[int]]],
        *,
        batch_size: int,
        pad_id: int,
        seed: int,
    ) -> None:
        self.model, self.data, self.pad_id, self.batch_size = model, data, pad_id, batch_size
        self.rng = random.Random(seed)
        self.order: list[int] = []

    @classmethod
    def texts(
        cls, model: nn.Module, tokenizer: Any, texts: Sequence[str], *, window: int, **kw: Any
    ) -> Demonstrations:
        """Windows of `window` tokens cut from `texts`; every token after a window's first is scored."""
        data = []
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            data += [(ids[i : i + 1], ids[i + 1 : i + window]) for i in range(0, len(ids) - 1, window)]
        return cls(model, [(p, a) for p, a in data if p and a], **kw)

    def __len__(self) -> int:
        return len(self.data)

    def hold_out(self, n: int) -> list[tuple[list[int], list[int]]]:
        """Take `n` windows (spread over the texts) out of the stream and return them, never to be trained on."""
        if len(self.data) <= n:
            return []
        step = len(self.data) / n
        picked = {int(i * step) for i in range(n)}
        held = [w for i, w in enumerate(self.data) if i in picked]
        self.data = [w for i, w in enumerate(self.data) if i not in picked]
        self.order = []
        return held

    def _next(self) -> list[tuple[list[int], list[int]]]:
        if not self.order:
            self.order = self.rng.sample(range(len(self.data)), len(self.data))
        take, self.order = self.order[: self.batch_size], self.order[self.batch_size :]
        return [self.data[i] for i in take]

    def loss(self) -> torch.Tensor:
        """The next minibatch's mean next-token loss."""
        return demo_loss(self.model, self._next(), self.pad_id)

    def kl_to_base(self) -> torch.Tensor:
        """The next minibatch's mean per-token KL(base ‖ policy): how far the policy's next-token distributions
        on general code have moved from the plain base's (the adapters off), over the whole vocabulary.

        Unlike the next-token loss it asks for no change at all on this data, only for none, so it does not fit
        the replay text itself. The logits are made a chunk of positions at a time and remade in the backward
        pass, so that a 150k-token vocabulary costs a chunk's logits, not the batch's."""
        device = next(self.model.parameters()).device
        ids, mask = pad_left([p + a for p, a in self._next()], self.pad_id, device)
        keep = mask.bool()
        with torch.no_grad(), use_adapter(self.model, None):
            ref = hidden_states(self.model, ids, mask)[keep]
        policy = hidden_states(self.model, ids, mask)[keep]
        head = lm_head(self.model)
        total = policy.new_zeros((), dtype=torch.float32)
        for i in range(0, policy.shape[0], KL_CHUNK):
            total = total + checkpoint(
                _kl_sum, head, policy[i : i + KL_CHUNK], ref[i : i + KL_CHUNK], use_reentrant=False
            )
        return total / max(1, policy.shape[0])


KL_CHUNK = 128  # positions whose full-vocabulary logits are held at once


def _kl_sum(head: nn.Module, policy: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Σ over positions of KL(p_ref ‖ p_policy) from the two models' last hidden states and the shared LM head."""
    logp = torch.log_softmax(head(policy).float(), -1)
    ref_logp = torch.log_softmax(head(ref).float(), -1)
    return (ref_logp.exp() * (ref_logp - logp)).sum()


GUARD_WINDOWS = 16  # replay windows the guard measures the drift on, kept out of the KL stream
MAX_GUARD_FACTOR = 32.0


class GeneralGuard:
    """The completions' warm start's term on general code: `weight` × `Demonstrations.kl_to_base`, with the weight
    raised while the policy's drift on general Python is over `target`.

    The drift is what the gate bounds (training.max_general_loss_increase): the relative rise of the next-token
    loss over the base's, here on replay windows held out of the KL stream. It is measured as the warm start
    begins and after every pass; above `target` the weight doubles (at most MAX_GUARD_FACTOR × the configured
    one), under half of it the weight halves back towards the configured one. A fixed weight only holds the drift
    of one run: every run starts where the last one ended, so the drift grows run by run until the gate turns
    every candidate down. With the guard, a run that starts near the bound spends its passes pulling the model
    back while it learns what is new. `target` None: the weight stays as configured.
    """

    def __init__(self, demos: Demonstrations, weight: float, target: float | None, held: int = GUARD_WINDOWS):
        self.demos, self.floor, self.weight, self.target = demos, weight, weight, target
        self.held = demos.hold_out(held)
        self.base_loss: float | None = None
        self.history: list[dict[str, float]] = []

    def __call__(self) -> torch.Tensor:
        return self.weight * self.demos.kl_to_base()

    def drift(self) -> float:
        """The policy's next-token loss on the held-out windows, relative to the base's (0.05: 5% higher)."""
        model, pad = self.demos.model, self.demos.pad_id
        if not self.held:
            return 0.0
        n = self.demos.batch_size  # a training minibatch's worth at a time: its logits fit, as in training

        def held_loss() -> float:
            losses = [float(demo_loss(model, self.held[i : i + n], pad)) for i in range(0, len(self.held), n)]
            return sum(losses) / len(losses)

        with torch.no_grad():
            if self.base_loss is None:
                with use_adapter(model, None):
                    self.base_loss = held_loss()
            loss = held_loss()
        return (loss - self.base_loss) / self.base_loss if self.base_loss > 0 else 0.0

    def check(self) -> None:
        """Measure the drift and set the weight for the next pass."""
        if not self.held:
            return
        d = self.drift()
        if self.target is not None and d > self.target:
            self.weight = min(self.floor * MAX_GUARD_FACTOR, self.weight * 2)
        elif self.target is not None and d < self.target / 2:
            self.weight = max(self.floor, self.weight / 2)
        self.history.append({"drift": d, "weight": self.weight})

    def metrics(self) -> dict[str, Any]:
        h = self.history
        return {
            "weight_configured": self.floor,
            "target_drift": self.target,
            "drift_first": h[0]["drift"] if h else None,
            "drift_last": h[-1]["drift"] if h else None,
            "weight_max": max((x["weight"] for x in h), default=self.weight),
        }


def _fit(
    model: nn.Module,
    data: list,
    loss_fn: Callable[[list], torch.Tensor],
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    seed: int,
    min_batch: int = 1,
    before_epoch: Callable[[], None] | None = None,
) -> list[float]:
    """AdamW on the trainable (policy) adapter over shuffled minibatches of `data`, `epochs` times; a last
    minibatch under `min_batch` items is topped up from the end of the epoch; `before_epoch()` is called before
    each pass and once after the last. Returns each step's loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    rng = random.Random(seed)
    losses = []
    model.eval()  # no dropout, as in PPO
    for _ in range(epochs):
        if before_epoch is not None:
            before_epoch()
        rng.shuffle(data)
        for i in range(0, len(data), batch_size):
            chunk = data[i : i + batch_size]
            if len(chunk) < min_batch:
                chunk = data[-min_batch:]
            loss = loss_fn(chunk)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            losses.append(loss.item())
    if before_epoch is not None:
        before_epoch()
    return losses


def _first_and_last_epoch(values: list[float], epochs: int) -> tuple[float, float]:
    k = max(1, len(values) // max(epochs, 1))
    return sum(values[:k]) / k, sum(values[-k:]) / len(values[-k:])


def kto(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    reference: str | None,
    epochs: int,
    learning_rate: float,
    beta: float,
    batch_size: int,
    max_prompt_tokens: int,
    max_response_tokens: int,
    stop_id: int | None,
    pad_id: int,
    seed: int,
) -> dict[str, Any]:
    """Warm start on every rated answer, liked and disliked: the KTO loss (Ethayarajh et al. 2024).

    With r = log π(y|x) − log π_ref(y|x) and z the KL of π to π_ref (estimated on mismatched pairs, prompt i
    with answer i+1 of the batch, without a gradient and floored at 0), a liked answer costs
    λ_D·(1 − σ(β(r − z))) and a disliked one λ_U·(1 − σ(β(z − r))). Imitation sees only the liked answers;
    KTO also learns what the user turned down. The classes are weighted so that λ_D·n_D ≈ λ_U·n_U. π_ref is
    adapter `reference` (None: the base), normally the policy as the run starts.
    """
    rows = [
        (p, a, e.target >= LIKED_TARGET)
        for p, a, e in encoded(
            tokenizer, [e for e in examples if e.explicit], max_prompt_tokens, max_response_tokens, stop_id
        )
    ]
    n_good = sum(good for _, _, good in rows)
    n_bad = len(rows) - n_good
    if epochs <= 0 or n_good == 0 or n_bad == 0 or len(rows) < 2:
        return {"n_desirable": n_good, "n_undesirable": n_bad, "steps": 0}
    w_good, w_bad = max(n_bad / n_good, 1.0), max(n_good / n_bad, 1.0)
    t0 = time.time()
    kls, margins = [], []

    def loss_fn(chunk: list) -> torch.Tensor:
        pairs = [(p, a) for p, a, _ in chunk]
        shifted = [(p, pairs[(j + 1) % len(pairs)][1]) for j, (p, _) in enumerate(pairs)]
        good = torch.tensor([g for _, _, g in chunk])
        with torch.no_grad():
            with use_adapter(model, reference):
                ref = answer_logp(model, pairs, pad_id)
                ref_shifted = answer_logp(model, shifted, pad_id)
            z = (answer_logp(model, shifted, pad_id) - ref_shifted).mean().clamp(min=0)
        r = answer_logp(model, pairs, pad_id) - ref
        per = torch.where(
            good,
            w_good * (1 - torch.sigmoid(beta * (r - z))),
            w_bad * (1 - torch.sigmoid(beta * (z - r))),
        )
        kls.append(z.item())
        if good.any() and (~good).any():
            margins.append((r[good].mean() - r[~good].mean()).item())
        return per.mean()

    # min_batch 2: z needs a mismatched pair
    losses = _fit(
        model,
        rows,
        loss_fn,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        seed=seed,
        min_batch=2,
    )
    first, last = _first_and_last_epoch(losses, epochs)
    k = max(1, len(losses) // epochs)
    return {
        "n_desirable": n_good,
        "n_undesirable": n_bad,
        "desirable_weight": round(w_good, 3),
        "steps": len(losses),
        "loss_first_epoch": first,
        "loss_last_epoch": last,
        "kl_last_epoch": _first_and_last_epoch(kls, epochs)[1],
        "margin_last_epoch": sum(margins[-k:]) / len(margins[-k:]) if margins else None,
        "time_s": time.time() - t0,
    }


# -- completions: what the user wrote or took at the cursor -----------------------------------------------


def wanted_ids(
    tokenizer: Any, text: str, max_tokens: int, stop_id: int | None, ends: bool = True
) -> list[int]:
    """The ids of a text the user wanted at a cursor, as the policy should write it: followed by the stop token
    when the text ends there (the user wanted no more) and fits within `max_tokens`; cut at `max_tokens` else."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if ends and stop_id is not None and len(ids) < max_tokens:
        return ids + [stop_id]
    return ids[:max_tokens]


def encode_wanted(
    tokenizer: Any,
    wanted: Sequence[tuple[str, str] | tuple[str, str, bool]],
    max_prompt_tokens: int,
    max_response_tokens: int,
    stop_id: int | None,
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, `wanted_ids`) of each (FIM prompt, text[, ends]) with both left after the cuts."""
    rows = []
    for prompt, text, *ends in wanted:
        p = encode_prompt(tokenizer, prompt, keep_last=max_prompt_tokens)
        a = wanted_ids(tokenizer, text, max_response_tokens, stop_id, bool(ends[0]) if ends else True)
        if p and a:
            rows.append((p, a))
    return rows


def encode_pair(
    tokenizer: Any,
    pair: tuple[str, str, str] | tuple[str, str, str, bool],
    max_prompt_tokens: int,
    max_response_tokens: int,
    stop_id: int | None,
) -> tuple[list[int], list[int], list[int]] | None:
    """(prompt ids, preferred ids, rejected ids) of a (FIM prompt, preferred, rejected[, preferred ends]) pair:
    the preferred text as `wanted_ids` writes it (ending with the stop token unless the pair says it does not
    end), the rejected one as it was shown; an empty text is the stop token alone (showing nothing). None when a
    side is left empty or both are the same."""
    ends = bool(pair[3]) if len(pair) > 3 else True
    prompt = encode_prompt(tokenizer, pair[0], keep_last=max_prompt_tokens)
    nothing = [stop_id] if stop_id is not None else []
    good = wanted_ids(tokenizer, pair[1], max_response_tokens, stop_id, ends) if pair[1] else nothing
    bad = (
        tokenizer(pair[2], add_special_tokens=False)["input_ids"][:max_response_tokens]
        if pair[2]
        else nothing
    )
    if not prompt or not good or not bad or good == bad:
        return None
    return prompt, good, bad


def dpo(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str, str]],
    *,
    reference: str | None,
    epochs: int,
    learning_rate: float,
    beta: float,
    nll_coef: float = 0.0,
    general: GeneralGuard | None = None,
    batch_size: int,
    max_prompt_tokens: int,
    max_response_tokens: int,
    stop_id: int | None,
    pad_id: int,
    seed: int,
) -> dict[str, Any]:
    """The completions' warm start: DPO (Rafailov et al. 2023) on (FIM prompt, preferred, rejected) pairs.

    With h = [log π(y_w|x) − log π_ref(y_w|x)] − [log π(y_l|x) − log π_ref(y_l|x)], each pair costs
    −log σ(β·h): the policy moves towards what the user wrote or took, away from what they turned down, and no
    further from π_ref (adapter `reference`, None: the base) than the pairs ask. DPO alone can widen that margin
    while both sides get less likely; `nll_coef` adds the preferred side's mean next-token loss, −log π(y_w|x) /
    |y_w| (RPO, Pang et al. 2024), so that what the user wrote becomes what the policy writes at that cursor.
    `general` (`GeneralGuard`: the KL to the base on general code, weighted) is added to every step: a project's
    few pairs must not wear away what the model knew.
    """
    rows = [
        r
        for r in (encode_pair(tokenizer, p, max_prompt_tokens, max_response_tokens, stop_id) for p in pairs)
        if r
    ]
    if epochs <= 0 or not rows:
        return {"n_pairs": len(rows), "steps": 0}
    t0 = time.time()
    margins: list[float] = []

    def loss_fn(chunk: list) -> torch.Tensor:
        good = [(p, w) for p, w, _ in chunk]
        bad = [(p, rej) for p, _, rej in chunk]
        with torch.no_grad(), use_adapter(model, reference):
            ref_good, ref_bad = answer_logp(model, good, pad_id), answer_logp(model, bad, pad_id)
        logp_good = answer_logp(model, good, pad_id)
        h = (logp_good - ref_good) - (answer_logp(model, bad, pad_id) - ref_bad)
        margins.append(h.mean().item())
        loss = -nn.functional.logsigmoid(beta * h).mean()
        if nll_coef:
            lengths = torch.tensor([len(w) for _, w in good], dtype=logp_good.dtype, device=logp_good.device)
            loss = loss - nll_coef * (logp_good / lengths).mean()
        if general is not None and general.weight:
            loss = loss + general()
        return loss

    losses = _fit(
        model, rows, loss_fn, epochs=epochs, learning_rate=learning_rate, batch_size=batch_size, seed=seed,
        before_epoch=general.check if general is not None else None,
    )  # fmt: skip
    first, last = _first_and_last_epoch(losses, epochs)
    return {
        "n_pairs": len(rows),
        "steps": len(losses),
        "loss_first_epoch": first,
        "loss_last_epoch": last,
        "margin_last_epoch": _first_and_last_epoch(margins, epochs)[1],
        **({"general_guard": general.metrics()} if general is not None else {}),
        "time_s": time.time() - t0,
    }


def fim_finetune(
    model: nn.Module,
    tokenizer: Any,
    wanted: Sequence[tuple[str, str] | tuple[str, str, bool]],
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    max_prompt_tokens: int,
    max_response_tokens: int,
    pad_id: int,
    seed: int,
    stop_id: int | None = None,
    general: GeneralGuard | None = None,
) -> dict[str, Any]:
    """`training.fim_finetune`: next-token loss on what the user took or wrote at each cursor (prompt, text[,
    ends]), given its FIM prompt, so that the model picks up the project's names and idioms, and where to stop
    (`wanted_ids`). Only the policy adapter learns; `general` as in `dpo`."""
    rows = encode_wanted(tokenizer, wanted, max_prompt_tokens, max_response_tokens, stop_id)
    if epochs <= 0 or not rows:
        return {"n_examples": len(rows), "steps": 0}
    t0 = time.time()

    def loss_fn(chunk: list) -> torch.Tensor:
        loss = demo_loss(model, chunk, pad_id)
        if general is not None and general.weight:
            loss = loss + general()
        return loss

    losses = _fit(
        model,
        rows,
        loss_fn,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        seed=seed,
        before_epoch=general.check if general is not None else None,
    )
    first, last = _first_and_last_epoch(losses, epochs)
    return {
        "n_examples": len(rows),
        "steps": len(losses),
        "loss_first_epoch": first,
        "loss_last_epoch": last,
        **({"general_guard": general.metrics()} if general is not None else {}),
        "time_s": time.time() - t0,
    }
