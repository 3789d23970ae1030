"""Does training get in the way of typing? p95 latency of inline completions while a run trains, against idle.

A real daemon on the default model, CPU only, with the trainer's default settings (one thread, nice 10) and
the default inference thread. The store is filled with rated chats so that a run really trains (reward model,
PPO, gate); completions are timed over the wire first with the daemon idle, then while that run is in its
reward-model, PPO or evaluation phase. Target: p95 while training / p95 idle <= 1.5.

    python bench/interference.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.latency import percentile, summarise  # noqa: E402
from bench.learning import machine  # noqa: E402
from bench.prompts import HELD_IN  # noqa: E402
from tests.daemon_proc import DaemonProcess, daemon_env  # noqa: E402
from tests.trainer_fixtures import whitespace_stars  # noqa: E402

TARGET_RATIO = 1.5
TRAINING_PHASES = ("reward_model", "ppo", "eval")
DOCUMENT = "import json\n\n\ndef load(path):\n    "


def fill(client, n: int) -> None:
    """`n` short chats, rated by a scripted user whose taste (airy answers) a judge learns from few ratings,
    so that the run gets past the reward model's chance check and really runs PPO and the gate."""
    for i in range(n):
        prompt = HELD_IN[i % len(HELD_IN)]
        answer = client.chat(prompt, max_tokens=32, temperature=1.0)
        client.rate(answer["interaction_id"], stars=whitespace_stars(answer["text"]))


def time_completions(client, uri: str, n: int, until=None) -> list[float]:  # noqa: ANN001
    """Round-trip milliseconds of up to `n` inline completions; stops early when `until()` turns true."""
    out = []
    while len(out) < n and not (until is not None and until()):
        t0 = time.perf_counter()
        client.inline_completion(uri, 4, 4)
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer completions, a shorter run")
    ap.add_argument("--model", default="reinf-tiny")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "interference.json"))
    args = ap.parse_args()
    n_idle, n_fill, tokens = (100, 64, 16) if args.quick else (300, 64, 16)
    # A shorter run when quick; in both, the trainer runs with its default threads and priority.
    run_cfg = {"training_ppo_steps": "3"} if args.quick else {}

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        env = daemon_env(home, model_name=args.model, model_max_new_tokens=str(tokens), **run_cfg)
        daemon = DaemonProcess(home, env).start()
        try:
            c = daemon.client("interference-bench")
            uri = "file:///bench/interference.py"
            c.open_document(uri, DOCUMENT)
            fill(c, n_fill)
            time_completions(c, uri, 10)  # warm-up
            idle = time_completions(c, uri, n_idle)

            run_id = c.request("reinf/retrain", {})["run_id"]
            phase = {"now": "snapshot"}

            def training_done() -> bool:
                st = c.status()["training"]
                phase["now"] = st.get("phase", "done") if st["state"] == "running" else "done"
                return phase["now"] == "done"

            busy, t_run, per_phase = [], time.time(), {}
            while not training_done():
                if phase["now"] not in TRAINING_PHASES:
                    time.sleep(0.2)
                    continue
                now = phase["now"]
                timed = time_completions(c, uri, 20)
                busy += timed
                per_phase[now] = per_phase.get(now, 0) + len(timed)
            deadline = time.monotonic() + 60  # the run's row is marked a moment after the trainer exits
            run = c.request("reinf/runs", {"limit": 1})["runs"][0]
            while run["state"] == "running" and time.monotonic() < deadline:
                time.sleep(0.5)
                run = c.request("reinf/runs", {"limit": 1})["runs"][0]
            c.close()
        finally:
            daemon.stop()

    if "ppo" not in per_phase:
        print(f"run {run_id} ended ({run['state']}) before PPO, so training never ran beside the completions: "
              f"{(run.get('metrics') or {}).get('reasons') or run.get('error')}")  # fmt: skip
        return 1
    i, b = summarise(idle), summarise(busy)
    ratio = percentile(busy, 0.95) / percentile(idle, 0.95)
    result = {
        "p95_ratio": round(ratio, 3),
        "completions_timed_per_phase": per_phase,
        "idle": i,
        "training": b,
        "run": {
            "run_id": run_id,
            "state": run["state"],
            "seconds": round(time.time() - t_run, 1),
            "reasons": (run.get("metrics") or {}).get("reasons") or run.get("error"),
        },  # fmt: skip
        "target": {"p95_ratio": TARGET_RATIO, "met": ratio <= TARGET_RATIO},
        "setup": {
            "model": args.model,
            "new_tokens": tokens,
            "inference_threads": 1,
            "trainer": "training.threads = 1, nice 10 (defaults)",
            **run_cfg,
        },  # fmt: skip
        "machine": machine(),
        "command": "python bench/interference.py" + (" --quick" if args.quick else ""),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'completions':<22}{'n':>6}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}")
    for name, s in (("idle", i), ("while training", b)):
        print(f"{name:<22}{s['n']:>6}{s['p50_ms']:>10.1f}{s['p95_ms']:>10.1f}{s['p99_ms']:>10.1f}")
    verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
    print(f"p95 ratio {ratio:.2f} (target <= {TARGET_RATIO}: {verdict}); run {run_id} {run['state']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
