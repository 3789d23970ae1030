"""LSP handlers: one thin function per method. They validate, call the backend, and answer."""

from __future__ import annotations

import contextvars
import logging
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol, lsp_method

from . import __version__
from .backend import Backend, NotAvailable
from .validate import InvalidParams

log = logging.getLogger("reinf.features")

ACCEPT_COMMAND = "reinf.accepted"
# textDocument/completion clients (Neovim and others) run an item's command as workspace/executeCommand on the
# server; VS Code's own inline command above is the extension's, so this one has another name.
COMPLETION_ACCEPT_COMMAND = "reinf.completionAccepted"
_ANSWERING = contextvars.ContextVar("reinf_answering_request", default=False)


class ServerBusy(JsonRpcException):
    CODE = -32001
    MESSAGE = "Busy"


class FeatureUnavailable(JsonRpcException):
    CODE = -32002
    MESSAGE = "Not available"


class ReinfProtocol(LanguageServerProtocol):
    """One per connection. `exit` closes this connection only, never the daemon."""

    def _handle_request(self, msg_id: Any, method_name: str, params: Any) -> None:
        # Handlers run inside this call (async ones in a task that copies the context): they can tell a request,
        # whose error the client sees, from a notification, which has no answer.
        token = _ANSWERING.set(True)
        try:
            super()._handle_request(msg_id, method_name, params)
        finally:
            _ANSWERING.reset(token)

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
    import inspect

    def convert(exc: Exception) -> Exception:
        if isinstance(exc, JsonRpcException):
            return exc
        if isinstance(exc, NotAvailable):
            return FeatureUnavailable(str(exc))
        name = type(exc).__name__
        if name == "SchedulerBusy":
            return ServerBusy(str(exc))
        if name in ("SchedulerError", "AdapterError", "StoreError", "UnknownVersion", "ChatUnavailable"):
            return FeatureUnavailable(str(exc))
        return exc

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def wrapper_async(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except Exception as exc:
                raise convert(exc) from exc

        return wrapper_async

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
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

    @ls.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(params: types.DidChangeTextDocumentParams) -> None:
        """pygls has applied the change; a correction being followed in this document looks at it."""
        uri = params.text_document.uri
        source = _source(ls, uri)
        if source is not None:
            backend.corrections.changed(ls, uri, source)

    @ls.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(params: types.DidCloseTextDocumentParams) -> None:
        backend.corrections.closed(ls, params.text_document.uri)

    @ls.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    @_errors
    async def inline_completion(params: types.InlineCompletionParams) -> types.InlineCompletionList:
        # With the suggest widget open, VS Code draws ghost text only for an item that extends the selected
        # entry: complete as if that entry were inserted, and replace the same range.
        selected = params.context.selected_completion_info if params.context else None
        result = await _complete_at(ls, backend, params.text_document.uri, params.position, selected)
        if result is None:
            return types.InlineCompletionList(items=[])
        pos = params.position
        text = result["text"] if selected is None else selected.text + result["text"]
        item = types.InlineCompletionItem(
            insert_text=text,
            range=types.Range(start=pos, end=pos) if selected is None else selected.range,
            command=types.Command(
                title="reinf: accepted",
                command=ACCEPT_COMMAND,
                arguments=[{"interaction_id": result["interaction_id"], "text": text}],
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
                command=COMPLETION_ACCEPT_COMMAND,
                arguments=[{"interaction_id": result["interaction_id"], "text": text}],
            ),
        )
        return types.CompletionList(is_incomplete=True, items=[item])

    @ls.command(COMPLETION_ACCEPT_COMMAND)
    @_errors
    def completion_accepted(*arguments: Any) -> dict[str, Any]:
        """A completion item was inserted (its command runs after insertion): record the accept."""
        arg = arguments[0] if arguments else None
        if not isinstance(arg, dict):
            raise InvalidParams(
                f"{COMPLETION_ACCEPT_COMMAND}: arguments[0] must be the item's {{interaction_id, text}}"
            )
        text = arg.get("text")
        return backend.feedback(
            {
                "interaction_id": arg.get("interaction_id"),
                "event": "accepted",
                **({"accepted_chars": len(text)} if isinstance(text, str) else {}),
            }
        )

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

    @ls.feature("reinf/rate")
    @_errors
    def rate(params: Any) -> dict[str, Any]:
        return backend.rate(params)

    @ls.feature("reinf/feedback")
    @_errors
    def feedback(params: Any) -> dict[str, Any] | None:
        """A notification (the editors' way) or a request, whose answer is the rating id or a -32602."""
        try:
            return backend.feedback(params)
        except JsonRpcException as exc:
            if _ANSWERING.get():
                raise
            log.warning("reinf/feedback refused: %s", exc)  # a notification has no answer
            return None

    simple = {
        "reinf/status": lambda params: backend.status(),
        "reinf/history": backend.history,
        "reinf/runs": backend.runs,
        "reinf/adapters": backend.adapters,
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
    ls: LanguageServer,
    backend: Backend,
    uri: str,
    position: types.Position,
    selected: types.SelectedCompletionInfo | None = None,
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
    prefix, suffix = source[:offset], source[offset:]
    # What the user writes instead is followed from this cursor; not from a suggest-widget entry's, whose text
    # the document does not have.
    follow = (lambda: _source(ls, uri)) if selected is None else None
    if selected is not None:
        start, end = (doc.offset_at_position(p) for p in (selected.range.start, selected.range.end))
        if not 0 <= start <= offset <= end <= len(source):
            return None
        prefix, suffix = source[:start] + selected.text, source[end:]
    return await backend.complete(
        prefix, suffix, client=_client_name(ls), uri=uri, language=doc.language_id, conn=ls, source=follow
    )


def _source(ls: LanguageServer, uri: str) -> str | None:
    """The text of an open document, None if it is not open on this connection."""
    doc = ls.workspace.text_documents.get(uri)
    return None if doc is None else doc.source
