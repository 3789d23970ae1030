"""Which dtype the engine should load a model in on this CPU: float32 against bfloat16, measured.

Each model is loaded twice (float32, bfloat16); the same FIM request (about 256 prompt tokens, up to 32 new ones,
greedy, one thread, as the daemon runs) goes to each in turn, request by request, so that the machine's noise falls
on both alike. What counts is the ratio in the same run, and the memory each copy of the weights takes.

    python bench/cpu_dtype.py                       # smollm2-135m-instruct -> bench/results/cpu_dtype_smollm2.json
    python bench/cpu_dtype.py --model qwen2.5-coder-0.5b-instruct --runs 2 --out bench/results/cpu_dtype_qwen.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PREFIX = (
    "import csv\nimport json\nfrom pathlib import Path\n\n\n"
    + "".join(
        f'def load_{n}(path):\n    """Read the {n} table at `path` and return its rows as dicts."""\n'
        f"    with open(path, newline='') as fh:\n        return list(csv.DictReader(fh))\n\n\n"
        for n in ("users", "orders", "items", "prices", "stock", "shops")
    )
    + 'def total_price(orders, prices):\n    """The sum of quantity times price over all orders."""\n    '
)
SUFFIX = "\n\n\ndef main():\n    print(total_price(load_orders('o.csv'), load_prices('p.csv')))\n"


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    return sorted(f for f in flags if "bf16" in f or f in ("avx2", "avx512f", "amx_tile"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--runs", type=int, default=5, help="requests a dtype")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "cpu_dtype_smollm2.json")
    args = ap.parse_args()

    from reinf.config import ModelConfig
    from reinf.engine import Engine

    dtypes = ("float32", "bfloat16")
    engines = {
        d: Engine(ModelConfig(name=args.model, device="cpu", dtype=d, max_context_tokens=1024, seed=0))
        for d in dtypes
    }
    weights_mb = {
        d: round(sum(p.numel() * p.element_size() for p in e.model.parameters()) / 2**20, 1)
        for d, e in engines.items()
    }
    ms_per_token: dict[str, list[float]] = {d: [] for d in dtypes}
    prompt_tokens = 0
    texts: dict[str, str] = {}
    for _ in range(args.runs + 1):  # the first round warms up and is not counted
        for d, e in engines.items():
            g = e.complete(PREFIX, SUFFIX, max_tokens=args.tokens, temperature=0)
            prompt_tokens, texts[d] = g.n_prompt_tokens, g.text
            ms_per_token[d].append(g.generate_ms / max(1, g.n_new_tokens))
    median = {d: statistics.median(v[1:]) for d, v in ms_per_token.items()}
    result = {
        "model": args.model,
        "cpu": platform.processor() or platform.machine(),
        "cpu_flags": cpu_flags(),
        "threads": 1,
        "prompt_tokens": prompt_tokens,
        "new_tokens": args.tokens,
        "runs": args.runs,
        "ms_per_token_median": {d: round(v, 1) for d, v in median.items()},
        "bf16_over_f32_time": round(median["bfloat16"] / median["float32"], 3),
        "weights_mb": weights_mb,
        "same_greedy_text": texts["float32"] == texts["bfloat16"],
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
