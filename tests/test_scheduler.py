"""The scheduler with a fake trainer: triggers, one run at a time, publishing, rejection, failure, rollback, crashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from reinf.adapters import AdapterError, Adapters, UnknownVersion
from reinf.config import Config
from reinf.scheduler import Scheduler, SchedulerBusy, SchedulerError
from reinf.store import Store

FAKE_TRAINER = r"""
import json, os, sys, time
from pathlib import Path

run = Path(sys.argv[1])
mode = os.environ.get("FAKE_MODE", "publish")

def progress(phase, p, msg):
    with open(run / "progress.jsonl", "a") as fh:
        fh.write(json.dumps({"ts": time.time(), "phase": phase, "progress": p, "message": msg}) + "\n")

json.loads((run / "config.json").read_text())
assert (run / "data.parquet").exists()
if mode == "too_few":  # as the trainer does: turned down at the snapshot, before any model loads
    progress("snapshot", 0.0, "reading the snapshot")
    reason = "too few explicit ratings to train on: 2, need at least 8"
    metrics = {"decision": "reject", "reasons": [reason], "used_ratings": False}
    (run / "metrics.json").write_text(json.dumps(metrics))
    sys.exit(0)
progress("reward_model", 0.2, "judging")
if mode == "sleep":
    time.sleep(60)
if mode == "crash":
    print("ValueError: the fake trainer broke", file=sys.stderr)
    sys.exit(1)
progress("ppo", 0.6, "PPO step 1/1")
if mode == "reject":
    metrics = {"decision": "reject", "reasons": ["reward-model score did not improve"]}
else:
    a = run / ".adapter.tmp"
    a.mkdir()
    (a / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    header = json.dumps({"__metadata__": {"fake": "yes"}}).encode()
    body = b"xx" if mode == "corrupt" else len(header).to_bytes(8, "little") + header
    (a / "adapter_model.safetensors").write_bytes(body)
    os.rename(a, run / "adapter")
    metrics = {"decision": "publish", "reasons": [], "gate": {"passed": True}}
(run / "metrics.json").write_text(json.dumps(metrics))
progress("done", 1.0, "done")
"""


class Harness:
    def __init__(self, tmp_path: Path, **training) -> None:
        self.cfg = Config(home=tmp_path / "home")
        self.cfg.model.name = str(tmp_path / "model")  # a model folder: nothing to build or fetch
        (tmp_path / "model").mkdir()
        (tmp_path / "model" / "config.json").write_text("{}")
        self.cfg.training.min_new_ratings = 3
        for k, v in training.items():
            setattr(self.cfg.training, k, v)
        self.cfg.home.mkdir(mode=0o700)
        self.store = Store(self.cfg.home / "reinf.duckdb")
        self.events: list[tuple[str, dict]] = []
        self.swaps: list[tuple[int, Path | None]] = []
        self.swap_error: Exception | None = None
        self.lock = threading.Lock()
        self.fake = tmp_path / "fake_trainer.py"
        self.fake.write_text(FAKE_TRAINER)
        self.sched = self.new_scheduler()

    def new_scheduler(self) -> Scheduler:
        self.adapters = Adapters(self.cfg.home, self.store, swap=self.swap, broadcast=self.broadcast)
        s = Scheduler(self.cfg, self.store, adapters=self.adapters, broadcast=self.broadcast)
        s.trainer_command = [sys.executable, str(self.fake)]
        return s

    def broadcast(self, method: str, params: dict) -> None:
        with self.lock:
            self.events.append((method, params))

    def swap(self, version: int, path: Path | None) -> None:
        if self.swap_error is not None:
            raise self.swap_error
        self.swaps.append((version, path))

    def start(self) -> int:
        """As the daemon starts: the scheduler cleans up, then the adapters say which version serves."""
        self.sched = self.new_scheduler()
        self.sched.start()
        return self.adapters.start()

    def answer(self) -> str:
        return self.store.add_interaction(kind="chat", client="t", model="m", adapter_version=0, prompt="p",
                                          context={}, response="r", finish_reason="stop", timings={})  # fmt: skip

    def rate(self, n: int = 1, iid: str | None = None, **rating) -> None:
        for _ in range(n):
            self.store.add_rating(iid or self.answer(), **(rating or {"stars": 4}))
            self.sched.note_rating()

    def wait(self, run_id: int, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.store.get_run(run_id)
            if run["state"] not in ("queued", "running") and self.sched.status()["state"] == "idle":
                return run
            time.sleep(0.05)
        raise AssertionError(f"run {run_id} did not finish: {self.store.get_run(run_id)}")

    def notes(self, method: str) -> list[dict]:
        with self.lock:
            return [p for m, p in self.events if m == method]


@pytest.fixture
def h(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "publish")
    harness = Harness(tmp_path)
    assert harness.start() == 0
    yield harness
    harness.sched.close()
    harness.store.close()


def test_the_threshold_starts_a_run_that_publishes_and_swaps(h):
    h.rate(2)
    assert h.store.list_runs() == [] and h.sched.until_next_training() == 1
    h.rate(1)
    run = h.wait(h.store.list_runs()[0]["run_id"])
    assert run["state"] == "published" and run["trigger"] == "threshold" and run["adapter_version"] == 1
    adapter = h.cfg.home / "adapters" / "v1"
    assert (adapter / "adapter_config.json").exists() and not list((h.cfg.home / "adapters").glob(".tmp-*"))
    assert h.swaps == [(1, adapter)] and h.store.active_adapter()["version"] == 1
    assert h.notes("reinf/adapterChanged") == [
        {"adapter_version": 1, "reason": f"published by run {run['run_id']}"}
    ]
    progress = h.notes("reinf/trainingProgress")
    assert {"reward_model", "ppo"} <= {p["phase"] for p in progress if p["state"] == "running"}
    assert progress[-1]["state"] == "published" and progress[-1]["run_id"] == run["run_id"]
    # Clients say how the run started and, once it has made progress, how long it has left.
    assert {p["trigger"] for p in progress} == {"threshold"}
    running = [p for p in progress if p["state"] == "running"]
    assert running[0]["eta_s"] is None
    assert all(p["eta_s"] >= 0 for p in running if 0.05 <= p["progress"] < 1)
    assert any(p["eta_s"] is not None for p in running)
    config = json.loads((h.cfg.home / "runs" / str(run["run_id"]) / "config.json").read_text())
    assert config["run_id"] == run["run_id"] and config["active_adapter"] is None
    assert config["training"]["min_new_ratings"] == 3 and config["base_model_path"] == h.cfg.model.name
    # The count starts again from this run.
    assert h.sched.until_next_training() == 3
    assert h.sched.last_run()["run_id"] == run["run_id"]
    # The next run is told which adapter serves now.
    run2 = h.wait(h.sched.retrain())
    config2 = json.loads((h.cfg.home / "runs" / str(run2["run_id"]) / "config.json").read_text())
    # ... and what the run that made it had seen (its watermark): the events after it are new to the adapter.
    watermark = h.store.get_run(run["run_id"])["event_watermark"]
    assert watermark > 0
    # The fake trainer's metrics do not say where that run held completions out after: all of them, up to it.
    assert config2["active_adapter"] == {
        "version": 1, "path": str(adapter), "event_watermark": watermark, "held_out_after": 0,
    }  # fmt: skip
    assert config["fresh_judge"] is False and config2["fresh_judge"] is False
    assert run2["adapter_version"] == 2 and h.store.active_adapter()["version"] == 2
    # A run's metrics say after which watermark it held completions out: the next run learns those; a value
    # that is not a positive whole number reads as 0 (all of them).
    for value, told in ((watermark, watermark), ("3", 0)):
        last = h.store.list_runs(limit=1)[0]["run_id"]
        h.store.update_run(last, metrics={"data": {"completions": {"held_out_after": value}}})
        nxt = h.wait(h.sched.retrain())
        told_config = json.loads((h.cfg.home / "runs" / str(nxt["run_id"]) / "config.json").read_text())
        assert told_config["active_adapter"]["held_out_after"] == told


def test_one_run_at_a_time_and_cancel(h, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "sleep")
    h.rate(2)
    run_id = h.sched.retrain()
    with pytest.raises(SchedulerBusy, match=f"run {run_id} is already going"):
        h.sched.retrain()
    status = h.sched.status()
    assert status["state"] == "running" and status["run_id"] == run_id
    assert h.sched.cancel() is True
    run = h.wait(run_id)
    assert run["state"] == "cancelled" and "cancelled" in run["error"]
    assert h.sched.status() == {"state": "idle"} and h.sched.cancel() is False
    assert h.notes("reinf/trainingProgress")[-1]["state"] == "cancelled"
    # The cancelled run's ratings count as seen, so the next rating does not start it all over again.
    assert h.sched.until_next_training() == 3
    # Ratings that arrive while a run is going count towards the next one; they start none meanwhile.
    run_id = h.sched.retrain()
    h.rate(5)
    assert len(h.store.list_runs()) == 2 and h.sched.until_next_training() == 0
    h.sched.cancel()
    h.wait(run_id)


def test_a_rejected_run_keeps_the_active_adapter_and_says_why(h, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "reject")
    run = h.wait(h.sched.retrain())
    assert run["state"] == "rejected" and run["metrics"]["reasons"] == ["reward-model score did not improve"]
    assert h.swaps == [] and h.store.active_adapter() is None
    last = h.notes("reinf/trainingProgress")[-1]
    assert last["state"] == "rejected" and "did not improve" in last["message"]


def test_a_crashed_trainer_is_a_failed_run_with_its_error(h, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "crash")
    run = h.wait(h.sched.retrain())
    assert run["state"] == "failed"
    assert "exited with code 1" in run["error"] and "the fake trainer broke" in run["error"]
    # Retried only at the next trigger: the failed run's ratings count as seen.
    assert h.sched.until_next_training() == 3


def test_a_corrupt_adapter_is_never_published(h, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "corrupt")
    run = h.wait(h.sched.retrain())
    assert run["state"] == "failed" and "publishing failed" in run["error"] and "truncated" in run["error"]
    assert not (h.cfg.home / "adapters" / "v1").exists() and h.swaps == []


def test_an_adapter_the_engine_refuses_is_marked_rejected(h):
    h.swap_error = RuntimeError("no such layers")
    run = h.wait(h.sched.retrain())
    assert run["state"] == "failed" and "could not load adapter v1" in run["error"]
    assert h.store.list_adapters()[0]["status"] == "rejected" and h.store.active_adapter() is None


def test_a_run_past_its_time_limit_is_stopped(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "sleep")
    h = Harness(tmp_path, timeout_s=1)
    h.start()
    run = h.wait(h.sched.retrain())
    assert run["state"] == "failed" and "training.timeout_s = 1" in run["error"]
    h.store.close()


def test_rollback(h):
    for _ in range(3):
        h.wait(h.sched.retrain())
    assert h.store.active_adapter()["version"] == 3
    assert h.adapters.rollback() == 2 and h.swaps[-1] == (2, h.cfg.home / "adapters" / "v2")
    assert h.adapters.rollback(3) == 3
    assert h.adapters.rollback(0) == 0 and h.swaps[-1] == (0, None) and h.store.active_adapter() is None
    assert h.notes("reinf/adapterChanged")[-1] == {"adapter_version": 0, "reason": "rollback"}
    with pytest.raises(AdapterError, match="already serving"):
        h.adapters.rollback()
    with pytest.raises(UnknownVersion, match="no good adapter version 7; known: 0 \\(the base\\), 1, 2, 3"):
        h.adapters.rollback(7)
    assert h.adapters.rollback(1) == 1
    # Stored relative to REINF_HOME: a copied home finds its adapters.
    assert {a["path"] for a in h.store.list_adapters()} == {"adapters/v1", "adapters/v2", "adapters/v3"}


def test_untrain_deletes_what_runs_learnt_from_a_forgotten_rating_and_serves_the_newest_clean_adapter(h):
    h.rate(3)  # ratings 1-3: run 1, v1
    h.wait(h.store.list_runs()[0]["run_id"])
    h.rate(3)  # ratings 4-6: run 2, v2
    h.wait(h.store.list_runs()[0]["run_id"])
    adapters = h.cfg.home / "adapters"
    assert h.store.active_adapter()["version"] == 2 and (adapters / "v2").is_dir()

    # Rating 5 is forgotten (a late rating of an old answer, say): run 2 saw it, run 1 did not.
    assert h.adapters.untrain(h.store.runs_trained_on(5)) == ([2], 1)
    assert h.swaps[-1] == (1, adapters / "v1") and h.store.active_adapter()["version"] == 1
    assert not (adapters / "v2").exists() and (adapters / "v1").is_dir()
    assert {a["version"]: a["status"] for a in h.store.list_adapters()} == {2: "forgotten", 1: "active"}
    assert h.notes("reinf/adapterChanged")[-1] == {
        "adapter_version": 1, "reason": "forget: v2 was trained on forgotten ratings"
    }  # fmt: skip
    with pytest.raises(UnknownVersion, match="no good adapter version 2; known: 0 \\(the base\\), 1$"):
        h.adapters.rollback(2)

    assert h.adapters.untrain(h.store.runs_trained_on(1))[0] == [1]  # rating 1: every run saw it
    assert h.swaps[-1] == (0, None) and h.store.active_adapter() is None and not list(adapters.iterdir())
    h.wait(h.sched.retrain())  # a new adapter never takes a forgotten one's number
    assert h.store.active_adapter()["version"] == 3


def test_close_stops_a_running_trainer(h, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "sleep")
    run_id = h.sched.retrain()
    h.sched.close()
    run = h.store.get_run(run_id)
    assert run["state"] == "cancelled" and "shut down" in run["error"]
    with pytest.raises(SchedulerError, match="shutting down"):
        h.sched.retrain()


def _orphan(run_dir: Path) -> subprocess.Popen:
    # Looks like a trainer of run_dir in /proc/<pid>/cmdline: python -c … -m reinf.training RUN_DIR
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m", "reinf.training", str(run_dir)],
                            start_new_session=True)  # fmt: skip


def test_start_after_a_daemon_crash(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "publish")
    h = Harness(tmp_path)
    h.start()
    for _ in range(2):
        h.wait(h.sched.retrain())
    # The daemon dies (kill -9) with a run going: its row says running, its trainer lives on.
    orphan_id = h.store.create_run("manual", 0, h.store.max_rating_id())
    orphan = _orphan(h.cfg.home / "runs" / str(orphan_id))
    h.store.update_run(orphan_id, state="running", pid=orphan.pid)
    # Another stale run whose pid now belongs to an unrelated process: that process must survive.
    bystander = subprocess.Popen(["sleep", "60"])
    stale_id = h.store.create_run("manual", 0, h.store.max_rating_id())
    h.store.update_run(stale_id, state="running", pid=bystander.pid)
    # And the active adapter's folder went missing.
    (h.cfg.home / "adapters" / "v2" / "adapter_model.safetensors").unlink()
    (h.cfg.home / "adapters" / ".tmp-v3").mkdir()
    try:
        version = h.start()
        assert orphan.wait(5) == -signal.SIGKILL
        assert bystander.poll() is None
        assert h.store.get_run(orphan_id)["state"] == "failed"
        assert "still running and has been stopped" in h.store.get_run(orphan_id)["error"]
        assert h.store.get_run(stale_id)["state"] == "failed"
        assert version == 1 and h.swaps[-1] == (1, h.cfg.home / "adapters" / "v1")
        assert h.store.active_adapter()["version"] == 1
        assert {a["version"]: a["status"] for a in h.store.list_adapters()} == {1: "active", 2: "rejected"}
        assert not (h.cfg.home / "adapters" / ".tmp-v3").exists()
        # With v1 gone too, the base model serves.
        (h.cfg.home / "adapters" / "v1" / "adapter_config.json").unlink()
        assert h.start() == 0 and h.store.active_adapter() is None
    finally:
        for p in (orphan, bystander):
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
        h.store.close()


def test_the_threshold_counts_rated_answers_not_clicks(h, monkeypatch):
    # Thumbs, then stars, then a comment on one answer: one judgement.
    iid = h.answer()
    for rating in ({"thumbs": "up"}, {"stars": 4}, {"comment": "clear"}):
        h.rate(iid=iid, **rating)
    assert h.sched.until_next_training() == 2
    # However often one answer is re-rated, it never starts a run.
    h.rate(1000, iid=iid, stars=2)
    assert h.store.list_runs() == [] and h.sched.until_next_training() == 2
    # A manual run the trainer turns down before training (too few ratings) leaves the count as it was.
    monkeypatch.setenv("FAKE_MODE", "too_few")
    run = h.wait(h.sched.retrain())
    assert run["state"] == "rejected" and "too few" in run["metrics"]["reasons"][0]
    assert h.sched.until_next_training() == 2
    # Two more rated answers start a run by threshold, which then resets the count.
    monkeypatch.setenv("FAKE_MODE", "reject")
    h.rate(2)
    run = h.wait(h.store.list_runs()[0]["run_id"])
    assert run["trigger"] == "threshold" and run["state"] == "rejected"
    assert h.sched.until_next_training() == 3
    h.rate(1, iid=iid, stars=5)  # a re-rating of an answer counted before counts no more
    assert h.sched.until_next_training() == 3
    # A threshold run the trainer turns down before training (all answers disliked, say) resets the count too:
    # the next rating must not start another run that is turned down the same way.
    monkeypatch.setenv("FAKE_MODE", "too_few")
    h.rate(3)
    run = h.wait(h.store.list_runs()[0]["run_id"])
    assert run["trigger"] == "threshold" and run["metrics"]["used_ratings"] is False
    n_runs = len(h.store.list_runs())
    h.rate(2)
    assert len(h.store.list_runs()) == n_runs and h.sched.until_next_training() == 1


def test_the_completions_threshold_counts_suggestions_with_their_final_event(h, monkeypatch):
    h.cfg.training.min_new_completions = 3

    def complete(*events: str) -> None:
        iid = h.store.add_interaction(kind="completion", client="t", model="m", adapter_version=0, prompt="p",
                                      context={}, response="r", finish_reason="stop", timings={})  # fmt: skip
        for event in events:
            h.store.add_completion_event(
                iid, event, shown_ms=100, accepted_chars=1 if "accept" in event else None
            )
        h.sched.note_completion()  # as the daemon calls it after each final event

    complete("partially_accepted", "accepted")
    complete("dismissed")
    assert h.store.completions_since_last_run() == 2 and h.store.list_runs() == []
    complete("typed_through")
    run = h.wait(h.store.list_runs()[0]["run_id"])
    assert run["trigger"] == "threshold" and run["state"] == "published"
    # The count starts again from that run; 0 turns the threshold off.
    assert h.store.completions_since_last_run() == 0
    h.cfg.training.min_new_completions = 0
    for _ in range(4):
        complete("dismissed")
    assert len(h.store.list_runs()) == 1
