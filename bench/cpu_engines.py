"""How fast the daemon's engine is on one CPU thread against llama.cpp, in one run, as ratios.

Three engines get the same FIM request in turn, request by request, so that the machine's noise falls on all alike:
reinf's Engine in float32 and in bfloat16 (the dequantized Hugging Face folder `reinf model fetch` makes), and
llama.cpp (llama-cpp-python) on the Q4_K_M GGUF file itself. The prompt is bench/cpu_dtype.py's (about 256 tokens,
up to 32 new ones, greedy, one thread); llama.cpp is fed the very token ids reinf's own FIM prompt builder makes,
and stops on the same stop ids and stop strings, its tokens turned into text by reinf's own stream decoder.

Per engine: the prompt's evaluation (the prefill forward; for llama.cpp, up to its first token), the time per new
token after the first, and the whole generation, each the median over the counted requests (the first round warms
up and is not counted). Q4_K_M weights and their dequantized copy need not pick the same greedy tokens: the share of
identical completions is reported, not assumed.

    REINF_CACHE=... python bench/cpu_engines.py                 # -> bench/results/cpu_engines.json
    python bench/cpu_engines.py --runs 2 --out /tmp/e.json

Without llama-cpp-python the torch rows still run and the JSON says how to install it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.cpu_dtype import PREFIX, SUFFIX, cpu_flags  # noqa: E402

NOT_INSTALLED = "llama.cpp not installed: pip install llama-cpp-python"
LLAMA = "llama.cpp"


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    return next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "")


class ForwardClock:
    """When each forward of a model ends: the first of a request is the prompt's, each later one a new token's."""

    def __init__(self, model) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []
        model.register_forward_pre_hook(lambda *_: self.starts.append(time.perf_counter()))
        model.register_forward_hook(lambda *_: self.ends.append(time.perf_counter()))

    def clear(self) -> None:
        self.starts.clear()
        self.ends.clear()


def timing(t0: float, token_times: list[float], t_end: float) -> dict[str, float]:
    """Prompt evaluation, ms per token after the first, and the whole, from when each token was picked."""
    first = token_times[0] - t0 if token_times else t_end - t0
    later = len(token_times) - 1
    per = (token_times[-1] - token_times[0]) / later if later > 0 else float("nan")
    return {"prompt_ms": first * 1000.0, "ms_per_token": per * 1000.0, "total_ms": (t_end - t0) * 1000.0}


def torch_request(engine, clock: ForwardClock, tokens: int) -> tuple[str, dict[str, float], int]:
    clock.clear()
    g = engine.complete(PREFIX, SUFFIX, max_tokens=tokens, temperature=0)
    # The prefill forward starts the clock; each forward's end is a token picked; generate_ms is the whole.
    t0 = clock.starts[0]
    t = timing(t0, clock.ends, t0 + g.generate_ms / 1000.0)
    t["total_ms"] = g.generate_ms
    return g.text, t, g.n_new_tokens


def llama_request(llm, engine, ids: list[int], tokens: int) -> tuple[str, dict[str, float], int]:
    """One greedy completion on llama.cpp from reinf's prompt ids, stopped exactly as Engine._generate stops."""
    from reinf.engine import _Stream

    stops = (*engine.fim.stop, engine.tokenizer.eos_token or "")
    stop_ids = engine._eos_ids | engine._token_ids(stops)
    llm.reset()  # no KV cache reused from the request before: the prompt is evaluated whole each time
    t0 = time.perf_counter()
    stream = _Stream(engine.tokenizer, stops, ids[-1:], None)
    times: list[float] = []
    n_new = 0
    gen = llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True)
    for token in gen:
        times.append(time.perf_counter())
        if token in stop_ids:
            break
        n_new += 1
        if stream.push(int(token)) or n_new >= tokens:
            break
    gen.close()
    text = stream.finish()
    return text, timing(t0, times, time.perf_counter()), n_new


def load_llama(gguf: Path, extra_bufts: bool = False):
    """llama_cpp.Llama on `gguf` with one thread for the prompt and for each token, else the reason it is not."""
    try:
        import llama_cpp
        import llama_cpp.llama_cpp as lib
    except ImportError:
        return None, NOT_INSTALLED, None
    if not extra_bufts:
        # llama-cpp-python 0.3.36 built here (-march=native, AMX) repacks weights into an AMX buffer and then
        # segfaults in llama_decode on the first eval; without extra buffer types it runs on the plain CPU path.
        default = lib.llama_model_default_params

        def params():
            p = default()
            p.use_extra_bufts = False
            return p

        lib.llama_model_default_params = params
    llm = llama_cpp.Llama(
        model_path=str(gguf), n_threads=1, n_threads_batch=1, n_ctx=2048, verbose=False, seed=0
    )
    return llm, "", getattr(llama_cpp, "__version__", "?")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="a known model package")
    ap.add_argument("--runs", type=int, default=5, help="counted requests an engine (after one warm-up)")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "cpu_engines.json")
    ap.add_argument(
        "--llama-extra-bufts",
        action="store_true",
        help="let llama.cpp repack weights into extra buffer types (AMX); it segfaulted on this machine",
    )
    args = ap.parse_args()
    load_before = os.getloadavg()

    import torch

    from reinf.config import ModelConfig
    from reinf.engine import Engine
    from reinf.packages import installed_gguf

    torch.set_num_threads(1)
    cfg = {"name": args.model, "device": "cpu", "max_context_tokens": 2048, "seed": 0, "inference_threads": 1}
    engines = {d: Engine(ModelConfig(dtype=d, **cfg)) for d in ("float32", "bfloat16")}
    torch.set_num_threads(1)
    clocks = {d: ForwardClock(e.model) for d, e in engines.items()}
    ref = engines["float32"]
    _, budget = ref._budget(args.tokens, 0)
    prompt, ids = ref.prompts.fim(PREFIX, SUFFIX, budget)
    gguf = installed_gguf(args.model)
    llm, missing, llama_version = load_llama(gguf, args.llama_extra_bufts)
    names = [*engines, *([LLAMA] if llm is not None else [])]

    rows: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    texts: dict[str, list[str]] = {n: [] for n in names}
    for r in range(args.runs + 1):  # round 0 warms up and is not counted
        for n in names:
            if n == LLAMA:
                text, t, n_new = llama_request(llm, ref, ids, args.tokens)
            else:
                text, t, n_new = torch_request(engines[n], clocks[n], args.tokens)
            t["new_tokens"] = n_new
            if r:
                rows[n].append(t)
                texts[n].append(text)
            print(
                f"round {r} {n:9s} prompt {t['prompt_ms']:8.1f} ms  {t['ms_per_token']:7.1f} ms/token  "
                f"total {t['total_ms']:8.1f} ms  {n_new} tokens",
                flush=True,
            )

    def p50(n: str, key: str) -> float:
        return round(statistics.median(t[key] for t in rows[n]), 1)

    engines_out = {
        n: {
            "prompt_eval_ms_p50": p50(n, "prompt_ms"),
            "ms_per_token_p50": p50(n, "ms_per_token"),
            "total_ms_p50": p50(n, "total_ms"),
            "new_tokens": [t["new_tokens"] for t in rows[n]],
            "text": texts[n][-1],
        }
        for n in names
    }

    def same_share(a: str, b: str) -> float:
        return round(sum(x == y for x, y in zip(texts[a], texts[b], strict=True)) / len(texts[a]), 3)

    result: dict = {
        "model": args.model,
        "gguf": gguf.name,
        "machine": {
            "cpu": cpu_model(),
            "cpu_flags": cpu_flags(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "llama_cpp_python": llama_version,
        },
        "load_average": {
            "before": [round(x, 2) for x in load_before],
            "after": [round(x, 2) for x in os.getloadavg()],
        },
        "command": "python bench/cpu_engines.py" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:]),
        "threads": 1,
        "prompt_tokens": len(ids),
        "max_new_tokens": args.tokens,
        "runs": args.runs,
        "timing": "p50 over the counted requests; prompt_eval = the prefill forward (llama.cpp: up to its first "
        "token); ms_per_token = from the first new token to the last, per token; total = the whole generation",
        "engines": engines_out,
        "same_text": {"float32_vs_bfloat16": same_share("float32", "bfloat16")},
        "llama_cpp": missing or "installed",
        "llama_cpp_extra_buffer_types": args.llama_extra_bufts,
    }
    if llm is not None:
        best = min(("float32", "bfloat16"), key=lambda d: engines_out[d]["ms_per_token_p50"])
        result["llama_tokenizes_prompt_alike"] = (
            llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids
        )
        result["speedup_per_token"] = {
            f"llama_cpp_over_{d}": round(
                engines_out[d]["ms_per_token_p50"] / engines_out[LLAMA]["ms_per_token_p50"], 2
            )
            for d in engines
        }
        result["speedup_total"] = {
            f"llama_cpp_over_{d}": round(
                engines_out[d]["total_ms_p50"] / engines_out[LLAMA]["total_ms_p50"], 2
            )
            for d in engines
        }
        result["best_torch_dtype"] = best
        result["llama_cpp_over_2x_best_torch_per_token"] = (
            result["speedup_per_token"][f"llama_cpp_over_{best}"] > 2
        )
        result["same_text"].update({f"llama_cpp_vs_{d}": same_share(LLAMA, d) for d in engines})

    print(
        f"\n{args.model}, {len(ids)}-token prompt, {args.tokens} new tokens max, 1 thread, p50 of {args.runs}"
    )
    print(f"{'engine':10s} {'prompt ms':>10s} {'ms/token':>9s} {'total ms':>9s}")
    for n, e in engines_out.items():
        print(
            f"{n:10s} {e['prompt_eval_ms_p50']:10.1f} {e['ms_per_token_p50']:9.1f} {e['total_ms_p50']:9.1f}"
        )
    if llm is None:
        print(NOT_INSTALLED)
    else:
        print(
            "llama.cpp per-token speed-up:", result["speedup_per_token"], " same text:", result["same_text"]
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
