"""The reward model: a scalar judge r(x, y) of a prompt and a response, trained on the user's ratings.

Default (`reward_model.name = "policy"`): the policy's own frozen base with a separate LoRA adapter, named
"reward", and a linear score head on the mean hidden state of the response. One copy of the base serves policy,
reference, value and reward, and the judge reads code with the policy's tokenizer. Any other name loads that
`AutoModelForSequenceClassification` (hub id or folder) and trains a LoRA on it.

Loss: weighted squared error to the rating in [-1, 1], plus a Bradley–Terry term −log σ(r_w − r_l) for pairs of
differently rated responses to the same prompt, and for completions (data.judge_pairs): what the user wrote at
the cursor over the suggestion they turned down. Every rating counts, whichever adapter or model wrote the
answer: the judge scores text, not the policy that wrote it.

It is saved in `$REINF_HOME/reward_model/` with the rating watermark it was trained at, and retrained only
when `reward_model.min_new_ratings` newer ratings have arrived (or the base model changed).
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reinf.fim import encode_prompt
from reinf.paths import atomic_dir

from .data import Example
from .lm import causal_lm, hidden_states, pad_left, use_adapter

log = logging.getLogger("reinf.training.reward")

ADAPTER = "reward"
POLICY_KIND = "policy"


class PolicyRewardModel:
    """LoRA adapter "reward" on the shared base, plus a score head on the mean state of the response."""

    kind = POLICY_KIND

    def __init__(
        self, model: nn.Module, tokenizer: Any, max_length: int, head: nn.Linear | None = None
    ) -> None:
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length
        device = next(model.parameters()).device
        if head is None:
            head = nn.Linear(causal_lm(model).config.hidden_size, 1)
            nn.init.normal_(head.weight, std=head.in_features**-0.5)
            nn.init.zeros_(head.bias)
        self.head = head.to(device=device, dtype=torch.float32)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def _encode(self, prompts: Sequence[str], responses: Sequence[str]):
        seqs, lengths = [], []
        for p, r in zip(prompts, responses, strict=True):
            r_ids = self.tokenizer(r, add_special_tokens=False)["input_ids"][: self.max_length - 1]
            p_ids = encode_prompt(self.tokenizer, p, keep_last=self.max_length - len(r_ids))
            seqs.append(p_ids + r_ids)  # the prompt's end matters most
            lengths.append(len(r_ids))
        ids, mask = pad_left(seqs, self.pad_id, self.head.weight.device)
        cols = torch.arange(ids.shape[1], device=ids.device)
        response = (cols[None, :] >= ids.shape[1] - torch.tensor(lengths, device=ids.device)[:, None]).float()
        return ids, mask, response

    def features(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """The mean last-layer state over the response's tokens. Each of those states has read the prompt,
        and their mean carries what the response contains; the last token's state alone judged worse on
        held-out ratings (it is dominated by where the text happens to stop)."""
        ids, mask, response = self._encode(prompts, responses)
        h = hidden_states(self.model, ids, mask).float()
        return (h * response[..., None]).sum(1) / response.sum(1, keepdim=True).clamp(min=1)

    def forward(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        return self.head(self.features(prompts, responses)).squeeze(-1)

    @torch.no_grad()
    def fit_head(self, examples: Sequence[Example], ridge: float = 1.0, batch_size: int = 8) -> None:
        """Start the head as a ridge regression on the frozen features: with a few dozen ratings a linear
        probe generalises far better than a randomly started head trained by SGD."""
        x = torch.cat(
            [
                self.features(
                    [e.prompt for e in examples[i : i + batch_size]],
                    [e.response for e in examples[i : i + batch_size]],
                )
                for i in range(0, len(examples), batch_size)
            ]
        )
        y = torch.tensor([e.target for e in examples], device=x.device)
        w = torch.tensor([e.weight for e in examples], device=x.device)
        mu, y_mu = (w[:, None] * x).sum(0) / w.sum(), (w * y).sum() / w.sum()
        xc = x - mu
        scale = ridge * w.sum() * xc.var(0).mean().clamp(min=1e-8)
        a = xc.T @ (w[:, None] * xc) + scale * torch.eye(x.shape[1], device=x.device)
        coef = torch.linalg.solve(a, xc.T @ (w * (y - y_mu)))
        self.head.weight.copy_(coef[None])
        self.head.bias.fill_(float(y_mu - mu @ coef))

    @contextmanager
    def active(self) -> Iterator[None]:
        """The reward adapter switched on (and trainable) for the block."""
        with use_adapter(self.model, ADAPTER):
            yield

    def close(self) -> None:
        """Take the reward adapter off the shared base, so that another judge can be made on it."""
        self.model.delete_adapter(ADAPTER)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.model.named_parameters() if f".{ADAPTER}." in n] + list(
            self.head.parameters()
        )

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        self.model.save_pretrained(str(folder), selected_adapters=[ADAPTER])  # → folder/reward/
        save_file(
            {k: v.detach().cpu() for k, v in self.head.state_dict().items()},
            str(folder / "score_head.safetensors"),
        )

    @classmethod
    def create(cls, model: nn.Module, tokenizer: Any, lora_r: int, max_length: int, target_modules: Any):
        from peft import LoraConfig

        model.add_adapter(
            ADAPTER,
            LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0, target_modules=target_modules),
        )
        return cls(model, tokenizer, max_length)

    @classmethod
    def load(cls, folder: Path, model: nn.Module, tokenizer: Any, max_length: int):
        from safetensors.torch import load_file

        model.load_adapter(str(folder / ADAPTER), adapter_name=ADAPTER, is_trainable=False)
        state = load_file(str(folder / "score_head.safetensors"))
        head = nn.Linear(state["weight"].shape[1], 1)
        head.load_state_dict(state)
        return cls(model, tokenizer, max_length, head)


class ClassifierRewardModel:
    """Any `AutoModelForSequenceClassification` (one label) with a LoRA adapter, on its own tokenizer."""

    kind = "classifier"

    def __init__(self, model: nn.Module, tokenizer: Any, max_length: int) -> None:
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length

    def forward(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        enc = self.tokenizer(
            list(prompts),
            list(responses),
            truncation=True,
            max_length=self.max_length,
            padding=True,
            return_tensors="pt",
        ).to(next(self.model.parameters()).device)
        return self.model(**enc).logits[:, 0].float()

    def close(self) -> None:
        """Nothing shared to release: the classifier is its own model."""

    def active(self):  # nothing to switch: the classifier has one adapter
        return nullcontext()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def save(self, folder: Path) -> None:
        self.model.save_pretrained(str(folder / ADAPTER))
        self.tokenizer.save_pretrained(str(folder / ADAPTER))

    @staticmethod
    def _base(name: str, device: torch.device, trust_remote_code: bool):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
        model = AutoModelForSequenceClassification.from_pretrained(
            name, num_labels=1, trust_remote_code=trust_remote_code
        )
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model.config.pad_token_id = tok.pad_token_id
        return model.to(device), tok

    @classmethod
    def create(
        cls, name: str, device: torch.device, lora_r: int, max_length: int, trust_remote_code: bool = False
    ):
        from peft import LoraConfig, get_peft_model

        base, tok = cls._base(name, device, trust_remote_code)
        cfg = LoraConfig(task_type="SEQ_CLS", r=lora_r, lora_alpha=2 * lora_r, target_modules="all-linear")
        return cls(get_peft_model(base, cfg), tok, max_length)

    @classmethod
    def load(
        cls, folder: Path, name: str, device: torch.device, max_length: int, trust_remote_code: bool = False
    ):
        from peft import PeftModel

        base, tok = cls._base(name, device, trust_remote_code)
        return cls(
            PeftModel.from_pretrained(base, str(folder / ADAPTER), is_trainable=False), tok, max_length
        )


RewardModel = PolicyRewardModel | ClassifierRewardModel


@torch.no_grad()
def score(
    rm: RewardModel, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 8
) -> torch.Tensor:
    """r(x, y) for each pair, on the CPU as float32."""
    out = []
    rm.model.eval()
    with rm.active():
        for i in range(0, len(prompts), batch_size):
            out.append(rm.forward(prompts[i : i + batch_size], responses[i : i + batch_size]).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


# -- training ---------------------------------------------------------------------------------------------


def preference_pairs(examples: Sequence[Example]) -> list[tuple[int, int]]:
    """(winner, loser) index pairs: differently rated explicit responses to the same prompt."""
    by_prompt: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        if e.explicit:
            by_prompt.setdefault(e.prompt, []).append(i)
    pairs = []
    for idx in by_prompt.values():
        for a in idx:
            for b in idx:
                if examples[a].target > examples[b].target:
                    pairs.append((a, b))
    return pairs


def fit(
    rm: RewardModel,
    examples: Sequence[Example],
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    on_progress: Callable[[float, str], None] | None = None,
    text_pairs: Sequence[tuple[str, str, str]] = (),
) -> dict[str, float]:
    """Train on the examples: weighted MSE to the rating, plus Bradley–Terry on same-prompt pairs and on
    `text_pairs` (prompt, preferred, rejected): what a user wrote at a completion's cursor over the suggestion."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    pairs = preference_pairs(examples)
    text_pairs = list(text_pairs)
    steps = math.ceil(len(examples) / batch_size) + math.ceil(len(pairs) / batch_size)
    total = max(1, epochs * (steps + math.ceil(len(text_pairs) / batch_size)))
    done, losses = 0, []
    with rm.active():
        if isinstance(rm, PolicyRewardModel):
            rm.fit_head(examples)
        params = rm.trainable_parameters()
        opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
        rm.model.eval()  # no dropout: the same function is trained and later used to score
        for epoch in range(epochs):
            order = list(range(len(examples)))
            rng.shuffle(order)
            for i in range(0, len(order), batch_size):
                batch = [examples[j] for j in order[i : i + batch_size]]
                pred = rm.forward([e.prompt for e in batch], [e.response for e in batch])
                target = torch.tensor([e.target for e in batch], device=pred.device)
                weight = torch.tensor([e.weight for e in batch], device=pred.device)
                loss = (weight * (pred - target) ** 2).sum() / weight.sum()
                _step(opt, params, loss)
                losses.append(loss.item())
                done += 1
            rng.shuffle(pairs)
            for i in range(0, len(pairs), batch_size):
                chunk = pairs[i : i + batch_size]
                idx = [a for a, _ in chunk] + [b for _, b in chunk]
                s = rm.forward([examples[j].prompt for j in idx], [examples[j].response for j in idx])
                loss = -nn.functional.logsigmoid(s[: len(chunk)] - s[len(chunk) :]).mean()
                _step(opt, params, loss)
                done += 1
            rng.shuffle(text_pairs)
            for i in range(0, len(text_pairs), batch_size):
                chunk = text_pairs[i : i + batch_size]
                s = rm.forward(
                    [p for p, _, _ in chunk] * 2, [w for _, w, _ in chunk] + [r for _, _, r in chunk]
                )
                loss = -nn.functional.logsigmoid(s[: len(chunk)] - s[len(chunk) :]).mean()
                _step(opt, params, loss)
                done += 1
            if on_progress is not None:
                on_progress(
                    done / total,
                    f"reward model epoch {epoch + 1}/{epochs}, loss {sum(losses[-8:]) / max(1, len(losses[-8:])):.3f}",
                )
    return {
        "train_loss": sum(losses[-8:]) / max(1, len(losses[-8:])),
        "n_pairs": len(pairs),
        "n_completion_pairs": len(text_pairs),
    }


def _step(opt: torch.optim.Optimizer, params: list[nn.Parameter], loss: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


# -- how well it predicts ---------------------------------------------------------------------------------


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; 0 when either side is constant (a constant judge has no information)."""
    n = len(x)
    if n < 2:
        return 0.0
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx <= 1e-12 or syy <= 1e-12:
        return 0.0
    return sxy / math.sqrt(sxx * syy)


def pairwise_accuracy(pred: Sequence[float], target: Sequence[float], tie: float = 1e-6) -> float:
    """Of all pairs rated differently, the fraction the judge orders the same way (a tie counts one half)."""
    right = total = 0.0
    for i in range(len(pred)):
        for j in range(len(pred)):
            if target[i] > target[j]:
                total += 1
                d = pred[i] - pred[j]
                right += 1.0 if d > tie else (0.5 if abs(d) <= tie else 0.0)
    return right / total if total else 0.5


def _scores(rm: RewardModel, examples: Sequence[Example]) -> torch.Tensor:
    return score(rm, [e.prompt for e in examples], [e.response for e in examples])


def score_range(rm: RewardModel, examples: Sequence[Example]) -> tuple[float, float]:
    """The lowest and highest score the judge gives the rated answers it was trained on."""
    s = _scores(rm, [e for e in examples if e.explicit] or list(examples))
    return (float(s.min()), float(s.max())) if len(s) else (-1.0, 1.0)


def permutation_p(x: Sequence[float], y: Sequence[float], *, rounds: int = 2000, seed: int = 0) -> float:
    """One-sided p-value that the correlation of x and y is this low by chance: the share of random pairings
    (y shuffled) whose correlation is at most the observed one. No assumption about the distributions."""
    n = len(x)
    if n < 3:
        return 1.0
    xs = torch.tensor(x, dtype=torch.float64)
    ys = torch.tensor(y, dtype=torch.float64)
    xs, ys = xs - xs.mean(), ys - ys.mean()
    norm = float(xs.norm() * ys.norm())
    if norm <= 1e-12:
        return 1.0
    observed = float(xs @ ys) / norm
    gen = torch.Generator().manual_seed(seed)
    perms = torch.argsort(torch.rand(rounds, n, generator=gen), dim=1)
    shuffled = (ys[perms] @ xs) / norm
    return (int((shuffled <= observed + 1e-12).sum()) + 1) / (rounds + 1)


def consistency(rm: RewardModel, new: Sequence[Example]) -> dict[str, Any]:
    """How the judge trained on the earlier ratings scores the new ones: their correlation, and the p-value
    that it is this negative by chance. A small p-value means the new ratings contradict the earlier ones."""
    new = [e for e in new if e.explicit]
    if len(new) < 3:
        return {"n_new": len(new), "correlation": 0.0, "p_contradiction": 1.0}
    pred, target = _scores(rm, new).tolist(), [e.target for e in new]
    return {
        "n_new": len(new),
        "correlation": pearson(pred, target),
        "p_contradiction": permutation_p(pred, target),
    }


def evaluate(rm: RewardModel, heldout: Sequence[Example]) -> dict[str, Any]:
    """Held-out correlation and pairwise accuracy of the judge's scores with the user's ratings."""
    if not heldout:
        return {"n_heldout": 0, "correlation": 0.0, "pairwise_accuracy": 0.5}
    pred, target = _scores(rm, heldout).tolist(), [e.target for e in heldout]
    return {
        "n_heldout": len(heldout),
        "correlation": pearson(pred, target),
        "pairwise_accuracy": pairwise_accuracy(pred, target),
    }


# -- persistence: trained lazily --------------------------------------------------------------------------


def _meta_matches(meta: dict[str, Any], want: dict[str, Any]) -> bool:
    return all(meta.get(k) == v for k, v in want.items())


MIN_TESTABLE = 8  # held-out ratings below which "better than chance" is not decided: the test is skipped
MIN_CONTRADICTION = 12  # new ratings below which they are never called a contradiction


def judge_check(metrics: dict[str, Any], min_correlation: float) -> dict[str, Any]:
    """Whether a judge predicts the held-out ratings better than chance: `{tested, passed, note}`.

    On fewer than MIN_TESTABLE held-out ratings a correlation means little (four numbers decide nothing), so
    the test is skipped and says so; the gate's check of the held-out ratings themselves still applies."""
    n, corr, acc = metrics["n_heldout"], metrics["correlation"], metrics["pairwise_accuracy"]
    if n < MIN_TESTABLE:
        return {
            "tested": False,
            "passed": True,
            "note": f"not tested against chance: {n} held-out ratings, {MIN_TESTABLE} needed",
        }
    passed = corr > min_correlation and acc > 0.5
    verdict = "better than chance" if passed else "no better than chance"
    return {
        "tested": True,
        "passed": passed,
        "note": f"{verdict} on {n} held-out ratings (correlation {corr:.3f}, pairwise accuracy {acc:.3f})",
    }


def load_or_train(
    *,
    folder: Path,
    identity: dict[str, Any],
    min_new_ratings: int,
    train: Sequence[Example],
    heldout: Sequence[Example],
    make: Callable[[], RewardModel],
    load: Callable[[Path], RewardModel],
    fit_kwargs: dict[str, Any],
    on_progress: Callable[[float, str], None] | None = None,
    contradiction_p: float = 0.0,
    min_correlation: float = 0.0,
    fresh: bool = False,
) -> tuple[RewardModel, dict[str, Any]]:
    """Reuse the saved reward model while fewer than `min_new_ratings` ratings are newer than it; else retrain.

    `identity` (kind, model name, base, size) must match the saved one. Returns the model and its metrics,
    measured on held-out ratings it never trained on, with `metrics["check"]` (`judge_check`). Only a judge that
    passed its check is saved, so a judge no better than chance never scores a later run nor judges later
    ratings; a saved judge that fails on today's held-out ratings is retrained. Before retraining, the saved
    judge scores the new ratings (`metrics["consistency"]`); when at least MIN_CONTRADICTION of them contradict
    it with a p-value under `contradiction_p`, nothing is retrained or saved, and `metrics["contradicted"]` is
    true: the caller must not train the policy on them. `fresh` ignores the saved judge: a new one is trained,
    and replaces it only if it passes.
    """
    watermark = max((e.rating_id for e in [*train, *heldout]), default=0)
    meta: dict[str, Any] = {}
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        pass
    newer = [e for e in [*train, *heldout] if e.explicit and e.rating_id > int(meta.get("watermark", -1))]
    new = len(newer)
    same_kind = bool(meta) and _meta_matches(meta.get("identity", {}), identity) and not fresh
    reuse_note = "a fresh judge was asked for" if fresh else None
    if same_kind and new < min_new_ratings:
        try:
            rm = load(folder)
            trained = set(meta.get("trained_ids", []))
            still_heldout = [e for e in heldout if e.interaction_id not in trained]
            metrics = {**evaluate(rm, still_heldout), "retrained": False, "watermark": meta["watermark"]}
            metrics["check"] = judge_check(metrics, min_correlation)
            if metrics["check"]["passed"]:
                metrics["reason"] = f"{new} new ratings since it was trained (retrains at {min_new_ratings})"
                return rm, {**meta.get("fit", {}), **metrics}
            rm.close()
            reuse_note = f"the saved reward model is {metrics['check']['note']}; retrained"
        except Exception as exc:  # noqa: BLE001 - a broken saved judge is retrained, not fatal
            reuse_note = f"the saved reward model could not be loaded ({exc}); retrained"
            log.warning(reuse_note)
    check = None
    if same_kind and contradiction_p > 0 and reuse_note is None:
        check = _check_consistency(load, folder, newer, contradiction_p)
        if check is not None and check["contradicted"]:
            old = check.pop("rm")
            return old, {
                "retrained": False,
                "watermark": meta["watermark"],
                "consistency": check,
                "contradicted": True,
            }
        if check is not None:
            check["rm"].close()
    rm = make()
    fit_metrics = fit(rm, train, on_progress=on_progress, **fit_kwargs)
    metrics = {**fit_metrics, **evaluate(rm, heldout), "retrained": True, "watermark": watermark}
    metrics["check"] = judge_check(metrics, min_correlation)
    if check is not None:
        check.pop("rm", None)
        metrics.update(consistency=check, contradicted=False)
    metrics["reason"] = reuse_note or (
        "no saved reward model for this base"
        if not meta
        else f"{new} new ratings since the last reward model"
    )
    if metrics["check"]["passed"]:
        new_meta = {
            "identity": identity,
            "watermark": watermark,
            "trained_ids": [e.interaction_id for e in train],
            "fit": fit_metrics,
        }
        _save_atomically(rm, folder, new_meta)
    return rm, metrics


def _check_consistency(
    load: Callable[[Path], RewardModel], folder: Path, new: Sequence[Example], max_p: float
) -> dict[str, Any] | None:
    """The saved judge's verdict on the ratings newer than it (None if it cannot be loaded)."""
    try:
        old = load(folder)
    except Exception as exc:  # noqa: BLE001 - no earlier judge to compare with; the new one is trained as usual
        log.warning("the saved reward model could not be loaded to check the new ratings (%s)", exc)
        return None
    check = consistency(old, new)
    check["contradicted"] = (
        check["n_new"] >= MIN_CONTRADICTION and check["correlation"] < 0 and check["p_contradiction"] < max_p
    )
    check["max_p"] = max_p
    check["rm"] = old
    return check


def _save_atomically(rm: RewardModel, folder: Path, meta: dict[str, Any]) -> None:
    """Write into a temporary folder, then swap it in, so a kill never leaves a half-written judge."""
    with atomic_dir(folder) as tmp:
        rm.save(tmp)
        (tmp / "meta.json").write_text(json.dumps(meta))
