"""Adapters: the one owner of their statuses, their folders under `adapters/`, and which one the engine serves.

A version is `candidate` while it is being published, `active` while it serves, `retired` once another took
over (still good: rollback can return to it), `rejected` when it would not load, and `forgotten` when `forget`
deleted what it learnt. One rule picks a replacement wherever one is needed (start-up, rollback, forget): the
newest retired adapter whose folder still holds a loadable PEFT adapter, else the base (version 0). Paths are
stored relative to REINF_HOME, so a copied home keeps working.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from .paths import atomic_dir, private_dir, relative_to_home, under_home
from .store import Store

log = logging.getLogger("reinf.adapters")


class AdapterError(RuntimeError):
    """An adapter that is missing, cannot be loaded, or cannot be served; the message says why."""


class UnknownVersion(AdapterError):
    """A rollback to an adapter version that does not exist (or was never good)."""


class Adapters:
    """Thread-safe. `swap(version, path)` makes the engine serve an adapter (a job on its generation queue, so
    it waits for the generation in progress); it is only ever called from a worker thread, never the loop."""

    def __init__(
        self,
        home: Path,
        store: Store,
        *,
        swap: Callable[[int, Path | None], None],
        broadcast: Callable[[str, dict], None],
    ) -> None:
        self.home = home
        self.dir = home / "adapters"
        self.store = store
        self._swap = swap
        self._broadcast = broadcast
        self._lock = threading.Lock()  # one publish, rollback or untrain at a time

    def path(self, adapter: dict[str, Any]) -> Path:
        return under_home(adapter["path"], self.home)

    def active(self) -> dict[str, Any] | None:
        """The active adapter's row, its path made absolute (for the trainer); None when the base serves."""
        row = self.store.active_adapter()
        return None if row is None else {**row, "path": str(self.path(row))}

    def newest_good(
        self, *, below: int | None = None, exclude: Collection[int] = ()
    ) -> dict[str, Any] | None:
        """The newest retired adapter (under version `below`, not in `exclude`) whose folder loads."""
        for a in self.store.list_adapters():  # newest first
            if a["status"] != "retired" or a["version"] in exclude:
                continue
            if below is not None and a["version"] >= below:
                continue
            if adapter_problem(self.path(a)) is None:
                return a
        return None

    # -- start-up ---------------------------------------------------------------------------------

    def start(self) -> int:
        """Remove what an unfinished publish left, then serve the active adapter. One that will not load is
        rejected and the newest good one serves instead, else the base: a broken adapter must not keep the
        daemon from starting. Returns the version served."""
        private_dir(self.dir)
        for tmp in [*self.dir.glob(".tmp-v*"), *self.dir.glob(".v*.tmp-*"), *self.dir.glob(".v*.old-*")]:
            log.warning("removing %s, left by a publish that did not finish", tmp)
            shutil.rmtree(tmp, ignore_errors=True)
        adapter = self.store.active_adapter()
        failed = False
        while adapter is not None:
            version, path = adapter["version"], self.path(adapter)
            problem = adapter_problem(path)
            if problem is None:
                try:
                    self._swap(version, path)
                    return version
                except Exception as exc:  # noqa: BLE001 - any load failure: fall back, never refuse to start
                    problem = str(exc)
            log.warning("adapter v%s cannot be loaded (%s); marking it rejected", version, problem)
            self.store.set_adapter_status(version, "rejected")
            failed = True
            adapter = self.newest_good(below=version)
            if adapter is not None:
                log.warning("falling back to adapter v%s, the newest good one", adapter["version"])
                self.store.activate_adapter(adapter["version"])
        if failed:
            log.warning("no earlier adapter can be loaded; serving the base model (version 0)")
            self.store.activate_adapter(0)
        return 0

    # -- publish, rollback, untrain ---------------------------------------------------------------

    def publish(
        self, run_id: int, src: Path, evaluation: dict[str, Any], cancelled: Callable[[], bool]
    ) -> int:
        """Copy the candidate in `src` to `adapters/v<N>` atomically, serve it, and tell every client."""
        problem = adapter_problem(src)
        if problem:
            raise AdapterError(f"the candidate adapter in {src} is not loadable: {problem}")
        with self._lock:
            if cancelled():  # by `forget`, say, whose data this run trained on
                raise AdapterError("the run was cancelled before its adapter was published")
            version = self.store.next_adapter_version()
            final = self.dir / f"v{version}"
            # A v<N> folder already there was left by a crash after its rename but before its row: unreferenced.
            with atomic_dir(final) as tmp:
                shutil.copytree(src, tmp, dirs_exist_ok=True)
            self.store.add_adapter(
                version, run_id, relative_to_home(final, self.home), "candidate", evaluation
            )
            try:
                self._swap(version, final)
            except Exception as exc:
                self.store.set_adapter_status(version, "rejected")
                raise AdapterError(f"the engine could not load adapter v{version}: {exc}") from exc
            self.store.activate_adapter(version)
        self._broadcast(
            "reinf/adapterChanged", {"adapter_version": version, "reason": f"published by run {run_id}"}
        )
        return version

    def rollback(self, version: int | None = None) -> int:
        """Serve an earlier adapter: `version`, or the newest good one before the active one; 0 is the base."""
        with self._lock:
            adapters = {a["version"]: a for a in self.store.list_adapters()}
            active = self.store.active_adapter()
            current = active["version"] if active else 0
            if version is None:
                if current == 0:
                    raise AdapterError(
                        "the base model (version 0) is already serving; there is nothing earlier"
                    )
                earlier = self.newest_good(below=current)
                version = earlier["version"] if earlier else 0
            path = None
            if version != 0:
                a = adapters.get(version)
                if a is None or a["status"] not in ("active", "retired"):
                    good = sorted(v for v, x in adapters.items() if x["status"] in ("active", "retired"))
                    raise UnknownVersion(
                        f"there is no good adapter version {version}; known: 0 (the base)"
                        + "".join(f", {v}" for v in good)
                    )
                path = self.path(a)
                problem = adapter_problem(path)
                if problem:
                    raise AdapterError(f"adapter v{version} cannot be loaded: {problem}")
            self._swap(version, path)
            self.store.activate_adapter(version)
        self._broadcast("reinf/adapterChanged", {"adapter_version": version, "reason": "rollback"})
        return version

    def untrain(self, runs: Collection[int]) -> tuple[list[int], int]:
        """Delete every adapter that one of `runs` made (their rows stay, as 'forgotten', so that no version
        number is used twice); if one of them serves, serve the newest good one left. Returns (deleted, serving)."""
        with self._lock:
            adapters = self.store.list_adapters()
            tainted = [a for a in adapters if a["run_id"] in runs and a["status"] != "forgotten"]
            versions = [a["version"] for a in tainted]
            active = self.store.active_adapter()
            serving = active["version"] if active else 0
            if active is not None and active["version"] in versions:
                clean = self.newest_good(exclude=versions)
                serving = clean["version"] if clean else 0
                self._swap(serving, self.path(clean) if clean else None)
                self.store.activate_adapter(serving)
            for a in tainted:
                self.store.set_adapter_status(a["version"], "forgotten")
                shutil.rmtree(self.path(a), ignore_errors=True)
        if active is not None and active["version"] in versions:
            self._broadcast(
                "reinf/adapterChanged",
                {
                    "adapter_version": serving,
                    "reason": f"forget: v{active['version']} was trained on forgotten ratings",
                },
            )
        return versions, serving


def adapter_problem(path: Path) -> str | None:
    """None if `path` holds a PEFT adapter (config and weights readable); else what is wrong with it."""
    if not path.is_dir():
        return f"{path} does not exist"
    try:
        json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        return f"adapter_config.json is missing or not JSON ({exc})"
    weights = path / "adapter_model.safetensors"
    if weights.exists():
        try:
            with open(weights, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                if n <= 0 or n > weights.stat().st_size - 8:
                    return "adapter_model.safetensors is truncated"
                json.loads(fh.read(n))
        except (OSError, ValueError) as exc:
            return f"adapter_model.safetensors is corrupt ({exc})"
        return None
    if (path / "adapter_model.bin").is_file():
        return None
    return "no adapter_model.safetensors in it"
