"""The daemon's shared backend: one engine, one store, one scheduler, and every connected client."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol, TypeVar

from .adapters import Adapters
from .config import Config
from .corrections import Correction, Corrections
from .paths import export_problem, private_dir, write_json
from .redact import redact, redact_obj, secrets_at_cursor, secrets_in
from .store import COMPLETION_EVENTS, RefusedEvent, Store, UnknownInteraction
from .truncate import completion_scope
from .validate import InvalidParams, Params

T = TypeVar("T")

log = logging.getLogger("reinf.backend")


class NotAvailable(RuntimeError):
    """A feature this daemon cannot serve (the message says why)."""


class Notifier(Protocol):
    def notify(self, method: str, params: Any) -> None: ...


def _ms(start: float, end: float | None = None) -> float:
    return round(((end or time.perf_counter()) - start) * 1000.0, 3)


class Backend:
    """Everything the LSP handlers call. Tests and benchmarks use it without any LSP.

    Every request method is a coroutine that keeps the event loop free: generation and adapter swaps run on
    the one inference thread (in order, so a swap waits for the generation before it and holds up no other
    client), the request path's store writes on the one writer thread (each request waits for its own
    write's commit), and reads and slow work (export, forget, rollback) on a small pool."""

    def __init__(self, cfg: Config, engine: Any | None = None) -> None:
        self.cfg = cfg
        private_dir(cfg.home)
        self.store = Store(cfg.home / "reinf.duckdb", cfg.store.encryption_key)
        if engine is None and cfg.model.backend == "vllm":
            from .vllm_engine import VllmEngine

            engine = VllmEngine(cfg)
        elif engine is None:
            from .engine import Engine

            engine = Engine(cfg.model)
        self.engine = engine
        # A completion reads this much text around the cursor: more than the model's context holds at any
        # plausible number of characters per token, so the engine still cuts the prompt to its token budget.
        self.completion_window_chars = 8 * int(
            getattr(engine, "context_tokens", 0) or cfg.model.max_context_tokens
        )
        # One inference thread: requests and adapter swaps queue here; the queue time is reported as queue_ms.
        # An engine that batches requests itself (vLLM) says how many it takes at once.
        self._gen = ThreadPoolExecutor(
            max_workers=getattr(engine, "parallel_requests", 1), thread_name_prefix="reinf-generate"
        )
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reinf-store")
        # Reads and slow work. Rollbacks that wait for a generation each hold one, so there are several.
        self._io = ThreadPoolExecutor(max_workers=8, thread_name_prefix="reinf-io")
        self._clients: set[Notifier] = set()
        self._clients_lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.corrections = Corrections(
            cfg.completions, self._store_correction_later, schedule=self._call_later
        )
        from .scheduler import Scheduler

        self.adapters = Adapters(cfg.home, self.store, swap=self.swap_adapter, broadcast=self.broadcast)
        self.scheduler = Scheduler(cfg, self.store, adapters=self.adapters, broadcast=self.broadcast)
        self.scheduler.start()
        self.adapters.start()

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
        """Hot-swap the engine's adapter: a job on the generation queue, so it runs between two generations.
        Blocks its caller until done; called from worker threads (never the event loop)."""
        self._gen.submit(self.engine.set_adapter, version, path).result()

    async def _off(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the I/O pool."""
        return await asyncio.get_running_loop().run_in_executor(self._io, fn)

    async def _write(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the store's writer thread; returns once its write is committed (or raises why not).
        A write once queued is done even if its request is cancelled (its client went away, say)."""
        return await asyncio.shield(asyncio.get_running_loop().run_in_executor(self._writer, fn))

    async def _after_writes(self, fn: Callable[[], T]) -> T:
        """A read that must see every write queued before it (a notification's, say, which has no answer to
        wait for): it waits its turn on the writer, then runs on the I/O pool."""
        await self._write(lambda: None)
        return await self._off(fn)

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
        whole = _with_context(messages, context)
        full = _newest_within(whole, self.completion_window_chars)
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
        # The adapter that made the answer, read with it: a swap after the generation must not relabel it.
        version = getattr(gen, "adapter_version", 0)
        timings = {"queue_ms": queue_ms, "generate_ms": round(gen.generate_ms, 3)}
        timings["total_ms"] = _ms(t0)
        # Answered only once committed, so that a full disk is an error here; redaction runs on the writer too.
        await self._write(
            lambda: self._store_interaction(
                iid,
                kind=kind,
                client=client,
                prompt=gen.prompt,
                response=gen.text,
                finish_reason=gen.finish_reason,
                context={**context, "messages": messages},
                timings=timings,
                adapter_version=version,
                uncut=[m["content"] for m in whole],
            )
        )
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
        around: tuple[str, str] | None = None,
        line: int | None = None,
        conn: Hashable | None = None,
        source: Callable[[], str | None] | None = None,
        cursor: int | None = None,
        after: int | None = None,
    ) -> dict[str, Any] | None:
        """An inline completion at the cursor; stored, then returned with its interaction id (None if empty).
        Answered after its write commits, so that an accept or dismiss of it always finds it, crash or not.
        `around` is a wider stretch of the document that `prefix` and `suffix` were cut from, where a secret
        that the cut split is still recognised. With `source` (the document's text now) and the connection
        `conn` it lives on, what the user writes instead of the suggestion can be followed (corrections.py)."""
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
        version = getattr(gen, "adapter_version", 0)
        timings = {"queue_ms": queue_ms, "generate_ms": round(gen.generate_ms, 3), "total_ms": _ms(t0)}
        await self._write(
            lambda: self._store_interaction(
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
                    "line": line,
                    "before_cursor": prefix[-400:],
                    "mode": scope.mode,
                },
                adapter_version=version,
                uncut=list(around) if around is not None else [prefix, suffix],
            )
        )
        if source is not None:
            self.corrections.offered(
                iid,
                conn=conn,
                uri=uri,
                prefix=prefix,
                suffix=suffix,
                suggestion=text,
                source=source,
                cursor=cursor,
                after=after,
            )
        timings["total_ms"] = _ms(t0)
        return {"interaction_id": iid, "text": text, "adapter_version": version, "timings": timings}

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
        # a completion's uncut text is its document split at the cursor, where a secret may straddle or be typed
        found = (
            (secrets_at_cursor(*uncut) if kind == "completion" else secrets_in(*uncut))
            if redacting
            else set()
        )
        self.store.add_interaction(
            interaction_id=iid,
            kind=kind,
            client=redact(client, found) if redacting else client,
            model=self.engine.model_name,
            adapter_version=adapter_version,
            prompt=redact(prompt, found) if redacting else prompt,
            context=redact_obj(context, found) if redacting else context,
            response=redact(response, found) if redacting else response,
            finish_reason=finish_reason,
            timings=timings,
        )

    # -- ratings ----------------------------------------------------------------------------------

    async def rate(self, params: Any) -> dict[str, Any]:
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

        def write() -> int:
            text = redact(comment) if comment and self.cfg.server.redact_secrets else comment
            try:
                return self.store.add_rating(iid, thumbs=thumbs, stars=stars, comment=text)
            except UnknownInteraction as exc:
                raise InvalidParams(f"reinf/rate: interaction_id: {exc}") from exc

        rating_id = await self._write(write)

        def answer() -> dict[str, Any]:
            self.scheduler.note_rating()  # may start a run: exports a snapshot and starts the trainer
            return {
                "rating_id": rating_id,
                "ratings_total": self.store.ratings_total(),
                "until_next_training": self.scheduler.until_next_training(),
            }

        return await self._off(answer)

    async def feedback(self, params: Any) -> dict[str, Any]:
        """reinf/feedback: what happened to an inline completion (accepted, partially accepted, typed through,
        dismissed), in typed columns; refused with nothing written when it cannot be true of that interaction."""
        return {"rating_id": await asyncio.wrap_future(self.queue_feedback(params))}

    def queue_feedback(self, params: Any) -> Future[int]:
        """Check a feedback event and queue its write at once. A notification has no answer to wait for, and a
        client may send `shutdown` straight after it (which cancels what has not started): it is queued, in
        order, the moment it is read."""
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

        def write() -> int:
            try:
                return self.store.add_completion_event(iid, event, shown_ms=shown_ms, **counts)
            except UnknownInteraction as exc:
                raise InvalidParams(f"reinf/feedback: interaction_id: {exc}") from exc
            except RefusedEvent as exc:
                raise InvalidParams(f"reinf/feedback: {exc.field}: {exc}") from exc

        fut = self._writer.submit(write)

        def follow(f: Future[int]) -> None:
            # After a stored dismissal or partial accept, what the user writes there is followed (on the loop).
            if f.cancelled() or f.exception() is not None:
                return
            if self.loop is not None and self.loop.is_running():
                self.loop.call_soon_threadsafe(self.corrections.event, iid, event)
            else:
                self.corrections.event(iid, event)

        fut.add_done_callback(follow)
        return fut

    def _call_later(self, delay: float, fn: Callable[[], None]) -> None:
        if self.loop is not None and self.loop.is_running():
            self.loop.call_later(delay, fn)
        # Without a running loop (tests, benchmarks) a correction's time is checked at the next change.

    def _store_correction_later(self, c: Correction) -> None:
        """Queue a correction's write, redacted like every other text; a failure is logged."""

        def write() -> None:
            typed = c.typed
            if self.cfg.server.redact_secrets:
                typed = redact(typed, secrets_in(c.prefix, c.typed, c.suffix))
            self.store.add_correction(c.interaction_id, c.event, typed, c.truncated, c.ended)

        def done(f: Future) -> None:
            if not f.cancelled() and f.exception() is not None:
                log.error("a correction of %s could not be stored: %s", c.interaction_id, f.exception())

        self._writer.submit(write).add_done_callback(done)

    # -- reads ------------------------------------------------------------------------------------

    async def status(self, params: Any = None) -> dict[str, Any]:
        return await self._off(self._status)

    def _status(self) -> dict[str, Any]:
        return {
            "model": self.engine.model_name,
            "device": self.engine.device,
            "completions": self.engine.fim.describe() if hasattr(self.engine, "fim") else None,
            "backend": getattr(self.engine, "backend_status", lambda: {"name": "local"})(),
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

    async def history(self, params: Any) -> dict[str, Any]:
        p = Params(
            params,
            "reinf/history",
            self.cfg.server.max_field_bytes,
            {"limit", "offset", "unrated_only", "kind"},
        )
        limit = p.int("limit", 1, self.cfg.server.history_limit_max, default=20)
        offset = p.int("offset", 0, 2**31, default=0)
        unrated_only = p.bool("unrated_only")
        kind = p.str("kind", choices=("completion", "chat", "ask"))
        items, total = await self._after_writes(
            lambda: self.store.history(limit=limit, offset=offset, unrated_only=unrated_only, kind=kind)
        )
        return {"items": items, "total": total}

    async def runs(self, params: Any) -> dict[str, Any]:
        p = Params(params, "reinf/runs", self.cfg.server.max_field_bytes, {"limit"})
        limit = p.int("limit", 1, 1000, default=20)
        return {"runs": await self._off(lambda: self.store.list_runs(limit=limit))}

    async def list_adapters(self, params: Any) -> dict[str, Any]:
        Params(params, "reinf/adapters", self.cfg.server.max_field_bytes, set())
        return {"adapters": await self._off(self.store.list_adapters), "active": self.engine.adapter_version}

    async def ratings_timeline(self, params: Any) -> dict[str, Any]:
        Params(params, "reinf/ratingsTimeline", self.cfg.server.max_field_bytes, set())
        return {"points": await self._off(self.store.ratings_timeline)}

    # -- training control -------------------------------------------------------------------------

    async def retrain(self, params: Any) -> dict[str, Any]:
        p = Params(params, "reinf/retrain", self.cfg.server.max_field_bytes, {"fresh_judge"})
        fresh_judge = p.bool("fresh_judge")
        return {"run_id": await self._off(lambda: self.scheduler.retrain("manual", fresh_judge=fresh_judge))}

    async def cancel_training(self, params: Any) -> dict[str, Any]:
        Params(params, "reinf/cancelTraining", self.cfg.server.max_field_bytes, set())
        return {"cancelled": await self._off(self.scheduler.cancel)}

    async def rollback(self, params: Any) -> dict[str, Any]:
        p = Params(params, "reinf/rollback", self.cfg.server.max_field_bytes, {"version"})
        version = p.int("version", 0, 2**31)
        return {"adapter_version": await self._off(lambda: self.adapters.rollback(version))}

    # -- data management --------------------------------------------------------------------------

    async def export(self, params: Any) -> dict[str, Any]:
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

        def export() -> int:
            if not path.parent.is_dir():
                raise InvalidParams(f"reinf/export: path: folder {str(path.parent)!r} does not exist")
            if not path.name or path.is_dir():
                raise InvalidParams(f"reinf/export: path {str(path)!r} is a folder; give the name of a file")
            try:
                return self.store.export(path, fmt)
            except OSError as exc:
                raise export_problem(path, exc) from None

        return {"path": str(path), "rows": await self._after_writes(export)}

    async def forget(self, params: Any) -> dict[str, Any]:
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

        def delete() -> tuple[int | None, int]:
            return self.store.first_rating_before(before), self.store.forget(before)

        first, deleted = await self._write(delete)
        return {**await self._off(lambda: self._after_forget(first, keep_adapters)), "deleted": deleted}

    def _after_forget(self, first: int | None, keep_adapters: bool) -> dict[str, Any]:
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
        untrained: dict[str, Any] = {"adapters_forgotten": [], "reward_model_deleted": False}
        if first is not None and not keep_adapters:
            untrained = self._untrain(first)
        return {
            "training_cancelled": cancelled,
            **untrained,
            "adapter_version": self.engine.adapter_version,
            "ratings_kept": self.store.ratings_total(),
        }

    def _untrain(self, first_rating_id: int) -> dict[str, Any]:
        """Delete every adapter, and the saved reward model, that a run trained on ratings from
        `first_rating_id` on. Each run trains on every rating up to its watermark and starts from the active
        adapter, so an adapter whose run saw a forgotten rating holds what it learnt from it."""
        runs = self.store.runs_trained_on(first_rating_id)
        versions, serving = self.adapters.untrain(runs)
        reward_model = self.cfg.home / "reward_model"
        rm_deleted = bool(runs) and reward_model.exists()
        if rm_deleted:
            shutil.rmtree(reward_model)
        if versions or rm_deleted:
            log.warning(
                "forget: deleted adapters %s and %s, trained on forgotten ratings; serving %s",
                versions,
                "the reward model" if rm_deleted else "no reward model",
                f"v{serving}" if serving else "the base",
            )
        return {
            "adapters_forgotten": versions,
            "reward_model_deleted": rm_deleted,
            "adapter_version": serving,
        }

    def close(self) -> None:
        self.scheduler.close()
        # Queued generations and swaps go first, so that no pool thread waits on one; then the writes already
        # queued are committed before the store closes.
        self._gen.shutdown(wait=False, cancel_futures=True)
        self._io.shutdown(wait=True, cancel_futures=True)
        self._gen.shutdown(wait=True)
        self.corrections.close()
        self._writer.shutdown(wait=True)
        self.store.close()
        if hasattr(self.engine, "close"):
            self.engine.close()  # a vLLM server the daemon started stops with it


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


def _newest_within(messages: list[dict[str, str]], chars: int) -> list[dict[str, str]]:
    """The end of a conversation that the model can see, cut once by characters before the engine cuts it by
    tokens: the newest turns whole, the oldest one kept cut from its start, the system prompt (if it fits) first.
    `chars` is more than the context holds, so the engine's own cut decides the exact prompt; the tokenizer then
    never reads text that cannot be in it."""
    system = [m for m in messages[:1] if m["role"] == "system" and len(m["content"]) <= chars // 4]
    budget = chars - sum(len(m["content"]) for m in system)
    kept: list[dict[str, str]] = []
    for m in reversed(messages[len(system) :]):
        if budget <= 0:
            break
        if len(m["content"]) > budget:
            m = {**m, "content": m["content"][-budget:]}
        kept.append(m)
        budget -= len(m["content"])
    return [*system, *reversed(kept)]


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
