"""One daemon connection per process, shared by the magics, the widgets and the server extension's handlers."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from reinf.client import Client, DaemonUnavailable, RpcError

__all__ = ["Connection", "DaemonUnavailable", "RpcError", "shared"]


class Connection:
    """Connects on first use (starting the daemon if none answers, as the CLI does) and again after a drop."""

    def __init__(self, connect: Callable[[], Any] | None = None) -> None:
        self._connect = connect or (lambda: Client.connect(start=True, client_name="jupyter"))
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        with self._lock:
            if self._client is not None and _closed(self._client):
                self._client = None  # the daemon went away since; connect again (and start it if need be)
            if self._client is None:
                self._client = self._connect()
            return self._client

    @property
    def connected(self) -> bool:
        """Whether a live connection is held (the next request then needs no connecting, nor starting)."""
        return self._client is not None and not _closed(self._client)

    def request(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
    ) -> dict[str, Any]:
        """Send one request; an error that is not the daemon's answer drops the connection for the next call.
        Setting `cancel` asks the daemon to stop; a chat then answers with what it had."""
        client = self.client()
        extra = {"cancel": cancel} if cancel is not None else {}
        try:
            return client.request(method, params or {}, on_progress=on_progress, timeout=timeout, **extra)
        except RpcError:
            raise
        except Exception:
            self.reset(client)
            raise

    def reset(self, client: Any = None) -> None:
        """Forget the connection (only `client`, when given), closing it."""
        with self._lock:
            if self._client is None or (client is not None and self._client is not client):
                return
            stale, self._client = self._client, None
        try:
            stale.close()
        except Exception:  # noqa: BLE001 - it is already broken; closing is a courtesy
            pass


def _closed(client: Any) -> bool:
    return bool(getattr(client, "closed", False))


_shared: Connection | None = None
_shared_lock = threading.Lock()


def shared() -> Connection:
    """The process-wide connection."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Connection()
        return _shared
