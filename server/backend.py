"""The daemon's shared backend: one engine, one store, one scheduler, and every connected client."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

from .config import Config
from .corrections import Correction, Corrections
from .paths import private_dir, write_json
from .redact import redact, redact_obj, secrets_in
from .store import COMPLETION_EVENTS, RefusedEvent, Store, UnknownInteraction
from .truncate import completion_scope
from .validate import InvalidParams, Params

log = logging.getLogger("reinf.backend")
WRITE_BEHIND_S = 0.003


class NotAvailable(RuntimeError):
    """A feature this daemon cannot serve (the message says why)."""


class Notifier(Protocol):
    def notify(self, method: str, params: Any) -> None: ...


def _ms(start: float, end: float | None = None) -> float:
    return round(((end or time.perf_counter()) - start) * 1000.0, 3)


class Backend:
    """Everything the LSP handlers call. Tests and benchmarks use it without any LSP."""

    def __init__(self, cfg: Config, engine: Any | None = None) -> None:
        self.cfg = cfg
        private_dir(cfg.home)
        self.store = Store(cfg.home / "reinf.duckdb", cfg.store.encryption_key)
        if engine is None:
            from .engine import Engine

            engine = Engine(cfg.model)
        self.engine = engine
        # One inference thread: requests queue here; the queue time is reported as queue_ms.
        self._gen = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reinf-generate")
        # Inline completions are written behind the answer, on this thread, so that the committed DuckDB insert
        # (about 2 ms) is not in the typing path. Every read and every rating waits for them first (`flush`).
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reinf-store")
        self._unwritten: set[Future] = set()
        self._lost: dict[str, str] = {}  # interaction id → why its write failed (the newest few)
        self._clients: set[Notifier] = set()
        self._clients_lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.corrections = Corrections(
            cfg.completions, self._store_correction_later, schedule=self._call_later
        )
        from .scheduler import Scheduler

        self.scheduler = Scheduler(cfg, self.store, broadcast=self.broadcast, swap_adapter=self.swap_adapter)
        self._load_start_adapter(*self.scheduler.start())

    def _load_start_adapter(self, version: int, path: Path | None) -> None:
        """Serve the active adapter. One that will not load is rejected, and the newest good earlier one, or
        the base, serves instead: a broken adapter must not keep the daemon from starting. (The scheduler has
        already passed over folders that are missing or whose files are unreadable.)"""
        failed = False
        while version:
            try:
                self.engine.set_adapter(version, path)
                return
            except Exception as exc:
                log.warning("adapter v%s cannot be loaded (%s); marking it rejected", version, exc)
                self.store.set_adapter_status(version, "rejected")
                failed = True
            from .scheduler import adapter_problem

            earlier = [
                a
                for a in self.store.list_adapters()  # newest first
                if a["status"] == "retired"
                and a["version"] < version
                and adapter_problem(Path(a["path"])) is None
            ]
            version, path = (earlier[0]["version"], Path(earlier[0]["path"])) if earlier else (0, None)
            if version:
                log.warning("falling back to adapter v%s, the newest good one", version)
                self.store.activate_adapter(version)
        if failed:
            log.warning("no earlier adapter can be loaded; serving the base model (version 0)")
            self.store.activate_adapter(0)

    # -- clients and notifications -----------------------------------------------------------------

    def attach(self, client: Notifier) -> None:
        with self._clients_lock:
            self._clients.add(client)

    def detach(self, client: Notifier) -> None:
        with self._clients_lock:
            self._clients.discard(client)

    def broadcast(self, method: str, params: dict[str, Any]) -> None:
        """Send a notification to every connected client; safe to call from any thread."""
        with self._clients_lock:
            clients = list(self._clients)
        for client in clients:
            if self.loop is not None and self.loop.is_running():
                self.loop.call_soon_threadsafe(_safe_notify, client, method, params)
            else:
                _safe_notify(client, method, params)

    def swap_adapter(self, version: int, path: Path | None) -> None:
        """Hot-swap the engine's adapter between two generations (blocks until done)."""
        self._gen.submit(self.engine.set_adapter, version, path).result()

    # -- generation -------------------------------------------------------------------------------

    async def _generate(
        self, fn: Callable[[threading.Event], Any], *, keep_partial: bool = False
    ) -> tuple[Any, float]:
        """Run `fn(cancel)` on the inference thread; cancelling the awaiting task stops it early.

        With `keep_partial`, a generation already under way when the task is cancelled is returned as far as it
        got (its finish reason "cancelled") instead of raising, so that a stopped chat is stored and answered."""
        cancel = threading.Event()
        queued = time.perf_counter()
        started: list[float] = []

        def run() -> Any:
            started.append(time.perf_counter())
            if cancel.is_set():
                return None
            return fn(cancel)

        future = self._gen.submit(run)
        try:
            result = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            cancel.set()
            if not future.cancel() and keep_partial:
                # The decode loop checks `cancel` at every token, so this wait is short.
                result = await asyncio.wrap_future(future)
                task = asyncio.current_task()
                if result is not None and task is not None:
                    task.uncancel()
                    return result, _ms(queued, started[0] if started else None)
            raise
        return result, _ms(queued, started[0] if started else None)

    async def chat(
        self, params: Any, *, client: str, on_delta: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """reinf/chat: generate, stream deltas, store the interaction, answer."""
        t0 = time.perf_counter()
        p = Params(
            params,
            "reinf/chat",
            self.cfg.server.max_field_bytes,
            {"messages", "kind", "context", "max_tokens", "temperature"},
        )
        messages = p.messages()
        kind = p.str("kind", choices=("chat", "ask")) or "chat"
        context = p.context()
        max_tokens = p.int("max_tokens", 1, 4096) or self.cfg.model.chat_max_new_tokens
        temperature = p.float("temperature", 0.0, 2.0)
        if temperature is None:
            temperature = self.cfg.model.chat_temperature
        full = _with_context(messages, context)
        # The interaction id is known up front so that streamed deltas can carry it.
        iid = uuid.uuid4().hex

        def delta(text: str) -> None:
            if on_delta is not None:
                on_delta({"interaction_id": iid, "delta": text})

        gen, queue_ms = await self._generate(
            lambda cancel: self.engine.chat(
                full, max_tokens=max_tokens, temperature=temperature, cancel=cancel, on_delta=delta
            ),
            keep_partial=True,
        )
        version = self.engine.adapter_version
        timings = {"queue_ms": queue_ms, "generate_ms": round(gen.generate_ms, 3)}
        timings["total_ms"] = _ms(t0)
        # Answered only once committed, so that a full disk is an error here; redaction and the write run on
        # the store thread, off the event loop.
        await asyncio.get_running_loop().run_in_executor(self._writer, lambda: self._store_interaction(
            iid,
            kind=kind,
            client=client,
            prompt=gen.prompt,
            response=gen.text,
            finish_reason=gen.finish_reason,
            context={**context, "messages": messages},
            timings=timings,
            adapter_version=version,
            uncut=[m["content"] for m in full],
        ))  # fmt: skip
        timings["total_ms"] = _ms(t0)
        return {
            "interaction_id": iid,
            "text": gen.text,
            "finish_reason": gen.finish_reason,
            "model": self.engine.model_name,
            "adapter_version": version,
            "timings": timings,
        }

    async def complete(
        self,
        prefix: str,
        suffix: str,
        *,
        client: str,
        uri: str,
        language: str | None,
        max_tokens: int | None = None,
        conn: Hashable | None = None,
        source: Callable[[], str | None] | None = None,
    ) -> dict[str, Any] | None:
        """An inline completion at the cursor; stored and returned with its interaction id (None if empty).

        With `source` (the document's text now) and the connection `conn` it lives on, what the user writes
        instead of the suggestion can be followed (corrections.py)."""
        t0 = time.perf_counter()
        n = max_tokens or self.cfg.model.max_new_tokens
        scope = completion_scope(self.cfg.completions, prefix, suffix, language)
        gen, queue_ms = await self._generate(
            lambda cancel: self.engine.complete(
                prefix,
                suffix,
                max_tokens=n,
                temperature=self.cfg.model.temperature,
                cancel=cancel,
                stop=scope.ended,
            )
        )
        if gen is None or gen.finish_reason == "cancelled":
            return None
        text = scope.finish(gen.text, gen.finish_reason)
        if not text:
            return None
        iid = uuid.uuid4().hex
        version = self.engine.adapter_version
        timings = {"queue_ms": queue_ms, "generate_ms": round(gen.generate_ms, 3), "total_ms": _ms(t0)}
        self._store_later(
            iid,
            kind="completion",
            client=client,
            prompt=gen.prompt,
            response=text,
            finish_reason="stop" if text != gen.text else gen.finish_reason,
            timings=timings,
            context={
                "uri": uri,
                "language": language,
                "line": prefix.count("\n") + 1,
                "before_cursor": prefix[-400:],
                "mode": scope.mode,
            },
            adapter_version=version,
            uncut=[prefix, suffix],
        )
        if source is not None:
            self.corrections.offered(
                iid, conn=conn, uri=uri, prefix=prefix, suffix=suffix, suggestion=text, source=source
            )
        timings["total_ms"] = _ms(t0)
        return {"interaction_id": iid, "text": text, "adapter_version": version, "timings": timings}

    def _store_later(self, iid: str, **fields: Any) -> None:
        """Write an interaction on the store thread; a failure is logged and named to a later rating of it."""

        def write() -> None:
            # Let the event loop put the answer on the wire first: a write started at once took the GIL
            # from it (overhead p50 2.65 ms against 0.93 ms), and sleeping frees the GIL.
            time.sleep(WRITE_BEHIND_S)
            self._store_interaction(iid, **fields)

        fut = self._writer.submit(write)
        self._unwritten.add(fut)

        def done(f: Future) -> None:
            self._unwritten.discard(f)
            exc = f.exception()
            if exc is not None:
                log.error("the completion %s could not be stored: %s", iid, exc)
                self._lost[iid] = str(exc)
                while len(self._lost) > 100:
                    self._lost.pop(next(iter(self._lost)))

        fut.add_done_callback(done)

    def flush(self) -> None:
        """Wait until every interaction answered so far is committed (or has failed, and says why)."""
        for fut in list(self._unwritten):
            try:
                fut.result()
            except Exception:  # noqa: BLE001 - logged and kept in _lost by the done callback
                pass

    def _unknown(self, method: str, iid: str, exc: UnknownInteraction) -> InvalidParams:
        why = self._lost.get(iid)
        if why is not None:
            return InvalidParams(f"{method}: interaction_id: that completion could not be stored ({why})")
        return InvalidParams(f"{method}: interaction_id: {exc}")

    def _store_interaction(
        self,
        iid: str,
        *,
        kind: str,
        client: str,
        prompt: str,
        response: str,
        finish_reason: str,
        context: dict[str, Any],
        timings: dict[str, float],
        adapter_version: int,
        uncut: list[str],
    ) -> None:
        """`uncut` is the text the prompt and context were cut from: a secret that a cut split in two is
        recognised there, and its piece is redacted too."""
        redacting = self.cfg.server.redact_secrets
        found = secrets_in(*uncut) if redacting else set()
        self.store.add_interaction(
            interaction_id=iid,
            kind=kind,
            client=client,
            model=self.engine.model_name,
            adapter_version=adapter_version,
            prompt=redact(prompt, found) if redacting else prompt,
            context=redact_obj(context, found) if redacting else context,
            response=redact(response, found) if redacting else response,
            finish_reason=finish_reason,
            timings=timings,
        )

    # -- ratings ----------------------------------------------------------------------------------

    def rate(self, params: Any) -> dict[str, Any]:
        """reinf/rate: append an explicit rating; answered only after it is committed."""
        p = Params(
            params,
            "reinf/rate",
            self.cfg.server.max_field_bytes,
            {"interaction_id", "thumbs", "stars", "comment"},
        )
        iid = p.str("interaction_id", required=True)
        thumbs = p.str("thumbs", choices=("up", "down"))
        stars = p.int("stars", 1, 5)
        comment = p.str("comment")
        if thumbs is None and stars is None and not comment:
            raise InvalidParams("reinf/rate: give at least one of thumbs, stars or comment")
        if comment and self.cfg.server.redact_secrets:
            comment = redact(comment)
        self.flush()
        try:
            rating_id = self.store.add_rating(iid, thumbs=thumbs, stars=stars, comment=comment)
        except UnknownInteraction as exc:
            raise self._unknown("reinf/rate", iid, exc) from exc
        self.scheduler.note_rating()
        return {
            "rating_id": rating_id,
            "ratings_total": self.store.ratings_total(),
            "until_next_training": self.scheduler.until_next_training(),
        }

    def feedback(self, params: Any) -> dict[str, Any]:
        """reinf/feedback: what happened to an inline completion (accepted, partially accepted, typed through,
        dismissed), in typed columns; refused with nothing written when it cannot be true of that interaction."""
        p = Params(
            params,
            "reinf/feedback",
            self.cfg.server.max_field_bytes,
            {"interaction_id", "event", "accepted_chars", "accepted_words", "typed_chars", "shown_ms"},
        )
        iid = p.str("interaction_id", required=True)
        event = p.str("event", required=True, choices=COMPLETION_EVENTS)
        counts = {k: p.int(k, 0, 10_000_000) for k in ("accepted_chars", "accepted_words", "typed_chars")}
        shown_ms = p.int("shown_ms", 0, 86_400_000)
        self.flush()
        try:
            rating_id = self.store.add_completion_event(iid, event, shown_ms=shown_ms, **counts)
        except UnknownInteraction as exc:
            raise self._unknown("reinf/feedback", iid, exc) from exc
        except RefusedEvent as exc:
            raise InvalidParams(f"reinf/feedback: {exc.field}: {exc}") from exc
        self.corrections.event(iid, event)
        return {"rating_id": rating_id}

    def _call_later(self, delay: float, fn: Callable[[], None]) -> None:
        if self.loop is not None and self.loop.is_running():
            self.loop.call_later(delay, fn)
        # Without a running loop (tests, benchmarks) a correction's time is checked at the next change.

    def _store_correction_later(self, c: Correction) -> None:
        """Write a correction on the store thread, redacted like every other text; a failure is logged."""

        def write() -> None:
            typed = c.typed
            if self.cfg.server.redact_secrets:
                typed = redact(typed, secrets_in(c.prefix, c.typed, c.suffix))
            self.store.add_correction(c.interaction_id, c.event, typed, c.truncated, c.ended)

        fut = self._writer.submit(write)
        self._unwritten.add(fut)

        def done(f: Future) -> None:
            self._unwritten.discard(f)
            if f.exception() is not None:
                log.error("a correction of %s could not be stored: %s", c.interaction_id, f.exception())

        fut.add_done_callback(done)

    # -- reads ------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        self.flush()
        return {
            "model": self.engine.model_name,
            "device": self.engine.device,
            "completions": self.engine.fim.describe() if hasattr(self.engine, "fim") else None,
            "adapter_version": self.engine.adapter_version,
            "ratings_total": self.store.ratings_total(),
            "interactions_total": self.store.count_interactions(),
            "until_next_training": self.scheduler.until_next_training(),
            "training": self.scheduler.status(),
            "last_run": self.scheduler.last_run(),
            "acceptance": self.store.acceptance(
                self.engine.adapter_version, datetime.now(timezone.utc) - timedelta(days=7)
            ),
        }

    def history(self, params: Any) -> dict[str, Any]:
        p = Params(
            params,
            "reinf/history",
            self.cfg.server.max_field_bytes,
            {"limit", "offset", "unrated_only", "kind"},
        )
        self.flush()
        items, total = self.store.history(
            limit=p.int("limit", 1, self.cfg.server.history_limit_max, default=20),
            offset=p.int("offset", 0, 2**31, default=0),
            unrated_only=p.bool("unrated_only"),
            kind=p.str("kind", choices=("completion", "chat", "ask")),
        )
        return {"items": items, "total": total}

    def runs(self, params: Any) -> dict[str, Any]:
        p = Params(params, "reinf/runs", self.cfg.server.max_field_bytes, {"limit"})
        return {"runs": self.store.list_runs(limit=p.int("limit", 1, 1000, default=20))}

    def adapters(self, params: Any) -> dict[str, Any]:
        Params(params, "reinf/adapters", self.cfg.server.max_field_bytes, set())
        return {"adapters": self.store.list_adapters(), "active": self.engine.adapter_version}

    def ratings_timeline(self, params: Any) -> dict[str, Any]:
        Params(params, "reinf/ratingsTimeline", self.cfg.server.max_field_bytes, set())
        return {"points": self.store.ratings_timeline()}

    # -- training control -------------------------------------------------------------------------

    def retrain(self, params: Any) -> dict[str, Any]:
        p = Params(params, "reinf/retrain", self.cfg.server.max_field_bytes, {"fresh_judge"})
        fresh_judge = p.bool("fresh_judge")
        self.flush()
        return {"run_id": self.scheduler.retrain("manual", fresh_judge=fresh_judge)}

    def cancel_training(self, params: Any) -> dict[str, Any]:
        Params(params, "reinf/cancelTraining", self.cfg.server.max_field_bytes, set())
        return {"cancelled": self.scheduler.cancel()}

    def rollback(self, params: Any) -> dict[str, Any]:
        p = Params(params, "reinf/rollback", self.cfg.server.max_field_bytes, {"version"})
        return {"adapter_version": self.scheduler.rollback(p.int("version", 0, 2**31))}

    # -- data management --------------------------------------------------------------------------

    def export(self, params: Any) -> dict[str, Any]:
        p = Params(params, "reinf/export", self.cfg.server.max_field_bytes, {"format", "path"})
        fmt = p.str("format", choices=("parquet", "jsonl")) or "parquet"
        raw = p.str("path", required=True)
        if "\x00" in raw or "'" in raw:  # neither can reach DuckDB's COPY TO
            raise InvalidParams(
                f"reinf/export: path must not contain a NUL byte or a single quote, got {raw!r}"
            )
        path = Path(raw)
        if not path.is_absolute():
            raise InvalidParams(f"reinf/export: path must be absolute, got {str(path)!r}")
        if not path.parent.is_dir():
            raise InvalidParams(f"reinf/export: path: folder {str(path.parent)!r} does not exist")
        if not path.name or path.is_dir():
            raise InvalidParams(f"reinf/export: path {str(path)!r} is a folder; give the name of a file")
        self.flush()
        return {"path": str(path), "rows": self.store.export(path, fmt)}

    def forget(self, params: Any) -> dict[str, Any]:
        p = Params(params, "reinf/forget", self.cfg.server.max_field_bytes, {"before", "keep_adapters"})
        text = p.str("before", required=True)
        keep_adapters = p.bool("keep_adapters", default=False)
        try:
            before = datetime.fromisoformat(text)
        except ValueError as exc:
            raise InvalidParams(f"reinf/forget: before must be an ISO date, got {text!r}") from exc
        if before.tzinfo is None:
            try:
                before = before.astimezone()
            except (ValueError, OverflowError) as exc:  # 0001-01-01 in a zone east of UTC is year 0
                raise InvalidParams(f"reinf/forget: before is out of range: {text!r}") from exc
        self.flush()
        first = self.store.first_rating_before(before)
        deleted = self.store.forget(before)
        # Each run's Parquet snapshot is a copy of the rated text. A run still going trains on text that is
        # now forgotten, so it is cancelled; the snapshots of runs that ended are no longer needed.
        cancelled = self.scheduler.cancel()
        if cancelled:
            log.warning("reinf/forget: cancelled the training run in progress, whose data was forgotten")
        for snapshot in (self.cfg.home / "runs").glob("*/data.parquet"):
            snapshot.unlink(missing_ok=True)
        for path in (self.cfg.home / "runs").glob("*/metrics.json"):
            _drop_gate_example(path)
        # What the model learnt from the forgotten ratings goes too, unless the user asked to keep it.
        untrained = {"adapters_forgotten": [], "reward_model_deleted": False}
        if first is not None and not keep_adapters:
            untrained = self.scheduler.untrain(first)
        return {
            "deleted": deleted,
            "training_cancelled": cancelled,
            **untrained,
            "adapter_version": self.engine.adapter_version,
            "ratings_kept": self.store.ratings_total(),
        }

    def close(self) -> None:
        self.scheduler.close()
        self._gen.shutdown(wait=True, cancel_futures=True)
        self.corrections.close()
        # The completions already answered are written before the store closes.
        self._writer.shutdown(wait=True)
        self.store.close()


def _safe_notify(client: Notifier, method: str, params: Any) -> None:
    try:
        client.notify(method, params)
    except Exception:  # a vanished client must not stop the others from hearing
        log.debug("notification %s to a closed client dropped", method, exc_info=True)


def _drop_gate_example(path: Path) -> None:
    """A run's metrics.json keeps the gate's example (a held-out prompt and its answers); forget removes it."""
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if isinstance(metrics.get("gate"), dict) and metrics["gate"].pop("example", None) is not None:
        write_json(path, metrics)


def _with_context(messages: list[dict[str, str]], context: dict[str, Any]) -> list[dict[str, str]]:
    """Put the editor or notebook context in front of the last user message."""
    parts = []
    if context.get("selection"):
        parts.append(
            f"Selected code ({context.get('language') or 'text'}):\n```\n{context['selection']}\n```"
        )
    if context.get("file"):
        parts.append(f"Current file {context.get('uri', '')}:\n```\n{context['file']}\n```")
    if context.get("cells"):
        parts.append("Notebook cells:\n" + "\n\n".join(f"```\n{c}\n```" for c in context["cells"]))
    if not parts:
        return messages
    last = messages[-1]
    return [*messages[:-1], {"role": "user", "content": "\n\n".join(parts) + "\n\n" + last["content"]}]
