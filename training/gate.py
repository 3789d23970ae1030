"""The evaluation gate: a candidate adapter is published only if it passes every check.

1. The judge: on held-out prompts, its reward-model score is not worse than the active adapter's (the base when
   none is active), within `training.gate_tolerance_se` standard errors. Both sample at `training.temperature`,
   the distribution PPO optimised, with the same seeds.
2. The user's own ratings: on held-out rated answers, the candidate does not lower the margin of the liked
   answers' log-likelihood over the disliked ones, relative to the active adapter, beyond the same tolerance
   (the implicit reward of DPO and KTO). The judge is a model of a few dozen ratings and can be wrong; this
   check reads the ratings themselves.
2b. Completions: on held-out completion events, the candidate does not lower the log-likelihood of what the
   user wrote or took at the cursor (given the FIM prompt), relative to the active adapter, beyond the same
   tolerance in paired standard errors. Skipped, and says so, with fewer than MIN_COMPLETION_EVENTS.
2c. Suggestions: at the same held-out cursors, each adapter suggests again, as the daemon would (its
   temperature, its stop texts, the same scope rules, the same seed for both), and the share of suggestions the
   user would have taken whole (a prefix of all they had there) does not fall, within the same tolerance in
   paired standard errors. What users see is the suggestion, not the likelihood: a run can make what they wrote
   likelier on average (2b) and still suggest it less often.
3. Its KL to the active adapter (the base when none), summed over a response and averaged, stays under
   `training.max_kl`: each run is one bounded step from what the user rated. A bound on the KL to the base would
   stop all learning once earlier runs had used it up (each run starts from the active adapter), and the
   drift from the base is what check 4 bounds.
4. Its loss on general held-out code is at most `training.max_general_loss_increase` above the base's. The
   base, not the active adapter, is the yardstick, so small losses cannot compound from version to version.
5. Its median answer is not shorter than the length floor (see `length_floor`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from reinf.fim import encode_prompt
from reinf.truncate import Scope

from .data import Example
from .imitate import LIKED_TARGET, answer_logp, encode_wanted, encoded
from .lm import decode_responses, hidden_states, lm_head, pad_left, sample, use_adapter
from .ppo import logprobs_from_logits, masked_mean
from .reward import RewardModel, score


@torch.no_grad()
def sample_texts(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float,
    stop_ids: Sequence[int],
    seed: int,
    batch_size: int = 8,
) -> tuple[list[str], list[tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]]]:
    """Responses of the model as currently switched, with the tensors needed to measure their KL."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts, batches = [], []
    for i in range(0, len(prompts), batch_size):
        q_ids, q_mask = pad_left(prompts[i : i + batch_size], pad, device)
        r_ids, r_mask = sample(
            model,
            q_ids,
            q_mask,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            stop_ids=stop_ids,
            pad_id=pad,
            generator=gen,
        )
        texts += decode_responses(tokenizer, r_ids, r_mask, stop_ids)
        batches.append((torch.cat([q_ids, r_ids], 1), torch.cat([q_mask, r_mask], 1), q_ids.shape[1], r_mask))
    return texts, batches


@torch.no_grad()
def kl_to(
    model: nn.Module,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]],
    reference: str | None = None,
) -> float:
    """Exact KL(π_θ ‖ π_ref) summed over each response's tokens (full distributions), averaged over responses;
    π_θ is the model as switched now, π_ref its adapter `reference` (None: the base)."""
    total, n = 0.0, 0
    head = lm_head(model)
    for ids, mask, ctx, r_mask in batches:
        logp = head(hidden_states(model, ids, mask)[:, ctx - 1 : -1]).float().log_softmax(-1)
        with use_adapter(model, reference):
            logq = head(hidden_states(model, ids, mask)[:, ctx - 1 : -1]).float().log_softmax(-1)
        kl = (logp.exp() * (logp - logq)).sum(-1) * r_mask
        total += float(kl.sum())
        n += ids.shape[0]
    return total / max(n, 1)


@torch.no_grad()
def general_loss(model: nn.Module, tokenizer: Any, texts: Sequence[str], max_tokens: int) -> float:
    """Mean next-token loss (nats per token) on general text, with the adapters as currently switched."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    seqs = [encode_prompt(tokenizer, t)[:max_tokens] for t in texts]
    seqs = [s for s in seqs if len(s) > 1]
    losses = []
    for s in seqs:  # one at a time: no padding, and little memory for a large vocabulary
        ids, mask = pad_left([s], pad, device)
        logits = lm_head(model)(hidden_states(model, ids, mask)[:, :-1]).float()
        losses.append(-masked_mean(logprobs_from_logits(logits, ids[:, 1:]), mask[:, 1:].float()))
    return float(torch.stack(losses).mean()) if losses else 0.0


def not_worse(
    cand: torch.Tensor, active: torch.Tensor, n_prompts: int, tolerance_se: float
) -> tuple[bool, float]:
    """Whether the candidate's mean score is at most `tolerance_se` standard errors below the active one's, and
    that standard error. Scores come `samples` per prompt, prompt after prompt; the error is that of the mean of
    the per-prompt differences (paired: some prompts are harder for both)."""
    diff = cand.float().view(n_prompts, -1).mean(1) - active.float().view(n_prompts, -1).mean(1)
    se = float(diff.std() / n_prompts**0.5) if n_prompts > 1 else 0.0
    return float(diff.mean()) >= -tolerance_se * se, se


def ratings_margin(
    candidate_logp: torch.Tensor, active_logp: torch.Tensor, liked: torch.Tensor
) -> tuple[float, float]:
    """How much more the candidate prefers the liked answers to the disliked ones than the active adapter does.

    d = log π_cand(y|x) − log π_active(y|x) per rated answer; the margin is mean(d over liked) − mean(d over
    disliked), and its standard error is that of a difference of two independent means. A candidate that raised
    the disliked answers' likelihood more than the liked ones' has a negative margin.
    """
    d = candidate_logp.double() - active_logp.double()
    good, bad = d[liked], d[~liked]
    if len(good) == 0 or len(bad) == 0:
        raise ValueError("the ratings margin needs liked and disliked answers")

    def var_of_mean(x: torch.Tensor) -> float:
        return float(x.var(correction=1)) / len(x) if len(x) > 1 else 0.0

    return float(good.mean() - bad.mean()), math.sqrt(var_of_mean(good) + var_of_mean(bad))


@torch.no_grad()
def rated_logps(
    model: nn.Module,
    tokenizer: Any,
    rated: Sequence[Example],
    adapter: str | None,
    *,
    max_prompt_tokens: int,
    max_response_tokens: int,
    stop_id: int | None,
    batch_size: int = 8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(y|x) of each rated answer with `adapter` switched on (None: the base), and which were liked.
    Answers rated neither liked nor disliked (3 stars) are left out."""
    rows = [
        (p, a, e.target >= LIKED_TARGET)
        for p, a, e in encoded(tokenizer, rated, max_prompt_tokens, max_response_tokens, stop_id)
        if e.explicit and (e.target >= LIKED_TARGET or e.target < 0)
    ]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    with use_adapter(model, adapter):
        for i in range(0, len(rows), batch_size):
            out.append(
                answer_logp(model, [(p, a) for p, a, _ in rows[i : i + batch_size]], pad).float().cpu()
            )
    logp = torch.cat(out) if out else torch.empty(0)
    return logp, torch.tensor([good for _, _, good in rows], dtype=torch.bool)


MIN_COMPLETION_EVENTS = 8  # held-out completion events below which the completions check is skipped


def completions_margin(candidate_logp: torch.Tensor, active_logp: torch.Tensor) -> tuple[float, float]:
    """How much more likely the candidate makes what the users wrote or took than the active adapter does: the
    mean of d = log π_cand(y|x) − log π_active(y|x) over held-out events, and its standard error (paired: each
    event is scored by both)."""
    d = candidate_logp.double() - active_logp.double()
    if len(d) == 0:
        raise ValueError("the completions margin needs at least one event")
    se = math.sqrt(float(d.var(correction=1)) / len(d)) if len(d) > 1 else 0.0
    return float(d.mean()), se


@torch.no_grad()
def wanted_logps(
    model: nn.Module,
    tokenizer: Any,
    wanted: Sequence[tuple[str, str] | tuple[str, str, bool]],
    adapter: str | None,
    *,
    max_prompt_tokens: int,
    max_response_tokens: int,
    batch_size: int = 8,
    stop_id: int | None = None,
) -> torch.Tensor:
    """log π(y|x) of each (FIM prompt, text the user wanted there[, ends]) with `adapter` switched on (None: the
    base), the text encoded as the policy learns it (`imitate.wanted_ids`: with the stop token where it ends)."""
    rows = encode_wanted(tokenizer, wanted, max_prompt_tokens, max_response_tokens, stop_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    with use_adapter(model, adapter):
        for i in range(0, len(rows), batch_size):
            out.append(answer_logp(model, rows[i : i + batch_size], pad).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


@dataclass(frozen=True)
class HeldCursor:
    """A held-out completion event as the suggestions check replays it: the FIM prompt, the rules that cut a
    suggestion at that cursor (the daemon's), and all the user had there (`data.CompletionEvent.written`)."""

    prompt: str
    scope: Scope
    written: str


def taken_whole(suggestion: str, written: str) -> bool:
    """Whether a user who had `written` at the cursor would take `suggestion` whole: it is not empty and their
    text starts with it (spaces at line ends aside: a suggestion has none)."""
    return bool(suggestion) and "\n".join(line.rstrip() for line in written.split("\n")).startswith(
        suggestion
    )


@torch.no_grad()
def suggest(
    model: nn.Module,
    tokenizer: Any,
    cursors: Sequence[HeldCursor],
    adapter: str | None,
    *,
    max_prompt_tokens: int,
    max_new_tokens: int,
    temperature: float,
    stop_ids: Sequence[int],
    stop_texts: Sequence[str],
    seed: int,
    batch_size: int = 8,
) -> list[str]:
    """The suggestion at each cursor with `adapter` switched on (None: the base), made as the daemon makes one:
    sampled at `temperature`, ended at a stop token or the first of `stop_texts`, cut by the cursor's scope."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = set(stop_ids)
    out = []
    with use_adapter(model, adapter):
        for i in range(0, len(cursors), batch_size):
            batch = cursors[i : i + batch_size]
            q_ids, q_mask = pad_left(
                [encode_prompt(tokenizer, c.prompt, max_prompt_tokens) for c in batch], pad, device
            )
            r_ids, r_mask = sample(
                model,
                q_ids,
                q_mask,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                stop_ids=stop_ids,
                pad_id=pad,
                generator=gen,
            )
            for cursor, row, alive in zip(batch, r_ids.tolist(), r_mask.tolist(), strict=True):
                kept = [t for t, a in zip(row, alive, strict=True) if a]
                reason = "stop" if kept and kept[-1] in stops else "length"
                text = tokenizer.decode([t for t in kept if t not in stops], skip_special_tokens=False)
                cuts = [j for j in (text.find(s) for s in stop_texts if s) if j >= 0]
                if cuts:
                    text, reason = text[: min(cuts)], "stop"
                out.append(cursor.scope.finish(text, reason))
    return out


@dataclass
class GateSpec:
    """What the gate compares, on what, and its bounds (see the module's docstring for the checks)."""

    prompt_texts: Sequence[str]
    prompt_ids: Sequence[Sequence[int]]
    rated: Sequence[Example]  # held-out rated answers, for the ratings check
    candidate: str
    active: str | None  # the active adapter's name on the model; None: the base serves
    active_version: int
    general: Sequence[str]
    general_max_tokens: int
    max_new_tokens: int
    max_prompt_tokens: int
    temperature: float
    stop_ids: Sequence[int]
    max_kl: float
    max_general_loss_increase: float
    seed: int
    samples: int = 4
    # Held-out completion events: (FIM prompt, what the user wrote or took there), for the completions check.
    completions: Sequence[tuple[str, str] | tuple[str, str, bool]] = ()
    # The same events' cursors, for the suggestions check, and how the daemon suggests there.
    cursors: Sequence[HeldCursor] = ()
    suggest_temperature: float = 0.0
    suggest_max_tokens: int = 64
    suggest_stop_texts: Sequence[str] = ()
    no_judge: str = ""  # why this run has no judge (its score check is skipped), if it has none
    score_range: tuple[float, float] | None = None
    length_floor: float = 0.0
    tolerance_se: float = 0.0


def run_gate(model: nn.Module, tokenizer: Any, rm: RewardModel | None, spec: GateSpec) -> dict[str, Any]:
    """Compare the candidate adapter with the active one (None: the base); returns the checks and reasons.

    Scores are clipped to `spec.score_range`, the judge's range on the answers it was trained on: beyond it, it
    extrapolates, and that is where a policy games it. Without a judge (`rm` None, a run that learnt from
    completions alone) its check is skipped and says why.
    """
    texts = [t for t in spec.prompt_texts for _ in range(spec.samples)]
    ids = [p for p in spec.prompt_ids for _ in range(spec.samples)]
    kw = dict(
        max_new_tokens=spec.max_new_tokens,
        temperature=spec.temperature,
        stop_ids=spec.stop_ids,
        seed=spec.seed,
    )
    with use_adapter(model, spec.candidate):
        cand_texts, cand_batches = sample_texts(model, tokenizer, ids, **kw)
        kl_base = kl_to(model, cand_batches)
        kl = kl_to(model, cand_batches, spec.active) if spec.active else kl_base
        cand_general = general_loss(model, tokenizer, spec.general, spec.general_max_tokens)
    active_texts = [""] * len(ids)  # sampled only for the judge to score
    if rm is not None:
        with use_adapter(model, spec.active):
            active_texts, _ = sample_texts(model, tokenizer, ids, **kw)
    with use_adapter(model, None):
        base_general = general_loss(model, tokenizer, spec.general, spec.general_max_tokens)
    lo, hi = spec.score_range if spec.score_range is not None else (-float("inf"), float("inf"))
    if rm is not None:
        cand_scores = score(rm, texts, cand_texts).clamp(lo, hi)
        active_scores = score(rm, texts, active_texts).clamp(lo, hi)
        cand_score, active_score = float(cand_scores.mean()), float(active_scores.mean())
        passes, se = not_worse(cand_scores, active_scores, len(spec.prompt_texts), spec.tolerance_se)
    else:
        cand_score = active_score = se = float("nan")
        passes = True
    cand_length = (
        float(torch.cat([b[3].sum(1) for b in cand_batches]).float().median()) if cand_batches else 0.0
    )
    increase = (cand_general - base_general) / base_general if base_general > 0 else 0.0
    against = f"the active adapter v{spec.active_version}" if spec.active else "the base model"
    ratings = ratings_check(model, tokenizer, spec, against)
    completions = completions_check(model, tokenizer, spec, against)
    suggestions = suggestions_check(model, tokenizer, spec, against)
    tol = spec.tolerance_se
    checks = {
        "reward_not_worse": passes,
        "ratings_not_worse": ratings["passed"],
        "completions_not_worse": completions["passed"],
        "suggestions_not_worse": suggestions["passed"],
        "kl_within_bound": kl <= spec.max_kl,
        "general_loss_ok": increase <= spec.max_general_loss_increase,
        "length_ok": cand_length >= spec.length_floor,
    }
    lines = {
        "reward_not_worse": f"judge's score on {len(spec.prompt_texts)} held-out prompts: {cand_score:.3f} against "
        f"{active_score:.3f} for {against} (it may be up to {tol:g} × its standard error {se:.3f} lower)"
        if rm is not None
        else f"judge's score: not checked ({spec.no_judge or 'this run has no judge'})",
        "ratings_not_worse": ratings["line"],
        "completions_not_worse": completions["line"],
        "suggestions_not_worse": suggestions["line"],
        "kl_within_bound": f"KL to {against}: {kl:.1f} nats per answer (at most {spec.max_kl:g})",
        "general_loss_ok": f"loss on general code: {100 * increase:+.1f}% against the base "
        f"({base_general:.4f} → {cand_general:.4f}; at most +{100 * spec.max_general_loss_increase:g}%)",
        "length_ok": f"median answer: {cand_length:.0f} tokens (at least {spec.length_floor:.0f}, half the "
        "short end of the answers you liked)",
    }
    summary = [f"{'passed' if checks[k] else 'FAILED'}: {line}" for k, line in lines.items()]
    reasons = []
    if not checks["reward_not_worse"]:
        reasons.append(
            f"the judge scores the candidate lower than {against}: {cand_score:.4f} vs {active_score:.4f} "
            f"on held-out prompts, more than {tol:g} standard errors ({se:.4f} each)"
        )
    if not checks["ratings_not_worse"]:
        reasons.append(ratings["reason"])
    if not checks["completions_not_worse"]:
        reasons.append(completions["reason"])
    if not checks["suggestions_not_worse"]:
        reasons.append(suggestions["reason"])
    if not checks["kl_within_bound"]:
        reasons.append(
            f"KL to {against} is {kl:.3f} nats per response, over training.max_kl = {spec.max_kl:g}"
        )
    if not checks["general_loss_ok"]:
        reasons.append(
            f"loss on general held-out code rose {100 * increase:.1f}% over the base "
            f"({base_general:.4f} → {cand_general:.4f}), over training.max_general_loss_increase = "
            f"{100 * spec.max_general_loss_increase:g}%"
        )
    if not checks["length_ok"]:
        reasons.append(
            f"the candidate's answers are shorter than nearly all you liked: median {cand_length:.0f} tokens on "
            f"held-out prompts, under {spec.length_floor:.0f} (half the training.length_floor_quantile of the "
            "liked answers' lengths); PPO is gaming the reward model with ever shorter answers"
        )
    return {
        "passed": all(checks.values()),
        "checks": checks,
        "summary": summary,
        "reasons": reasons,
        "n_prompts": len(spec.prompt_texts),
        "samples_per_prompt": spec.samples,
        "candidate_score": cand_score,
        "active_score": active_score,
        "score_difference_se": se,
        "tolerance_se": tol,
        "compared_with": spec.active_version,
        "ratings": {k: v for k, v in ratings.items() if k not in ("line", "reason")},
        "completions": {k: v for k, v in completions.items() if k not in ("line", "reason")},
        "suggestions": {k: v for k, v in suggestions.items() if k not in ("line", "reason")},
        "kl_to_active": kl,
        "kl_to_base": kl_base,
        "max_kl": spec.max_kl,
        "general_loss_base": base_general,
        "general_loss_candidate": cand_general,
        "general_loss_increase": increase,
        "max_general_loss_increase": spec.max_general_loss_increase,
        "score_range": list(spec.score_range) if spec.score_range is not None else None,
        "candidate_median_tokens": cand_length,
        "length_floor_tokens": spec.length_floor,
        "example": {
            "prompt": spec.prompt_texts[0][-200:],
            "candidate": cand_texts[0][:200],
            "active": active_texts[0][:200],
        }
        if spec.prompt_texts
        else {},
    }


def ratings_check(model: nn.Module, tokenizer: Any, spec: GateSpec, against: str) -> dict[str, Any]:
    """Check 2 on the held-out rated answers; skipped, and says why, without both liked and disliked ones."""
    stop_id = spec.stop_ids[0] if spec.stop_ids else None
    kw = dict(
        max_prompt_tokens=spec.max_prompt_tokens, max_response_tokens=spec.max_new_tokens, stop_id=stop_id
    )
    cand, liked = rated_logps(model, tokenizer, spec.rated, spec.candidate, **kw)
    n_liked, n_disliked = int(liked.sum()), int((~liked).sum())
    if n_liked == 0 or n_disliked == 0:
        return {
            "passed": True,
            "skipped": True,
            "n_liked": n_liked,
            "n_disliked": n_disliked,
            "line": f"your held-out ratings: not checked ({n_liked} liked and {n_disliked} disliked answers "
            "held out; the check needs both)",
            "reason": "",
        }
    active, _ = rated_logps(model, tokenizer, spec.rated, spec.active, **kw)
    margin, se = ratings_margin(cand, active, liked)
    passed = margin >= -spec.tolerance_se * se
    return {
        "passed": passed,
        "skipped": False,
        "n_liked": n_liked,
        "n_disliked": n_disliked,
        "margin": margin,
        "margin_se": se,
        "line": f"your {n_liked + n_disliked} held-out ratings: the candidate prefers the answers you liked over "
        f"those you disliked by {margin:+.2f} nats more than {against} does (it may be up to "
        f"{spec.tolerance_se:g} × its standard error {se:.2f} lower)",
        "reason": f"on {n_liked + n_disliked} held-out answers you rated, the candidate moved towards the ones you "
        f"disliked: the liked-over-disliked log-likelihood margin fell {-margin:.2f} nats against {against}, "
        f"more than {spec.tolerance_se:g} standard errors ({se:.2f})",
    }


def _too_few_events(check: str, n: int) -> dict[str, Any]:
    """A completions check skipped for too few held-out events, saying so."""
    return {
        "passed": True,
        "skipped": True,
        "n_events": n,
        "line": f"{check}: not checked ({n} held-out events where you took a suggestion or wrote your own; the "
        f"check needs {MIN_COMPLETION_EVENTS})",
        "reason": "",
    }


def completions_check(model: nn.Module, tokenizer: Any, spec: GateSpec, against: str) -> dict[str, Any]:
    """Check 2b on the held-out completion events; skipped, and says so, with too few of them."""
    n = len(spec.completions)
    if n < MIN_COMPLETION_EVENTS:
        return _too_few_events("your held-out completions", n)
    kw = dict(
        max_prompt_tokens=spec.max_prompt_tokens,
        max_response_tokens=spec.max_new_tokens,
        stop_id=spec.stop_ids[0] if spec.stop_ids else None,
    )
    cand = wanted_logps(model, tokenizer, spec.completions, spec.candidate, **kw)
    active = wanted_logps(model, tokenizer, spec.completions, spec.active, **kw)
    margin, se = completions_margin(cand, active)
    passed = margin >= -spec.tolerance_se * se
    return {
        "passed": passed,
        "skipped": False,
        "n_events": len(cand),
        "margin": margin,
        "margin_se": se,
        "line": f"your {len(cand)} held-out completions: what you wrote or took at the cursor is {margin:+.2f} nats "
        f"more likely under the candidate than under {against} (it may be up to {spec.tolerance_se:g} × its "
        f"standard error {se:.2f} lower)",
        "reason": f"on {len(cand)} held-out completions, the candidate makes what you wrote or took at the cursor "
        f"less likely than {against} does: {margin:.2f} nats per completion, more than {spec.tolerance_se:g} "
        f"standard errors ({se:.2f})",
    }


def suggestions_check(model: nn.Module, tokenizer: Any, spec: GateSpec, against: str) -> dict[str, Any]:
    """Check 2c at the held-out cursors; skipped, and says so, with too few of them."""
    n = len(spec.cursors)
    if n < MIN_COMPLETION_EVENTS:
        return _too_few_events("suggestions at your held-out cursors", n)
    kw = dict(
        max_prompt_tokens=spec.max_prompt_tokens,
        max_new_tokens=spec.suggest_max_tokens,
        temperature=spec.suggest_temperature,
        stop_ids=spec.stop_ids,
        stop_texts=spec.suggest_stop_texts,
        seed=spec.seed,
    )
    cand = suggest(model, tokenizer, spec.cursors, spec.candidate, **kw)
    active = suggest(model, tokenizer, spec.cursors, spec.active, **kw)

    def taken(texts: list[str]) -> torch.Tensor:
        return torch.tensor([taken_whole(t, c.written) for t, c in zip(texts, spec.cursors, strict=True)])

    cand_taken, active_taken = taken(cand), taken(active)
    margin, se = completions_margin(cand_taken, active_taken)
    passed = margin >= -spec.tolerance_se * se
    c, a = int(cand_taken.sum()), int(active_taken.sum())
    return {
        "passed": passed,
        "skipped": False,
        "n_events": n,
        "candidate_taken": c,
        "active_taken": a,
        "margin": margin,
        "margin_se": se,
        "changed": sum(x != y for x, y in zip(cand, active, strict=True)),
        "line": f"suggestions at your {n} held-out cursors: you would have taken {c} of the candidate's whole and "
        f"{a} of {against}'s (the share may be up to {spec.tolerance_se:g} × its standard error "
        f"{100 * se:.1f} points lower)",
        "reason": f"at {n} held-out cursors the candidate suggests what you would take whole less often than "
        f"{against}: {c} against {a} ({100 * margin:+.1f} points), more than {spec.tolerance_se:g} standard "
        f"errors ({100 * se:.1f} points)",
    }


def length_floor(lengths: Sequence[int], quantile: float) -> float:
    """Half the `quantile` of the liked answers' lengths in tokens (0 when there are none or quantile is 0).

    The commonest reward hack is an answer that shrinks towards nothing (an empty code block), which a judge
    trained on real answers scores out of its depth. A user who likes short answers makes the policy shorter
    too, legitimately, so the floor sits at half of what the user's short liked answers are.
    """
    if not lengths or quantile <= 0:
        return 0.0
    return 0.5 * float(torch.tensor(sorted(lengths), dtype=torch.float32).quantile(quantile))


def under_floor_scores(
    scores: torch.Tensor, lengths: torch.Tensor, floor: float, score_range: tuple[float, float]
) -> torch.Tensor:
    """PPO's reward: `scores`, except that an answer under the length `floor` scores below the judge's lowest,
    in proportion to how far under it is (a full range below at length 0).

    Scoring it only as low as the worst real answer was not enough where the user dislikes most answers
    (commented, seed 1, in the learning benchmark): the judge scored those near its floor too, the summed
    per-token KL penalty is smaller for a shorter answer, and PPO went from 58 to 8 tokens in one run. Graded,
    PPO still sees which answer is longer when every sample is short (after a warm start that shortened them).
    """
    lo, bottom = score_range[0], score_at_length_zero(score_range)
    lengths = lengths.to(scores.dtype)
    return torch.where(lengths < floor, lo - (lo - bottom) * (1 - lengths / max(floor, 1e-6)), scores)


def score_at_length_zero(score_range: tuple[float, float]) -> float:
    """What an empty answer scores in PPO: a full range of the judge's scores below its lowest."""
    lo, hi = score_range
    return lo - max(hi - lo, 1e-3)
