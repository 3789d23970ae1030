"""Faults: kill -9 of the daemon under a rating burst, a full disk, a read-only REINF_HOME, broken adapters
at start-up, and kill -9 of the trainer at random points.

Full disk and read-only home use a small tmpfs mounted for the test (root can mount; elsewhere the test falls
back to RLIMIT_FSIZE on the daemon and to chmod 0500, which bind a process that is not root).
"""

from __future__ import annotations

import errno
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from reinf.client import DaemonUnavailable, RpcError
from reinf.store import Store

from .daemon_proc import CACHE, DaemonProcess, daemon_env
from .trainer_fixtures import FAST_TRAINING

LONG = bool(os.environ.get("REINF_LONG"))
KILL_ROUNDS = 10 if LONG else 1
RATERS = 4


# -- small file systems ------------------------------------------------------------------------------


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[bool]:
    """Mount a tmpfs of `size` at `path`; yields False (and mounts nothing) where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = os.geteuid() == 0 and _mount("-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path))
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path) -> int:
    """Write `path` until the file system (or the file size limit) takes not one byte more."""
    n = 0
    with open(path, "wb", buffering=0) as fh:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1):
            try:
                while True:
                    n += fh.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno in (errno.ENOSPC, errno.EFBIG), exc
    return n


def export_ratings(client: Any, tmp_path: Path) -> dict[int, dict[str, Any]]:
    out = tmp_path / f"export-{time.monotonic_ns()}.jsonl"
    client.request("reinf/export", {"format": "jsonl", "path": str(out)})
    ratings = {}
    for line in out.read_text().splitlines():
        row = json.loads(line)
        for r in row["ratings"] or []:
            ratings[r["id"]] = {**r, "interaction_id": row["interaction_id"]}
    out.unlink()
    return ratings


# -- kill -9 under load -------------------------------------------------------------------------------


def test_kill_9_during_a_rating_burst_keeps_every_acknowledged_rating(tmp_path: Path) -> None:
    home = tmp_path / "home"
    d = DaemonProcess(home, daemon_env(home)).start()
    rng = random.Random()
    acked: dict[int, tuple[str, int]] = {}
    lock = threading.Lock()
    try:
        with d.client() as c:
            iids = [c.chat(f"# task {i}\n", max_tokens=1)["interaction_id"] for i in range(6)]
        for round_ in range(KILL_ROUNDS):
            errors: list[BaseException] = []

            def rater(n: int, round_: int = round_, errors: list[BaseException] = errors) -> None:
                try:
                    client = d.client(f"rater-{n}")
                except DaemonUnavailable:
                    return
                try:
                    while True:
                        iid, stars = rng.choice(iids), rng.randint(1, 5)
                        try:
                            answer = client.rate(iid, stars=stars, comment=f"round {round_}")
                        except (DaemonUnavailable, OSError):
                            return  # the daemon is gone: this rating was never acknowledged
                        with lock:
                            acked[answer["rating_id"]] = (iid, stars)
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)
                finally:
                    client._sock.close()

            threads = [threading.Thread(target=rater, args=(n,), daemon=True) for n in range(RATERS)]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.5, 2.0))
            with lock:
                before_kill = len(acked)
            d.kill9()
            for t in threads:
                t.join(30)
            assert not any(t.is_alive() for t in threads), "a client hung after the daemon died"
            assert not errors, errors
            assert before_kill > 0, "no rating was acknowledged before the kill: the burst never started"
            d.start()
            with d.client() as c:
                stored = export_ratings(c, tmp_path)
                total = c.status()["ratings_total"]
            lost = {rid: v for rid, v in acked.items() if rid not in stored}
            assert not lost, f"round {round_}: {len(lost)} of {len(acked)} acknowledged ratings are gone"
            wrong = {
                rid
                for rid, (iid, stars) in acked.items()
                if (stored[rid]["interaction_id"], stored[rid]["stars"]) != (iid, stars)
            }
            assert not wrong, wrong
            assert total >= len({iid for iid, _ in acked.values()})  # rated answers: a re-rating counts once
        print(f"\nkill -9: {KILL_ROUNDS} rounds, {len(acked)} acknowledged ratings, all of them kept")
    finally:
        d.stop()


# -- a full disk, a read-only home --------------------------------------------------------------------


def test_a_full_disk_is_a_clear_error_the_daemon_survives_and_nothing_is_lost(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with tmpfs(home, "6m") as mounted:
        d = DaemonProcess(home, daemon_env(home)).start()
        try:
            if not mounted:  # no tmpfs here: a file size limit on the daemon fills "the disk" instead
                limit = (home / "reinf.duckdb").stat().st_size + 64 * 1024
                resource.prlimit(d.proc.pid, resource.RLIMIT_FSIZE, (limit, limit))
            with d.client() as c:
                iid = c.chat("def before_the_disk_filled():", max_tokens=2)["interaction_id"]
                kept = c.rate(iid, stars=2)["rating_id"]
                filler = home / "filler"
                fill(filler)
                for attempt in range(3):
                    with pytest.raises(RpcError) as err:
                        c.rate(iid, stars=5, comment="x" * 20_000 + str(attempt))
                    message = err.value.message
                    assert "No space left on device" in message or "File too large" in message, message
                    assert "nothing was stored" in message, message
                with pytest.raises(RpcError) as err:
                    c.chat("def while_the_disk_is_full():\n" + "#" * 20_000, max_tokens=2)
                assert "nothing was stored" in err.value.message
                status = c.status()  # reads still work, and the daemon is still up
                assert d.proc.poll() is None
                filler.unlink()
                if not mounted:
                    resource.prlimit(d.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
                after = c.rate(iid, stars=4)["rating_id"]
                ratings = export_ratings(c, tmp_path)
                assert kept in ratings and after in ratings
                assert [r["stars"] for r in ratings.values() if r["source"] == "explicit"] == [2, 4]
                # the same answer rated again: stored, and still one rated answer
                assert c.status()["ratings_total"] == status["ratings_total"]
        finally:
            d.stop()


def _serve(home: Path, **config: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reinf", "serve"],
        env=daemon_env(home, **config),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_full_disk_at_start_up_is_a_clear_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with tmpfs(home, "2m") as mounted:
        if not mounted:
            pytest.skip("cannot mount a small tmpfs here (not root); the running case covers RLIMIT_FSIZE")
        Store(home / "reinf.duckdb").close()
        fill(home / "filler")
        out = _serve(home)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "disk is full" in out.stderr and str(home) in out.stderr, out.stderr[-2000:]


def test_a_read_only_home_is_a_clear_error(tmp_path: Path) -> None:
    """As root, chmod 0500 stops nothing (and the daemon's owner may chmod its home back): the home is a tmpfs
    remounted read-only, which binds root too."""
    home = tmp_path / "home"
    with tmpfs(home, "4m") as mounted:
        if not mounted:
            pytest.skip(
                "cannot mount a tmpfs here (not root), and nothing else makes a folder read-only to its owner"
            )
        Store(home / "reinf.duckdb").close()
        assert _mount("-o", "remount,ro", str(home)), "could not remount the tmpfs read-only"
        with pytest.raises(OSError):  # the check of the check: this home really is read-only
            (home / "probe").write_text("x")
        out = _serve(home)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "read-only file system" in out.stderr and str(home) in out.stderr, out.stderr[-2000:]


# -- adapters at start-up ------------------------------------------------------------------------------


def make_adapter(folder: Path, seed: int) -> Path:
    """A real PEFT LoRA adapter for the test-preset model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from reinf.models import resolve_model_path

    os.environ.setdefault("REINF_CACHE", str(CACHE))
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("reinf-tiny-test"))
    torch.manual_seed(seed)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(folder)
    return folder


def test_broken_adapters_at_start_up_fall_back_to_the_last_good_one_then_the_base(tmp_path: Path) -> None:
    home = tmp_path / "home"
    adapters = home / "adapters"
    adapters.mkdir(parents=True)
    good = make_adapter(adapters / "v1", seed=1)
    shutil.copytree(good, adapters / "v2")
    shutil.copytree(good, adapters / "v3")
    store = Store(home / "reinf.duckdb")
    for v in (1, 2, 3):
        run = store.create_run("manual", 0, 0)
        store.update_run(run, state="published", finished=True)
        store.add_adapter(v, run, str(adapters / f"v{v}"), "candidate", {})
        store.activate_adapter(v)  # v1 and v2 end up retired, v3 active
    store.close()
    # v3: the header of its weights is intact, the tensors are cut off; v2: its folder is gone.
    weights = adapters / "v3" / "adapter_model.safetensors"
    header = 8 + int.from_bytes(weights.read_bytes()[:8], "little")
    weights.write_bytes(weights.read_bytes()[: header + 16])
    shutil.rmtree(adapters / "v2")

    d = DaemonProcess(home, daemon_env(home))
    try:
        d.start()
        with d.client() as c:
            status = c.status()
            assert status["adapter_version"] == 1, status
            assert c.chat("def still_serving():", max_tokens=2)["adapter_version"] == 1
            states = {a["version"]: a["status"] for a in c.request("reinf/adapters", {})["adapters"]}
        assert states == {3: "rejected", 2: "retired", 1: "active"}, states
        log = d.log()
        assert "v3" in log and "falling back to adapter v1" in log, log[-3000:]
        d.stop()
        # Now the last good one breaks too: its config is not JSON. The base model serves, and says so.
        (adapters / "v1" / "adapter_config.json").write_text("{not json")
        d.start()
        with d.client() as c:
            assert c.status()["adapter_version"] == 0
            assert c.chat("def base_again():", max_tokens=2)["adapter_version"] == 0
        assert "serving the base model" in d.log()
    finally:
        d.stop()


# -- kill -9 of the trainer ------------------------------------------------------------------------------

PHASES = ["snapshot", "load", "reward_model", "ppo", "eval", "save"]


def fast_training_env(home: Path) -> dict[str, str]:
    config = {
        f"{section}_{key}": str(value)
        for section, values in FAST_TRAINING.items()
        for key, value in values.items()
    }
    return daemon_env(home, **config)


def prefilled_home(home: Path, n: int, **kw: Any) -> Path:
    """A home whose store holds `n` chats answered by the test model and rated (see trainer_fixtures)."""
    from .trainer_fixtures import fill_home, tiny_model

    home.mkdir(parents=True, exist_ok=True)
    store = Store(home / "reinf.duckdb")
    try:
        fill_home(store, tiny_model(), n, **kw)
    finally:
        store.close()
    return home


def wait_for_run(client: Any, run_id: int, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run = next(r for r in client.request("reinf/runs", {"limit": 50})["runs"] if r["run_id"] == run_id)
        if (
            run["state"] in ("published", "rejected", "failed", "cancelled")
            and client.status()["training"]["state"] == "idle"
        ):
            return run
        assert time.monotonic() < deadline, f"run {run_id} did not end: {run}"
        time.sleep(0.2)


def assert_adapters_consistent(home: Path, client: Any) -> None:
    """No half-published adapter: no temporary folder, no folder without its row, every good row loadable."""
    from reinf.adapters import adapter_problem
    from reinf.paths import under_home

    folders = {p.name for p in (home / "adapters").iterdir()}
    assert not [f for f in folders if f.startswith(".")], folders  # a publish's temporary folder
    listing = client.request("reinf/adapters", {})
    rows = {f"v{a['version']}": a for a in listing["adapters"]}
    assert folders <= set(rows), f"adapter folders without a row: {folders - set(rows)}"
    for name, a in rows.items():
        if a["status"] in ("active", "retired"):
            path = under_home(a["path"], home)
            assert adapter_problem(path) is None, (name, adapter_problem(path))
    active = [a["version"] for a in listing["adapters"] if a["status"] == "active"]
    assert client.status()["adapter_version"] == (active[0] if active else 0)
    assert client.chat("def still_answers():", max_tokens=2)["adapter_version"] == (
        active[0] if active else 0
    )


@pytest.fixture(scope="module")
def training_daemon(tmp_path_factory: pytest.TempPathFactory):
    """A daemon with fast training settings over 64 chats rated by a scripted user who likes airy answers.
    The tests below share it, in order: kills of the trainer and the daemon, then the training-safety tests."""
    home = prefilled_home(tmp_path_factory.mktemp("training") / "home", 64)
    d = DaemonProcess(home, fast_training_env(home)).start()
    yield d
    d.stop()


def test_kill_9_of_the_trainer_at_any_phase_never_half_publishes(training_daemon: DaemonProcess) -> None:
    d, home = training_daemon, training_daemon.home
    rng = random.Random()
    phases = PHASES if LONG else [rng.choice(PHASES[2:])]
    with d.client() as c:
        for phase in phases:
            run_id = c.request("reinf/retrain", {})["run_id"]
            progress = home / "runs" / str(run_id) / "progress.jsonl"
            deadline = time.monotonic() + 300
            while f'"phase": "{phase}"' not in (progress.read_text() if progress.exists() else ""):
                if c.status()["training"]["state"] == "idle" or time.monotonic() > deadline:
                    break  # the run ended (rejected early) before reaching this phase
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 0.5))
            pid = next(r for r in c.request("reinf/runs", {})["runs"] if r["run_id"] == run_id)["pid"]
            try:
                os.killpg(pid, 9)
            except (ProcessLookupError, TypeError):
                pass  # it had already finished
            run = wait_for_run(c, run_id)
            assert run["state"] in ("failed", "rejected", "published"), run
            if run["state"] == "failed":
                assert "killed by signal 9" in (run["error"] or ""), run
            assert_adapters_consistent(home, c)
    print(f"\nkilled the trainer in {phases}; no half-published adapter")


def test_kill_9_of_the_daemon_during_a_run_leaves_no_trainer_and_no_half_adapter(
    training_daemon: DaemonProcess,
) -> None:
    d, home = training_daemon, training_daemon.home
    with d.client() as c:
        run_id = c.request("reinf/retrain", {})["run_id"]
        deadline = time.monotonic() + 120
        while (
            pid := next(r for r in c.request("reinf/runs", {})["runs"] if r["run_id"] == run_id)["pid"]
        ) is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(random.uniform(0.5, 3.0))
    d.kill9()
    d.start()
    with d.client() as c:
        run = next(r for r in c.request("reinf/runs", {})["runs"] if r["run_id"] == run_id)
        assert run["state"] in ("failed", "published", "rejected"), run
        if run["state"] == "failed":
            assert "daemon stopped" in run["error"], run
        assert_adapters_consistent(home, c)
    cmdline = Path(f"/proc/{pid}/cmdline")
    assert not cmdline.exists() or b"reinf.training" not in cmdline.read_bytes(), (
        "the orphaned trainer runs on"
    )


# -- training safety: poisoned ratings and reward hacking, on the same daemon, after the kills above ------


def _train_now(client: Any) -> dict[str, Any]:
    return wait_for_run(client, client.request("reinf/retrain", {})["run_id"])


@pytest.mark.skipif(
    not LONG, reason="a whole PPO run: make test-long runs it (test_trainer.py checks a publish)"
)
def test_reward_hacking_shows_in_the_metrics_and_is_bounded(training_daemon: DaemonProcess) -> None:
    """Every PPO step reports its KL to the base and its response length, so drift is visible; a published
    adapter is within the KL bound and the general-loss margin, and the length cannot pass the cap."""
    with training_daemon.client() as c:
        before = c.status()["adapter_version"]
        run = _train_now(c)
        version = c.status()["adapter_version"]
        assert_adapters_consistent(training_daemon.home, c)
    metrics = run["metrics"]
    assert run["state"] in ("published", "rejected"), run
    assert "ppo" in metrics, f"the honest run stopped before PPO: {metrics.get('reasons')}"
    history = metrics["ppo"]["history"]
    assert history and all({"kl", "response_tokens", "score", "beta"} <= set(step) for step in history)
    cap = FAST_TRAINING["training"]["max_response_tokens"]
    assert all(0 < step["response_tokens"] <= cap for step in history), history  # length drift is capped
    gate = metrics["gate"]
    assert {
        "kl_to_active",
        "kl_to_base",
        "max_kl",
        "general_loss_increase",
        "max_general_loss_increase",
    } <= set(gate)
    if run["state"] == "published":
        assert gate["passed"] and gate["kl_to_active"] <= gate["max_kl"]
        assert gate["general_loss_increase"] <= gate["max_general_loss_increase"]
        assert version == run["adapter_version"]
    else:
        assert not gate["passed"] and gate["reasons"] and version == before
    print(
        f"\nhonest run: {run['state']}, KL per step {[round(s['kl'], 3) for s in history]}, response tokens "
        f"{[round(s['response_tokens'], 1) for s in history]}, gate KL {gate['kl_to_base']:.3f}"
    )


def test_a_poisoned_stream_is_rejected(training_daemon: DaemonProcess) -> None:
    """As many new answers again, rated against the user's taste (inverted). The judge trained on the earlier
    ratings scores them the other way round, so the run stops before PPO and the adapter that serves stays."""
    from .trainer_fixtures import QUESTIONS, whitespace_stars

    home = training_daemon.home
    with training_daemon.client() as c:
        if not (
            home / "reward_model" / "meta.json"
        ).exists():  # the kills above may have stopped every run early
            _train_now(c)
        judge = json.loads((home / "reward_model" / "meta.json").read_text())
        before = c.status()["adapter_version"]
        for q in QUESTIONS[:64]:
            r = c.chat(q, max_tokens=24, temperature=1.0)
            c.rate(r["interaction_id"], stars=6 - whitespace_stars(r["text"]))
        run = _train_now(c)
        metrics, rm = run["metrics"], run["metrics"]["reward_model"]
        assert run["state"] == "rejected", run
        reason = metrics["reasons"][0]
        # Most often the earlier judge finds the contradiction; else the judge trained on the mix of honest
        # and inverted ratings is no better than chance. Either stops the run before PPO.
        assert "contradict the earlier ones" in reason or "no better than chance" in reason, metrics
        assert "ppo" not in metrics and c.status()["adapter_version"] == before
        if rm["contradicted"]:  # then nothing was trained on the poisoned ratings, not even the judge
            assert json.loads((home / "reward_model" / "meta.json").read_text()) == judge
        assert_adapters_consistent(home, c)
    check = rm["consistency"]
    print(
        f"\npoisoned stream: rejected ({reason[:60]}...); the earlier judge scores the {check['n_new']} new "
        f"ratings with correlation {check['correlation']:.3f} (p = {check['p_contradiction']:.3g})"
    )


def test_constant_ratings_do_not_publish(training_daemon: DaemonProcess) -> None:
    """Every answer re-rated 3 stars: nothing to learn from, so the run stops before anything is trained."""
    with training_daemon.client() as c:
        before = c.status()["adapter_version"]
        items = c.request("reinf/history", {"limit": 500})["items"]
        for item in items:
            c.rate(item["interaction_id"], stars=3)
        run = _train_now(c)
        reason = run["metrics"]["reasons"][0]
        assert run["state"] == "rejected" and "was liked or disliked (all got 3 stars)" in reason, run
        assert "ppo" not in run["metrics"] and "reward_model" not in run["metrics"]
        assert c.status()["adapter_version"] == before
