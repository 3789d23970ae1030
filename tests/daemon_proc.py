"""Start and stop real `reinf serve` processes for tests and benchmarks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("REINF_CACHE", REPO / ".cache"))


class DaemonProcess:
    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = home.parent / f"{home.name}-daemon.log"

    @property
    def info(self) -> dict:
        return json.loads((self.home / "daemon.json").read_text())

    def start(self, timeout: float = 180.0) -> DaemonProcess:
        old = self.home / "daemon.json"
        old.unlink(missing_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process's life
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reinf", "serve"],
            env=self.env,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"reinf serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.info.get("pid") == self.proc.pid:
                    return self
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"reinf serve did not start within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def client(self, name: str = "test"):  # noqa: ANN201
        from reinf.client import Client

        return Client.connect(self.home, start=False, client_name=name)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(timeout)

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)


def daemon_env(home: Path, **config: str) -> dict[str, str]:
    """Environment for a test daemon on the test-preset model; `config` adds REINF_<SECTION>_<KEY> values."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REINF_")}
    env.update(
        {
            "REINF_HOME": str(home),
            "REINF_CACHE": str(CACHE),
            "REINF_MODEL_NAME": "reinf-tiny-test",
            "REINF_TRAINING_MIN_NEW_RATINGS": "1000",
            "REINF_TRAINING_MIN_NEW_COMPLETIONS": "0",
            "OMP_NUM_THREADS": "1",
        }
    )
    env.update({f"REINF_{k.upper()}": v for k, v in config.items()})
    return env


@contextmanager
def running_daemon(home: Path, **config: str) -> Iterator[DaemonProcess]:
    d = DaemonProcess(home, daemon_env(home, **config)).start()
    try:
        yield d
    finally:
        d.stop()


def long_context_model(dest: Path) -> Path:
    """A copy of the test model that accepts 65,536 positions (its RoPE has no table to outgrow), so that a
    generation can run for tens of seconds: greedy decoding then reaches max_tokens instead of a stop token."""
    import shutil

    from reinf.models import resolve_model_path

    old = os.environ.get("REINF_CACHE")
    os.environ["REINF_CACHE"] = str(CACHE)
    try:
        src = Path(resolve_model_path("reinf-tiny-test"))
    finally:
        if old is None:
            os.environ.pop("REINF_CACHE", None)
        else:
            os.environ["REINF_CACHE"] = old
    shutil.copytree(src, dest)
    config = json.loads((dest / "config.json").read_text())
    config["max_position_embeddings"] = 65536
    (dest / "config.json").write_text(json.dumps(config))
    return dest
