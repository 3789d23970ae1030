"""Server overhead per request and rating acknowledgement latency, over real TCP with the test model.

Overhead = the client's round trip minus the engine's generate_ms: framing, dispatch, the queue hop to the
inference thread, the committed DuckDB write and the answer. Targets: overhead p50 <= 2 ms, rate ack p99 <= 10 ms.

    python bench/latency.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.daemon_proc import DaemonProcess, daemon_env  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summarise(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 0.50), 3),
        "p95_ms": round(percentile(values, 0.95), 3),
        "p99_ms": round(percentile(values, 0.99), 3),
        "mean_ms": round(statistics.fmean(values), 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer requests")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "latency.json"))
    args = ap.parse_args()
    n_complete, n_rate = (60, 200) if args.quick else (300, 1000)

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        daemon = DaemonProcess(home, daemon_env(home, model_max_new_tokens="8")).start()
        try:
            c = daemon.client("bench")
            uri = "file:///bench/example.py"
            c.open_document(uri, "import json\n\n\ndef load(path):\n    ")
            for _ in range(10):  # warm-up
                c.inline_completion(uri, 4, 4)
            overhead, round_trip, ids = [], [], []
            for _ in range(n_complete):
                t0 = time.perf_counter()
                items = c.inline_completion(uri, 4, 4)
                rt = (time.perf_counter() - t0) * 1000.0
                if not items:
                    continue
                iid = items[0]["command"]["arguments"][0]["interaction_id"]
                ids.append(iid)
                round_trip.append((rt, iid))
            # generate_ms is in each interaction's stored timings; read them back in one export.
            export = Path(tmp) / "timings.jsonl"
            c.request("reinf/export", {"format": "jsonl", "path": str(export)})
            gen_ms = {}
            for line in export.read_text().splitlines():
                row = json.loads(line)
                gen_ms[row["interaction_id"]] = json.loads(row["timings"])["generate_ms"]
            for rt, iid in round_trip:
                overhead.append(rt - gen_ms[iid])
            rate_ms = []
            for i in range(n_rate):
                iid = ids[i % len(ids)]
                t0 = time.perf_counter()
                c.rate(iid, stars=1 + i % 5)
                rate_ms.append((time.perf_counter() - t0) * 1000.0)
            c.close()
        finally:
            daemon.stop()

    o, r = summarise(overhead), summarise(rate_ms)
    result = {
        "overhead_p50_ms": o["p50_ms"],
        "overhead_p95_ms": o["p95_ms"],
        "rate_ack_p50_ms": r["p50_ms"],
        "rate_ack_p95_ms": r["p95_ms"],
        "rate_ack_p99_ms": r["p99_ms"],
        "overhead": o,
        "rate_ack": r,
        "targets": {"overhead_p50_ms": 2.0, "rate_ack_p99_ms": 10.0},
        "machine": f"{platform.machine()} {platform.processor() or ''} {__import__('os').cpu_count()} cores".strip(),
        "command": "python bench/latency.py" + (" --quick" if args.quick else ""),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'measure':<28}{'n':>6}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'target':>16}")
    print(
        f"{'server overhead':<28}{o['n']:>6}{o['p50_ms']:>10.3f}{o['p95_ms']:>10.3f}{o['p99_ms']:>10.3f}"
        f"{'p50 <= 2 ms':>16}"
    )
    print(
        f"{'rating acknowledgement':<28}{r['n']:>6}{r['p50_ms']:>10.3f}{r['p95_ms']:>10.3f}{r['p99_ms']:>10.3f}"
        f"{'p99 <= 10 ms':>16}"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
