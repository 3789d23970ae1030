"""The protocol declared once (server/protocol.py): the VS Code extension's types agree with it, the backend's
answers have exactly the declared fields, and every declared method is served."""

from __future__ import annotations

import asyncio
import re
import sys
import time
import typing
from pathlib import Path
from typing import Any, Literal

import attrs
import pytest

from reinf import protocol as P
from reinf.config import Config
from reinf.store import COMPLETION_EVENTS

REPO = Path(__file__).resolve().parent.parent
PROTOCOL_TS = REPO / "vscode-extension" / "src" / "protocol.ts"
LSP_FIELDS = {"partialResultToken", "workDoneToken"}  # LSP's own, allowed on any request


# -- a small reader of TypeScript interfaces ----------------------------------------------------------------


def _strip_comments(text: str) -> str:
    return re.sub(r"//[^\n]*", "", re.sub(r"/\*.*?\*/", "", text, flags=re.S))


def _split_top(text: str, sep: str) -> list[str]:
    """Split at `sep` outside braces, brackets and angle brackets."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "{[<(" and 1 or 0
        depth -= ch in "}]>)" and 1 or 0
        if ch == sep and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def _members(body: str) -> dict[str, tuple[str, bool]]:
    """{name: (type, optional)} of an interface or inline object body."""
    out = {}
    for member in _split_top(body.replace("\n", " "), ";"):
        name, _, ts_type = member.partition(":")
        optional = name.strip().endswith("?")
        out[name.strip().rstrip("?")] = (" ".join(ts_type.split()), optional)
    return out


def _read_ts(text: str) -> tuple[dict[str, dict[str, tuple[str, bool]]], dict[str, str]]:
    text = _strip_comments(text)
    interfaces: dict[str, dict[str, tuple[str, bool]]] = {}
    aliases = {m[1]: " ".join(m[2].split()) for m in re.finditer(r"export type (\w+)\s*=\s*([^;]+);", text)}
    for m in re.finditer(r"export interface (\w+)(?:\s+extends\s+([\w, ]+))?\s*\{", text):
        depth, i = 1, m.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        fields: dict[str, tuple[str, bool]] = {}
        for parent in (m[2] or "").split(","):
            if parent.strip():
                fields.update(interfaces[parent.strip()])
        fields.update(_members(text[m.end() : i - 1]))
        interfaces[m[1]] = fields
    return interfaces, aliases


INTERFACES, ALIASES = _read_ts(PROTOCOL_TS.read_text())
CLASSES = {
    name: cls
    for name, cls in vars(P).items()
    if isinstance(cls, type) and attrs.has(cls) and cls.__module__ == P.__name__
}


def _ts_alternatives(ts_type: str) -> tuple[list[str], bool]:
    """The alternatives of a TS type, aliases resolved, and whether null is one."""
    ts_type = ALIASES.get(ts_type, ts_type)
    alts = [ALIASES.get(a, a) for a in _split_top(ts_type, "|")]
    flat = [x for a in alts for x in (_split_top(a, "|") if "|" in a else [a])]
    nullable = any(a in ("null", "undefined") for a in flat)
    return [a for a in flat if a not in ("null", "undefined")], nullable


def _mismatch(py: Any, ts_type: str, where: str, sending: bool) -> str | None:
    """Why a TS type does not fit a Python field type, or None."""
    base, _ = P._unwrap(py)
    alts, _ = _ts_alternatives(ts_type)
    if base is Any:
        return None
    if typing.get_origin(base) is Literal:
        wanted = {f"'{v}'" for v in typing.get_args(base)}
        if set(alts) == wanted or (not sending and alts == ["string"]):
            return None
        return f"{where}: Python {sorted(wanted)}, TypeScript {ts_type}"
    if len(alts) != 1:
        return f"{where}: TypeScript {ts_type} is a union; Python {py}"
    ts = alts[0]
    simple = {str: "string", int: "number", float: "number", bool: "boolean"}
    if base in simple:
        return None if ts == simple[base] else f"{where}: Python {base.__name__}, TypeScript {ts}"
    if typing.get_origin(base) is list:
        (item,) = typing.get_args(base)
        if not ts.endswith("[]"):
            return f"{where}: Python a list, TypeScript {ts}"
        return _mismatch(item, ts[:-2], f"{where}[]", sending)
    if typing.get_origin(base) is dict:
        return (
            None if ts.startswith(("Record<", "{")) or ts == "object" else f"{where}: Python a dict, TS {ts}"
        )
    if attrs.has(base):
        parts = _split_top(ts, "&")
        fields: dict[str, tuple[str, bool]] = {}
        for part in parts:
            if part.startswith("{"):
                fields.update(_members(part[1:-1]))
            elif part in INTERFACES:
                fields.update(INTERFACES[part])
            else:
                return f"{where}: TypeScript {part} is not an interface of protocol.ts"
        if len(parts) == 1 and parts[0] in INTERFACES and parts[0] != base.__name__:
            return f"{where}: Python {base.__name__}, TypeScript {parts[0]}"
        problems = _compare(base, fields, where, sending)
        return "; ".join(problems) or None
    return f"{where}: no rule for Python {py}"


def _compare(cls: type, ts_fields: dict[str, tuple[str, bool]], where: str, sending: bool) -> list[str]:
    hints = typing.get_type_hints(cls)
    declared = {f.name: f for f in attrs.fields(cls)}
    problems = []
    for name, (ts_type, ts_optional) in ts_fields.items():
        if name in LSP_FIELDS:
            continue
        if name not in declared:
            problems.append(f"{where}.{name} is in protocol.ts but not declared in server/protocol.py")
            continue
        _, py_nullable = P._unwrap(hints[name])
        _, ts_nullable = _ts_alternatives(ts_type)
        if sending:  # the extension sends it: optional on both sides or on neither
            required = (
                declared[name].metadata.get("required", False) or declared[name].default is attrs.NOTHING
            )
            if required == (ts_optional or ts_nullable):
                problems.append(f"{where}.{name}: required in {'Python' if required else 'TypeScript'} only")
        elif py_nullable and not (ts_optional or ts_nullable):  # the daemon may send null: TS must expect it
            problems.append(f"{where}.{name}: may be null, but protocol.ts says it is always there")
        problem = _mismatch(hints[name], ts_type, f"{where}.{name}", sending)
        if problem:
            problems.append(problem)
    return problems


def test_every_interface_of_protocol_ts_is_declared_in_server_protocol() -> None:
    assert len(INTERFACES) >= 20, f"protocol.ts was not read: {sorted(INTERFACES)}"
    missing = sorted(set(INTERFACES) - set(CLASSES))
    assert not missing, (
        f"interfaces of protocol.ts with no class of that name in server/protocol.py: {missing}"
    )


@pytest.mark.parametrize("name", sorted(INTERFACES))
def test_protocol_ts_agrees_with_server_protocol(name: str) -> None:
    cls = CLASSES[name]
    sending = name.endswith("Params") or name in ("ChatMessage", "ChatContext")
    problems = _compare(cls, INTERFACES[name], name, sending)
    assert not problems, "\n".join(problems)


def test_the_checker_catches_a_wrong_name_type_or_optionality() -> None:
    """The comparison itself, on interfaces that disagree with the declarations: it must say so."""
    wrong, _ = _read_ts(
        "export interface RateParams { interaction_id?: string; stars?: string; comments?: string; }\n"
        "export interface StatusResult { model: string; last_run: RunInfo; }\n"
        "export interface RunInfo { run_id: number; }"
    )
    problems = _compare(P.RateParams, wrong["RateParams"], "RateParams", True)
    assert any("interaction_id: required in Python only" in p for p in problems), problems
    assert any("stars: Python int, TypeScript string" in p for p in problems), problems
    assert any("comments is in protocol.ts but not declared" in p for p in problems), problems
    problems = _compare(P.StatusResult, wrong["StatusResult"], "StatusResult", False)
    assert problems == ["StatusResult.last_run: may be null, but protocol.ts says it is always there"]


def test_the_completion_events_are_the_stores() -> None:
    assert typing.get_args(P.FeedbackEvent) == COMPLETION_EVENTS


# -- what the backend really answers -----------------------------------------------------------------------


def _fits(value: Any, hint: Any, where: str) -> list[str]:
    """Why `value` (JSON as the backend answers it) does not fit `hint`."""
    base, nullable = P._unwrap(hint)
    if value is None:
        return [] if nullable or base is Any else [f"{where} is null"]
    if base is Any:
        return []
    if typing.get_origin(base) is Literal:
        return (
            []
            if value in typing.get_args(base)
            else [f"{where} = {value!r}, not one of {typing.get_args(base)}"]
        )
    if base is float:
        return (
            []
            if isinstance(value, (int, float)) and not isinstance(value, bool)
            else [f"{where} = {value!r}"]
        )
    if base in (str, int, bool):
        ok = isinstance(value, base) and (base is bool or not isinstance(value, bool))
        return [] if ok else [f"{where} = {value!r}, not {base.__name__}"]
    if typing.get_origin(base) is list:
        (item,) = typing.get_args(base)
        if not isinstance(value, list):
            return [f"{where} is not a list"]
        return [p for i, v in enumerate(value) for p in _fits(v, item, f"{where}[{i}]")]
    if typing.get_origin(base) is dict:
        return [] if isinstance(value, dict) else [f"{where} is not an object"]
    if attrs.has(base):
        if not isinstance(value, dict):
            return [f"{where} is not an object"]
        hints = typing.get_type_hints(base)
        declared = {f.name: f for f in attrs.fields(base)}
        problems = [f"{where}.{k} is answered but not declared" for k in sorted(set(value) - set(declared))]
        for name, f in declared.items():
            if name in value:
                problems += _fits(value[name], hints[name], f"{where}.{name}")
            elif f.default is attrs.NOTHING:
                problems.append(f"{where}.{name} is declared but not answered")
        return problems
    return [f"{where}: no rule for {hint}"]


def test_the_backend_answers_exactly_what_is_declared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from .test_hardening import _backend_with_fake_trainer

    backend, _ = _backend_with_fake_trainer(tmp_path, monkeypatch)
    answers: dict[str, Any] = {}

    def call(name: str, params: Any = None, **kw: Any) -> Any:
        answers[name] = asyncio.run(getattr(backend, P.METHODS[name].attr)(params, **kw))
        return answers[name]

    try:
        chat = call("reinf/chat", {"messages": [{"role": "user", "content": "hi"}]}, client="test")
        call("reinf/rate", {"interaction_id": chat["interaction_id"], "stars": 4, "comment": "fine"})
        completion = backend.store.add_interaction(kind="completion", client="t", model="m", adapter_version=0,
                                                   prompt="x = ", context={"uri": "file:///a.py", "line": 1},
                                                   response="1", finish_reason="stop", timings={})  # fmt: skip
        call("reinf/feedback", {"interaction_id": completion, "event": "accepted", "accepted_chars": 1})
        run_id = call("reinf/retrain", {})["run_id"]
        deadline = time.monotonic() + 60
        while backend.store.get_run(run_id)["state"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        call("reinf/status")
        call("reinf/history", {"limit": 10})
        call("reinf/runs", {})
        call("reinf/adapters", {})
        call("reinf/ratingsTimeline", {})
        call("reinf/cancelTraining", {})
        call("reinf/rollback", {"version": 0})
        call("reinf/export", {"path": str(tmp_path / "out.jsonl"), "format": "jsonl"})
        call("reinf/forget", {"before": "2001-01-01"})
    finally:
        backend.close()
    assert set(answers) == set(P.METHODS), sorted(set(P.METHODS) - set(answers))
    assert answers["reinf/runs"]["runs"] and answers["reinf/adapters"]["adapters"], "nothing to check in them"
    assert answers["reinf/history"]["items"][0]["rating"] or answers["reinf/history"]["items"][1]["rating"]
    problems = [p for name, a in answers.items() for p in _fits(a, P.METHODS[name].result, name)]
    assert not problems, "\n".join(problems)


def test_every_declared_method_is_served(tmp_path: Path) -> None:
    import types

    from .test_fuzz import FakeEngine, FakeScheduler

    fake = types.ModuleType("reinf.scheduler")
    fake.Scheduler = FakeScheduler
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "reinf.scheduler", fake)
        from reinf.backend import Backend
        from reinf.features import build_server

        backend = Backend(Config(home=tmp_path / "home"), engine=FakeEngine())
    try:
        served = set(build_server(backend).protocol.fm.features)
    finally:
        backend.close()
    assert set(P.METHODS) <= served, sorted(set(P.METHODS) - served)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"interaction_id": "x", "stars": 6}, "reinf/rate: stars must be between 1 and 5, got 6"),
        ({"interaction_id": "x", "thumbs": "sideways"}, "reinf/rate: thumbs must be one of up, down"),
        ({"stars": 3}, "reinf/rate: interaction_id is required"),
        ({"interaction_id": "x", "stars": 3, "mood": "ok"}, "reinf/rate: unknown field(s) mood"),
        ({"interaction_id": 5}, "reinf/rate: interaction_id must be a string, got int"),
    ],
)
def test_decode_names_the_field_at_fault(params: dict[str, Any], message: str) -> None:
    from reinf.validate import InvalidParams

    with pytest.raises(InvalidParams) as caught:
        P.decode(P.RateParams, params, "reinf/rate", Config().server)
    assert str(caught.value).startswith(message), caught.value
