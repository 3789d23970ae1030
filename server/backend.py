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

import attrs

from . import protocol as P
from .adapters import Adapters
from .config import Config
from .corrections import Correction, Corrections
from .logs import discard_logs
from .paths import export_problem, private_dir, read_private_file, write_json
from .redact import redact, redact_obj, secrets_at_cursor, secrets_in
from .store import FINAL_EVENTS, RefusedEvent, Store, UnknownInteraction
from .truncate import completion_scope
from .validate import InvalidParams

T = TypeVar("T")

FORGET_MARKER = "forget.json"  # what a forget that has not finished is to forget; start-up finishes it

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
        self._take_in_queued = False
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
        self._finish_forget()

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

    def answered(self) -> None:
        """An answer went out: completions the journal holds now go into DuckDB on the writer. Not before: that
        insert would hold the interpreter while the answer is being sent."""
        if self._take_in_queued or not self.store.journal_waiting():
            return
        self._take_in_queued = True
        try:
            self._writer.submit(self._take_in)
        except RuntimeError:  # shutting down: the store takes it in as it closes
            pass

    def _take_in(self) -> None:
        self._take_in_queued = False  # first: a row journaled from now on is taken in here or queues another
        self.store.take_in_journal()

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

    @P.method("reinf/chat", P.ChatParams, P.ChatResult)
    async def chat(
        self, p: P.ChatParams, *, client: str, on_delta: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """reinf/chat: generate, stream deltas, store the interaction, answer."""
        t0 = time.perf_counter()
        messages = [attrs.asdict(m) for m in p.messages]
        kind = p.kind
        context = attrs.asdict(p.context, filter=lambda _, v: v is not None) if p.context else {}
        max_tokens = p.max_tokens or self.cfg.model.chat_max_new_tokens
        temperature = self.cfg.model.chat_temperature if p.temperature is None else p.temperature
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
        timings = {
            "queue_ms": queue_ms,
            "prompt_ms": round(getattr(gen, "prompt_ms", 0.0), 3),
            "generate_ms": round(gen.generate_ms, 3),
            "total_ms": _ms(t0),
        }
        # Answered only once committed, so that a full disk is an error here; redaction runs on the writer too.
        await self._write(
            lambda: self._store_interaction(
                interaction_id=iid,
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
        Answered after it is committed to the store's journal, so that an accept or dismiss of it always finds
        it, crash or not.
        `around` is a wider stretch of the document that `prefix` and `suffix` were cut from, where a secret
        that the cut split is still recognised. With `source` (the document's text now) and the connection
        `conn` it lives on, what the user writes instead of the suggestion can be followed (corrections.py)."""
        t0 = time.perf_counter()
        n = max_tokens or self.cfg.model.max_new_tokens
        scope = completion_scope(self.cfg.completions, prefix, suffix, language)
        context = {
            "uri": uri,
            "language": language,
            "line": line,
            "before_cursor": prefix[-400:],
            "mode": scope.mode,
        }

        def generate_and_store(cancel: threading.Event) -> tuple[str, str, int, dict[str, float]] | None:
            started = time.perf_counter()
            # Stored on the inference thread, in the journal (a fsync'd append, not a DuckDB commit): the answer
            # waits for no other client's write, and the writer takes it into DuckDB once it is sent.
            gen = self.engine.complete(
                prefix,
                suffix,
                max_tokens=n,
                temperature=self.cfg.model.temperature,
                cancel=cancel,
                stop=scope.ended,
            )
            if gen.finish_reason == "cancelled":
                return None
            text = scope.finish(gen.text, gen.finish_reason)
            if not text:
                return None
            version = getattr(gen, "adapter_version", 0)
            timings = {
                "queue_ms": _ms(queued, started),
                "prompt_ms": round(getattr(gen, "prompt_ms", 0.0), 3),
                "generate_ms": round(gen.generate_ms, 3),
                "total_ms": _ms(t0),
            }
            iid = self._store_interaction(
                kind="completion",
                client=client,
                prompt=gen.prompt,
                response=text,
                finish_reason="stop" if text != gen.text else gen.finish_reason,
                timings=timings,
                context=context,
                adapter_version=version,
                uncut=list(around) if around is not None else [prefix, suffix],
                journal=True,
            )
            return iid, text, version, timings

        queued = time.perf_counter()
        stored, _ = await self._generate(generate_and_store)
        if stored is None:
            return None
        iid, text, version, timings = stored
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
        interaction_id: str | None = None,
        journal: bool = False,
    ) -> str:
        """Redact and store one interaction; its id. `uncut` is the text the prompt and context were cut from: a
        secret that a cut split in two is recognised there, and its piece is redacted too. With `journal` it is
        committed to the store's journal, without waiting for the store."""
        redacting = self.cfg.server.redact_secrets
        # a completion's uncut text is its document split at the cursor, where a secret may straddle or be typed
        found = (
            (secrets_at_cursor(*uncut) if kind == "completion" else secrets_in(*uncut))
            if redacting
            else set()
        )
        store = self.store.journal_interaction if journal else self.store.add_interaction
        return store(
            kind=kind,
            client=redact(client, found) if redacting else client,
            model=self.engine.model_name,
            adapter_version=adapter_version,
            prompt=redact(prompt, found) if redacting else prompt,
            context=redact_obj(context, found) if redacting else context,
            response=redact(response, found) if redacting else response,
            finish_reason=finish_reason,
            timings=timings,
            interaction_id=interaction_id,
        )

    # -- ratings ----------------------------------------------------------------------------------

    @P.method("reinf/rate", P.RateParams, P.RateResult)
    async def rate(self, p: P.RateParams) -> dict[str, Any]:
        """reinf/rate: append an explicit rating; answered only after it is committed."""
        iid, thumbs, stars, comment = p.interaction_id, p.thumbs, p.stars, p.comment
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

    async def feedback(self, params: Any) -> dict[str, Any]:  # declared by queue_feedback's decode
        """reinf/feedback: what happened to an inline completion (accepted, partially accepted, typed through,
        dismissed), in typed columns; refused with nothing written when it cannot be true of that interaction."""
        return {"rating_id": await asyncio.wrap_future(self.queue_feedback(params))}

    def queue_feedback(self, params: Any) -> Future[int]:
        """Check a feedback event and queue its write at once. A notification has no answer to wait for, and a
        client may send `shutdown` straight after it (which cancels what has not started): it is queued, in
        order, the moment it is read."""
        p = P.decode(P.FeedbackParams, params, "reinf/feedback", self.cfg.server)
        iid, event, shown_ms = p.interaction_id, p.event, p.shown_ms
        counts = {
            "accepted_chars": p.accepted_chars,
            "accepted_words": p.accepted_words,
            "typed_chars": p.typed_chars,
        }

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
            if event in FINAL_EVENTS:  # may start a run: off the writer's thread
                try:
                    self._io.submit(self.scheduler.note_completion)
                except RuntimeError:  # shutting down: no new run
                    pass

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

    @P.method("reinf/status", P.NoParams, P.StatusResult)
    async def status(self, p: P.NoParams) -> dict[str, Any]:
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

    @P.method("reinf/history", P.HistoryParams, P.HistoryResult)
    async def history(self, p: P.HistoryParams) -> dict[str, Any]:
        items, total = await self._after_writes(
            lambda: self.store.history(
                limit=p.limit, offset=p.offset, unrated_only=p.unrated_only, kind=p.kind
            )
        )
        return {"items": items, "total": total}

    @P.method("reinf/runs", P.RunsParams, P.RunsResult)
    async def runs(self, p: P.RunsParams) -> dict[str, Any]:
        return {"runs": await self._off(lambda: self.store.list_runs(limit=p.limit))}

    @P.method("reinf/adapters", P.NoParams, P.AdaptersResult)
    async def list_adapters(self, p: P.NoParams) -> dict[str, Any]:
        return {"adapters": await self._off(self.store.list_adapters), "active": self.engine.adapter_version}

    @P.method("reinf/ratingsTimeline", P.NoParams, P.TimelineResult)
    async def ratings_timeline(self, p: P.NoParams) -> dict[str, Any]:
        return {"points": await self._off(self.store.ratings_timeline)}

    # -- training control -------------------------------------------------------------------------

    @P.method("reinf/retrain", P.RetrainParams, P.RetrainResult)
    async def retrain(self, p: P.RetrainParams) -> dict[str, Any]:
        return {
            "run_id": await self._off(lambda: self.scheduler.retrain("manual", fresh_judge=p.fresh_judge))
        }

    @P.method("reinf/cancelTraining", P.NoParams, P.CancelResult)
    async def cancel_training(self, p: P.NoParams) -> dict[str, Any]:
        return {"cancelled": await self._off(self.scheduler.cancel)}

    @P.method("reinf/rollback", P.RollbackParams, P.RollbackResult)
    async def rollback(self, p: P.RollbackParams) -> dict[str, Any]:
        return {"adapter_version": await self._off(lambda: self.adapters.rollback(p.version))}

    # -- data management --------------------------------------------------------------------------

    @P.method("reinf/export", P.ExportParams, P.ExportResult)
    async def export(self, p: P.ExportParams) -> dict[str, Any]:
        fmt, raw = p.format, p.path
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

    @P.method("reinf/forget", P.ForgetParams, P.ForgetResult)
    async def forget(self, p: P.ForgetParams) -> dict[str, Any]:
        before, keep_adapters = p.before, p.keep_adapters

        def delete() -> tuple[dict[str, Any], int]:
            # Recorded before anything is deleted: a forget killed at any point is finished at the next start.
            pending = self._record_forget(before, self.store.first_rating_before(before), keep_adapters)
            return pending, self.store.forget(before)

        pending, deleted = await self._write(delete)
        return {**await self._off(lambda: self._after_forget(pending)), "deleted": deleted}

    def _record_forget(self, before: datetime, first: int | None, keep_adapters: bool) -> dict[str, Any]:
        """Write the forget marker; one left by a forget that did not finish is merged in (the later date, the
        earlier first rating, adapters kept only if both kept them)."""
        pending = {"before": before.isoformat(), "first_rating_id": first, "keep_adapters": keep_adapters}
        earlier = self._pending_forget()
        if earlier is not None:
            firsts = [f for f in (first, earlier["first_rating_id"]) if f is not None]
            pending = {
                "before": max(before, datetime.fromisoformat(earlier["before"])).isoformat(),
                "first_rating_id": min(firsts) if firsts else None,
                "keep_adapters": keep_adapters and earlier["keep_adapters"],
            }
        write_json(self.cfg.home / FORGET_MARKER, pending)
        return pending

    def _pending_forget(self) -> dict[str, Any] | None:
        """The marker of a forget that has not finished, or None. One that cannot be read is reported and
        dropped: it names no data, so there is nothing to finish."""
        path = self.cfg.home / FORGET_MARKER
        try:
            raw = read_private_file(path, "the forget marker")
        except OSError as exc:
            log.error("forget: ignoring %s: %s", path, exc)
            return None
        if raw is None:
            return None
        try:
            marker = json.loads(raw)
            datetime.fromisoformat(marker["before"])
            first = marker["first_rating_id"]
            if not (first is None or (isinstance(first, int) and not isinstance(first, bool))):
                raise ValueError("first_rating_id is not a rating id")
            return {
                "before": marker["before"],
                "first_rating_id": first,
                "keep_adapters": marker["keep_adapters"] is True,
            }
        except (ValueError, KeyError, TypeError) as exc:
            log.error("forget: %s is not a forget marker (%s); dropped it: run the forget again", path, exc)
            path.unlink(missing_ok=True)
            return None

    def _finish_forget(self) -> None:
        """At start-up: finish a forget that a crash or kill -9 interrupted, before any client is served."""
        pending = self._pending_forget()
        if pending is None:
            return
        log.warning(
            "forget: finishing the forget of everything before %s that did not finish", pending["before"]
        )
        self.store.forget(datetime.fromisoformat(pending["before"]))
        self._after_forget(pending)

    def _after_forget(self, pending: dict[str, Any]) -> dict[str, Any]:
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
        first = pending["first_rating_id"]
        if first is not None and not pending["keep_adapters"]:
            untrained = self._untrain(first)
        # Text reaches the log only at DEBUG, but a log from such a session would keep it.
        logs = discard_logs()
        if logs:
            log.warning("forget: discarded the daemon's log from before the forget")
        (self.cfg.home / FORGET_MARKER).unlink(missing_ok=True)
        return {
            "training_cancelled": cancelled,
            **untrained,
            "logs_discarded": bool(logs),
            "adapter_version": self.engine.adapter_version,
            "ratings_kept": self.store.ratings_total(),
        }

    def _untrain(self, first_rating_id: int) -> dict[str, Any]:
        """Delete every adapter, and the saved reward model, that a run trained on ratings from
        `first_rating_id` on. Each run trains on every rating up to its watermark and starts from the active
        adapter, so an adapter whose run saw a forgotten rating holds what it learnt from it."""
        runs = self.store.runs_trained_on(first_rating_id)
        versions, serving = self.adapters.untrain(runs)
        for run_id in runs:  # each run's own copy of its candidate, published or not
            for name in ("adapter", ".adapter.tmp"):
                shutil.rmtree(self.cfg.home / "runs" / str(run_id) / name, ignore_errors=True)
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
