"""`BatchRun`: one map run, started on the runtime loop, followed and cancelled from any thread.

The run holds what every way of answering rows shares: the rows' prompts, their outcomes
(`outcomes`), the results table (`records`), the rate controller (`controller`), the
listeners and the run's state. How the rows are answered is a function given to it:
`live.answer_live` (one request per row, here and now) or `remote.answer_in_batch` (the
provider's Batch API). Both use only the public interface below the "On the runtime loop" line.

Cancel (`run.cancel()`, the widget's button, `cancel_maps`, Ctrl-C / kernel interrupt in
`result()` and `aresult()`) starts no more rows and calls the cancel callbacks (the live
rows cancel their turns): finished rows are kept (a live row whose whole reply had arrived
is finished, see `live.kept_if_arrived`), the others are `cancelled`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import RuntimeClosed, Timeout, WrongThread
from ..handle import WAIT_SLICE
from .controller import RateController
from .outcomes import CACHED, CANCELLED, ERROR, OK, SKIPPED, RowOutcomes
from .progress import ENDED, BatchProgress, Listener, Listeners
from .records import RunResults, StoredRow
from .schema import SchemaMismatch

if TYPE_CHECKING:
    import pandas as pd

    from ..runtime import AgentRuntime
    from .plan import MapPlan

TICK = 0.1
"""Listeners hear at most this often (10 times a second)..."""
QUIET_TICK = 1.0
"""...and at least this often while the run goes on (elapsed time and ETA move)."""
SETTLE_TIMEOUT = 10.0
"""After a cancel or an interrupt, how long to wait for the rows in flight to end."""
YIELD_EVERY = 256
"""Rows an answering loop handles (cached ones, say) before it lets the loop run others."""

Answer = Callable[["BatchRun"], Awaitable[None]]
"""How a run's rows are answered (on the runtime loop)."""


class Stopped(NamedTuple):
    """Why no more rows start: the status the rows left get, and the reason."""

    status: int
    reason: str


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
        records: RunResults,
        answer: Answer,
    ) -> None:
        self.runtime = runtime
        self.plan = plan
        self.total = len(frame)
        self.records = records
        self.controller = RateController.for_plan(plan, runtime.config.quota_max_wait)
        self.outcomes = RowOutcomes(plan.schema, self.total, logprobs=plan.config.logprobs)
        self.future: concurrent.futures.Future[pd.DataFrame] = concurrent.futures.Future()
        self.job: str | None = None
        self.job_state: str | None = None
        self.state = "starting"
        self._answer = answer
        self._index = frame.index
        self._data = frame[list(plan.columns)]
        self._listeners = Listeners()
        self._stopped: Stopped | None = None
        self._cancel_requested = False
        self._on_cancel: list[Callable[[], None]] = []
        self._wake = asyncio.Event()
        self._cancelled = asyncio.Event()
        self._version = 0
        self._started = time.monotonic()
        self._ended: float | None = None

    def __repr__(self) -> str:
        progress = self.progress
        return f"<BatchRun {progress.state} {progress.finished}/{self.total} rows>"

    # From any thread

    def start(self) -> None:
        """Start the run on the runtime loop; returns at once."""
        task = self.runtime.start_task_soon(self._main)

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
        with contextlib.suppress(RuntimeClosed, RuntimeError):  # shut down: nothing runs
            self.runtime.start_task_soon(self._cancel)

    def add_listener(self, listener: Listener) -> None:
        """Call `listener` with each snapshot (at once, here, if the run has ended)."""
        self._listeners.add(listener, lambda: self.progress)
        self._version += 1

    @property
    def progress(self) -> BatchProgress:
        now = self._ended if self._ended is not None else time.monotonic()
        elapsed = now - self._started
        outcomes, controller = self.outcomes, self.controller
        rate = outcomes.rate(now, elapsed)
        counts = list(outcomes.counts)
        left = self.total - sum(counts)
        stopped = self._stopped
        return BatchProgress(
            total=self.total,
            ok=counts[OK],
            failed=counts[ERROR],
            cancelled=counts[CANCELLED],
            skipped=counts[SKIPPED],
            cached=counts[CACHED],
            in_flight=controller.in_flight,
            concurrency=controller.concurrency,
            tokens_in=controller.tokens_in,
            tokens_out=controller.tokens_out,
            cost_usd=controller.usd if self.plan.price is not None else None,
            elapsed=elapsed,
            rate=rate,
            eta=left / rate if rate > 0 and self._ended is None else None,
            state=self.state,
            stop_reason=stopped.reason if stopped is not None else None,
            errors=outcomes.errors(self._index),
            rate_limited=controller.rate_limited,
            concurrency_decreases=controller.decreases,
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

    # On the runtime loop: the run itself

    async def _main(self) -> pd.DataFrame:
        ticker = asyncio.create_task(self._tick(), name="map-progress")
        try:
            await self._answer(self)
            self.state = (
                "cancelled"
                if self._cancel_requested
                else "stopped"
                if self._stopped is not None
                else "done"
            )
        finally:
            ticker.cancel()
            if self.state not in ENDED:
                self.state = "cancelled"
            self._ended = time.monotonic()
            self._finish_pending("the run ended before this row (the runtime was shut down?)")
            self._listeners.publish(lambda: self.progress, final=True)
            self.records.close()
        frame = self.outcomes.frame(self._index)
        frame.attrs["agentrt"] = self.progress
        return frame

    def _cancel(self) -> None:
        if self._cancel_requested or self._ended is not None:
            return
        self._cancel_requested = True
        self.state = "cancelling"
        for callback in list(self._on_cancel):
            callback()
        self._cancelled.set()
        self.changed()

    async def _tick(self) -> None:
        seen, quiet = -1, 0.0
        while True:
            if self._version != seen or quiet >= QUIET_TICK:
                seen, quiet = self._version, 0.0
                self._listeners.publish(lambda: self.progress)
            await asyncio.sleep(TICK)
            quiet += TICK

    def _finish_pending(self, reason: str) -> None:
        for position in self.outcomes.pending():
            self.finish(position, CANCELLED, error=reason)

    # On the runtime loop: the interface of the ways of answering (live, remote)

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested

    @property
    def stopped(self) -> Stopped | None:
        """Why no more rows start, once the run was stopped (budget, quota, a cancel)."""
        return self._stopped

    def stop(self, reason: str, status: int = SKIPPED) -> None:
        """Start no more rows; the rows left get `status` and `reason` (the first stop wins)."""
        if self._stopped is None:
            self._stopped = Stopped(status, reason)

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on the loop) when the run is cancelled."""
        self._on_cancel.append(callback)

    def changed(self) -> None:
        """Something listeners should see changed; wakes `wait_for_change` too."""
        self._version += 1
        self._wake.set()

    async def wait_for_change(self, seconds: float | None) -> None:
        """Until something changed since the last wait (a row ended, a cancel), or `seconds`
        passed: at once if it already did, so a check before the wait loses nothing."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def until_cancelled(self, work: Awaitable[Any]) -> bool:
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

    async def unanswered(self) -> AsyncIterator[tuple[int, str, str]]:
        """(position, prompt, row key) of each row to ask a model for, read a block at a time.

        The other rows end here: one whose template cannot be filled is an error, one
        answered before under the run's key comes back cached (unless `refresh`, while the
        run is not stopped). Lets the loop run others every `YIELD_EVERY` rows."""
        for handled, (position, prompt, problem) in enumerate(self._prompts(), 1):
            if handled % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            if prompt is None:
                self.finish(position, ERROR, error=problem, kind="template")
                continue
            key = self.plan.row_key(prompt)
            found = None if self.plan.refresh and self._stopped is None else self._lookup(key)
            if found is None:
                yield position, prompt, key
                continue
            stored, values = found
            self.outcomes.set_reply(position, stored.text, values)
            self.finish(
                position,
                CACHED,
                tokens=(stored.tokens_in, stored.tokens_out),
                latency=stored.latency,
            )

    def _prompts(self) -> Iterator[tuple[int, str | None, str | None]]:
        """(position, prompt, None) per row, or (position, None, why it has no prompt)."""
        return self.plan.prompts(self._data)

    def _lookup(self, key: str) -> tuple[StoredRow, dict[str, Any] | None] | None:
        """The kept result of row `key` (and its schema values), if any fits."""
        stored = self.records.get(key)
        if stored is None:
            return None
        if self.plan.schema is None:
            return stored, None
        try:
            return stored, self.plan.schema.parse(stored.text)
        except SchemaMismatch:
            return None

    def finish(
        self,
        position: int,
        status: int,
        *,
        error: str | None = None,
        kind: str | None = None,
        tokens: tuple[int, int] | None = None,
        latency: float = float("nan"),
        attempts: int = 0,
    ) -> None:
        """Row `position` ended (any status but ok; see `finish_ok`)."""
        self.outcomes.finish(
            position,
            status,
            time.monotonic(),
            error=error,
            kind=kind,
            tokens=tokens,
            latency=latency,
            attempts=attempts,
        )
        self.changed()

    def finish_ok(
        self,
        position: int,
        text: str,
        values: dict[str, Any] | None,
        tokens: tuple[int, int],
        latency: float,
        attempts: int,
        *,
        key: str | None = None,
        logprob: float | None = None,
    ) -> None:
        """Row `position` was answered; with its `key` the reply is kept for re-runs."""
        self.outcomes.set_reply(position, text, values, logprob)
        if key is not None:
            self.keep(key, StoredRow(text, *tokens, latency, attempts, self.plan.model))
        self.finish(position, OK, tokens=tokens, latency=latency, attempts=attempts)

    def keep(self, key: str, stored: StoredRow) -> None:
        """Keep a reply for re-runs (also one no row of this run has now)."""
        self.records.put(key, stored)

    def skip_pending(self, reason: str) -> None:
        """Every row without an outcome yet is skipped for `reason`."""
        for position in self.outcomes.pending():
            self.finish(position, SKIPPED, error=reason)
