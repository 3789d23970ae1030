"""Shared by the training tests: the test-preset model, a scripted rater, and a home full of rated answers."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("REINF_CACHE", REPO / ".cache"))

VERBS = ["sorts", "reverses", "parses", "counts", "merges", "filters", "prints", "reads", "splits", "joins"]
NOUNS = ["a list", "a string", "JSON text", "the words", "two dicts", "a file", "numbers", "lines", "a path"]
QUESTIONS = [f"Write a function that {v} {n}." for v in VERBS for n in NOUNS]

# Small, fast settings for a whole run on 2 CPU cores; the tests pass them as REINF_* or config overrides.
FAST_TRAINING = {
    "training": {
        "batch_size": 8, "minibatch_size": 8, "ppo_epochs": 2, "ppo_steps": 6, "learning_rate": 3e-3,
        "max_prompt_tokens": 64, "max_response_tokens": 24, "eval_prompts": 8, "threads": 1, "nice": 0,
    },
    "reward_model": {"holdout_fraction": 0.25, "min_new_ratings": 16},
}  # fmt: skip


def tiny_model() -> Path:
    """The test-preset model: through `reinf.models` when it is there, else built here once and cached."""
    try:
        from reinf.models import resolve_model_path
    except ImportError:
        out = CACHE / "models" / "reinf-tiny-test"
        if not (out / "config.json").exists():
            subprocess.run(
                [sys.executable, "-m", "reinf.training.tiny", "--preset", "test", "--out", str(out)],
                check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
            )  # fmt: skip
        return out
    old = os.environ.get("REINF_CACHE")
    os.environ["REINF_CACHE"] = str(CACHE)
    try:
        return Path(resolve_model_path("reinf-tiny-test"))
    finally:
        if old is None:
            os.environ.pop("REINF_CACHE", None)
        else:
            os.environ["REINF_CACHE"] = old


def whitespace_stars(text: str) -> int:
    """The scripted user: likes airy answers. Stars 1..5 from the fraction of whitespace characters."""
    frac = sum(c.isspace() for c in text) / max(1, len(text))
    return 1 + min(4, int(frac * 12))


def fill_home(
    store, model_dir: Path, n: int, *, seed: int = 0, rate=whitespace_stars, same_text: bool = False
):
    """Store `n` chats answered by the model at temperature 1, each rated by `rate` (explicit stars).

    With `same_text`, every interaction has the same prompt and answer and `rate` gets a random number
    generator instead: ratings that no judge can predict.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reinf.training.lm import decode_responses, pad_left, sample, stop_token_ids

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    questions = QUESTIONS[:]
    random.Random(seed).shuffle(questions)
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in (questions * (n // len(questions) + 1))[:n]
    ]
    stops = stop_token_ids(tok, model)
    gen = torch.Generator().manual_seed(seed)
    answers: list[str] = []
    for i in range(0, n, 16):
        ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts[i : i + 16]]
        q, qm = pad_left(ids, tok.pad_token_id, "cpu")
        r, rm = sample(model, q, qm, max_new_tokens=32, temperature=1.0, stop_ids=stops, pad_id=tok.pad_token_id,
                       generator=gen)  # fmt: skip
        answers += decode_responses(tok, r, rm, stops)
    rng = random.Random(seed)
    for i, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        if same_text:
            prompt, answer = prompts[0], answers[0]
        iid = store.add_interaction(
            interaction_id=f"{seed:08x}{i:024x}",  # fixed ids, so the held-out split is the same every time
            kind="chat", client="test", model="reinf-tiny-test", adapter_version=0, prompt=prompt,
            context={}, response=answer, finish_reason="length", timings={},
        )  # fmt: skip
        store.add_rating(iid, stars=rng.randint(1, 5) if same_text else rate(answer))
    return prompts, answers
