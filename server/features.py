"""LSP handlers: one thin function per method. They validate, call the backend, and answer."""

from __future__ import annotations

import logging
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol, lsp_method

from . import __version__
from .adapters import AdapterError
from .backend import Backend, NotAvailable
from .scheduler import SchedulerBusy, SchedulerError
from .store import StoreError

log = logging.getLogger("reinf.features")

ACCEPT_COMMAND = "reinf.accepted"


class ServerBusy(JsonRpcException):
    CODE = -32001
    MESSAGE = "Busy"


class FeatureUnavailable(JsonRpcException):
    CODE = -32002
    MESSAGE = "Not available"


class ReinfProtocol(LanguageServerProtocol):
    """One per connection. `exit` closes this connection only, never the daemon."""

    @lsp_method(types.EXIT)
    def lsp_exit(self, *args: Any) -> Any:
        if (user_handler := self.fm.features.get(types.EXIT)) is not None:
            yield user_handler, args, None
        if self.writer is not None:
            self.writer.close()


def _client_name(ls: LanguageServer) -> str:
    return getattr(ls, "reinf_client", None) or "unknown"


def _token(params: Any) -> Any:
    if isinstance(params, dict):
        return params.get("partialResultToken") or params.get("workDoneToken")
    return None


def _errors(fn):  # noqa: ANN001, ANN202
    """Map backend errors onto JSON-RPC errors with a clear message."""
    import functools

    def convert(exc: Exception) -> Exception:
        if isinstance(exc, JsonRpcException):
            return exc
        if isinstance(exc, SchedulerBusy):
            return ServerBusy(str(exc))
        if isinstance(exc, (NotAvailable, SchedulerError, AdapterError, StoreError)):
            return FeatureUnavailable(str(exc))
        return exc

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except Exception as exc:
            raise convert(exc) from exc

    return wrapper


def build_server(backend: Backend) -> LanguageServer:
    """A language server for one connection, sharing `backend` with every other connection."""
    ls = LanguageServer(
        "reinf",
        __version__,
        protocol_cls=ReinfProtocol,
        text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
    )

    @ls.feature(types.INITIALIZE)
    def initialize(params: types.InitializeParams) -> None:
        opts = params.initialization_options if isinstance(params.initialization_options, dict) else {}
        name = opts.get("client") or (params.client_info.name if params.client_info else None)
        ls.reinf_client = str(name or "unknown")[:64]

    @ls.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(params: types.DidOpenTextDocumentParams) -> None:
        """pygls keeps the document; nothing else to do."""

    @ls.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    @_errors
    async def inline_completion(params: types.InlineCompletionParams) -> types.InlineCompletionList:
        result = await _complete_at(ls, backend, params.text_document.uri, params.position)
        if result is None:
            return types.InlineCompletionList(items=[])
        pos = params.position
        item = types.InlineCompletionItem(
            insert_text=result["text"],
            range=types.Range(start=pos, end=pos),
            command=types.Command(
                title="reinf: accepted",
                command=ACCEPT_COMMAND,
                arguments=[{"interaction_id": result["interaction_id"], "text": result["text"]}],
            ),
        )
        return types.InlineCompletionList(items=[item])

    @ls.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=[".", "(", " "]))
    @_errors
    async def completion(params: types.CompletionParams) -> types.CompletionList:
        result = await _complete_at(ls, backend, params.text_document.uri, params.position)
        if result is None:
            return types.CompletionList(is_incomplete=True, items=[])
        text = result["text"]
        item = types.CompletionItem(
            label=text.strip().splitlines()[0][:80] if text.strip() else text,
            kind=types.CompletionItemKind.Text,
            detail=f"reinf (adapter v{result['adapter_version']})",
            insert_text=text,
            command=types.Command(
                title="reinf: accepted",
                command=ACCEPT_COMMAND,
                arguments=[{"interaction_id": result["interaction_id"], "text": text}],
            ),
        )
        return types.CompletionList(is_incomplete=True, items=[item])

    @ls.feature("reinf/chat")
    @_errors
    async def chat(params: Any) -> dict[str, Any]:
        token = _token(params)

        def on_delta(value: dict[str, Any]) -> None:
            if token is not None and backend.loop is not None:
                backend.loop.call_soon_threadsafe(
                    ls.protocol.notify, types.PROGRESS, types.ProgressParams(token=token, value=value)
                )

        return await backend.chat(params, client=_client_name(ls), on_delta=on_delta)

    @ls.feature("reinf/feedback")
    async def feedback(params: Any) -> None:
        try:
            await backend.feedback(params)
        except JsonRpcException as exc:  # a notification has no answer: log the refusal
            log.warning("reinf/feedback refused: %s", exc)

    simple = {
        "reinf/rate": backend.rate,
        "reinf/status": backend.status,
        "reinf/history": backend.history,
        "reinf/runs": backend.runs,
        "reinf/adapters": backend.list_adapters,
        "reinf/ratingsTimeline": backend.ratings_timeline,
        "reinf/retrain": backend.retrain,
        "reinf/cancelTraining": backend.cancel_training,
        "reinf/rollback": backend.rollback,
        "reinf/export": backend.export,
        "reinf/forget": backend.forget,
    }
    for method, fn in simple.items():
        ls.feature(method)(_errors(fn))

    return ls


async def _complete_at(
    ls: LanguageServer, backend: Backend, uri: str, position: types.Position
) -> dict[str, Any] | None:
    try:
        doc = ls.workspace.get_text_document(uri)
        source = doc.source
    except Exception:
        log.debug("completion for a document that was not opened: %s", uri)
        return None
    offset = doc.offset_at_position(position)
    if offset < 0 or offset > len(source):
        return None
    return await backend.complete(
        source[:offset], source[offset:], client=_client_name(ls), uri=uri, language=doc.language_id
    )
