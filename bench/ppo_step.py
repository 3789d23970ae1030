"""Time one PPO step (rollout, reward, reference, GAE, clipped updates) and its peak memory.

    python bench/ppo_step.py --quick          # CPU: the default tiny model's shape, a few small steps
    python bench/ppo_step.py --gpu --steps 3  # CUDA: a Qwen2.5-0.5B-shaped model, bf16, LoRA r=16 on q,k,v,o

Both use random weights (only the shapes matter for time and memory) and run the real `training/ppo.py`,
with the reward model as in reinf: a second LoRA adapter on the same base and a score head. Responses run to
their full length (no stop token), so every step does the same work. Needs only torch, transformers and peft;
reinf itself need not be installed. Writes bench/results/ppo_step.json.

Reference (TRL 1.12 PPOTrainer, H100, same shape and batch): 3.28 s per warm step, 16.4 GiB peak.
Measured here on an H100 (torch 2.11, transformers 5.17, peft 0.21.0), batch 16, minibatch 8, 4 epochs:
1.01 s per warm step and 3.83 GiB with compiled decoding; 2.79 s and 3.79 GiB with eager decoding. The
first step also compiles (about 10-30 s).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = {"what": "TRL 1.12 PPOTrainer on an H100", "s_per_step": 3.28, "peak_gib": 16.4}
TARGET = {"s_per_step": 1.6, "peak_gib": 6.0}


def load_trainer_modules():
    """training/ppo.py and training/lm.py, imported as reinf.training's or straight from their files."""
    try:
        from reinf.training import lm, ppo

        return lm, ppo
    except ImportError:
        spec = importlib.util.spec_from_file_location(
            "reinf_training",
            ROOT / "training" / "__init__.py",
            submodule_search_locations=[str(ROOT / "training")],
        )
        pkg = importlib.util.module_from_spec(spec)
        sys.modules["reinf_training"] = pkg
        spec.loader.exec_module(pkg)
        import reinf_training.lm as lm
        import reinf_training.ppo as ppo

        return lm, ppo


def build_model(gpu: bool):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if gpu:  # Qwen2.5-0.5B's shape
        cfg = Qwen2Config(
            vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
            num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6,
            tie_word_embeddings=True, attn_implementation="sdpa",
        )  # fmt: skip
        with torch.device("cuda"):
            model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
        return model, 16
    # reinf-tiny's default preset: 8k vocabulary, 4 layers, d=256 (training/tiny.py)
    cfg = LlamaConfig(
        vocab_size=8192, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=True,
    )  # fmt: skip
    return LlamaForCausalLM(cfg), 8


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu", action="store_true", help="CUDA, Qwen2.5-0.5B shape, bf16")
    ap.add_argument("--quick", action="store_true", help="CPU: small batch and few steps")
    ap.add_argument("--steps", type=int, default=None, help="timed steps after one warm-up step")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--minibatch", type=int, default=None, help="rollouts per update (default 8)")
    ap.add_argument("--prompt", type=int, default=None, help="prompt tokens")
    ap.add_argument("--response", type=int, default=None, help="response tokens")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compiled decoding with a static KV cache (default: on with --gpu)",
    )
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "ppo_step.json"))
    args = ap.parse_args()

    import peft
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    lm, ppo = load_trainer_modules()
    if args.gpu and not torch.cuda.is_available():
        print("--gpu asked for, but torch sees no CUDA device", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = args.quick and not args.gpu
    batch = args.batch or (16 if args.gpu else (4 if quick else 8))
    prompt_len = args.prompt or (128 if args.gpu else (32 if quick else 128))
    response_len = args.response or (64 if args.gpu else (16 if quick else 48))
    steps = args.steps or (3 if args.gpu else (2 if quick else 4))
    minibatch = args.minibatch or 8
    compile_sampling = args.gpu if args.compile is None else args.compile
    device = torch.device("cuda" if args.gpu else "cpu")

    torch.manual_seed(0)
    base, lora_r = build_model(args.gpu)
    n_params = sum(p.numel() for p in base.parameters())
    targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    model = get_peft_model(base, LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules=targets))
    # The reward model as reinf builds it: its own adapter on the same base, and a score head.
    model.add_adapter("reward", LoraConfig(r=8, lora_alpha=16, target_modules=targets))
    model.set_adapter("default")
    lm.set_trainable(model, "default")
    hidden = base.config.hidden_size
    score_head = torch.nn.Linear(hidden, 1).to(device)
    value_head = ppo.ValueHead(hidden).to(device)

    gen = torch.Generator().manual_seed(1)
    vocab = base.config.vocab_size
    prompts = [torch.randint(10, vocab, (prompt_len,), generator=gen).tolist() for _ in range(4 * batch)]

    def batches():
        i = 0
        while True:
            yield [(i + j) % len(prompts) for j in range(batch)]
            i += batch

    def reward_fn(ro) -> torch.Tensor:
        with torch.no_grad(), lm.use_adapter(model, "reward"):
            h = lm.hidden_states(model, ro.ids, ro.mask)[:, -1]
            return score_head(h.float()).squeeze(-1)

    pa = ppo.PPOArgs(
        ppo_steps=steps + 1, batch_size=batch, minibatch_size=min(minibatch, batch), ppo_epochs=args.epochs,
        learning_rate=1e-5, max_response_tokens=response_len, temperature=1.0, compile_sampling=compile_sampling,
    )  # fmt: skip
    if args.gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    marks = []

    def on_step(step: int, stats: dict) -> None:
        if args.gpu:
            torch.cuda.synchronize()
        marks.append(time.perf_counter())
        print(f"step {step}: {stats['time_s']:.3f} s (sample {stats['sample_s']:.3f}, score+ref {stats['score_s']:.3f}), "
              f"{stats['response_tokens']:.0f} response tokens, decode {stats.get('decode', 'eager')}", flush=True)  # fmt: skip

    t0 = time.perf_counter()
    history = ppo.train(
        model, value_head, prompts, batches(), reward_fn, pa, pad_id=0, stop_ids=[], on_step=on_step
    )
    warm = history[1:]
    per_step = [b - a for a, b in zip(marks[:-1], marks[1:], strict=True)]
    s_per_step = sum(per_step) / len(per_step)
    if args.gpu:
        peak = torch.cuda.max_memory_allocated() / 2**30
        peak_reserved = torch.cuda.max_memory_reserved() / 2**30
        device_name = torch.cuda.get_device_name()
    else:
        peak = peak_reserved = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB
        device_name = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"

    def mean(key: str) -> float:
        return sum(h[key] for h in warm) / len(warm)

    result = {
        "device": device_name,
        "model": "Qwen2.5-0.5B shape, bf16" if args.gpu else "reinf-tiny default shape, float32",
        "parameters": n_params,
        "lora_r": lora_r,
        "batch": batch,
        "minibatch": pa.minibatch_size,
        "prompt_tokens": prompt_len,
        "response_tokens": response_len,
        "ppo_epochs": args.epochs,
        "decode": history[-1].get("decode", "eager"),
        "warm_steps": len(warm),
        "s_per_step": s_per_step,
        "sample_s": mean("sample_s"),
        "score_and_reference_s": mean("score_s"),
        "update_s": mean("time_s") - mean("sample_s") - mean("score_s"),
        "first_step_s": marks[0] - t0,
        "peak_gib": peak,
        "peak_reserved_gib": peak_reserved,
        "peak_is": "torch.cuda.max_memory_allocated" if args.gpu else "process max RSS",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
    }
    if args.gpu:
        result["reference"] = REFERENCE
        result["target"] = TARGET
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(
        f"\n{s_per_step:.3f} s per warm PPO step, peak {peak:.2f} GiB ({result['peak_is']}) on {device_name}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
