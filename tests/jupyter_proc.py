"""Start and stop a real Jupyter server (or JupyterLab) with the reinf extension, isolated in a temporary folder."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterProcess:
    """`jupyter server` or `jupyter lab` on 127.0.0.1, with its own config, data, runtime and home folders."""

    def __init__(self, workdir: Path, env: dict[str, str], *, lab: bool = False) -> None:
        self.workdir = workdir
        self.root = workdir / "notebooks"
        self.lab = lab
        self.token = secrets.token_hex(16)
        self.port = 0
        self.log_path = workdir / ("jupyterlab.log" if lab else "jupyter-server.log")
        self.proc: subprocess.Popen[bytes] | None = None
        dirs = {name: workdir / name for name in ("config", "data", "runtime", "ipython", "home")}
        for path in [self.root, *dirs.values()]:
            path.mkdir(parents=True, exist_ok=True)
        self.runtime = dirs["runtime"]
        self.env = {
            **env,
            "JUPYTER_CONFIG_DIR": str(dirs["config"]),
            "JUPYTER_DATA_DIR": str(dirs["data"]),
            "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
            "IPYTHONDIR": str(dirs["ipython"]),
            "HOME": str(dirs["home"]),
        }
        # Enabled here too, so the test does not depend on how the package was installed.
        # The others stay off: they slow the start (jupyter_lsp runs npm) and nothing here uses them.
        extensions = {
            name: False for name in ("jupyter_lsp", "jupyter_server_terminals", "notebook_shim", "notebook")
        }
        extensions.update({"reinf.jupyter": True, "jupyterlab": lab})
        server_config = {"ServerApp": {"jpserver_extensions": extensions}}
        (dirs["config"] / "jupyter_server_config.json").write_text(json.dumps(server_config))
        if lab:
            # The page exposes window.jupyterapp, so a test can wait for the kernel itself.
            labconfig = dirs["config"] / "labconfig"
            labconfig.mkdir(exist_ok=True)
            (labconfig / "page_config.json").write_text(json.dumps({"exposeAppInBrowser": True}))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> JupyterProcess:
        module = "jupyterlab" if self.lab else "jupyter_server"
        args = [
            sys.executable, "-m", module, "--no-browser", "--allow-root", "--ip=127.0.0.1",
            f"--port={free_port()}", f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
        ]  # fmt: skip
        if self.lab:
            args.append("--LabApp.extension_manager=readonly")
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process's life
        self.proc = subprocess.Popen(
            args, env=self.env, cwd=self.root, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"jupyter exited with {self.proc.returncode}; log {self.log_path}:\n{self.log()}"
                )
            info = self._server_info()
            if info:
                self.port = int(info["port"])
                try:
                    self.get("/api/status", token=True)
                    return self
                except (OSError, urllib.error.URLError):
                    pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"jupyter did not answer within {timeout} s; log {self.log_path}:\n{self.log()}")

    def _server_info(self) -> dict | None:
        assert self.proc is not None
        path = self.runtime / f"jpserver-{self.proc.pid}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def get(self, path: str, *, token: bool = False) -> bytes:
        request = urllib.request.Request(self.url + path)
        if token:
            request.add_header("Authorization", f"token {self.token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout)
        except ProcessLookupError:
            pass


def start_both(daemon: Any, jupyter: JupyterProcess) -> None:
    """Start a daemon (a tests.daemon_proc.DaemonProcess) and Jupyter side by side: each takes seconds."""
    with ThreadPoolExecutor(1) as pool:
        started = pool.submit(daemon.start)
        jupyter.start()
        started.result()
