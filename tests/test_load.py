"""Load: 8 clients at once mixing inline completions, chats (some cancelled), ratings, implicit feedback and
reads, for a bounded time. Every acknowledged interaction and rating is in the store afterwards, no request
waits forever, and the p95 latency of each kind of request is reported.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from reinf.client import Client

from .daemon_proc import DaemonProcess, daemon_env

LONG = bool(os.environ.get("REINF_LONG"))
CLIENTS = 8
SECONDS = 120 if LONG else 15
REQUEST_TIMEOUT = 120  # far above any honest wait on 2 cores: a request past it is stuck, not slow


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else (values[0] if values else 0.0)


class Worker(threading.Thread):
    def __init__(self, n: int, daemon: DaemonProcess, deadline: float) -> None:
        super().__init__(name=f"load-{n}", daemon=True)
        self.n = n
        self.daemon = daemon
        self.deadline = deadline
        self.rng = random.Random(n)
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.interactions: dict[str, str] = {}  # id -> kind, as acknowledged to this client
        self.ratings: dict[int, tuple[str, int]] = {}  # rating id -> (interaction id, stars)
        self.cancelled = 0
        self.feedback = 0
        self.error: BaseException | None = None

    def timed(self, kind: str, fn: Any, *args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        result = fn(*args, **kw)
        self.latency[kind].append(time.perf_counter() - t0)
        return result

    def run(self) -> None:
        try:
            with self.daemon.client(f"load-{self.n}") as c:
                uri = f"file:///tmp/load_{self.n}.py"
                c.open_document(uri, f"import os\n\n\ndef handler_{self.n}(event):\n    ")
                while time.monotonic() < self.deadline:
                    self.step(c, uri)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def step(self, c: Client, uri: str) -> None:
        op = self.rng.choices(["complete", "chat", "rate", "cancel", "read"], weights=[35, 25, 25, 5, 10])[0]
        if op == "complete":
            items = self.timed("completion", c.inline_completion, uri, 4, 4, timeout=REQUEST_TIMEOUT)
            if items:
                iid = items[0]["command"]["arguments"][0]["interaction_id"]
                self.interactions[iid] = "completion"
                event = self.rng.choice(["accepted", "dismissed"])
                c.notify("reinf/feedback", {"interaction_id": iid, "event": event, "shown_ms": 300})
                self.feedback += 1
        elif op == "chat":
            r = self.timed("chat", c.request, "reinf/chat", {
                "messages": [{"role": "user", "content": f"def task_{self.rng.randrange(1000)}():"}],
                "max_tokens": self.rng.randint(4, 16)}, timeout=REQUEST_TIMEOUT)  # fmt: skip
            self.interactions[r["interaction_id"]] = "chat"
        elif op == "rate" and self.interactions:
            iid = self.rng.choice(sorted(self.interactions))
            stars = self.rng.randint(1, 5)
            r = self.timed("rate", c.request, "reinf/rate", {"interaction_id": iid, "stars": stars},
                           timeout=REQUEST_TIMEOUT)  # fmt: skip
            self.ratings[r["rating_id"]] = (iid, stars)
        elif op == "cancel":
            msg_id, done = c.request_async(
                "reinf/chat",
                {"messages": [{"role": "user", "content": "write a long module"}], "max_tokens": 400},
            )
            time.sleep(self.rng.uniform(0.0, 0.2))
            c.notify("$/cancelRequest", {"id": msg_id})
            assert done.wait(REQUEST_TIMEOUT), "a cancelled chat never answered"
            self.cancelled += 1
        elif op == "read":
            self.timed("read", c.request, "reinf/history", {"limit": 5}, timeout=REQUEST_TIMEOUT)


def test_eight_clients_lose_nothing_and_nothing_deadlocks(tmp_path: Path) -> None:
    home = tmp_path / "home"
    d = DaemonProcess(home, daemon_env(home)).start()
    try:
        t0 = time.monotonic()
        workers = [Worker(n, d, t0 + SECONDS) for n in range(CLIENTS)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(SECONDS + 2 * REQUEST_TIMEOUT)
        elapsed = time.monotonic() - t0
        stuck = [w.name for w in workers if w.is_alive()]
        assert not stuck, f"deadlock: {stuck} still waiting {elapsed:.0f} s after the start"
        errors = [f"{w.name}: {w.error!r}" for w in workers if w.error]
        assert not errors, errors
        assert d.proc.poll() is None

        interactions = {k: v for w in workers for k, v in w.interactions.items()}
        ratings = {k: v for w in workers for k, v in w.ratings.items()}
        with d.client("check") as c:
            out = tmp_path / "all.jsonl"
            c.request("reinf/export", {"format": "jsonl", "path": str(out)})
            status = c.status()
        rows = {r["interaction_id"]: r for r in map(json.loads, out.read_text().splitlines())}
        lost = [iid for iid in interactions if iid not in rows]
        assert not lost, f"{len(lost)} of {len(interactions)} acknowledged interactions are not stored"
        assert all(rows[iid]["kind"] == kind for iid, kind in interactions.items())
        stored = {r["id"]: (iid, r["stars"]) for iid, row in rows.items() for r in row["ratings"] or []}
        missing = [rid for rid, v in ratings.items() if stored.get(rid) != v]
        assert not missing, f"{len(missing)} of {len(ratings)} acknowledged ratings are not stored as given"
        assert status["ratings_total"] == len({iid for iid, _ in ratings.values()})  # rated answers
        implicit = sum(1 for row in rows.values() for r in row["ratings"] or [] if r["source"] == "implicit")
        # Notifications get no answer, but each client closed only after the daemon had read all of them.
        assert implicit == sum(w.feedback for w in workers)

        latency: dict[str, list[float]] = defaultdict(list)
        for w in workers:
            for kind, values in w.latency.items():
                latency[kind] += values
        assert latency["chat"] and latency["rate"] and latency["completion"], dict(latency)
        report = {
            kind: {
                "n": len(v),
                "p50_ms": round(1000 * statistics.median(v), 1),
                "p95_ms": round(1000 * p95(v), 1),
            }
            for kind, v in sorted(latency.items())
        }
        cancelled = sum(w.cancelled for w in workers)
        print(
            f"\nload: {CLIENTS} clients for {SECONDS} s: {len(interactions)} interactions, {len(ratings)} "
            f"ratings, {implicit} implicit events, {cancelled} cancelled chats, none lost; latency {report}"
        )
    finally:
        d.stop()
