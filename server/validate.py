"""Parameter checks for the reinf/* methods. A bad field raises `InvalidParams` naming it (JSON-RPC -32602)."""

from __future__ import annotations

from typing import Any

from pygls.exceptions import JsonRpcInvalidParams


class InvalidParams(JsonRpcInvalidParams):
    """A parameter that is missing, of the wrong type, out of range or too large."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


class Params:
    """Reads fields out of a request's params, checking each one; unknown fields are refused."""

    def __init__(self, params: Any, method: str, max_field_bytes: int, allowed: set[str]) -> None:
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise InvalidParams(f"{method}: params must be an object, got {type(params).__name__}")
        # LSP progress tokens may ride along on any request.
        unknown = set(params) - allowed - {"partialResultToken", "workDoneToken"}
        if unknown:
            raise InvalidParams(f"{method}: unknown field(s) {', '.join(sorted(unknown))}")
        self.p = params
        self.method = method
        self.max_bytes = max_field_bytes

    def _name(self, field: str) -> str:
        return f"{self.method}: {field}"

    def text(self, field: str, value: Any, required: bool = False, allow_empty: bool = True) -> str | None:
        if value is None:
            if required:
                raise InvalidParams(f"{self._name(field)} is required")
            return None
        if not isinstance(value, str):
            raise InvalidParams(f"{self._name(field)} must be a string, got {type(value).__name__}")
        if not allow_empty and not value.strip():
            raise InvalidParams(f"{self._name(field)} must not be empty")
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError as exc:  # JSON can carry a lone surrogate (\ud800); it cannot be stored
            raise InvalidParams(
                f"{self._name(field)} is not valid Unicode text: lone surrogate at position {exc.start}"
            ) from exc
        if size > self.max_bytes:
            raise InvalidParams(
                f"{self._name(field)} is {size} bytes, over the limit of {self.max_bytes} bytes "
                "(server.max_field_bytes); nothing was stored"
            )
        return value

    def str(self, field: str, required: bool = False, choices: tuple[str, ...] | None = None) -> str | None:
        value = self.text(field, self.p.get(field), required)
        if value is not None and choices and value not in choices:
            raise InvalidParams(f"{self._name(field)} must be one of {', '.join(choices)}, got {value!r}")
        return value

    def int(
        self, field: str, lo: int | None = None, hi: int | None = None, default: int | None = None
    ) -> int | None:
        value = self.p.get(field)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidParams(f"{self._name(field)} must be an integer, got {value!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise InvalidParams(f"{self._name(field)} must be between {lo} and {hi}, got {value}")
        return value

    def float(self, field: str, lo: float, hi: float) -> float | None:
        value = self.p.get(field)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise InvalidParams(f"{self._name(field)} must be a number, got {value!r}")
        if not lo <= value <= hi:
            raise InvalidParams(f"{self._name(field)} must be between {lo} and {hi}, got {value}")
        return float(value)

    def bool(self, field: str, default: bool = False) -> bool:
        value = self.p.get(field)
        if value is None:  # null means absent, as for every other optional field
            return default
        if not isinstance(value, bool):
            raise InvalidParams(f"{self._name(field)} must be true or false, got {value!r}")
        return value

    def messages(self, field: str = "messages") -> list[dict[str, str]]:
        value = self.p.get(field)
        if not isinstance(value, list) or not value:
            raise InvalidParams(f"{self._name(field)} must be a non-empty list of {{role, content}}")
        out = []
        for i, m in enumerate(value):
            where = f"{field}[{i}]"
            if not isinstance(m, dict):
                raise InvalidParams(f"{self._name(where)} must be an object with role and content")
            extra = set(m) - {"role", "content"}
            if extra:
                raise InvalidParams(f"{self._name(where)}: unknown field(s) {', '.join(sorted(extra))}")
            role = self.text(f"{where}.role", m.get("role"), required=True)
            if role not in ("system", "user", "assistant"):
                raise InvalidParams(
                    f"{self._name(where + '.role')} must be system, user or assistant, got {role!r}"
                )
            content = self.text(f"{where}.content", m.get("content"), required=True)
            out.append({"role": role, "content": content})
        if out[-1]["role"] != "user":
            raise InvalidParams(f"{self._name(field)}: the last message must have role user")
        return out

    def context(self, field: str = "context") -> dict[str, Any]:
        value = self.p.get(field)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise InvalidParams(f"{self._name(field)} must be an object")
        known = {"uri", "language", "selection", "cells", "file"}
        extra = set(value) - known
        if extra:
            raise InvalidParams(f"{self._name(field)}: unknown field(s) {', '.join(sorted(extra))}")
        out: dict[str, Any] = {}
        for key in ("uri", "language", "selection", "file"):
            v = self.text(f"{field}.{key}", value.get(key))
            if v is not None:
                out[key] = v
        cells = value.get("cells")
        if cells is not None:
            if not isinstance(cells, list) or len(cells) > 200:
                raise InvalidParams(f"{self._name(field + '.cells')} must be a list of at most 200 strings")
            out["cells"] = [self.text(f"{field}.cells[{i}]", c, required=True) for i, c in enumerate(cells)]
            total = sum(len(c.encode()) for c in out["cells"])
            if total > self.max_bytes:
                raise InvalidParams(
                    f"{self._name(field + '.cells')} total {total} bytes, over the limit of {self.max_bytes} bytes"
                )
        return out
