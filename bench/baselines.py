"""Baselines of the learning benchmark, trained offline on the very ratings that the PPO loop collected.

- SFT on the liked answers (rejection-sampling fine-tuning): a LoRA adapter, the same shape as the trainer's,
  fitted by next-token loss on the answers the rater gave 4 or 5 stars.
- KTO (Ethayarajh et al. 2024) with TRL's `KTOTrainer`: liked answers desirable, the rest undesirable.

Both write a PEFT adapter folder that `reinf.engine.Engine.set_adapter` loads, so they are measured through the
same generation code as the daemon. Also here: the general held-out text and its loss, shared by learning.py.

    python bench/baselines.py RATINGS.jsonl --taste concise   # train both on an export and measure them
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.rater import LIKED, Rater  # noqa: E402

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]  # as the trainer's policy adapter
END_OF_TURN = "<|im_end|>"


@dataclass
class Rated:
    """One rated answer from the daemon's export: the exact prompt the model saw, its answer, the stars."""

    prompt: str
    response: str
    stars: int
    finished: bool  # the model stopped by itself (so the answer should end with the end-of-turn token)


def read_ratings(export_jsonl: Path) -> list[Rated]:
    """Explicitly rated interactions of a `reinf/export` JSONL file; the newest explicit rating counts."""
    out = []
    for line in Path(export_jsonl).read_text().splitlines():
        row = json.loads(line)
        explicit = [r for r in row.get("ratings") or [] if r.get("source") == "explicit" and r.get("stars")]
        if not explicit or not row.get("response"):
            continue
        newest = max(explicit, key=lambda r: r["id"])
        out.append(
            Rated(row["prompt"], row["response"], int(newest["stars"]), row["finish_reason"] == "stop")
        )
    return out


def _completion(r: Rated, tokenizer: Any) -> str:
    end = END_OF_TURN if END_OF_TURN in tokenizer.get_vocab() else (tokenizer.eos_token or "")
    return r.response + (end if r.finished else "")


def _policy(model_path: str, seed: int, lora_r: int):  # noqa: ANN202
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    lora = LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0, target_modules=LORA_TARGETS)
    return tokenizer, get_peft_model(base, lora)


def train_sft_liked(
    model_path: str,
    ratings: list[Rated],
    out: Path,
    *,
    seed: int = 0,
    epochs: int = 3,
    learning_rate: float = 1e-3,
    batch_size: int = 8,
    lora_r: int = 8,
) -> dict[str, Any]:
    """Fit a LoRA adapter by next-token loss on the liked answers only (prompt tokens are not scored)."""
    import torch

    liked = [r for r in ratings if r.stars >= LIKED]
    if not liked:
        return {"skipped": "no answer was liked, so there is nothing to imitate", "n_liked": 0}
    t0 = time.time()
    tokenizer, model = _policy(model_path, seed, lora_r)
    seqs = []
    for r in liked:
        p = tokenizer(r.prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(_completion(r, tokenizer), add_special_tokens=False)["input_ids"]
        seqs.append((p + c, [-100] * len(p) + c))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    rng = random.Random(seed)
    model.train()
    losses = []
    for _ in range(epochs):
        rng.shuffle(seqs)
        for i in range(0, len(seqs), batch_size):
            batch = seqs[i : i + batch_size]
            width = max(len(s) for s, _ in batch)
            ids = torch.tensor([s + [tokenizer.pad_token_id] * (width - len(s)) for s, _ in batch])
            labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s, _ in batch])
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(loss.item())
    model.save_pretrained(str(out))
    return {"n_liked": len(liked), "n_rated": len(ratings), "epochs": epochs, "learning_rate": learning_rate,
            "first_loss": losses[0], "last_loss": losses[-1], "train_s": round(time.time() - t0, 1)}  # fmt: skip


def train_kto(
    model_path: str,
    ratings: list[Rated],
    out: Path,
    *,
    seed: int = 0,
    epochs: int = 3,
    learning_rate: float = 5e-4,
    batch_size: int = 8,
    beta: float = 0.1,
    lora_r: int = 8,
) -> dict[str, Any]:
    """TRL's KTOTrainer on every rated answer: 4–5 stars desirable, 1–3 undesirable. The reference is the base
    (the LoRA switched off), as in the trainer's PPO."""
    import logging
    import tempfile

    try:
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import KTOConfig, KTOTrainer
    except ImportError as exc:
        return {"skipped": f"TRL is not installed ({exc}); pip install trl 'torch==<the pinned version>'"}
    import torch

    n_good = sum(r.stars >= LIKED for r in ratings)
    n_bad = len(ratings) - n_good
    if n_good == 0 or n_bad == 0:
        return {"skipped": f"KTO needs both liked and disliked answers; got {n_good} and {n_bad}"}
    t0 = time.time()
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    data = Dataset.from_list(
        [
            {"prompt": r.prompt, "completion": _completion(r, tokenizer), "label": r.stars >= LIKED}
            for r in ratings
        ]
    )
    # The KTO paper's advice for unbalanced data: weight the classes so that λ_D·n_D ≈ λ_U·n_U (within 4:3).
    desirable_weight = min(max(n_bad / n_good, 1.0), 20.0)
    logging.getLogger("trl").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        args = KTOConfig(
            output_dir=tmp, per_device_train_batch_size=batch_size, num_train_epochs=epochs,
            learning_rate=learning_rate, beta=beta, desirable_weight=desirable_weight, undesirable_weight=1.0,
            max_length=256, seed=seed, use_cpu=True, report_to=[], save_strategy="no", logging_steps=5,
            disable_tqdm=True, lr_scheduler_type="constant", warmup_steps=0, gradient_checkpointing=False,
            precompute_ref_log_probs=True,
        )  # fmt: skip
        peft = LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0, target_modules=LORA_TARGETS)
        trainer = KTOTrainer(
            model=model, args=args, train_dataset=data, processing_class=tokenizer, peft_config=peft
        )
        result = trainer.train()
        trainer.model.save_pretrained(str(out))
        logs = [h for h in trainer.state.log_history if "loss" in h]
    return {"n_desirable": n_good, "n_undesirable": n_bad, "desirable_weight": round(desirable_weight, 3),
            "epochs": epochs, "learning_rate": learning_rate, "beta": beta,
            "first_loss": logs[0]["loss"] if logs else None, "last_loss": logs[-1]["loss"] if logs else None,
            "train_loss": result.training_loss, "train_s": round(time.time() - t0, 1)}  # fmt: skip


# -- measuring an adapter ---------------------------------------------------------------------------------


def answers(model_path: str, adapter: Path | None, prompts: list[str], samples: int) -> list[list[str]]:
    """`samples` answers to every prompt from the base plus `adapter` (None: the base), at the daemon's shipped
    chat settings (model.chat_max_new_tokens, model.chat_temperature), with the chat template the daemon uses.

    Sampled in batches by the trainer's own sampler (training/lm.py, which the gate uses too), every system
    with the same generation seeds: sample k of every prompt is drawn from a generator seeded with k. The daemon
    answers one request at a time; a batch gives the same distribution about 20 times faster on a CPU.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reinf.config import ModelConfig
    from reinf.training.lm import decode_responses, pad_left, sample, stop_token_ids

    cfg = ModelConfig()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = stop_token_ids(tokenizer, model)
    chats = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]
    ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in chats]
    out, threads = [], torch.get_num_threads()
    torch.set_num_threads(1)  # as the daemon infers: on a busy 2-core machine, 2 threads ran 8x slower here
    with torch.no_grad(), _restore_threads(threads):
        for k in range(samples):
            q_ids, q_mask = pad_left(ids, pad, "cpu")
            r_ids, r_mask = sample(
                model,
                q_ids,
                q_mask,
                max_new_tokens=cfg.chat_max_new_tokens,
                temperature=cfg.chat_temperature,
                stop_ids=stops,
                pad_id=pad,
                generator=torch.Generator().manual_seed(k),
            )
            out.append(decode_responses(tokenizer, r_ids, r_mask, stops))
    return out


@contextmanager
def _restore_threads(n: int) -> Iterator[None]:
    import torch

    try:
        yield
    finally:
        torch.set_num_threads(n)


def judged(rater: Rater, prompts: list[str], texts: list[list[str]]) -> dict[str, Any]:
    """The rater's verdict on `answers(...)`: satisfaction (share rated 4 or more), its standard error over
    prompts (answers to one prompt are not independent), the per-prompt shares, and a few examples."""
    per_prompt = [[0] * len(prompts) for _ in texts]
    examples = []
    for k, row in enumerate(texts):
        for i, (prompt, text) in enumerate(zip(prompts, row, strict=True)):
            stars = rater.stars(prompt, text)
            per_prompt[k][i] = int(stars >= LIKED)
            if len(examples) < 3:
                examples.append({"prompt": prompt, "answer": text, "stars": stars})
    shares = [sum(per_prompt[k][i] for k in range(len(texts))) / len(texts) for i in range(len(prompts))]
    return {"satisfaction": sum(shares) / len(shares), "se": standard_error(shares), "per_prompt": shares,
            "n": len(prompts) * len(texts), "examples": examples}  # fmt: skip


def standard_error(values: list[float]) -> float:
    """The standard error of the mean of `values`."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def measure_adapter(model_path: str, adapter: Path | None, rater: Rater, prompts: list[str], *,
                    samples: int) -> dict[str, Any]:  # fmt: skip
    """Satisfaction of `rater` with the base model plus `adapter` (None: the base), measured as `answers`."""
    return judged(rater, prompts, answers(model_path, adapter, prompts, samples))


def general_texts(n_files: int = 8, max_chars: int = 4000) -> list[str]:
    """General held-out text: standard-library modules in the tiny builder's test split (never trained on),
    after the first few, which the trainer's gate looks at, so this measure is not the one it selected on."""
    from reinf.training.data import GENERAL_FILES, stdlib_texts

    texts = stdlib_texts("test", GENERAL_FILES, n_files, max_chars)
    if not texts:
        raise FileNotFoundError("no held-out standard-library modules (the Python sources are not installed)")
    return texts


def general_loss(model_path: str, adapter: Path | None, texts: list[str], window: int = 511) -> float:
    """Mean next-token loss (nats per token) of the base plus `adapter` over `texts`, in windows of `window`
    predicted tokens (capped by the model's context)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    window = min(window, (getattr(model.config, "max_position_embeddings", None) or window + 1) - 1)
    total, count = 0.0, 0
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            for i in range(0, len(ids) - 1, window):
                chunk = torch.tensor([ids[i : i + window + 1]])
                if chunk.shape[1] < 2:
                    continue
                loss = model(input_ids=chunk, labels=chunk).loss
                total += float(loss) * (chunk.shape[1] - 1)
                count += chunk.shape[1] - 1
    return total / max(count, 1)


def loss_change_pct(base: float, adapted: float) -> float:
    return 100.0 * (adapted - base) / base if base > 0 and math.isfinite(adapted) else float("nan")


def main() -> int:
    import argparse

    from bench.prompts import HELD_OUT
    from reinf.models import resolve_model_path

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ratings", type=Path, help="a reinf/export JSONL file")
    ap.add_argument("--taste", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="reinf-tiny")
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("baseline-adapters"))
    args = ap.parse_args()
    model_path = resolve_model_path(args.model)
    ratings = read_ratings(args.ratings)
    rater = Rater(args.taste, args.seed)
    texts = general_texts()
    base_loss = general_loss(model_path, None, texts)
    report = {}
    for name, train in (("sft_liked", train_sft_liked), ("kto", train_kto)):
        dest = args.out / name
        info = train(model_path, ratings, dest, seed=args.seed)
        if "skipped" not in info:
            info.update(measure_adapter(model_path, dest, rater, HELD_OUT, samples=args.samples))
            info["general_loss_change_pct"] = loss_change_pct(
                base_loss, general_loss(model_path, dest, texts)
            )
        report[name] = info
        print(name, json.dumps({k: v for k, v in info.items() if k not in ("examples", "per_prompt")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
