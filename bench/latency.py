"""Server overhead per request and rating acknowledgement latency, over real TCP with the test model.

Overhead = the client's round trip minus the engine's time for the request (`prompt_ms`, building and encoding
the prompt, plus `generate_ms`, the generation; both in the interaction's stored timings): framing, dispatch,
the hop to the inference thread and back, redaction, the completion's commit (a fsync'd journal line,
server/journal.py) and the answer. Completions are paced as an editor sends them (one per keystroke at most;
here one every 30 ms, a fast typist); another row sends them back to back. The client reads each answer on the
thread that sent the request, as an editor's event loop does; `reinf.client`, whose reader thread hands each
answer to the caller (one thread hop more), is measured too. Targets: overhead p50 <= 2 ms, rate ack p99 <= 10 ms.

    python bench/latency.py [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from reinf.client import prove  # noqa: E402
from reinf.framing import frame, read_frame  # noqa: E402
from tests.daemon_proc import DaemonProcess, daemon_env  # noqa: E402


class EditorClient:
    """One connection, one thread: a request is sent and its answer read on the same thread."""

    def __init__(self, info: dict[str, Any], name: str = "bench") -> None:
        self._sock = socket.create_connection(("127.0.0.1", int(info["port"])), timeout=30)
        prove(self._sock, info["token"], timeout=30)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._in = self._sock.makefile("rb")
        self._ids = itertools.count(1)
        opts = {"token": info["token"], "client": name}
        self.request(
            "initialize", {"processId": os.getpid(), "capabilities": {}, "initializationOptions": opts}
        )
        self.notify("initialized", {})

    def notify(self, method: str, params: dict[str, Any]) -> None:
        self._sock.sendall(frame({"jsonrpc": "2.0", "method": method, "params": params}))

    def request(self, method: str, params: dict[str, Any]) -> Any:
        msg_id = next(self._ids)
        self._sock.sendall(frame({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}))
        while (body := read_frame(self._in)) is not None:
            msg = json.loads(body)
            if msg.get("id") == msg_id and "method" not in msg:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]
        raise ConnectionError("the daemon closed the connection")

    def inline_completion(self, uri: str, line: int, character: int) -> list[dict[str, Any]]:
        position = {"line": line, "character": character}
        params = {"textDocument": {"uri": uri}, "position": position, "context": {"triggerKind": 2}}
        return (self.request("textDocument/inlineCompletion", params) or {}).get("items", [])

    def open_document(self, uri: str, text: str) -> None:
        doc = {"uri": uri, "languageId": "python", "version": 1, "text": text}
        self.notify("textDocument/didOpen", {"textDocument": doc})

    def rate(self, interaction_id: str, **params: Any) -> Any:
        return self.request("reinf/rate", {"interaction_id": interaction_id, **params})

    def close(self) -> None:
        self._sock.close()


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


GAP_S = 0.03  # between completions: about a keystroke of a fast typist


def measure(
    parent: str | None, n_complete: int, n_rate: int, gap: float = GAP_S, editor: bool = True
) -> tuple[list[float], list[float], list[float]]:
    """Completion overheads, rating acknowledgements and prompt_ms against a daemon whose REINF_HOME is under
    `parent`; with `editor`, through EditorClient, else through reinf.client."""
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        home = Path(tmp) / "home"
        daemon = DaemonProcess(home, daemon_env(home, model_max_new_tokens="8")).start()
        try:
            c = EditorClient(daemon.info) if editor else daemon.client("bench")
            uri = "file:///bench/example.py"
            c.open_document(uri, "import json\n\n\ndef load(path):\n    ")
            for _ in range(10):  # warm-up
                c.inline_completion(uri, 4, 4)
            round_trip, ids = [], []
            for _ in range(n_complete):
                t0 = time.perf_counter()
                items = c.inline_completion(uri, 4, 4)
                rt = (time.perf_counter() - t0) * 1000.0
                if items:
                    iid = items[0]["command"]["arguments"][0]["interaction_id"]
                    ids.append(iid)
                    round_trip.append((rt, iid))
                time.sleep(gap)
            # The engine's times are in each interaction's stored timings; read them back in one export.
            export = Path(tmp) / "timings.jsonl"
            c.request("reinf/export", {"format": "jsonl", "path": str(export)})
            engine_ms = {}
            for line in export.read_text().splitlines():
                row = json.loads(line)
                timings = json.loads(row["timings"])
                engine_ms[row["interaction_id"]] = (timings.get("prompt_ms", 0.0), timings["generate_ms"])
            overhead = [rt - sum(engine_ms[iid]) for rt, iid in round_trip]
            prompt_ms = [engine_ms[iid][0] for _, iid in round_trip]
            rate_ms = []
            for i in range(n_rate):
                t0 = time.perf_counter()
                c.rate(ids[i % len(ids)], stars=1 + i % 5)
                rate_ms.append((time.perf_counter() - t0) * 1000.0)
            c.close()
        finally:
            daemon.stop()
    return overhead, rate_ms, prompt_ms


def fsync_ms(parent: str | None, n: int = 100) -> float:
    """The p50 of one small write + fsync in `parent`: the floor under every committed write."""
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        fd = os.open(Path(tmp) / "probe", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            os.write(fd, b"x" * 200)
            os.fsync(fd)
            times.append((time.perf_counter() - t0) * 1000.0)
        os.close(fd)
    return round(percentile(times, 0.5), 3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer requests")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "latency.json"))
    args = ap.parse_args()
    n_complete, n_rate = (60, 200) if args.quick else (300, 1000)

    # Every write is committed (and fsync'd) before its answer. A tmpfs home runs the same code with the disk's
    # fsync taken out, which separates the server's own overhead from the disk's.
    overhead, rate_ms, prompt_ms = measure(None, n_complete, n_rate)
    back_to_back, _, _ = measure(None, n_complete, 1, gap=0.0)
    threaded, _, _ = measure(None, n_complete, 1, editor=False)
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    overhead_mem, rate_mem, _ = measure(shm, n_complete, n_rate) if shm else ([], [], [])

    o, r = summarise(overhead), summarise(rate_ms)
    result = {
        "overhead_p50_ms": o["p50_ms"],
        "overhead_p95_ms": o["p95_ms"],
        "rate_ack_p50_ms": r["p50_ms"],
        "rate_ack_p95_ms": r["p95_ms"],
        "rate_ack_p99_ms": r["p99_ms"],
        "overhead": o,
        "overhead_back_to_back": summarise(back_to_back),
        "overhead_through_reinf_client": summarise(threaded),
        "prompt_ms": summarise(prompt_ms),  # the engine's, left out of the overhead
        "completion_gap_s": GAP_S,
        "rate_ack": r,
        "disk_fsync_p50_ms": fsync_ms(None),
        "targets": {"overhead_p50_ms": 2.0, "rate_ack_p99_ms": 10.0},
        "machine": f"{platform.machine()} {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}",
        "command": "python bench/latency.py" + (" --quick" if args.quick else ""),
    }
    rows = [
        ("server overhead", o, "p50 <= 2 ms"),
        ("  same, back to back", result["overhead_back_to_back"], ""),
        ("  same, via reinf.client", result["overhead_through_reinf_client"], "(reader thread)"),
        ("engine: prompt encoding", result["prompt_ms"], "(not overhead)"),
        ("rating acknowledgement", r, "p99 <= 10 ms"),
    ]
    if overhead_mem:
        om, rm = summarise(overhead_mem), summarise(rate_mem)
        result["tmpfs_home"] = {"overhead": om, "rate_ack": rm}
        rows += [("  same, home on tmpfs", om, "(no fsync)"), ("  same, home on tmpfs", rm, "(no fsync)")]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'measure':<28}{'n':>6}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'target':>16}")
    for name, s, target in rows:
        print(
            f"{name:<28}{s['n']:>6}{s['p50_ms']:>10.3f}{s['p95_ms']:>10.3f}{s['p99_ms']:>10.3f}{target:>16}"
        )
    print(
        f"one write + fsync on this disk: p50 {result['disk_fsync_p50_ms']} ms (a committed write needs it)"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
