"""The Jupyter server extension's handlers: the `/reinf/` page and a small REST API over the daemon.

Every handler is behind Jupyter's own login (`@web.authenticated`) and, for POST, its XSRF check. The
handlers check their input, call the daemon in a worker thread, and return its answer as JSON.
"""

from __future__ import annotations

import html
import json
from functools import partial
from pathlib import Path
from typing import Any

from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.ioloop import IOLoop

from .connection import Connection, DaemonUnavailable, RpcError, shared

STATIC = Path(__file__).with_name("static")
ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
INVALID_PARAMS = -32602
# No remote content and no inline script or style: everything comes from this server.
CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'self'",
    ]
)
MAX_LIMIT = 200


class _Reinf:
    """What every reinf handler shares: the strict CSP and the daemon connection."""

    auth_resource = "reinf"

    @property
    def content_security_policy(self) -> str:
        return CSP

    @property
    def connection(self) -> Connection:
        return shared()


class PageHandler(_Reinf, JupyterHandler):
    @web.authenticated
    def get(self) -> None:
        page = (STATIC / "index.html").read_text(encoding="utf-8")
        # The page sends this back in X-XSRFToken on every POST.
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(page.replace("{{xsrf}}", html.escape(self.xsrf_token.decode("ascii"), quote=True)))


class AssetHandler(_Reinf, JupyterHandler):
    @web.authenticated
    def get(self, name: str) -> None:
        if name not in ASSETS:
            raise web.HTTPError(404)
        self.set_header("Content-Type", ASSETS[name])
        self.set_header("Cache-Control", "no-cache")
        self.finish((STATIC / name).read_bytes())


def _bad(message: str) -> web.HTTPError:
    return web.HTTPError(400, message)


def _int(value: Any, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{name} must be a whole number, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"{low}–{high}" if high is not None else f"at least {low}"
        raise _bad(f"{name} must be {bound}, got {value}")
    return value


def _query_int(
    handler: web.RequestHandler, name: str, default: int, low: int, high: int | None = None
) -> int:
    text = handler.get_argument(name, str(default)).strip()
    try:
        value = int(text)
    except ValueError:
        raise _bad(f"{name} must be a whole number, got {text!r}") from None
    return _int(value, name, low, high)


class ApiHandler(_Reinf, APIHandler):
    """Calls one daemon method; subclasses turn the request into its params."""

    method = ""

    def params(self) -> dict[str, Any]:
        return {}

    def json_body(self, allowed: set[str]) -> dict[str, Any]:
        if not self.request.body:
            return {}
        try:
            body = json.loads(self.request.body)
        except ValueError:
            raise _bad("the body must be JSON") from None
        if not isinstance(body, dict):
            raise _bad("the body must be a JSON object")
        unknown = set(body) - allowed
        if unknown:
            raise _bad(f"unknown field {sorted(unknown)[0]!r}")
        return body

    async def call(self) -> None:
        params = self.params()
        try:
            result = await IOLoop.current().run_in_executor(
                None, partial(self.connection.request, self.method, params, timeout=60)
            )
        except DaemonUnavailable as exc:
            raise web.HTTPError(503, f"the reinf daemon is not available: {exc}") from None
        except RpcError as exc:
            raise web.HTTPError(400 if exc.code == INVALID_PARAMS else 502, exc.message) from None
        except (ConnectionError, TimeoutError) as exc:
            raise web.HTTPError(503, f"lost the connection to the reinf daemon: {exc}") from None
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(result))


class ReadHandler(ApiHandler):
    @web.authenticated
    async def get(self) -> None:
        await self.call()


class WriteHandler(ApiHandler):
    @web.authenticated
    async def post(self) -> None:
        await self.call()


class StatusHandler(ReadHandler):
    method = "reinf/status"


class QueueHandler(ReadHandler):
    """The review queue: unrated interactions, newest first."""

    method = "reinf/history"

    def params(self) -> dict[str, Any]:
        return {
            "unrated_only": True,
            "limit": _query_int(self, "limit", 20, 1, MAX_LIMIT),
            "offset": _query_int(self, "offset", 0, 0),
        }


class RunsHandler(ReadHandler):
    method = "reinf/runs"

    def params(self) -> dict[str, Any]:
        return {"limit": _query_int(self, "limit", 50, 1, MAX_LIMIT)}


class AdaptersHandler(ReadHandler):
    method = "reinf/adapters"


class TimelineHandler(ReadHandler):
    method = "reinf/ratingsTimeline"


class RateHandler(WriteHandler):
    method = "reinf/rate"

    def params(self) -> dict[str, Any]:
        # Checked by the daemon, whose -32602 message comes back as a 400: one set of rules and limits.
        return self.json_body({"interaction_id", "thumbs", "stars", "comment"})


MAX_CHAT_MESSAGES = 100


class ChatHandler(WriteHandler):
    """The JupyterLab chat panel's question, with the conversation so far (the daemon keeps no threads)."""

    method = "reinf/chat"

    def params(self) -> dict[str, Any]:
        messages = self.json_body({"messages"}).get("messages")
        if not isinstance(messages, list) or not 1 <= len(messages) <= MAX_CHAT_MESSAGES:
            raise _bad(f"messages must be a list of 1–{MAX_CHAT_MESSAGES} messages")
        for i, m in enumerate(messages):
            if (
                not isinstance(m, dict)
                or set(m) != {"role", "content"}
                or m["role"] not in ("user", "assistant")
            ):
                raise _bad(f"messages[{i}] must be {{role: 'user' | 'assistant', content}}")
            if not isinstance(m["content"], str) or not m["content"].strip():
                raise _bad(f"messages[{i}].content must be a non-empty string")
        if messages[-1]["role"] != "user":
            raise _bad("the last message must be the user's question")
        return {"messages": messages, "kind": "chat"}


class RollbackHandler(WriteHandler):
    method = "reinf/rollback"

    def params(self) -> dict[str, Any]:
        return self.json_body({"version"})


class RetrainHandler(WriteHandler):
    method = "reinf/retrain"

    def params(self) -> dict[str, Any]:
        return self.json_body(set())


class CancelHandler(WriteHandler):
    method = "reinf/cancelTraining"

    def params(self) -> dict[str, Any]:
        return self.json_body(set())


ROUTES: list[tuple[str, type[web.RequestHandler]]] = [
    ("reinf/", PageHandler),
    (r"reinf/static/([A-Za-z0-9_.-]+)", AssetHandler),
    ("reinf/api/status", StatusHandler),
    ("reinf/api/queue", QueueHandler),
    ("reinf/api/runs", RunsHandler),
    ("reinf/api/adapters", AdaptersHandler),
    ("reinf/api/timeline", TimelineHandler),
    ("reinf/api/rate", RateHandler),
    ("reinf/api/chat", ChatHandler),
    ("reinf/api/rollback", RollbackHandler),
    ("reinf/api/retrain", RetrainHandler),
    ("reinf/api/cancel", CancelHandler),
]


def setup_handlers(web_app: Any) -> None:
    base_url = web_app.settings["base_url"]
    handlers: list[Any] = [
        (url_path_join(base_url, "reinf"), web.RedirectHandler, {"url": url_path_join(base_url, "reinf/")})
    ]
    handlers += [(url_path_join(base_url, pattern), handler) for pattern, handler in ROUTES]
    web_app.add_handlers(".*$", handlers)
