"""The map run: rows streamed from the frame, an adaptive number in flight, every finished
row written as it completes, and a result frame aligned with the input's index.

Each row is one single-turn request on a fresh unnamed agent with the run's settings
(system instruction, tools, schema), deleted as soon as its row ends, so rows never see
each other and memory does not grow with the rows done. The frame is read a block at a
time and a row is started only when the controller admits it, so a run of a million rows
never holds more than `max_concurrency` requests.

The controller (all on the runtime loop):

- Concurrency is additive-increase / multiplicative-decrease: it starts at
  `concurrency`, grows by 1/limit per row that succeeds without a 429 (about one per
  round of rows), and halves at each new rate-limit episode of the run's credential (the
  quota registry's; every agent on the key waits out the 429's RetryInfo there, and no
  new row starts while it does). It stays within 1 and `max_concurrency`.
- `rpm` spaces the starts 60/rpm seconds apart; `tpm` holds a row back while the tokens
  of the last minute, plus the estimates of the rows in flight, plus its own would pass
  it.
- `budget_tokens` / `budget_usd`: a row starts only if what was spent, plus the estimates
  of the rows in flight, plus its own estimate stays within the budget. Estimates are
  the row's prompt length scaled by the tokens per character seen so far (4 characters a
  token before any is seen) plus the mean output so far (at first, as many tokens as the
  prompt, or `max_output_tokens`). When the next row would pass the budget and nothing is
  in flight, the run stops: the rows left are `skipped`, with the reason.
- A per-day (or limit 0) 429 stops the run the same way; rows in flight finish. A
  per-minute 429 that the agent's own retries did not get past is retried here, after
  the shared wait, up to `ROW_QUOTA_RETRIES` more times.
- Cancel (`run.cancel()`, the widget's button, `cancel_maps`, Ctrl-C / kernel interrupt
  in `map_frame` and `amap_frame`) cancels the rows in flight (`ChatHandle.cancel`) and
  starts no more: finished rows are kept, the others are `cancelled`.

Rows whose prompt was answered before under the run's key (see `plan`) are not sent
again: they come back `cached` from the results table (`records`); `refresh=True` sends
every row again. Only successful rows are kept, so a re-run also retries the failed ones.

Result frame, index = the input's index:

    reply string (or one typed column per schema field, see `schema`),
    status category[ok, error, cancelled, skipped, cached], error string (the reason
    for error / cancelled / skipped), tokens_in Int64 (prompt tokens), tokens_out Int64
    (reply and thinking tokens), latency float64 (seconds from the row's start to its
    end, waits included), attempts int64 (HTTP requests this run made for the row)

A cached row keeps the tokens and latency it had when it was made, with 0 attempts.
`frame.attrs["agentrt"]` is the run's final `BatchProgress` (counts, tokens, cost
estimate, errors by kind with the first example of each).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import itertools
import logging
import math
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..config import AgentConfig
from ..conversation import LedgerEntry, Usage
from ..errors import (
    AgentError,
    BackendError,
    InvalidConfig,
    QuotaExceeded,
    RuntimeClosed,
    StoreError,
    Timeout,
    TurnCancelled,
    WrongThread,
)
from ..handle import WAIT_SLICE, ChatHandle, TurnResult
from ..quota import fingerprint
from . import accessor
from .plan import DEFAULT_CONCURRENCY, MapPlan, plan_map
from .records import RowStore, StoredRow
from .schema import SchemaMismatch

if TYPE_CHECKING:
    from ..runtime import AgentRuntime

log = logging.getLogger("agentrt_jupyter")

STATUSES = ("ok", "error", "cancelled", "skipped", "cached")
STATUS_DTYPE = pd.CategoricalDtype(list(STATUSES))
OK, ERROR, CANCELLED, SKIPPED, CACHED = range(5)
_PENDING = -1
TICK = 0.1
"""Listeners (the widget, the tqdm bar) hear at most this often (10 times a second)."""
QUIET_TICK = 1.0
"""...and at least this often while the run goes on (elapsed time and ETA move)."""
ROW_QUOTA_RETRIES = 2
RATE_WINDOW = 30.0
"""Seconds of finished rows the rate (and so the ETA) is measured over."""
SETTLE_TIMEOUT = 10.0
"""After a cancel or an interrupt, how long to wait for the rows in flight to end."""
ROWS_PER_READ = 1000
YIELD_EVERY = 256
"""Rows the dispatcher handles (cached ones, say) before it lets the loop run others."""
CHARS_PER_TOKEN = 4.0

Listener = Callable[["BatchProgress"], None]
_running: weakref.WeakSet[BatchRun] = weakref.WeakSet()
_memory_stores: weakref.WeakKeyDictionary[AgentRuntime, RowStore] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class ErrorSummary:
    """One kind of error in a run: how many rows, and the first one's row and message."""

    kind: str
    count: int
    row: Any
    message: str


@dataclass(frozen=True)
class BatchProgress:
    """A snapshot of a map run (the final one is `frame.attrs["agentrt"]`).

    `state` is starting, running, waiting (rate limited), cancelling, then done, stopped
    (budget or quota; `stop_reason` says which) or cancelled; in batch mode also
    submitting, and the job's own state in `job_state`. `cost_usd` is an estimate (see
    `prices`), None for a model the price table lacks. `rate` is rows answered per
    second over the last 30 s and `eta` the seconds left at that rate (None before any).
    """

    total: int
    ok: int
    failed: int
    cancelled: int
    skipped: int
    cached: int
    in_flight: int
    concurrency: int
    tokens_in: int
    tokens_out: int
    cost_usd: float | None
    elapsed: float
    rate: float
    eta: float | None
    state: str
    stop_reason: str | None
    errors: tuple[ErrorSummary, ...]
    rate_limited: int
    concurrency_decreases: int
    mode: str
    model: str
    run_key: str
    job: str | None = None
    job_state: str | None = None

    @property
    def finished(self) -> int:
        return self.ok + self.failed + self.cancelled + self.skipped + self.cached

    @property
    def done(self) -> bool:
        return self.state in ("done", "stopped", "cancelled")

    def __str__(self) -> str:
        parts = [f"{self.finished:,}/{self.total:,} rows", f"ok {self.ok:,}"]
        for name, count in (
            ("failed", self.failed),
            ("cached", self.cached),
            ("skipped", self.skipped),
            ("cancelled", self.cancelled),
        ):
            if count:
                parts.append(f"{name} {count:,}")
        parts.append(f"{self.tokens_in:,} in / {self.tokens_out:,} out tokens")
        if self.cost_usd is not None:
            parts.append(f"~${self.cost_usd:.4f}")
        line = " · ".join(parts)
        return f"{line} ({self.stop_reason})" if self.stop_reason else line


@dataclass(frozen=True)
class _Estimate:
    tokens_in: int
    tokens_out: int
    usd: float

    @property
    def tokens(self) -> int:
        return self.tokens_in + self.tokens_out


def start_map(
    runtime: AgentRuntime,
    frame: pd.DataFrame,
    template: str,
    *,
    config: AgentConfig | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    max_concurrency: int | None = None,
    schema: object = None,
    budget_tokens: int | None = None,
    budget_usd: float | None = None,
    key: str | None = None,
    refresh: bool = False,
    mode: str = "live",
    rpm: float | None = None,
    tpm: float | None = None,
    store: str | Path | None = None,
    **settings: Any,
) -> BatchRun:
    """Check the options and start the run on the runtime loop; returns at once.

    `settings` are AgentConfig fields for every row's agent (model, system_instruction,
    tools, temperature, ...). `store` keeps the results in that SQLite file instead of
    the runtime's store (or memory, for a runtime without one).
    """
    if runtime.closed:
        raise RuntimeClosed("the runtime was shut down; create a new AgentRuntime")
    plan = plan_map(
        runtime.config,
        frame,
        template,
        config=config,
        settings=settings,
        concurrency=concurrency,
        max_concurrency=max_concurrency,
        schema=schema,
        budget_tokens=budget_tokens,
        budget_usd=budget_usd,
        key=key,
        refresh=refresh,
        mode=mode,
        rpm=rpm,
        tpm=tpm,
    )
    results, owned = _results_store(runtime, store)
    run = BatchRun(runtime, plan, frame, results, owned)
    run.start()
    return run


def map_frame(
    runtime: AgentRuntime,
    frame: pd.DataFrame,
    template: str,
    *,
    progress: bool | Listener | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Run `template` over every row of `frame` and wait; see `start_map` for the options.

    `progress`: None shows a widget in a notebook and a tqdm bar on a terminal; True
    shows one even elsewhere; False nothing; a callable gets every `BatchProgress`.
    Ctrl-C (kernel interrupt) cancels the run, keeps the finished rows and re-raises.
    """
    if threading.current_thread() is runtime.thread:
        raise WrongThread("map() would deadlock on the runtime thread: await runtime.aio.map()")
    run = start_map(runtime, frame, template, **options)
    _show(run, progress)
    return run.result()


async def amap_frame(
    runtime: AgentRuntime,
    frame: pd.DataFrame,
    template: str,
    *,
    progress: bool | Listener | None = None,
    **options: Any,
) -> pd.DataFrame:
    """`map_frame` for an event loop (a notebook cell's top-level await, so the widget's
    Cancel button works while the rows run); cancelling the awaiting task cancels the run."""
    run = start_map(runtime, frame, template, **options)
    _show(run, progress)
    return await run.aresult()


def running_maps(runtime: AgentRuntime) -> list[BatchRun]:
    """The map runs of `runtime` that have not finished."""
    return [run for run in list(_running) if run.runtime is runtime and not run.done]


def cancel_maps(runtime: AgentRuntime) -> int:
    """Cancel every running map of `runtime` (`%agent cancel`); how many there were."""
    runs = running_maps(runtime)
    for run in runs:
        run.cancel()
    return len(runs)


def _show(run: BatchRun, progress: bool | Listener | None) -> None:
    if callable(progress):
        run.add_listener(progress)
    elif progress is not False:
        from ..notebook.batchview import show_progress

        show_progress(run, always=progress is True)


def _results_store(runtime: AgentRuntime, store: str | Path | None) -> tuple[RowStore, bool]:
    """Where results go: `store`, else the runtime's store file, else memory; and whether
    the run owns (closes) it."""
    if store is not None:
        if not isinstance(store, str | Path) or not str(store).strip():
            raise InvalidConfig("must be a file path or None", field="store")
        return RowStore(Path(store).expanduser()), True
    path = runtime.config.store_path
    if path is not None and runtime.store_problem is None:
        try:
            return RowStore(Path(path)), True
        except StoreError as exc:
            log.warning("map results are kept in memory only: %s", exc)
    memory = _memory_stores.get(runtime)
    if memory is None:
        memory = _memory_stores[runtime] = RowStore(None)
    return memory, False


class _Outcomes:
    """Every row's outcome, column-wise (compact whatever the row count)."""

    def __init__(self, plan: MapPlan, total: int) -> None:
        self.schema = plan.schema
        self.status = np.full(total, _PENDING, dtype=np.int8)
        self.error: list[str | None] = [None] * total
        self.tokens_in = np.zeros(total, dtype=np.int64)
        self.tokens_out = np.zeros(total, dtype=np.int64)
        self.counted = np.zeros(total, dtype=bool)
        self.latency = np.full(total, np.nan)
        self.attempts = np.zeros(total, dtype=np.int64)
        self.text: list[str | None] = [None] * total if self.schema is None else []
        self.values: dict[str, list[Any]] = (
            {f.name: [None] * total for f in self.schema.fields} if self.schema else {}
        )

    def set_reply(self, position: int, text: str, values: dict[str, Any] | None) -> None:
        if values is None:
            self.text[position] = text
            return
        for name, value in values.items():
            self.values[name][position] = value

    def frame(self, index: pd.Index) -> pd.DataFrame:
        data: dict[str, Any] = {}
        if self.schema is None:
            data["reply"] = pd.array(self.text, dtype="string")
        else:
            for field in self.schema.fields:
                data[field.name] = self.schema.column(field, self.values[field.name])
        codes = np.where(self.status == _PENDING, CANCELLED, self.status)
        data["status"] = pd.Categorical.from_codes(codes, dtype=STATUS_DTYPE)
        data["error"] = pd.array(self.error, dtype="string")
        data["tokens_in"] = pd.arrays.IntegerArray(self.tokens_in.copy(), ~self.counted)
        data["tokens_out"] = pd.arrays.IntegerArray(self.tokens_out.copy(), ~self.counted)
        data["latency"] = self.latency.copy()
        data["attempts"] = self.attempts.copy()
        return pd.DataFrame(data, index=index.copy())


class BatchRun:
    """One map run: started on the runtime loop, followed and cancelled from any thread.

    `result()` waits (Ctrl-C cancels), `await aresult()` from any loop, `cancel()`,
    `progress` (a snapshot), `add_listener(fn)` (called on the runtime loop with each
    snapshot, at most 10 times a second, and once more at the end: keep it quick).
    """

    def __init__(
        self,
        runtime: AgentRuntime,
        plan: MapPlan,
        frame: pd.DataFrame,
        store: RowStore,
        owns_store: bool,
    ) -> None:
        self.runtime = runtime
        self.plan = plan
        self.total = len(frame)
        self._index = frame.index
        self._data = frame[list(plan.columns)]
        self._store: RowStore | None = store
        self._owns_store = owns_store
        self._outcomes = _Outcomes(plan, self.total)
        self.future: concurrent.futures.Future[pd.DataFrame] = concurrent.futures.Future()
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._final_sent = False
        self._counts = [0] * 5
        self._errors: dict[str, list[Any]] = {}
        self._state = "starting"
        self._stop: tuple[int, str] | None = None
        self._cancel_requested = False
        self._wake = asyncio.Event()
        self._cancelled = asyncio.Event()
        self._handles: dict[int, ChatHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._version = 0
        self._started = time.monotonic()
        self._ended: float | None = None
        self._limit = float(plan.concurrency)
        self._decreases = 0
        self._rate_limited = 0
        self._hits_seen: int | None = None
        self._episode = 0.0
        self._credential: str | None = None
        self._in_flight = 0
        self._inflight_tokens = 0
        self._inflight_usd = 0.0
        self._tokens_in = 0
        self._tokens_out = 0
        self._usd = 0.0
        self._seen_rows = 0
        self._seen_chars = 0
        self._seen_tokens_in = 0
        self._seen_tokens_out = 0
        self._next_start = 0.0
        self._minute: collections.deque[tuple[float, int]] = collections.deque()
        self._minute_tokens = 0
        self._answered: collections.deque[float] = collections.deque()
        self.job: str | None = None
        self.job_state: str | None = None
        self._system_chars = len(plan.config.system_instruction or "")

    def __repr__(self) -> str:
        progress = self.progress
        return f"<BatchRun {progress.state} {progress.finished}/{self.total} rows>"

    # From any thread

    def start(self) -> None:
        _running.add(self)
        task = asyncio.run_coroutine_threadsafe(self._main(), self.runtime.loop)

        def settle(done: concurrent.futures.Future[pd.DataFrame]) -> None:
            if done.cancelled():
                self.future.cancel()
            elif (exc := done.exception()) is not None:
                self.future.set_exception(exc)
            else:
                self.future.set_result(done.result())

        task.add_done_callback(settle)

    @property
    def done(self) -> bool:
        return self.future.done()

    def cancel(self) -> None:
        """Stop the run: rows in flight are cancelled, finished ones kept; returns at once."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing runs anyway
            self.runtime.loop.call_soon_threadsafe(self._cancel)

    def add_listener(self, listener: Listener) -> None:
        """Call `listener` with each snapshot (at once, here, if the run has ended)."""
        with self._lock:
            ended = self._final_sent
            if not ended:
                self._listeners.append(listener)
        if ended:
            listener(self.progress)
        self._version += 1

    @property
    def progress(self) -> BatchProgress:
        now = self._ended if self._ended is not None else time.monotonic()
        elapsed = now - self._started
        while self._answered and self._answered[0] < now - RATE_WINDOW:
            with contextlib.suppress(IndexError):
                self._answered.popleft()
        window = min(RATE_WINDOW, elapsed)
        rate = len(self._answered) / window if window > 0 else 0.0
        counts = list(self._counts)
        left = self.total - sum(counts)
        eta = left / rate if rate > 0 and self._ended is None else None
        with self._lock:
            errors = tuple(
                ErrorSummary(kind, count, self._index[position], message)
                for kind, (count, position, message) in self._errors.items()
            )
        price = self.plan.price
        return BatchProgress(
            total=self.total,
            ok=counts[OK],
            failed=counts[ERROR],
            cancelled=counts[CANCELLED],
            skipped=counts[SKIPPED],
            cached=counts[CACHED],
            in_flight=self._in_flight,
            concurrency=int(self._limit),
            tokens_in=self._tokens_in,
            tokens_out=self._tokens_out,
            cost_usd=self._usd if price is not None else None,
            elapsed=elapsed,
            rate=rate,
            eta=eta,
            state=self._state,
            stop_reason=self._stop[1] if self._stop is not None else None,
            errors=errors,
            rate_limited=self._rate_limited,
            concurrency_decreases=self._decreases,
            mode=self.plan.mode,
            model=self.plan.model,
            run_key=self.plan.run_key,
            job=self.job,
            job_state=self.job_state,
        )

    def result(self, timeout: float | None = None) -> pd.DataFrame:
        """Wait for the result frame; Ctrl-C cancels the run (finished rows are kept) and
        re-raises once the rows in flight have ended."""
        if threading.current_thread() is self.runtime.thread:
            raise WrongThread("result() would deadlock on the runtime thread: await aresult()")
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while not self.future.done():
                if deadline is not None and time.monotonic() >= deadline:
                    raise Timeout(f"the map run was still going after {timeout} s")
                concurrent.futures.wait([self.future], WAIT_SLICE)
        except KeyboardInterrupt:
            self.cancel()
            with contextlib.suppress(KeyboardInterrupt):
                concurrent.futures.wait([self.future], SETTLE_TIMEOUT)
            print(self._interrupted_note(), file=sys.stderr)
            raise
        return self._outcome()

    async def aresult(self) -> pd.DataFrame:
        """Await the result frame from any event loop; being cancelled cancels the run.

        Waits in short slices, so a kernel interrupt reaches an awaiting cell at once."""
        waiting = asyncio.wrap_future(self.future)
        try:
            while not waiting.done():
                await asyncio.wait({waiting}, timeout=WAIT_SLICE)
        except asyncio.CancelledError:
            self.cancel()
            await asyncio.wait({waiting}, timeout=SETTLE_TIMEOUT)
            print(self._interrupted_note(), file=sys.stderr)
            raise
        return self._outcome()

    def _outcome(self) -> pd.DataFrame:
        if self.future.cancelled():
            raise RuntimeClosed(
                "the runtime was shut down while the map ran; the finished rows are kept: "
                "run it again on a new runtime to do the rest"
            )
        return self.future.result()

    def _interrupted_note(self) -> str:
        progress = self.progress
        return (
            f"map interrupted: {progress.ok + progress.cached:,} of {self.total:,} rows are "
            "done and kept; run the same call again to do the rest"
        )

    # On the runtime loop

    async def _main(self) -> pd.DataFrame:
        ticker = asyncio.create_task(self._tick(), name="map-progress")
        try:
            if self.plan.mode == "batch":
                from .remote import run_batch

                await run_batch(self)
            else:
                await self._run_live()
            self._state = (
                "cancelled"
                if self._cancel_requested
                else "stopped"
                if self._stop is not None
                else "done"
            )
        finally:
            await self._end_tasks()
            ticker.cancel()
            if self._state not in ("done", "stopped", "cancelled"):
                self._state = "cancelled"
            self._ended = time.monotonic()
            self._finish_pending("the run ended before this row (the runtime was shut down?)")
            self._publish(final=True)
            self._close_store()
        frame = self._outcomes.frame(self._index)
        frame.attrs["agentrt"] = self.progress
        return frame

    async def _end_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    def _close_store(self) -> None:
        store, self._store = self._store, None
        if store is not None and self._owns_store:
            store.close()

    def _cancel(self) -> None:
        if self._cancel_requested or self._ended is not None:
            return
        self._cancel_requested = True
        self._state = "cancelling"
        for handle in list(self._handles.values()):
            handle.cancel()
        self._cancelled.set()
        self._changed()

    def _changed(self) -> None:
        self._version += 1
        self._wake.set()

    async def _tick(self) -> None:
        seen, quiet = -1, 0.0
        while True:
            if self._version != seen or quiet >= QUIET_TICK:
                seen, quiet = self._version, 0.0
                self._publish()
            await asyncio.sleep(TICK)
            quiet += TICK

    def _publish(self, *, final: bool = False) -> None:
        with self._lock:
            listeners = list(self._listeners)
            self._final_sent = self._final_sent or final
        if not listeners:
            return
        snapshot = self.progress
        for listener in listeners:
            try:
                listener(snapshot)
            except Exception:
                log.exception("a map progress listener failed; it is dropped")
                with self._lock, contextlib.suppress(ValueError):
                    self._listeners.remove(listener)

    # The rows

    def _prompts(self) -> Iterator[tuple[int, str | None, str | None]]:
        """(position, prompt, None) per row, or (position, None, why it has no prompt)."""
        columns = self.plan.columns
        for start in range(0, self.total, ROWS_PER_READ):
            block = self._data.iloc[start : start + ROWS_PER_READ]
            arrays = [block[column].tolist() for column in columns]
            rows = zip(*arrays, strict=True) if arrays else itertools.repeat((), len(block))
            for offset, values in enumerate(rows):
                try:
                    prompt = self.plan.render(dict(zip(columns, values, strict=True)))
                except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
                    yield start + offset, None, f"cannot fill the template: {exc}"
                    continue
                yield start + offset, prompt, None

    def _lookup(self, key: str) -> tuple[StoredRow, dict[str, Any] | None] | None:
        store = self._store
        if store is None:
            return None
        try:
            stored = store.get(self.plan.run_key, key)
        except StoreError as exc:
            self._store_failed(exc)
            return None
        if stored is None:
            return None
        if self.plan.schema is None:
            return stored, None
        try:
            return stored, self.plan.schema.parse(stored.text)
        except SchemaMismatch:
            return None

    def _keep(self, key: str, stored: StoredRow) -> None:
        store = self._store
        if store is None:
            return
        try:
            store.put(self.plan.run_key, key, stored)
        except StoreError as exc:
            self._store_failed(exc)

    def _store_failed(self, problem: StoreError) -> None:
        log.warning("map results are no longer kept (a re-run will redo these rows): %s", problem)
        self._close_store()

    def _finish(
        self,
        position: int,
        status: int,
        *,
        error: str | None = None,
        kind: str | None = None,
        tokens: tuple[int, int] | None = None,
        latency: float = math.nan,
        attempts: int = 0,
    ) -> None:
        outcomes = self._outcomes
        outcomes.status[position] = status
        outcomes.error[position] = error
        if tokens is not None:
            outcomes.tokens_in[position], outcomes.tokens_out[position] = tokens
            outcomes.counted[position] = True
        outcomes.latency[position] = latency
        outcomes.attempts[position] = attempts
        self._counts[status] += 1
        if status in (OK, ERROR, CANCELLED) and attempts:
            now = time.monotonic()
            self._answered.append(now)
            while self._answered[0] < now - RATE_WINDOW:
                self._answered.popleft()
        if status == ERROR and error is not None:
            with self._lock:
                entry = self._errors.get(kind or "error")
                if entry is None:
                    self._errors[kind or "error"] = [1, position, error]
                else:  # the example is the first row in the frame, whatever finished first
                    entry[0] += 1
                    if position < entry[1]:
                        entry[1:] = [position, error]
        self._changed()

    def _finish_cached(self, position: int, found: tuple[StoredRow, dict[str, Any] | None]) -> None:
        stored, values = found
        self._outcomes.set_reply(position, stored.text, values)
        self._finish(
            position, CACHED, tokens=(stored.tokens_in, stored.tokens_out), latency=stored.latency
        )

    def _finish_ok(
        self,
        position: int,
        key: str,
        text: str,
        values: dict[str, Any] | None,
        tokens: tuple[int, int],
        latency: float,
        attempts: int,
    ) -> None:
        self._outcomes.set_reply(position, text, values)
        self._keep(key, StoredRow(text, *tokens, latency, attempts, self.plan.model))
        self._finish(position, OK, tokens=tokens, latency=latency, attempts=attempts)

    def _finish_pending(self, reason: str) -> None:
        for position in np.flatnonzero(self._outcomes.status == _PENDING):
            self._finish(int(position), CANCELLED, error=reason)

    def _spend(self, tokens_in: int, tokens_out: int, *, batch: bool = False) -> None:
        self._tokens_in += tokens_in
        self._tokens_out += tokens_out
        if self.plan.price is not None:
            self._usd += self.plan.price.cost(tokens_in, tokens_out, batch=batch)
        if self.plan.tpm is not None:
            self._minute.append((time.monotonic(), tokens_in + tokens_out))
            self._minute_tokens += tokens_in + tokens_out

    def _observe_size(self, prompt: str, tokens_in: int, tokens_out: int) -> None:
        self._seen_rows += 1
        self._seen_chars += len(prompt) + self._system_chars
        self._seen_tokens_in += tokens_in
        self._seen_tokens_out += tokens_out

    def _estimate(self, prompt: str) -> _Estimate:
        chars = len(prompt) + self._system_chars
        if self._seen_rows and self._seen_chars:
            tokens_in = chars * self._seen_tokens_in / self._seen_chars
            tokens_out = self._seen_tokens_out / self._seen_rows
        else:
            tokens_in = chars / CHARS_PER_TOKEN
            tokens_out = float(self.plan.config.max_output_tokens or tokens_in)
        estimate_in, estimate_out = math.ceil(tokens_in), math.ceil(tokens_out)
        price = self.plan.price
        usd = (
            price.cost(estimate_in, estimate_out, batch=self.plan.mode == "batch")
            if price is not None
            else 0.0
        )
        return _Estimate(estimate_in, estimate_out, usd)

    def _over_budget(self, estimate: _Estimate) -> str | None:
        """Why the row of `estimate` must not start (the budget), or None."""
        plan = self.plan
        if plan.budget_tokens is not None:
            spent = self._tokens_in + self._tokens_out
            if spent + self._inflight_tokens + estimate.tokens > plan.budget_tokens:
                return (
                    f"stopped at budget_tokens={plan.budget_tokens:,}: {spent:,} spent, the "
                    f"next row needs about {estimate.tokens:,}"
                )
        if (
            plan.budget_usd is not None
            and self._usd + self._inflight_usd + estimate.usd > plan.budget_usd
        ):
            return (
                f"stopped at budget_usd={plan.budget_usd:g}: about ${self._usd:.4f} "
                f"spent, the next row needs about ${estimate.usd:.4f} (an estimate)"
            )
        return None

    # Rate limits

    async def _prepare_quota(self) -> None:
        """Learn the run's credential (starting the backend) and its 429s so far."""
        config = self.plan.config
        if config.api_key or config.base_url:
            runtime = self.runtime.config
            self._credential = fingerprint(
                config.api_key or runtime.resolved_api_key(), config.base_url or runtime.base_url
            )
        else:
            wait = self.runtime.aio.wait_for_quota(self.runtime.config.quota_max_wait)
            try:
                if await self._until_cancelled(wait):
                    return
            except Timeout:
                self._stop = (
                    SKIPPED,
                    (
                        "stopped: the key is rate limited for longer than quota_max_wait="
                        f"{self.runtime.config.quota_max_wait:g} s: run the same call again later"
                    ),
                )
                return
            except AgentError as exc:
                self._stop = SKIPPED, f"stopped: the model backend is not available: {exc}"
                return
            state = self.runtime.quota_state
            self._credential = state.fingerprint if state is not None else None
        if self._credential is not None:
            state = self.runtime.quota_registry.state(self._credential)
            self._hits_seen, self._episode = state.total_hits, state.blocked_at

    def _observe_quota(self) -> float:
        """Count new 429s (halving the concurrency once per episode); seconds still blocked."""
        if self._credential is None:
            return 0.0
        state = self.runtime.quota_registry.state(self._credential)
        seen = self._hits_seen or 0
        if state.total_hits > seen:
            self._rate_limited += state.total_hits - seen
            self._hits_seen = state.total_hits
            if state.blocked_at != self._episode:
                self._episode = state.blocked_at
                self._limit = max(1.0, self._limit / 2)
                self._decreases += 1
                self._changed()
        return state.seconds_left

    def _grow(self) -> None:
        self._limit = min(float(self.plan.max_concurrency), self._limit + 1 / self._limit)

    def _tokens_wait(self, estimate: _Estimate, now: float) -> float | None:
        """Seconds until `tpm` lets the row start (0: now; None: when a row ends)."""
        tpm = self.plan.tpm
        if tpm is None:
            return 0.0
        while self._minute and self._minute[0][0] <= now - 60:
            self._minute_tokens -= self._minute.popleft()[1]
        used = self._minute_tokens + self._inflight_tokens
        if used + estimate.tokens <= tpm or (not self._minute and not self._in_flight):
            return 0.0
        return self._minute[0][0] + 60 - now if self._minute else None

    async def _admit(self, estimate: _Estimate) -> tuple[int, str] | None:
        """Wait until the row of `estimate` may start; a stop (status, reason) if it may not."""
        quota_max_wait = self.runtime.config.quota_max_wait
        while True:
            self._wake.clear()
            if self._cancel_requested:
                return CANCELLED, "cancelled"
            if self._stop is not None:
                return self._stop
            blocked = self._observe_quota()
            if blocked > quota_max_wait:
                return SKIPPED, (
                    f"stopped: the key is rate limited for {blocked:.0f} s more, past "
                    f"quota_max_wait={quota_max_wait:g} s: run the same call again later"
                )
            wait: float | None = None
            over = self._over_budget(estimate)
            if over is not None:
                if not self._in_flight:
                    return SKIPPED, over
            elif self._in_flight >= int(self._limit):
                pass
            elif blocked > 0:
                wait = blocked
                self._state = "waiting"
            else:
                now = time.monotonic()
                tokens = self._tokens_wait(estimate, now)
                pace = self._next_start - now
                if pace <= 0 and tokens == 0:
                    if self.plan.rpm is not None:
                        self._next_start = max(now, self._next_start) + 60 / self.plan.rpm
                    self._state = "running"
                    return None
                wait = None if tokens is None else max(pace, tokens)
            await self._sleep(wait)

    async def _sleep(self, seconds: float | None) -> None:
        """Until something changes (a row ended, a cancel), or `seconds` passed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    # The live run

    async def _run_live(self) -> None:
        await self._prepare_quota()
        self._state = "running"
        handled = 0
        for position, prompt, problem in self._prompts():
            handled += 1
            if handled % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            if prompt is None:
                self._finish(position, ERROR, error=problem, kind="template")
                continue
            key = self.plan.row_key(prompt)
            found = None if self.plan.refresh and self._stop is None else self._lookup(key)
            if found is not None:
                self._finish_cached(position, found)
                continue
            estimate = self._estimate(prompt)
            if self._stop is None and not self._cancel_requested:
                self._stop = await self._admit(estimate)
            if self._cancel_requested:
                self._finish(position, CANCELLED, error="cancelled before it started")
            elif self._stop is not None:
                self._finish(position, self._stop[0], error=self._stop[1])
            else:
                self._launch(position, prompt, key, estimate)
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    def _launch(self, position: int, prompt: str, key: str, estimate: _Estimate) -> None:
        self._in_flight += 1
        self._inflight_tokens += estimate.tokens
        self._inflight_usd += estimate.usd
        task = asyncio.create_task(self._row(position, prompt, key, estimate), name="map-row")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._changed()

    async def _row(self, position: int, prompt: str, key: str, estimate: _Estimate) -> None:
        started = time.monotonic()
        try:
            tries = await self._tries(position, prompt)
        finally:
            self._in_flight -= 1
            self._inflight_tokens -= estimate.tokens
            self._inflight_usd -= estimate.usd
            self._wake.set()
        self._spend(*tries.tokens)
        self._conclude(position, key, prompt, tries, time.monotonic() - started)

    async def _tries(self, position: int, prompt: str) -> _Tries:
        """The row's turn, tried again after a per-minute 429 the agent did not get past."""
        tries = _Tries()
        try:
            for round_ in itertools.count():
                result, calls = await self._turn(position, prompt)
                tries.add(result, calls)
                error = result.error
                if not (isinstance(error, QuotaExceeded) and error.scope == "minute"):
                    break
                if round_ >= ROW_QUOTA_RETRIES or self._stop is not None:
                    break
                if self._cancel_requested or await self._quota_pause():
                    tries.error = TurnCancelled("cancelled while waiting to try again")
                    break
        except AgentError as exc:  # the runtime is shutting down, the agent was stopped
            tries.error = exc
        except Exception as exc:  # a bug of ours must not lose the row or the run
            log.exception("a map row failed")
            tries.error = BackendError(f"internal error: {exc.__class__.__name__}: {exc}")
        return tries

    def _conclude(
        self, position: int, key: str, prompt: str, tries: _Tries, latency: float
    ) -> None:
        """Record the row's outcome; a reply that fits the schema is kept in the store."""
        error = tries.error
        if error is None and tries.text is not None:
            self._observe_quota()
            try:
                values = self.plan.schema.parse(tries.text) if self.plan.schema else None
            except SchemaMismatch as exc:
                error = exc
            else:
                self._observe_size(prompt, *tries.tokens)
                if not tries.limited:
                    self._grow()
                self._finish_ok(
                    position, key, tries.text, values, tries.tokens, latency, tries.attempts
                )
                return
        assert error is not None
        status = CANCELLED if isinstance(error, TurnCancelled) else ERROR
        daily = isinstance(error, QuotaExceeded) and error.scope in ("day", "zero")
        if daily and self._stop is None:
            self._stop = SKIPPED, f"stopped: {error}"
        self._finish(
            position,
            status,
            error="cancelled" if status == CANCELLED else str(error),
            kind=_kind(error),
            tokens=tries.tokens,
            latency=latency,
            attempts=tries.attempts,
        )

    async def _turn(self, position: int, prompt: str) -> tuple[TurnResult, list[LedgerEntry]]:
        """One try of a row on a fresh agent: its result and its ledger (the HTTP attempts)."""
        aio = self.runtime.aio
        agent = await aio.create_agent(self.plan.config)
        try:
            handle = await aio.chat(agent, prompt, refresh=self.plan.refresh)
            self._handles[position] = handle
            if self._cancel_requested:
                handle.cancel()
            await handle.wait_done()
            calls = await aio.agent_ledger(agent)
        finally:
            self._handles.pop(position, None)
            with contextlib.suppress(AgentError):
                await aio.delete(agent)
        result = handle.outcome()
        assert result is not None
        return result, calls

    async def _quota_pause(self) -> bool:
        """Wait out the credential's block before a row's retry; True if cancelled meanwhile."""
        left = self._observe_quota()
        if left > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._cancelled.wait(), left)
        return self._cancel_requested

    async def _until_cancelled(self, work: Awaitable[Any]) -> bool:
        """Run `work` unless a cancel comes first; True if it did (work is then cancelled)."""
        task = asyncio.ensure_future(work)
        cancel = asyncio.ensure_future(self._cancelled.wait())
        try:
            await asyncio.wait({task, cancel}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancel.cancel()
        if task.done():
            task.result()
            return False
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return True


@dataclass
class _Tries:
    """What the tries of one row came to: the reply or the error, usage and requests."""

    usage: Usage = dataclasses.field(default_factory=Usage)
    attempts: int = 0
    limited: int = 0
    text: str | None = None
    error: BaseException | None = None

    def add(self, result: TurnResult, calls: list[LedgerEntry]) -> None:
        self.attempts += sum(1 for call in calls if call.status != "replayed")
        self.limited += sum(1 for call in calls if call.status == "rate-limited")
        self.usage = self.usage + result.usage
        self.text, self.error = (
            (result.text, None) if result.error is None else (None, result.error)
        )

    @property
    def tokens(self) -> tuple[int, int]:
        usage = self.usage
        return (
            usage.prompt_tokens + usage.tool_use_prompt_tokens,
            usage.candidates_tokens + usage.thoughts_tokens,
        )


def _kind(error: BaseException) -> str:
    """How errors are grouped in the summary: type, and the code or scope that matters."""
    if isinstance(error, QuotaExceeded):
        return f"QuotaExceeded ({error.scope})"
    if isinstance(error, BackendError) and error.code is not None:
        return f"BackendError {error.code}"
    return type(error).__name__


accessor.register()
