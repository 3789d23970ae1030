"""Training end to end through a real daemon on the test-preset model: rate, train, hot-swap, roll back, crash.

A scripted user rates chat answers (it likes whitespace). At the threshold the daemon starts a run; the run
ends published (retried with more ratings if the gate rejects it; the daemon's sampling is seeded, so the
same code takes the same path every time); new answers carry the new adapter version; a rollback returns to the base. Then a trainer killed
with SIGKILL mid-run leaves a failed run and a daemon that still serves, and a daemon killed with SIGKILL
mid-run finds the orphaned run on restart and marks it failed, with no trainer left running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from safetensors.torch import load_file

from reinf.client import RpcError
from tests.daemon_proc import DaemonProcess, daemon_env
from tests.trainer_fixtures import FAST_TRAINING, QUESTIONS, whitespace_stars

pytestmark = pytest.mark.slow

THRESHOLD = 40
FINAL = ("published", "rejected", "failed", "cancelled")


def _env(home: Path) -> dict[str, str]:
    config = {
        f"{section}_{key}": str(v) for section, values in FAST_TRAINING.items() for key, v in values.items()
    }
    config["training_min_new_ratings"] = str(THRESHOLD)
    config["model_seed"] = "0"  # the same answers, ratings and runs every time: a rejection is no accident
    return daemon_env(home, **config)


def _chat_and_rate(c, n: int, offset: int) -> list[int]:
    versions = []
    for i in range(n):
        r = c.chat(QUESTIONS[(offset + i) % len(QUESTIONS)], max_tokens=32, temperature=1.0)
        versions.append(r["adapter_version"])
        c.rate(r["interaction_id"], stars=whitespace_stars(r["text"]))
    return versions


def _wait_run(c, run_id: int, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = next(r for r in c.request("reinf/runs", {"limit": 20})["runs"] if r["run_id"] == run_id)
        if run["state"] in FINAL and c.status()["training"]["state"] == "idle":
            return run
        time.sleep(0.3)
    raise AssertionError(f"run {run_id} did not end in {timeout} s: {run}")


def _wait_phase(home: Path, run_id: int, needle: str, timeout: float = 60.0) -> None:
    progress = home / "runs" / str(run_id) / "progress.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if progress.exists() and needle in progress.read_text():
            return
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} never logged {needle!r}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}/stat").exists() else "X"
    return state != "Z"


def test_rate_train_publish_swap_rollback_and_crashes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    daemon = DaemonProcess(home, _env(home)).start()
    try:
        with daemon.client() as c:
            progress: list[dict] = []
            changes: list[dict] = []
            c.on_notification("reinf/trainingProgress", progress.append)
            c.on_notification("reinf/adapterChanged", changes.append)

            # 1. Rate up to the threshold: the run starts by itself, and ends with metrics.
            assert set(_chat_and_rate(c, THRESHOLD - 1, 0)) == {0}
            assert c.status()["until_next_training"] == 1
            _chat_and_rate(c, 1, THRESHOLD - 1)
            runs = c.request("reinf/runs", {})["runs"]
            assert len(runs) == 1 and runs[0]["trigger"] == "threshold"
            run = _wait_run(c, runs[0]["run_id"])
            attempts = [run]
            while run["state"] == "rejected" and len(attempts) < 3:  # the gate may reject an unlucky run
                _chat_and_rate(c, 16, THRESHOLD * len(attempts))
                run = _wait_run(c, c.request("reinf/retrain", {})["run_id"])
                attempts.append(run)
            for r in attempts:
                assert r["state"] in ("published", "rejected"), r
                m = r["metrics"]
                assert m["decision"] in ("publish", "reject") and "reward_model" in m, m
                assert -1.0 <= m["reward_model"]["correlation"] <= 1.0
                if r["state"] == "rejected":
                    assert m["reasons"], m
            assert run["state"] == "published", [a["metrics"].get("reasons") for a in attempts]
            version = run["adapter_version"]
            assert version >= 1 and run["metrics"]["gate"]["passed"]
            assert (home / "adapters" / f"v{version}" / "adapter_config.json").exists()
            weights = load_file(home / "adapters" / f"v{version}" / "adapter_model.safetensors")
            assert max(float(v.abs().max()) for k, v in weights.items() if "lora_B" in k) > 0  # PPO moved it
            assert (home / "runs" / str(run["run_id"]) / "train.log").read_text().strip()

            # 2. Hot-swapped: every client heard of it, and new answers carry the version.
            assert c.status()["adapter_version"] == version
            assert _chat_and_rate(c, 2, 200) == [version, version]
            assert any(x["state"] == "running" and x["phase"] == "ppo" for x in progress)
            assert any(x["state"] == "published" and x["run_id"] == run["run_id"] for x in progress)
            assert changes and changes[-1]["adapter_version"] == version

            # 3. Roll back to the base.
            assert c.request("reinf/rollback", {"version": 0})["adapter_version"] == 0
            assert c.status()["adapter_version"] == 0
            assert c.chat("Write a function.", max_tokens=8)["adapter_version"] == 0

            # 4. kill -9 of the trainer in the middle of a run: failed, no new adapter, still serving.
            killed = c.request("reinf/retrain", {})["run_id"]
            _wait_phase(home, killed, "PPO step 1/")
            pid = next(r for r in c.request("reinf/runs", {})["runs"] if r["run_id"] == killed)["pid"]
            os.killpg(pid, signal.SIGKILL)
            run = _wait_run(c, killed)
            assert run["state"] == "failed" and "signal 9" in run["error"] and run["adapter_version"] is None
            assert not (home / "adapters" / f"v{version + 1}").exists()
            assert c.chat("Write a function.", max_tokens=8)["adapter_version"] == 0

            # 5. kill -9 of the daemon during a run.
            orphaned = c.request("reinf/retrain", {})["run_id"]
            _wait_phase(home, orphaned, '"phase": "reward_model"')
            trainer = next(r for r in c.request("reinf/runs", {})["runs"] if r["run_id"] == orphaned)["pid"]
        daemon.kill9()
        daemon = DaemonProcess(home, _env(home)).start()
        with daemon.client() as c:
            run = next(r for r in c.request("reinf/runs", {})["runs"] if r["run_id"] == orphaned)
            assert run["state"] == "failed" and "daemon stopped" in run["error"]
            deadline = time.monotonic() + 10
            while _alive(trainer) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not _alive(trainer)
            status = c.status()
            assert status["training"]["state"] == "idle" and status["adapter_version"] == 0
            assert c.chat("Write a function.", max_tokens=8)["adapter_version"] == 0

            # 6. Forget untrains: the adapter and the judge trained on the forgotten ratings are deleted.
            assert c.request("reinf/rollback", {"version": version})["adapter_version"] == version
            everything = (datetime.now(timezone.utc) + timedelta(minutes=1)).isoformat()
            out = subprocess.run(
                [sys.executable, "-m", "reinf", "forget", "--before", everything],
                env={**daemon.env, "REINF_HOME": str(home)}, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert out.returncode == 0, out.stderr
            assert f"deleted adapters v{version}, trained on those ratings" in out.stdout, out.stdout
            assert "deleted the reward model" in out.stdout and "serving the base model" in out.stdout
            assert c.status()["adapter_version"] == 0 and changes[-1]["adapter_version"] == 0
            assert not (home / "adapters" / f"v{version}").exists() and not (home / "reward_model").exists()
            assert c.chat("Write a function.", max_tokens=8)["adapter_version"] == 0
            with pytest.raises(RpcError, match=f"no good adapter version {version}"):
                c.request("reinf/rollback", {"version": version})
    finally:
        daemon.stop()
