"""Does any client wait on another's work? Over real TCP with the test model.

1. `reinf/status` on one connection, idle and while other connections chat (long generations), roll back
   (each swap waits for the generation in progress), export and forget. Target: loaded p99 <= 50 ms and
   <= 5x the idle p99.
2. An inline completion in the largest document the daemon accepts (server.max_document_bytes) against one in a
   small document, and the daemon's memory after it. Target: within 2x, memory flat.

    python bench/server_core.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.latency import percentile  # noqa: E402
from tests.daemon_proc import DaemonProcess, daemon_env, long_context_model  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def status_times(c, n: int) -> list[float]:  # noqa: ANN001
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        c.status()
        out.append((time.perf_counter() - t0) * 1000.0)
        time.sleep(0.01)
    return out


def load(
    d: DaemonProcess, tmp: Path, stop: threading.Event, counts: dict[str, int]
) -> list[threading.Thread]:
    """Other clients keeping the daemon busy: a chat, a rollback, an export and a forget, each in a loop."""

    def loop(name: str, fn) -> None:  # noqa: ANN001
        with d.client(name) as c:
            while not stop.is_set():
                fn(c)
                counts[name] = counts.get(name, 0) + 1

    jobs = {
        "chat": lambda c: c.chat("write a long module", max_tokens=600),
        "rollback": lambda c: c.request("reinf/rollback", {"version": 0}, timeout=300),
        "export": lambda c: c.request("reinf/export", {"format": "jsonl", "path": str(tmp / "export.jsonl")}),
        "forget": lambda c: c.request("reinf/forget", {"before": "2000-01-01"}),
    }
    threads = [threading.Thread(target=loop, args=item, daemon=True) for item in jobs.items()]
    for t in threads:
        t.start()
    return threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n_status = 100 if args.quick else 400
    n_rows = 100 if args.quick else 400
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = long_context_model(tmp / "long-model")
        home = tmp / "home"
        env = daemon_env(home, model_name=str(model), model_max_context_tokens="1024", model_temperature="0")
        d = DaemonProcess(home, env).start()
        try:
            with d.client("bench") as c:
                for i in range(n_rows):  # something for export and forget to read and rewrite
                    r = c.chat(f"# row {i}\n", max_tokens=8)
                    c.rate(r["interaction_id"], stars=1 + i % 5, comment="x" * 200)
                idle = status_times(c, n_status)
                stop, counts = threading.Event(), {}
                threads = load(d, tmp, stop, counts)
                time.sleep(2.0)
                loaded = status_times(c, n_status)
                stop.set()
                for t in threads:
                    t.join(600)

                small = "import json\n\n\ndef load(path):\n    "
                filler = "def f_{0}(x):\n    return x + {0}\n\n\n"

                def document(size: int) -> str:
                    text = "".join(filler.format(i) for i in range(size // len(filler.format(99999))))
                    return text[: size - len(small) - 1] + "\n" + small

                docs = {"small": small, "64KiB": document(64 * 1024), "1MiB": document(1024 * 1024)}
                for name, text in docs.items():
                    c.open_document(f"file:///bench/{name}.py", text)
                rss_before = rss_mb(d.proc.pid)

                def completion_ms(uri: str, line: int) -> list[float]:
                    out = []
                    for _ in range(10 if args.quick else 30):
                        t0 = time.perf_counter()
                        c.inline_completion(uri, line, 4)
                        out.append((time.perf_counter() - t0) * 1000.0)
                    return out

                ms = {
                    name: completion_ms(f"file:///bench/{name}.py", text.count("\n"))
                    for name, text in docs.items()
                }
                rss_after = rss_mb(d.proc.pid)
        finally:
            d.stop()
    result = {
        "status_idle_ms": {"p50": round(percentile(idle, 0.5), 2), "p99": round(percentile(idle, 0.99), 2)},
        "status_loaded_ms": {
            "p50": round(percentile(loaded, 0.5), 2),
            "p99": round(percentile(loaded, 0.99), 2),
        },
        "load_done": counts,
        "completion_ms_p50": {name: round(percentile(v, 0.5), 2) for name, v in ms.items()},
        "daemon_rss_mb": {
            "documents_open": round(rss_before, 1),
            "after_their_completions": round(rss_after, 1),
        },
    }
    ratio = result["status_loaded_ms"]["p99"] / max(result["status_idle_ms"]["p99"], 1e-9)
    print(json.dumps(result, indent=2))
    print(
        f"status p99: idle {result['status_idle_ms']['p99']} ms, loaded {result['status_loaded_ms']['p99']} ms "
        f"({ratio:.1f}x; target <= 50 ms and <= 5x)"
    )
    p50 = result["completion_ms_p50"]
    print(
        f"completion p50: small document {p50['small']} ms, 64 KiB (fills the context) {p50['64KiB']} ms, "
        f"1 MiB (the limit) {p50['1MiB']} ms ({p50['1MiB'] / p50['64KiB']:.2f}x the 64 KiB one; target <= 2x); "
        f"daemon RSS {rss_before:.0f} -> {rss_after:.0f} MB"
    )


if __name__ == "__main__":
    main()
