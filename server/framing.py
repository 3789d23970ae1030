"""LSP's base protocol framing, `Content-Length: N\\r\\n\\r\\n` and a JSON body: one implementation shared by
the daemon (strict, with limits), the Python client and `reinf lsp --stdio`."""

from __future__ import annotations

import json
from typing import Any, BinaryIO

MAX_HEADER_LINE = 1024
MAX_HEADERS = 16


class FramingError(ValueError):
    """A header block that is not LSP framing; the message says what is wrong with it."""


def frame(message: dict[str, Any] | bytes) -> bytes:
    """One message, framed: a dict is sent as JSON."""
    body = message if isinstance(message, bytes) else json.dumps(message).encode("utf-8")
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


class Headers:
    """Reads one header block a line at a time. `strict` (the daemon) requires CRLF line ends, short lines,
    few headers and a Content-Length; otherwise a bare LF ends a line too."""

    def __init__(self, strict: bool = True) -> None:
        self.strict = strict
        self.length: int | None = None
        self.lines = 0

    def feed(self, line: bytes) -> bool:
        """Take one line (with its end); True once the block is complete. Raises FramingError."""
        self.lines += 1
        if self.strict and (len(line) > MAX_HEADER_LINE or not line.endswith(b"\r\n")):
            raise FramingError("malformed header")
        if line in (b"\r\n", b"\n"):
            if self.length is None or self.length < 0:
                raise FramingError("missing Content-Length")
            return True
        if self.strict and self.lines >= MAX_HEADERS:
            raise FramingError("too many headers")
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            try:
                self.length = int(value.strip())
            except ValueError:
                raise FramingError("Content-Length is not a number") from None
        return False


def read_frame(stream: BinaryIO, strict: bool = False) -> bytes | None:
    """The next message's body from a blocking stream; None at its end."""
    headers = Headers(strict)
    while True:
        line = stream.readline()
        if not line:
            return None
        if headers.feed(line):
            break
    return stream.read(headers.length or 0)  # set: feed() ends a block only after a Content-Length
