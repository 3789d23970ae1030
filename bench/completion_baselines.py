"""The completion benchmark's offline half: the simulated developer on held-out files through reinf's Engine, and
the baselines trained on the same events as reinf's runs.

- `measure`: the developer of bench/completions.py types held-out files top to bottom; each suggestion is made by
  `Engine.complete` and cut by truncate.py exactly as the daemon makes one, with the adapter under test merged.
  Greedy decoding, so every system answers every place the one way it most likely would.
- baselines, each a LoRA fitted by `train_lora` (next-token loss): SFT on the suggestions the developer accepted
  (`accepted_pairs`); a FIM fine-tune on the files typed so far, as FIM examples at every place the developer
  asked (`file_pairs`: the FIM prompt there, and the rest of the line as the middle), plain and guarded by the
  same KL to the base on general Python as reinf's runs.
All use the trainer's own pieces (the LoRA shape, `imitate.fim_finetune`, the completions' epochs and their
rate for this model's size), and write PEFT folders that `Engine.set_adapter` loads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MIN_ACCEPT = 4  # characters: a shorter suggestion is quicker typed than read
MIN_PARTIAL = 3


def ask_positions(text: str) -> list[int]:
    """Offsets where an editor asks for a completion: after a line's indentation, after `= `, `(` and `: `."""
    out, start = [], 0
    for line in text.split("\n"):
        stripped = line.lstrip()
        if stripped:
            out.append(start + len(line) - len(stripped))
            for token in ("= ", "(", ": "):
                i = line.find(token)
                while i >= 0:
                    j = start + i + len(token)
                    if j < start + len(line.rstrip()):
                        out.append(j)
                    i = line.find(token, i + 1)
        start += len(line) + 1
    return sorted(set(out))


def _ident(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def decide(suggestion: str, rest: str) -> tuple[dict[str, Any], int]:
    """What the developer does with `suggestion` when `rest` is what they would type next: the feedback event and
    how many characters of it they keep. Whole and at least MIN_ACCEPT characters: accepted; else the part that
    matches, back to a word boundary (accept-word stops at word ends), if at least MIN_PARTIAL; else dismissed."""
    k = common_prefix(suggestion, rest)
    if k == len(suggestion) and k >= MIN_ACCEPT:
        return {"event": "accepted", "accepted_chars": k}, k
    while 0 < k < len(suggestion) and _ident(suggestion[k - 1]) and _ident(suggestion[k]):
        k -= 1
    if k >= MIN_PARTIAL:
        words = len("".join(ch if _ident(ch) else " " for ch in suggestion[:k]).split())
        return {"event": "partially_accepted", "accepted_chars": k, "accepted_words": words}, k
    return {"event": "dismissed"}, 0


def type_file(
    truth: str,
    suggest: Callable[[int], tuple[str, Any] | None],
    feedback: Callable[[Any, dict[str, Any]], None] = lambda handle, event: None,
) -> dict[str, int]:
    """The developer types `truth` top to bottom, asking `suggest(offset)` for a suggestion at each place an
    editor would (it returns the text and a handle, or None) and telling `feedback(handle, event)` what they did."""
    asks = set(ask_positions(truth))
    counts = dict.fromkeys(("asked", "shown", "accepted", "partially_accepted", "dismissed"), 0)
    counts.update(accepted_chars=0, typed_by_hand=0)
    pos = 0
    while pos < len(truth):
        if pos in asks:
            counts["asked"] += 1
            got = suggest(pos)
            if got is not None:
                text, handle = got
                counts["shown"] += 1
                event, k = decide(text, truth[pos:])
                feedback(handle, event)
                counts[event["event"]] += 1
                counts["accepted_chars"] += k
                pos += k
                if k and event["event"] == "accepted":
                    continue
        nxt = min((a for a in asks if a > pos), default=len(truth))
        counts["typed_by_hand"] += nxt - pos
        pos = nxt
    return counts


def figures(counts: list[dict[str, int]]) -> dict[str, Any]:
    """Acceptance rate, accepted characters per suggestion and characters typed by hand per file."""
    total = {k: sum(c[k] for c in counts) for k in counts[0]} if counts else {}
    shown = max(1, total.get("shown", 0))
    return {
        **total,
        "acceptance_rate": round(total.get("accepted", 0) / shown, 4),
        "partial_rate": round(total.get("partially_accepted", 0) / shown, 4),
        "accepted_chars_per_suggestion": round(total.get("accepted_chars", 0) / shown, 2),
        "typed_by_hand_per_file": round(total.get("typed_by_hand", 0) / max(1, len(counts)), 1),
    }


class Suggester:
    """Suggestions as the daemon makes them (Engine.complete, cut by truncate.py), on the shipped model settings
    but greedy, with the adapter under test merged."""

    def __init__(self) -> None:
        from reinf.config import Config
        from reinf.engine import Engine

        self.cfg = Config()
        self.engine = Engine(self.cfg.model)

    def use(self, version: int, adapter: Path | None) -> None:
        self.engine.set_adapter(version if adapter is not None else 0, adapter)

    def suggest(self, prefix: str) -> str:
        from reinf.truncate import completion_scope

        scope = completion_scope(self.cfg.completions, prefix, "", "python")
        gen = self.engine.complete(
            prefix, "", max_tokens=self.cfg.model.max_new_tokens, temperature=0, stop=scope.ended
        )
        return scope.finish(gen.text, gen.finish_reason)

    def measure(self, files: dict[str, str]) -> dict[str, Any]:
        """The developer's figures on `files` with the adapter now in use; nothing is stored anywhere."""
        t0 = time.time()
        counts = []
        for truth in files.values():

            def suggest(pos: int, truth: str = truth) -> tuple[str, None] | None:
                text = self.suggest(truth[:pos])
                return (text, None) if text else None

            counts.append(type_file(truth, suggest))
        return {**figures(counts), "measure_s": round(time.time() - t0, 1)}

    def fim_prompt(self, prefix: str) -> str:
        """The FIM prompt the daemon would give the model for a cursor after `prefix` (nothing after it)."""
        budget = self.engine._budget(self.cfg.model.max_new_tokens, 0.0)[1]
        return self.engine.prompts.fim(prefix, "", budget)[0]


def read_export(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def accepted_pairs(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(FIM prompt, suggestion) of every completion the developer accepted whole."""
    return [
        (r["prompt"], r["response"])
        for r in rows
        if r.get("kind") == "completion" and any(x.get("event") == "accepted" for x in r.get("ratings") or [])
    ]


def file_pairs(
    suggester: Suggester, files: dict[str, str], typed: dict[str, int] | None = None
) -> list[tuple[str, str]]:
    """(FIM prompt, the rest of the line) at every place the developer asked in `files`; with `typed` (file →
    offset of the latest place asked at), only in those files and up to there."""
    out = []
    for name, truth in files.items():
        if typed is not None and name not in typed:
            continue
        for pos in ask_positions(truth):
            if typed is not None and pos > typed[name]:
                break
            end = truth.find("\n", pos)
            middle = truth[pos : end if end >= 0 else len(truth)]
            if middle.strip():
                out.append((suggester.fim_prompt(truth[:pos]), middle))
    return out


def train_lora(
    model_path: str, pairs: list[tuple[str, str]], out: Path, seed: int = 0, guarded: bool = False
) -> dict[str, Any]:
    """A LoRA of the trainer's shape, fitted by `imitate.fim_finetune` on `pairs` with the completions' shipped
    epochs and its rate for this model's size; written to `out` as a PEFT folder. `guarded`: with the term on
    general Python that reinf's completion DPO adds to every step (`run.completion_guard`), so that it is held
    to the same bound on general code."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reinf.config import Config
    from reinf.training import hparams, imitate
    from reinf.training.lm import stop_token_ids
    from reinf.training.run import completion_guard, target_modules

    if not pairs:
        return {"skipped": "nothing to train on", "n_examples": 0}
    cfg = Config()
    tc = cfg.training
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(model_path)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    lora = LoraConfig(r=tc.lora_r, lora_alpha=tc.lora_alpha, lora_dropout=tc.lora_dropout,
                      target_modules=target_modules(base))  # fmt: skip
    model = get_peft_model(base, lora)
    rate = hparams.learning_rates(tc, base.config.hidden_size).completions
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    general = completion_guard(cfg, model, tok) if guarded else None
    out_metrics = imitate.fim_finetune(
        model, tok, pairs, epochs=tc.completion_epochs, learning_rate=rate, batch_size=tc.minibatch_size,
        max_prompt_tokens=tc.max_prompt_tokens, max_response_tokens=tc.max_response_tokens, pad_id=pad, seed=seed,
        stop_id=(stop_token_ids(tok, base) or [None])[0], general=general,
    )  # fmt: skip
    model.save_pretrained(str(out))
    return {**out_metrics, "learning_rate": rate, "epochs": tc.completion_epochs}
