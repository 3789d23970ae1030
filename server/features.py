"""LSP handlers: one thin function per method. They validate, call the backend, and answer."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInternalError, JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol, lsp_method

from . import __version__
from . import protocol as P
from .adapters import AdapterError
from .backend import Backend, NotAvailable
from .engine import ChatUnavailable
from .scheduler import SchedulerBusy, SchedulerError
from .store import StoreError
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


class DocumentTooLarge(JsonRpcInvalidParams):
    """A completion asked for in a document that was refused for its size."""


class ReinfProtocol(LanguageServerProtocol):
    """One per connection. `exit` closes this connection only, never the daemon. A document over
    `max_document_bytes` is not kept: the client is told once, and a completion in it is refused."""

    max_document_bytes = 1024 * 1024
    oversize: dict[str, int]  # uri → its size in bytes, for the documents refused

    def _refuse(self, uri: str, size: int) -> None:
        self.oversize[uri] = size
        self.workspace.remove_text_document(uri)
        self.notify(
            types.WINDOW_SHOW_MESSAGE,
            types.ShowMessageParams(
                type=types.MessageType.Warning, message=too_large(uri, size, self.max_document_bytes)
            ),
        )

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams) -> Any:
        size = _utf8_len(params.text_document.text)
        if size > self.max_document_bytes:
            self._refuse(params.text_document.uri, size)
            return
        self.oversize.pop(params.text_document.uri, None)
        yield from super().lsp_text_document__did_open(params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams) -> Any:
        uri = params.text_document.uri
        if uri in self.oversize:
            # Edits to a refused document cannot be applied (it was not kept); a whole new text can.
            whole = [
                c
                for c in params.content_changes
                if isinstance(c, types.TextDocumentContentChangeWholeDocument)
            ]
            if not whole:
                return
            text = whole[-1].text
            if _utf8_len(text) > self.max_document_bytes:
                self.oversize[uri] = _utf8_len(text)
                return
            del self.oversize[uri]
            self.workspace.put_text_document(
                types.TextDocumentItem(
                    uri=uri, language_id="", version=params.text_document.version, text=text
                )
            )
            return
        yield from super().lsp_text_document__did_change(params)
        doc = self.workspace.get_text_document(uri)
        if (
            len(doc.source) * 4 > self.max_document_bytes
            and (size := _utf8_len(doc.source)) > self.max_document_bytes
        ):
            self._refuse(uri, size)

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: types.DidCloseTextDocumentParams) -> Any:
        if self.oversize.pop(params.text_document.uri, None) is not None:
            return
        yield from super().lsp_text_document__did_close(params)

    # reinf/feedback sent as a request: queued the moment it is read, like the notification, and answered when
    # its write commits (build_server sets this).
    queue_feedback: Any = None

    def _handle_request(self, msg_id: Any, method_name: str, params: Any) -> None:
        if method_name == "reinf/feedback" and self.queue_feedback is not None:
            self._answer_feedback(msg_id, params)
            return
        # Handlers run inside this call (async ones in a task that copies the context): they can tell a request,
        # whose error the client sees, from a notification, which has no answer.
        token = _ANSWERING.set(True)
        try:
            super()._handle_request(msg_id, method_name, params)
        finally:
            _ANSWERING.reset(token)

    def _answer_feedback(self, msg_id: Any, params: Any) -> None:
        try:
            future = self.queue_feedback(params)
        except JsonRpcException as exc:
            self._send_response(msg_id, error=exc.to_response_error())
            return
        loop = asyncio.get_running_loop()

        def answer(f: Any) -> None:
            if f.cancelled():
                return
            exc = f.exception()
            if exc is None:
                loop.call_soon_threadsafe(
                    lambda: self._send_response(msg_id, result={"rating_id": f.result()})
                )
            else:
                error = exc if isinstance(exc, JsonRpcException) else JsonRpcInternalError(str(exc))
                loop.call_soon_threadsafe(
                    lambda: self._send_response(msg_id, error=error.to_response_error())
                )

        future.add_done_callback(answer)

    @lsp_method(types.EXIT)
    def lsp_exit(self, *args: Any) -> Any:
        if (user_handler := self.fm.features.get(types.EXIT)) is not None:
            yield user_handler, args, None
        if self.writer is not None:
            self.writer.close()


def _log_refusal(future: Any) -> None:
    exc = future.exception()
    if exc is not None:  # the refusal, not what was refused: the message may quote the user's values
        log.warning("a reinf/feedback notification was refused for a bad parameter; nothing was stored")
        log.debug("reinf/feedback refused: %s", exc)


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def too_large(uri: str, size: int, limit: int) -> str:
    return (
        f"reinf: {uri} is {size} bytes, over the limit of {limit} bytes (server.max_document_bytes); "
        "reinf makes no completions in it"
    )


def _client_name(ls: LanguageServer) -> str:
    return getattr(ls, "reinf_client", None) or "unknown"


def _token(params: Any) -> Any:
    if isinstance(params, dict):
        return params.get("partialResultToken") or params.get("workDoneToken")
    return None


def _errors(fn):
    """Map backend errors onto JSON-RPC errors with a clear message."""
    import functools

    def convert(exc: Exception) -> Exception:
        if isinstance(exc, JsonRpcException):
            return exc
        if isinstance(exc, SchedulerBusy):
            return ServerBusy(str(exc))
        if isinstance(exc, (NotAvailable, SchedulerError, AdapterError, StoreError, ChatUnavailable)):
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

    ls.protocol.max_document_bytes = backend.cfg.server.max_document_bytes
    ls.protocol.oversize = {}

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

    @ls.feature("reinf/feedback")
    def feedback(params: Any) -> None:
        """The notification (the editors' way); a request is answered by the protocol (`_answer_feedback`)."""
        # A notification has no answer: a refusal is logged (without the user's text).
        try:
            backend.queue_feedback(params).add_done_callback(_log_refusal)
        except JsonRpcException as exc:  # a notification has no answer: log the refusal, not what was refused
            log.warning("a reinf/feedback notification was refused for a bad parameter; nothing was stored")
            log.debug("reinf/feedback refused: %s", exc)

    ls.protocol.queue_feedback = backend.queue_feedback

    # Every other declared method (server/protocol.py) is one request, one answer.
    for name, declared in P.METHODS.items():
        if name not in ("reinf/chat", "reinf/feedback"):
            ls.feature(name)(_errors(getattr(backend, declared.attr)))

    return ls


async def _complete_at(
    ls: LanguageServer,
    backend: Backend,
    uri: str,
    position: types.Position,
    selected: types.SelectedCompletionInfo | None = None,
) -> dict[str, Any] | None:
    protocol = ls.protocol
    if uri in protocol.oversize:
        raise DocumentTooLarge(too_large(uri, protocol.oversize[uri], protocol.max_document_bytes))
    try:  # a document that was not opened is read from its file
        doc = ls.workspace.get_text_document(uri)
        source = doc.source
    except Exception:  # noqa: BLE001 - a document that cannot be read gets no completion
        log.debug("completion for a document that cannot be read: %s", uri)
        return None
    if (
        len(source) * 4 > protocol.max_document_bytes
        and (size := _utf8_len(source)) > protocol.max_document_bytes
    ):
        raise DocumentTooLarge(too_large(uri, size, protocol.max_document_bytes))
    offset = doc.offset_at_position(position)
    if offset < 0 or offset > len(source):
        return None
    prefix, suffix, around = cursor_window(source, offset, backend.completion_window_chars)
    # What the user writes instead is followed from this cursor; not from a suggest-widget entry's, whose text
    # the document does not have.
    follow = (lambda: _source(ls, uri)) if selected is None else None
    if selected is not None:
        start, end = (doc.offset_at_position(p) for p in (selected.range.start, selected.range.end))
        if not 0 <= start <= offset <= end <= len(source):
            return None
        prefix, suffix, around = cursor_window(
            source[:start] + selected.text + source[end:],
            start + len(selected.text),
            backend.completion_window_chars,
        )
    return await backend.complete(
        prefix,
        suffix,
        client=_client_name(ls),
        uri=uri,
        language=doc.language_id,
        around=around,
        line=position.line + 1,
        conn=ls,
        source=follow,
        cursor=offset,
        after=len(source) - offset,
    )


def _source(ls: LanguageServer, uri: str) -> str | None:
    """The text of an open document, None if it is not open on this connection."""
    doc = ls.workspace.text_documents.get(uri)
    return None if doc is None else doc.source


SECRET_MARGIN = (
    16 * 1024
)  # longer than any secret a pattern recognises (a 4096-bit private key is about 3.3 KB)


def cursor_window(source: str, offset: int, chars: int) -> tuple[str, str, tuple[str, str]]:
    """The text before and after the cursor that a completion reads: at most `chars` before (from a line start
    where one is near) and `chars // 2` after, so that its cost does not grow with the document; and that
    window widened by SECRET_MARGIN each side, where redaction looks for a secret the window's edge cut."""
    start = max(0, offset - chars)
    if start > 0:
        newline = source.find("\n", start, offset)
        start = newline + 1 if newline >= 0 else start
    end = offset + chars // 2
    # split at the cursor, where redaction also looks for a secret being typed or straddling it
    around = (source[max(0, start - SECRET_MARGIN) : offset], source[offset : end + SECRET_MARGIN])
    return source[start:offset], source[offset:end], around
