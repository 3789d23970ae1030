"""`make bench`: the CPU benchmarks in sequence, then one table of their headline figures.

    python bench/run_all.py            # latency, interference, adapter_cost, ppo_step (--quick: a CPU run), learning
    python bench/run_all.py --quick    # a short version of each, about 25 minutes on 2 cores

Each benchmark runs as its own process and writes bench/results/<name>.json (bench/results/quick/<name>.json
with --quick, so a short run never replaces a full result); one that fails is reported and the rest still run.
Where PyTorch sees a CUDA GPU, gpu_latency.py runs too; ppo_step.py --gpu is run by hand on a GPU machine.
Writes summary.json beside them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"

# (name, script, extra arguments, always quick?, the headline figures: (label, key in its JSON, target))
BENCHMARKS = [
    ("latency", "latency.py", [], False,
     [("server overhead p50 ms", "overhead_p50_ms", "<= 2"), ("rating ack p99 ms", "rate_ack_p99_ms", "<= 10")]),
    ("interference", "interference.py", [], False, [("p95 while training / idle", "p95_ratio", "<= 1.5")]),
    ("adapter_cost", "adapter_cost.py", [], False,
     [("adapter cost per token, x base", "ratio_to_base.merged", "~1"),
      ("PEFT layers' cost, x base", "ratio_to_base.peft_layers", "")]),
    ("ppo_step", "ppo_step.py", [], True, [("PPO step s", "s_per_step", ""), ("peak GiB", "peak_gib", "")]),
    ("completions", "completions.py", [], False,
     [("parseable, truncated %", "truncation.scoped.parseable_pct", "> raw"),
      ("cut mid-identifier %", "truncation.scoped.mid_identifier_pct", "0"),
      ("acceptance rate", "developer.acceptance_rate", ""),
      ("held-out acceptance gain, points", "learning.gain_points", ">= 15"),
      ("published regressions", "learning.published_regressions", "0")]),
    ("learning", "learning.py", [], False,
     [("satisfaction gain, points", "gain_points", ">= 40"),
      ("general loss change %", "general_loss_change_pct", "<= 5"),
      ("SFT-on-liked gain, points", "baselines.sft_liked", "< PPO"), ("KTO gain, points", "baselines.kto", "< PPO")]),
]  # fmt: skip
GPU_BENCHMARKS = [
    ("gpu_latency", "gpu_latency.py", [], False,
     [("GPU completion p50 ms", "engine_p50_ms", "<= 100"), ("with an adapter, p50 ms", "engine_with_adapter_p50_ms", "")]),
]  # fmt: skip


def has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def lookup(data: dict, dotted: str):  # noqa: ANN201
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a short version of every benchmark")
    ap.add_argument(
        "--only",
        help="comma-separated names to run (latency, interference, adapter_cost, ppo_step, completions, learning)",
    )
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else None

    results = RESULTS / "quick" if args.quick else RESULTS
    summary, failed, t_all = [], [], time.time()
    benchmarks = BENCHMARKS + (GPU_BENCHMARKS if has_cuda() else [])
    for name, script, extra, always_quick, _ in benchmarks:
        if only and name not in only:
            continue
        cmd = [sys.executable, str(REPO / "bench" / script), *extra, "--out", str(results / f"{name}.json")]
        if args.quick or always_quick:
            cmd.append("--quick")
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.time()
        rc = subprocess.call(cmd, cwd=REPO)
        seconds = time.time() - t0
        summary.append({"name": name, "command": " ".join(["python", *cmd[1:]]).replace(str(REPO) + "/", ""),
                        "rc": rc, "seconds": round(seconds, 1)})  # fmt: skip
        if rc != 0:
            failed.append(name)

    print(f"\n{'benchmark':<14}{'figure':<30}{'value':>10}  target")
    for row in summary:
        spec = next(b for b in benchmarks if b[0] == row["name"])
        path = results / f"{row['name']}.json"
        data = json.loads(path.read_text()) if row["rc"] == 0 and path.exists() else {}
        row["figures"] = {}
        for label, key, target in spec[4]:
            value = lookup(data, key)
            row["figures"][key] = value
            shown = f"{value:.2f}" if isinstance(value, (int, float)) else ("FAILED" if row["rc"] else "—")
            print(f"{row['name']:<14}{label:<30}{shown:>10}  {target}")
        print(f"{'':<14}{'(wall time, s)':<30}{row['seconds']:>10.0f}")
    total = time.time() - t_all
    print(f"\nall done in {total / 60:.1f} min" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    results.mkdir(parents=True, exist_ok=True)
    if only and (results / "summary.json").exists():  # a rerun of some keeps the others' rows
        earlier = json.loads((results / "summary.json").read_text())["benchmarks"]
        summary = [r for r in earlier if r["name"] not in only] + summary
    (results / "summary.json").write_text(
        json.dumps({"quick": args.quick, "seconds": round(total, 1), "benchmarks": summary}, indent=2) + "\n"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
