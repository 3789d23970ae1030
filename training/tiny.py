"""Build reinf's own small code model offline: a byte-level BPE tokenizer and a Llama trained on the stdlib.

    python -m reinf.training.tiny --preset test --out /tmp/reinf-tiny-test          # seconds, for tests
    nice python -m reinf.training.tiny --preset default --out models/reinf-tiny --minutes 20

Training mixes plain windows of source, fill-in-the-middle examples (PSM order, as Qwen2.5-Coder and
StarCoder use) and ChatML "write this function" turns, so one small model can serve completion and chat.
Files are split by path hash: 1 in 20 held out for the loss reported in `build_info.json`, 1 in 20 for
validation (`--eval-every`, `--keep-best`), the rest for training.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from reinf.paths import atomic_dir

from .tokenizer_build import (
    EOT,
    FIM_MIDDLE,
    FIM_PAD,
    FIM_PREFIX,
    FIM_SUFFIX,
    IM_END,
    chat_pairs,
    split_of,
    stdlib_sources,
    train_tokenizer,
)


@dataclass(frozen=True)
class Preset:
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    seq_len: int
    batch_size: int
    lr: float
    warmup_steps: int
    steps: int | None  # fixed step count; None means "as many as --minutes allows"
    minutes: float
    corpus_every: int  # keep 1 stdlib file in `every` (hash-chosen), to keep the test preset fast
    corpus_max_chars: int | None
    eval_batches: int
    fim_rate: float = 0.5
    chat_rate: float = 0.15


PRESETS = {
    # Builds in seconds on 2 CPU cores; the test suite uses it.
    "test": Preset(
        vocab_size=1024,
        d_model=64,
        n_layers=2,
        n_heads=4,
        d_ff=172,
        seq_len=128,
        batch_size=16,
        lr=3e-3,
        warmup_steps=20,
        steps=120,
        minutes=1.0,
        corpus_every=8,
        corpus_max_chars=1_500_000,
        eval_batches=4,
    ),
    # What the daemon serves by default (DESIGN.md: 8k vocab, 4 layers, d=256, about 5.3M parameters).
    "default": Preset(
        vocab_size=8192,
        d_model=256,
        n_layers=4,
        n_heads=4,
        d_ff=688,
        seq_len=512,
        batch_size=8,
        lr=1.5e-3,
        warmup_steps=100,
        steps=None,
        minutes=10.0,
        corpus_every=1,
        corpus_max_chars=None,
        eval_batches=16,
    ),
}


class Corpus:
    """Token ids of the files and chat turns, and a sampler that packs them into training rows."""

    def __init__(self, files: list[np.ndarray], chats: list[np.ndarray], ids: dict[str, int], preset: Preset):
        self.files = [f for f in files if len(f) >= 8]
        self.chats = chats
        self.ids = ids
        self.p = preset
        self.weights = np.cumsum([len(f) for f in self.files]).tolist()
        self.n_tokens = int(sum(len(f) for f in self.files) + sum(len(c) for c in chats))

    def _file_example(self, rng: random.Random, fim: bool) -> list[int]:
        doc = rng.choices(self.files, cum_weights=self.weights)[0]
        n = min(len(doc), self.p.seq_len - 4)
        start = rng.randrange(len(doc) - n + 1)
        win = doc[start : start + n].tolist()
        if not fim:
            return win + [self.ids[EOT]] if start + n == len(doc) else win
        # Middles are short more often than long (log-uniform length), like the spans an editor asks for.
        m = min(n - 1, int(math.exp(rng.uniform(0.0, math.log(max(2, n // 2))))))
        i = rng.randrange(n - m + 1)
        pre, mid, suf = win[:i], win[i : i + m], win[i + m :]
        ids = self.ids
        return [ids[FIM_PREFIX], *pre, ids[FIM_SUFFIX], *suf, ids[FIM_MIDDLE], *mid, ids[EOT]]

    def row(self, rng: random.Random, fim_rate: float, chat_rate: float) -> list[int]:
        out: list[int] = []
        while len(out) < self.p.seq_len + 1:
            if self.chats and rng.random() < chat_rate:
                out += rng.choice(self.chats).tolist()
            else:
                out += self._file_example(rng, fim=rng.random() < fim_rate)
        return out[: self.p.seq_len + 1]

    def batch(self, rng: random.Random, fim_rate: float | None = None, chat_rate: float | None = None):
        fim = self.p.fim_rate if fim_rate is None else fim_rate
        chat = self.p.chat_rate if chat_rate is None else chat_rate
        rows = torch.tensor([self.row(rng, fim, chat) for _ in range(self.p.batch_size)], dtype=torch.long)
        return rows[:, :-1], rows[:, 1:]


def build_corpus(tok: PreTrainedTokenizerFast, sources, preset: Preset) -> dict[str, Corpus]:
    """Tokenize files and chat pairs into "train", "valid" and "test" corpora (see `split_of`)."""
    enc = tok.backend_tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in (EOT, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)}
    split: dict[str, tuple[list, list]] = {name: ([], []) for name in ("train", "valid", "test")}
    texts = [s.text for s in sources]
    for src, e in zip(sources, enc.encode_batch(texts, add_special_tokens=False), strict=True):
        split[split_of(src.path)][0].append(np.asarray(e.ids, dtype=np.int32))
        for request, answer in chat_pairs(src):
            messages = [{"role": "user", "content": request}, {"role": "assistant", "content": answer}]
            text = tok.apply_chat_template(messages, tokenize=False) + EOT
            chat = enc.encode(text, add_special_tokens=False).ids[: preset.seq_len + 1]
            split[split_of(src.path)][1].append(np.asarray(chat, dtype=np.int32))
    return {name: Corpus(*parts, ids, preset) for name, parts in split.items()}


def make_model(preset: Preset, tok: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=preset.d_model,
        intermediate_size=preset.d_ff,
        num_hidden_layers=preset.n_layers,
        num_attention_heads=preset.n_heads,
        num_key_value_heads=preset.n_heads,
        max_position_embeddings=preset.seq_len,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=tok.convert_tokens_to_ids(EOT),
        eos_token_id=[tok.convert_tokens_to_ids(EOT), tok.convert_tokens_to_ids(IM_END)],
        pad_token_id=tok.convert_tokens_to_ids(FIM_PAD),
    )
    return LlamaForCausalLM(config)


def lr_at(step: int, total: int, preset: Preset) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < preset.warmup_steps:
        return preset.lr * (step + 1) / preset.warmup_steps
    frac = min(1.0, (step - preset.warmup_steps) / max(1, total - preset.warmup_steps))
    return preset.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * frac)))


def _autocast(device: str, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)


@torch.no_grad()
def evaluate(model, corpus: Corpus, n_batches: int, device: str, bf16: bool, **mix) -> float:
    """Mean next-token loss on fixed (seeded) batches of the held-out corpus."""
    model.eval()
    rng = random.Random(1234)
    losses = []
    for _ in range(n_batches):
        x, y = corpus.batch(rng, **mix)
        with _autocast(device, bf16):
            logits = model(input_ids=x.to(device)).logits
        losses.append(F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten()).item())
    model.train()
    return float(np.mean(losses))


def build(
    preset_name: str,
    out: Path,
    seed: int = 0,
    minutes: float | None = None,
    steps: int | None = None,
    device: str = "cpu",
    threads: int = 1,
    bf16: bool | None = None,
    command: str = "",
    quiet: bool = False,
    corpus: Path | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    eval_every: int = 0,
    keep_best: bool = False,
    overrides: dict | None = None,
) -> dict:
    """Train the tokenizer and model for `preset_name` and write them to `out` atomically. Returns build info."""
    t0 = time.time()
    preset = PRESETS[preset_name]
    if minutes is not None:
        preset = replace(preset, minutes=minutes, steps=None)
    if steps is not None:
        preset = replace(preset, steps=steps)
    if batch_size is not None:
        preset = replace(preset, batch_size=batch_size)
    if lr is not None:
        preset = replace(preset, lr=lr)
    preset = replace(preset, **(overrides or {}))  # any other Preset field, e.g. a smaller corpus for tests
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
    bf16 = device.startswith("cuda") if bf16 is None else bf16
    torch.set_num_threads(max(1, threads))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    console = Console(stderr=True, quiet=quiet)

    sources = stdlib_sources(max_chars=preset.corpus_max_chars, every=preset.corpus_every, root=corpus)
    tok = train_tokenizer(
        (s.text for s in sources if split_of(s.path) == "train"), preset.vocab_size, preset.seq_len
    )
    corpora = build_corpus(tok, sources, preset)
    train, valid, heldout = corpora["train"], corpora["valid"], corpora["test"]
    console.print(
        f"tokenizer: {len(tok)} tokens; corpus: {len(sources)} files, {train.n_tokens:,} training tokens, "
        f"{heldout.n_tokens:,} held out ({time.time() - t0:.1f} s)"
    )

    model = make_model(preset, tok).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=preset.lr,
        betas=(0.9, 0.95),
        fused=False,
    )
    rng = random.Random(seed)
    tokens_per_step = preset.batch_size * preset.seq_len
    # With a time budget the step count is fixed once, after a short calibration, so that the whole run
    # is a function of (seed, steps): `--steps N` reproduces it. Warm-up is longer than calibration.
    calibrate = preset.warmup_steps
    total = preset.steps if preset.steps is not None else 10**9
    budget_s = preset.minutes * 60.0
    model.train()
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn(
            "{task.completed}/{task.total} steps  loss {task.fields[loss]:.3f}  {task.fields[tps]} tok/s"
        ),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    train_t0 = time.time()
    step = 0
    loss_ema = float("nan")
    best: tuple[float, int, dict | None] = (float("inf"), 0, None)
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"reinf-tiny {preset_name}", total=preset.steps, loss=float("nan"), tps="-")
        while step < total:
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, preset)
            x, y = train.batch(rng)
            with _autocast(device, bf16):
                logits = model(input_ids=x.to(device)).logits
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            loss_ema = loss.item() if math.isnan(loss_ema) else 0.95 * loss_ema + 0.05 * loss.item()
            elapsed = time.time() - train_t0
            if preset.steps is None and step == calibrate:
                total = max(step + 1, int(budget_s / (elapsed / step)))
                progress.update(task, total=total)
            if preset.steps is None and elapsed > 2 * budget_s:
                console.print(f"stopping at step {step}: twice the {preset.minutes} min budget has passed")
                break
            progress.update(
                task, completed=step, loss=loss_ema, tps=f"{step * tokens_per_step / elapsed:,.0f}"
            )
            if eval_every and step % eval_every == 0:
                val = evaluate(model, valid, preset.eval_batches, device, bf16)
                progress.console.print(f"step {step}: train loss {loss_ema:.3f}, validation loss {val:.3f}")
                if keep_best and val < best[0]:
                    best = (val, step, {k: v.detach().clone() for k, v in model.state_dict().items()})

    train_s = time.time() - train_t0
    if keep_best and best[2] is not None:
        console.print(f"keeping step {best[1]} (validation loss {best[0]:.3f})")
        model.load_state_dict(best[2])
    heldout_loss = evaluate(model, heldout, preset.eval_batches, device, bf16)
    heldout_plain = evaluate(model, heldout, preset.eval_batches, device, bf16, fim_rate=0.0, chat_rate=0.0)
    info = {
        "preset": preset_name,
        "seed": seed,
        "command": command,
        "reproduce": _reproduce(command, step),
        "steps": step,
        "kept_step": best[1] if keep_best and best[2] is not None else step,
        "validation_loss": round(best[0], 4) if best[2] is not None else None,
        "tokens": step * tokens_per_step,
        "heldout_loss": round(heldout_loss, 4),
        "heldout_loss_plain_code": round(heldout_plain, 4),
        "train_loss_ema": round(loss_ema, 4),
        "seconds": round(time.time() - t0, 1),
        "train_seconds": round(train_s, 1),
        "parameters": n_params,
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
        "threads": threads,
        "bf16_autocast": bf16,
        "corpus": str(corpus) if corpus else "stdlib",
        "corpus_files": len(sources),
        "corpus_tokens": train.n_tokens,
        "heldout_tokens": heldout.n_tokens,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "hyperparameters": asdict(preset),
    }
    _save(model, tok, info, out)
    console.print(
        f"wrote {out}: {n_params / 1e6:.2f}M parameters, {step} steps, held-out loss {heldout_loss:.3f} "
        f"(plain code {heldout_plain:.3f}), {info['seconds']} s"
    )
    return info


def _reproduce(command: str, steps: int) -> str:
    """The command with the step count it ended up with, instead of a time budget."""
    words, out, skip = command.split(), [], False
    for w in words:
        if skip:
            skip = False
        elif w in ("--minutes", "--steps"):
            skip = True
        elif not w.startswith(("--minutes=", "--steps=")):
            out.append(w)
    return " ".join([*out, "--steps", str(steps)])


def _save(model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, info: dict, out: Path) -> None:
    """Write into a temporary sibling folder, then rename it into place, so `out` is never half-written."""
    with atomic_dir(out.resolve()) as tmp:
        model = model.to("cpu", dtype=torch.bfloat16)
        model.generation_config = GenerationConfig(
            eos_token_id=model.config.eos_token_id, pad_token_id=model.config.pad_token_id
        )
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reinf.training.tiny",
        description="Build reinf's small offline code model from the Python standard library.",
        epilog="example: nice python -m reinf.training.tiny --preset default --out models/reinf-tiny --minutes 20",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--out", type=Path, required=True, help="folder to write (replaced atomically)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, help="training time budget (default: the preset's)")
    parser.add_argument("--steps", type=int, help="exact number of steps (overrides --minutes; reproducible)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1)")
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast (default: on for CUDA, off for CPU)",
    )
    parser.add_argument("--corpus", type=Path, help="folder of .py files to train on (default: this stdlib)")
    parser.add_argument("--batch-size", type=int, help="rows per step (default: the preset's)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the preset's)")
    parser.add_argument("--eval-every", type=int, default=0, help="print held-out loss every N steps")
    parser.add_argument(
        "--keep-best",
        action="store_true",
        help="with --eval-every: keep the step with the lowest validation loss",
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    command = "python -m reinf.training.tiny " + " ".join(sys.argv[1:] if argv is None else argv)
    build(
        args.preset,
        args.out,
        seed=args.seed,
        minutes=args.minutes,
        steps=args.steps,
        device=args.device,
        threads=args.threads,
        bf16=args.bf16,
        command=command,
        quiet=args.quiet,
        corpus=args.corpus,
        batch_size=args.batch_size,
        lr=args.lr,
        eval_every=args.eval_every,
        keep_best=args.keep_best,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
