"""The scheduler: decides when to train, runs the trainer as a subprocess, follows it, hands its adapter on.

One run at a time. A run starts when `training.min_new_ratings` interactions have been rated since the last
run (see `Store.counting_watermark`), when `training.min_new_completions` inline suggestions got their final
event since the last run started, or at once on `retrain()`. The daemon exports the Parquet snapshot into
`runs/<id>/` and starts `python -m reinf.training runs/<id>`; a watcher thread tails its `progress.jsonl`,
broadcasts `reinf/trainingProgress`, and on a clean exit with decision "publish" hands the adapter to
`Adapters.publish`, which copies it into place atomically and serves it. Publishing happens in the daemon, so
a trainer killed at any point never leaves a half adapter behind.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .adapters import Adapters
from .config import Config
from .paths import private_dir, write_json
from .store import Store

log = logging.getLogger("reinf.scheduler")

FINAL_STATES = ("published", "rejected", "failed", "cancelled")
TRAINER_MODULE = "reinf.training"


class SchedulerError(RuntimeError):
    """A training or adapter operation that could not be done; the message says why."""


class SchedulerBusy(SchedulerError):
    """A run is already going."""


@dataclass
class _Run:
    run_id: int
    run_dir: Path
    trigger: str = "manual"
    proc: subprocess.Popen | None = None
    phase: str = "snapshot"
    progress: float = 0.0
    message: str = "exporting the snapshot"
    cancel_requested: bool = False
    shutting_down: bool = False
    timed_out: bool = False
    thread: threading.Thread | None = None
    started: float = field(default_factory=time.monotonic)


class Scheduler:
    """Training control for the daemon. Every public method is thread-safe."""

    def __init__(
        self,
        cfg: Config,
        store: Store,
        *,
        adapters: Adapters,
        broadcast: Callable[[str, dict], None],
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.adapters = adapters
        self._broadcast = broadcast
        self.runs_dir = cfg.home / "runs"
        self._lock = threading.RLock()  # guards _run, _closed and _watermark_cache
        self._watermark_cache: int | None = None
        self._completions_cache: int | None = None  # final completion events since the newest run started
        self._run: _Run | None = None
        self._closed = False
        self.trainer_command = [
            sys.executable,
            "-m",
            TRAINER_MODULE,
        ]  # + the run folder; tests swap in a fake

    # -- start-up -------------------------------------------------------------------------------

    def start(self) -> None:
        """Clean up after a crash: a run the daemon was following when it stopped is recorded as failed."""
        private_dir(self.runs_dir)
        for run in self.store.unfinished_runs():
            stopped = _kill_trainer(run.get("pid"), self.runs_dir / str(run["run_id"]))
            error = "the daemon stopped during this run"
            if stopped:
                error += f"; its trainer (pid {run['pid']}) was still running and has been stopped"
            log.warning("run %s: %s", run["run_id"], error)
            self.store.update_run(run["run_id"], state="failed", finished=True, error=error)

    # -- triggers ---------------------------------------------------------------------------------

    def _watermark(self) -> int:
        # Read once, then kept as runs start and end: the rating path asks for it on every rating.
        with self._lock:
            if self._watermark_cache is None:
                self._watermark_cache = self.store.counting_watermark()
            return self._watermark_cache

    def until_next_training(self) -> int:
        """How many more interactions must be rated (explicitly) to start the next run by threshold."""
        new = self.store.rated_since(self._watermark())
        return max(0, self.cfg.training.min_new_ratings - new)

    def note_rating(self) -> None:
        """Called after each committed explicit rating: start a run if the threshold is reached."""
        try:
            with self._lock:
                if self._run is not None or self._closed or self.until_next_training() > 0:
                    return
            self.retrain("threshold")
        except SchedulerBusy:  # another rating got there first
            pass
        except Exception:  # the rating itself is committed; a run that cannot start must not fail it
            log.exception("could not start a training run at the rating threshold")

    def note_completion(self) -> None:
        """Called after each committed final completion event: start a run at `training.min_new_completions`."""
        try:
            with self._lock:
                if self._completions_cache is None:  # read once (this event included), then counted here
                    self._completions_cache = self.store.completions_since_last_run()
                else:
                    self._completions_cache += 1
                need = self.cfg.training.min_new_completions
                if need <= 0 or self._run is not None or self._closed or self._completions_cache < need:
                    return
            self.retrain("threshold")
        except SchedulerBusy:
            pass
        except Exception:  # the event itself is committed; a run that cannot start must not fail it
            log.exception("could not start a training run at the completions threshold")

    def retrain(self, trigger: str = "manual", fresh_judge: bool = False) -> int:
        """Start a run now; returns its id. Raises `SchedulerBusy` while another run is going. With
        `fresh_judge` the run trains a new reward model and ignores the saved one (a user whose taste changed)."""
        with self._lock:
            if self._closed:
                raise SchedulerError("the daemon is shutting down; no new training run can start")
            if self._run is not None:
                r = self._run
                raise SchedulerBusy(
                    f"training run {r.run_id} is already going ({r.phase}, {100 * r.progress:.0f}%); "
                    "wait for it or cancel it with reinf/cancelTraining"
                )
            watermark = self.store.max_rating_id()
            run_id = self.store.create_run(trigger, self.store.ratings_total(), watermark)
            self._watermark_cache = watermark
            self._completions_cache = 0
            run = self._run = _Run(run_id, private_dir(self.runs_dir / str(run_id)), trigger)
        self._notify(run, "running")
        try:
            n_rows = self.store.export_snapshot(run.run_dir / "data.parquet")
            write_json(
                run.run_dir / "config.json", {**self._trainer_config(run_id), "fresh_judge": fresh_judge}
            )
            log.info("run %s: %d rated interactions exported; starting the trainer", run_id, n_rows)
            run.proc = self._spawn(run.run_dir)
            self.store.update_run(run_id, state="running", pid=run.proc.pid)
        except Exception as exc:
            if run.proc is not None:
                _kill_group(run.proc.pid, signal.SIGKILL)
            error = f"could not start the trainer: {exc}"
            self.store.update_run(run_id, state="failed", finished=True, error=error)
            with self._lock:
                self._run = None
            self._notify(run, "failed", message=error)
            raise SchedulerError(error) from exc
        run.thread = threading.Thread(
            target=self._watch, args=(run,), name=f"reinf-run-{run_id}", daemon=True
        )
        run.thread.start()
        if run.cancel_requested:  # cancelled while the snapshot was being written
            _kill_group(run.proc.pid, signal.SIGKILL)
        return run_id

    def _trainer_config(self, run_id: int) -> dict[str, Any]:
        active = self.adapters.active()
        config = self.cfg.to_dict()
        config["store"] = {**config["store"], "encryption_key": ""}  # the trainer never opens the database
        return {
            **config,
            "run_id": run_id,
            "base_model_path": str(self._base_model_path()),
            "active_adapter": (
                {
                    "version": active["version"],
                    "path": active["path"],
                    **self._watermarks_of(active.get("run_id")),
                }
                if active
                else None
            ),
        }

    def _watermarks_of(self, run_id: int | None) -> dict[str, int | None]:
        """What run `run_id` had seen. `event_watermark`: the newest rating or event id when it started (None
        where unknown: no such run, or one from before event watermarks); the events after it are new to its
        adapter. `held_out_after`: the watermark after which it held completions out for its gate, so new to its
        adapter too (its metrics say; 0, all of them up to its own watermark, where they do not)."""
        run = (self.store.get_run(run_id) if run_id is not None else None) or {}
        held: Any = run.get("metrics")
        for key in ("data", "completions", "held_out_after"):
            held = held.get(key) if isinstance(held, dict) else None
        return {
            "event_watermark": int(run["event_watermark"]) if run.get("event_watermark") else None,
            "held_out_after": held
            if isinstance(held, int) and not isinstance(held, bool) and held > 0
            else 0,
        }

    def _base_model_path(self) -> str:
        try:
            from .models import resolve_model_path
        except ImportError:  # pragma: no cover - models.py lands with the engine
            return self.cfg.model.name
        return str(resolve_model_path(self.cfg.model.name))

    def _spawn(self, run_dir: Path) -> subprocess.Popen:
        threads = str(max(1, self.cfg.training.threads))
        env = {
            **os.environ,
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "OPENBLAS_NUM_THREADS": threads,
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
            "REINF_DAEMON_PID": str(os.getpid()),
        }
        with open(run_dir / "train.log", "ab") as logf:  # the trainer's stderr (its log) goes here
            os.chmod(run_dir / "train.log", 0o600)
            return subprocess.Popen(
                [*self.trainer_command, str(run_dir)],
                cwd=run_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                start_new_session=True,  # its own process group, so cancel stops all of it
            )

    # -- following a run --------------------------------------------------------------------------

    def _watch(self, run: _Run) -> None:
        progress_file = run.run_dir / "progress.jsonl"
        offset = 0
        deadline = run.started + self.cfg.training.timeout_s
        rc = None
        while rc is None:
            try:
                rc = run.proc.wait(timeout=0.25)
            except subprocess.TimeoutExpired:
                rc = None
            offset = self._follow(run, progress_file, offset)
            if rc is None and time.monotonic() > deadline and not run.timed_out:
                run.timed_out = True
                _kill_group(run.proc.pid, signal.SIGKILL)
        try:
            self._finish(run, rc)
        except Exception as exc:  # noqa: BLE001 - recorded on the run, never lost
            log.exception("run %s: finishing failed", run.run_id)
            self.store.update_run(
                run.run_id, state="failed", finished=True, error=f"finishing the run failed: {exc}"
            )
            self._notify(run, "failed", message=str(exc))
        finally:
            with self._lock:
                if self._run is run:
                    self._run = None

    def _follow(self, run: _Run, path: Path, offset: int) -> int:
        """Broadcast each new complete line of progress.jsonl; returns the new offset."""
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except FileNotFoundError:
            return offset
        end = data.rfind(b"\n")
        if end < 0:
            return offset
        for line in data[: end + 1].splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            run.phase = str(event.get("phase", run.phase))
            run.progress = float(event.get("progress", run.progress))
            run.message = str(event.get("message", ""))
            self._notify(run, "running")
        return offset + end + 1

    def _finish(self, run: _Run, rc: int) -> None:
        if run.shutting_down:
            self._end(run, "cancelled", error="the daemon shut down during the run")
            return
        if run.cancel_requested:
            self._end(run, "cancelled", error="cancelled on request")
            return
        if run.timed_out:
            self._end(
                run,
                "failed",
                error=f"the run took longer than training.timeout_s = {self.cfg.training.timeout_s} s",
            )
            return
        if rc != 0:
            how = f"was killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
            self._end(run, "failed", error=f"the trainer {how}{_last_error(run.run_dir / 'train.log')}")
            return
        try:
            metrics = json.loads((run.run_dir / "metrics.json").read_text())
        except (OSError, ValueError) as exc:
            self._end(run, "failed", error=f"the trainer exited without a readable metrics.json ({exc})")
            return
        if metrics.get("decision") != "publish":
            reasons = metrics.get("reasons") or ["the trainer did not ask to publish"]
            self._end(run, "rejected", metrics=metrics, message="; ".join(map(str, reasons)))
            return
        try:
            version = self.adapters.publish(
                run.run_id, run.run_dir / "adapter", metrics.get("gate") or {}, lambda: run.cancel_requested
            )
        except Exception as exc:  # noqa: BLE001
            self._end(run, "failed", metrics=metrics, error=f"publishing failed: {exc}")
            return
        self._end(run, "published", metrics=metrics, message=f"adapter v{version} published and serving")

    def _end(
        self,
        run: _Run,
        state: str,
        *,
        metrics: dict | None = None,
        error: str | None = None,
        message: str = "",
    ) -> None:
        fields: dict[str, Any] = {"state": state, "finished": True}
        if metrics is not None:
            fields["metrics"] = metrics
        if error is not None:
            fields["error"] = error
        self.store.update_run(run.run_id, **fields)
        watermark = self.store.counting_watermark()  # read here, not by the next status
        with self._lock:
            self._watermark_cache = watermark
        log.info("run %s %s%s", run.run_id, state, f": {error or message}" if (error or message) else "")
        run.progress = 1.0 if state == "published" else run.progress
        self._notify(run, state, message=error or message)

    def _notify(self, run: _Run, state: str, message: str | None = None) -> None:
        self._broadcast(
            "reinf/trainingProgress",
            {
                "run_id": run.run_id,
                "state": state,
                "phase": run.phase if state == "running" else "done",
                "progress": run.progress,
                "message": run.message if message is None else message,
                **_timing(run, running=state == "running"),
            },
        )

    # -- control and reads ------------------------------------------------------------------------

    def cancel(self) -> bool:
        """Stop the running trainer; True if there was one."""
        with self._lock:
            run = self._run
            if run is None:
                return False
            run.cancel_requested = True
            proc = run.proc
        if proc is not None:
            _kill_group(proc.pid, signal.SIGTERM)
            threading.Timer(5.0, _kill_group, args=(proc.pid, signal.SIGKILL)).start()
        return True

    def status(self) -> dict[str, Any]:
        with self._lock:
            run = self._run
            if run is None:
                return {"state": "idle"}
            return {
                "state": "running",
                "run_id": run.run_id,
                "phase": run.phase,
                "progress": run.progress,
                "message": run.message,
                **_timing(run),
            }

    def last_run(self) -> dict[str, Any] | None:
        return self.store.last_run()

    def close(self) -> None:
        """At daemon shutdown: stop a running trainer and record the run as cancelled."""
        with self._lock:
            self._closed = True
            run = self._run
            if run is not None:
                run.shutting_down = True
        if run is None:
            return
        if run.proc is not None:
            _kill_group(run.proc.pid, signal.SIGKILL)
        if run.thread is not None:
            run.thread.join(timeout=10.0)


# -- helpers ------------------------------------------------------------------------------------------

# Below this much progress, the time left would be a guess from the start-up alone.
ETA_MIN_PROGRESS = 0.05


def _timing(run: _Run, *, running: bool = True) -> dict[str, Any]:
    """How the run was started, how long it has run, and, while it runs and once it has made some progress,
    the time left at its pace so far (None otherwise)."""
    elapsed = time.monotonic() - run.started
    eta = None
    if running and ETA_MIN_PROGRESS <= run.progress < 1.0:
        eta = round(elapsed * (1.0 - run.progress) / run.progress, 1)
    return {"trigger": run.trigger, "elapsed_s": round(elapsed, 1), "eta_s": eta}


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _is_our_trainer(pid: int, run_dir: Path) -> bool:
    """True if `pid` runs `python -m reinf.training <run_dir>` (not some process that reused the id)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    args = [a.decode(errors="replace") for a in args]
    return TRAINER_MODULE in args and any(Path(a) == run_dir for a in args if a)


def _kill_trainer(pid: int | None, run_dir: Path) -> bool:
    """Kill an orphaned trainer of `run_dir` if it still runs; True if one was stopped."""
    if not pid or not _is_our_trainer(pid, run_dir):
        return False
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and _is_our_trainer(pid, run_dir):
        time.sleep(0.05)
    return True


def _last_error(log_path: Path) -> str:
    """The last meaningful line of the trainer's log, to say why it failed."""
    try:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return f": {lines[-1][:300]}" if lines else ""
