"""What an active adapter costs a completion on the CPU: the engine's merged adapter against PEFT's LoRA layers.

The engine (reinf-tiny, one thread, as the daemon runs) answers the same FIM request greedily, 64 new tokens:

- with no adapter (the base),
- with an adapter of the trainer's layout (r 8 on q/k/v/o, random B) merged into the weights, as it serves,
- with the same adapter through PEFT's LoRA layers around the base, as it served before server/lora.py.

The three run in turn, request by request, so that the machine's noise falls on each alike; the figures that
count are the ratios to the base in the same run.

    python bench/adapter_cost.py              # writes bench/results/adapter_cost.json
    python bench/adapter_cost.py --quick      # fewer requests
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.gpu_latency import make_adapter  # noqa: E402
from bench.latency import percentile  # noqa: E402

PREFIX = 'import csv\n\n\ndef read_rows(path):\n    """The rows of the CSV file at `path`."""\n    '
SUFFIX = "\n\n\ndef main():\n    print(read_rows('data.csv'))\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10 requests a path instead of 40")
    ap.add_argument("--runs", type=int, help="requests a path (overrides --quick)")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens a request")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "adapter_cost.json")
    args = ap.parse_args()
    runs = args.runs or (10 if args.quick else 40)

    import torch
    from peft import PeftModel

    from reinf.config import ModelConfig
    from reinf.engine import Engine
    from reinf.models import TINY, resolve_model_path

    model_path = resolve_model_path(TINY)
    served = Engine(ModelConfig(name=TINY, device="cpu"))  # one inference thread, as the daemon
    layers = Engine(ModelConfig(name=TINY, device="cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        adapter = make_adapter(Path(model_path), Path(tmp) / "v1", seed=1)
        served.set_adapter(1, adapter)
        layers.model = PeftModel.from_pretrained(layers.model, str(adapter)).eval()
    base = Engine(ModelConfig(name=TINY, device="cpu"))

    paths = {"base": base, "merged": served, "peft_layers": layers}
    texts = {
        name: e.complete(PREFIX, SUFFIX, max_tokens=args.tokens, temperature=0) for name, e in paths.items()
    }
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(runs):
        for name, engine in paths.items():
            g = engine.complete(PREFIX, SUFFIX, max_tokens=args.tokens, temperature=0)
            times[name].append(g.generate_ms / max(1, g.n_new_tokens))

    def stats(values: list[float]) -> dict[str, float]:
        return {"p50_ms_per_token": round(statistics.median(values), 3), "p95_ms_per_token":
                round(percentile(values, 0.95), 3), "n": len(values)}  # fmt: skip

    base_p50 = statistics.median(times["base"])
    result = {
        "paths": {name: stats(v) for name, v in times.items()},
        "ratio_to_base": {name: round(statistics.median(v) / base_p50, 3) for name, v in times.items()},
        "new_tokens": {name: g.n_new_tokens for name, g in texts.items()},
        "same_text_merged_and_layers": texts["merged"].text == texts["peft_layers"].text,
        "adapter": "LoRA r 8, alpha 16, q/k/v/o projections (training defaults), random B",
        "model": TINY,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, CPU",
        "command": " ".join(["python", "bench/adapter_cost.py", *sys.argv[1:]]),
        "when": time.strftime("%Y-%m-%d %H:%M"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'path (merged: as served)':<28}{'p50 ms/token':>14}{'p95':>8}{'× base':>8}")
    for name, s in result["paths"].items():
        print(f"{name:<28}{s['p50_ms_per_token']:>14.2f}{s['p95_ms_per_token']:>8.2f}"
              f"{result['ratio_to_base'][name]:>8.2f}")  # fmt: skip
    print(
        f"same text, merged and through PEFT's layers: {result['same_text_merged_and_layers']}; wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
