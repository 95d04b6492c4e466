"""`mode="live"`: the rows answered here and now, one request each, as many at once as the
rate controller admits.

Each row is one single-turn request on a fresh unnamed agent with the run's settings
(system instruction, tools, schema), deleted as soon as its row ends, so rows never see
each other and memory does not grow with the rows done. The frame is read a block at a
time and a row is started only when the controller admits it, so a run of a million rows
never holds more than `max_concurrency` requests.

Rate limits are the credential's: every agent on the key waits out a 429's RetryInfo in
the quota registry, no new row starts while it does, and each new episode halves the
concurrency (see `controller`). A per-day (or limit 0) 429, or the user's daily budget
(`QuotaExceeded(scope="budget")`), stops the run; rows in flight finish.

Kernels on one key (the runtime's quota board, `quotaboard.py`) share the run's ceilings:
a row starts only while fewer rows than the run's concurrency are in flight on the key
across kernels (a slot each, renewed while the run lives, freed when the row ends or
`SLOT_TTL` after its kernel died),
`rpm` spaces the starts of every kernel's rows on the key, and `tpm` counts the key's
tokens of the last minute.

A per-minute 429 that the agent's own retries did not get past is retried here, after the
shared wait, up to `ROW_QUOTA_RETRIES` more times.

A cancel cuts the rows in flight `CANCEL_GRACE` s later, and a row whose whole reply had
arrived by then is done, not cancelled (`kept_if_arrived`): a reply the server sent in
full is kept, so a rerun does not send (and bill) it again.

Rows whose prompt was answered before under the run's key are not sent again: they come
back `cached` (see `BatchRun.unanswered`); `refresh=True` sends every row again. Only
successful rows are kept, so a re-run also retries the failed ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..backends.base import BLOCKED_FINISH_REASONS
from ..content import FunctionCallPart
from ..conversation import ConversationMessage, LedgerEntry, Usage
from ..errors import AgentError, BackendError, QuotaExceeded, Timeout, TurnCancelled
from ..handle import ChatHandle, TurnResult
from ..quota import fingerprint
from ..quotaboard import SLOT_TTL
from .controller import Start, Stop, Wait
from .outcomes import CANCELLED, ERROR, SKIPPED, error_kind
from .run import Stopped
from .schema import SchemaMismatch

if TYPE_CHECKING:
    from .run import BatchRun

log = logging.getLogger("agentrt_jupyter")

ROW_QUOTA_RETRIES = 2
SLOT_POLL = 0.05
"""Seconds between looks for a free key-wide slot (other kernels' rows end unseen)."""
CANCEL_GRACE = 0.1
"""Seconds between a cancel and the cut of the rows in flight (see `_cancel_turns`)."""


async def answer_live(run: BatchRun) -> None:
    """Answer `run`'s rows one request each (on the runtime loop)."""
    await LiveRows(run).answer()


@dataclass
class _Tries:
    """What the tries of one row came to: the reply or the error, usage and requests."""

    usage: Usage = dataclasses.field(default_factory=Usage)
    attempts: int = 0
    limited: int = 0
    text: str | None = None
    logprob: float | None = None
    error: BaseException | None = None
    estimate: tuple[int, int] = (0, 0)
    """The row's estimate (input, output), counted where the service reported no usage."""

    def add(self, result: TurnResult, calls: list[LedgerEntry]) -> None:
        self.attempts += sum(1 for call in calls if call.status != "replayed")
        self.limited += sum(1 for call in calls if call.status == "rate-limited")
        self.usage = self.usage + result.usage
        self.text, self.error = (
            (result.text, None) if result.error is None else (None, result.error)
        )
        self.logprob = result.logprob

    @property
    def tokens(self) -> tuple[int, int]:
        tokens_in, tokens_out = self.usage.split()
        return (
            self.estimate[0] if tokens_in is None else tokens_in,
            self.estimate[1] if tokens_out is None else tokens_out,
        )


def kept_if_arrived(result: TurnResult, history: list[ConversationMessage]) -> TurnResult:
    """A turn cancelled once its whole reply had arrived (its last message a model reply
    with a finish reason that is no block, and no tool call left to run) is complete: the
    row is done, and a rerun does not send (and bill) it again."""
    last = history[-1] if history else None
    if last is None or last.role != "model" or last.turn != result.turn:
        return result
    reason = last.finish_reason
    if reason is None or reason in BLOCKED_FINISH_REASONS:
        return result
    if any(isinstance(part, FunctionCallPart) for part in last.parts):
        return result
    return dataclasses.replace(result, status="complete", error=None, finish_reason=reason)


class LiveRows:
    """The rows of one live run: admitted by the controller, each a task on the loop."""

    def __init__(self, run: BatchRun) -> None:
        self.run = run
        self.controller = run.controller
        self._credential: str | None = None
        self._handles: dict[int, ChatHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._board = run.runtime.quota_registry.board
        self._slots = itertools.count()
        self._slot_prefix = f"{os.getpid()}-{secrets.token_hex(4)}"
        run.on_cancel(self._cancel_turns)

    async def answer(self) -> None:
        renewal = asyncio.create_task(self._renew_slots(), name="map-slots")
        try:
            await self._prepare_quota()
            self.run.state = "running"
            async for position, prompt, key in self.run.unanswered():
                await self._dispatch(position, prompt, key)
            while self._tasks:
                await asyncio.wait(list(self._tasks))
        finally:
            renewal.cancel()
            await asyncio.wait([renewal])
            await self._end_tasks()

    async def _renew_slots(self) -> None:
        """Renew the rows' key-wide slots while the run lives (a killed kernel's expire)."""
        while True:
            await asyncio.sleep(SLOT_TTL / 3)
            key, board = self._shared_key(), self._board
            if key is not None and board is not None:
                board.renew_slots(key, self._slot_prefix)

    async def _dispatch(self, position: int, prompt: str, key: str) -> None:
        """Row `position`: started once admitted, or ended by the run's stop or a cancel."""
        run = self.run
        if run.stopped is None and not run.cancel_requested:
            admitted = await self._admit(prompt)
            if isinstance(admitted, Start):
                self._launch(position, prompt, key, admitted)
                return
            run.stop(admitted.reason, admitted.status)
        stopped = run.stopped
        if run.cancel_requested or stopped is None:
            run.finish(position, CANCELLED, error="cancelled before it started")
        else:
            run.finish(position, stopped.status, error=stopped.reason)

    async def _admit(self, prompt: str) -> Start | Stopped:
        """Wait until the row of `prompt` may start (its estimate then reserved); a stop if
        it may not."""
        run = self.run
        while True:
            if run.cancel_requested:
                return Stopped(CANCELLED, "cancelled")
            if run.stopped is not None:
                return run.stopped
            admission = self.controller.admit(
                prompt, blocked=self._observe_quota(), minute_tokens=self._key_minute_tokens()
            )
            if isinstance(admission, Stop):
                return Stopped(SKIPPED, admission.reason)
            if isinstance(admission, Start):
                admission = await self._key_wide(admission)
            if isinstance(admission, Start):
                run.state = "running"
                return admission
            if admission.rate_limited:
                run.state = "waiting"
            await run.wait_for_change(admission.seconds)

    def _shared_key(self) -> str | None:
        """The run's credential when kernels share its ceilings on the quota board."""
        return self._credential if self._board is not None else None

    def _key_minute_tokens(self) -> int | None:
        key = self._shared_key()
        if key is None or self.controller.tpm is None or self._board is None:
            return None
        return self._board.minute_tokens(key)

    async def _key_wide(self, start: Start) -> Start | Wait:
        """`start` at its booked start of the key's shared rpm, holding a key-wide slot;
        or a wait for a slot (the start given back)."""
        key, board = self._shared_key(), self._board
        if key is None or board is None:
            return start
        rpm = self.run.plan.rpm
        booked = board.take_start(key, 60 / rpm) if rpm is not None else 0.0
        if booked > 0 and await self.run.until_cancelled(asyncio.sleep(booked)):
            self.controller.unreserve(start.estimate)
            return Wait(0.0)
        slot = f"{self._slot_prefix}-{next(self._slots)}"
        if board.acquire_slot(key, slot, self.controller.concurrency) is False:
            self.controller.unreserve(start.estimate)
            return Wait(SLOT_POLL)
        return dataclasses.replace(start, slot=slot)

    def _free_slot(self, slot: str | None) -> None:
        key, board = self._shared_key(), self._board
        if slot is not None and key is not None and board is not None:
            board.release_slot(key, slot)

    async def _end_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    def _cancel_turns(self) -> None:
        """Cancel the rows' turns `CANCEL_GRACE` s from now: a reply the server has already
        sent in full is read and kept meanwhile, rather than cut and billed again by a rerun."""
        loop = asyncio.get_running_loop()
        for handle in list(self._handles.values()):
            loop.call_later(CANCEL_GRACE, handle.cancel)

    async def _prepare_quota(self) -> None:
        """Learn the run's credential (starting the backend) and its 429s so far."""
        run = self.run
        config, runtime = run.plan.config, run.runtime
        if config.api_key or config.base_url:
            self._credential = fingerprint(
                config.api_key or runtime.config.resolved_api_key(),
                config.base_url or runtime.config.base_url,
            )
        else:
            if not await self._wait_for_quota():
                return
            state = runtime.quota_state
            self._credential = state.fingerprint if state is not None else None
        if self._credential is not None:
            state = runtime.quota_registry.refresh(self._credential)
            self.controller.quota_baseline(state.total_hits, state.blocked_at)

    async def _wait_for_quota(self) -> bool:
        """Wait out the default credential's block (starting the backend); False if the
        run was stopped or cancelled meanwhile."""
        run = self.run
        quota_max_wait = run.runtime.config.quota_max_wait
        try:
            return not await run.until_cancelled(run.runtime.aio.wait_for_quota(quota_max_wait))
        except Timeout:
            run.stop(
                "stopped: the key is rate limited for longer than quota_max_wait="
                f"{quota_max_wait:g} s: run the same call again later"
            )
        except AgentError as exc:
            run.stop(f"stopped: the model backend is not available: {exc}")
        return False

    def _observe_quota(self) -> float:
        """Count new 429s (halving the concurrency once per episode); seconds still blocked."""
        if self._credential is None:
            return 0.0
        state = self.run.runtime.quota_registry.refresh(self._credential)
        if self.controller.observe_quota(state.total_hits, state.blocked_at):
            self.run.changed()
        return state.seconds_left

    def _launch(self, position: int, prompt: str, key: str, start: Start) -> None:
        """Start the admitted row (its estimate is reserved, its slot held, until it ends)."""
        task = asyncio.create_task(self._row(position, prompt, key, start), name="map-row")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self.run.changed()

    async def _row(self, position: int, prompt: str, key: str, start: Start) -> None:
        started = time.monotonic()
        try:
            tries = await self._tries(position, prompt)
            tries.estimate = (start.estimate.tokens_in, start.estimate.tokens_out)
        finally:
            self.controller.release(start.estimate)
            self._free_slot(start.slot)
            self.run.changed()
        self.controller.spend(*tries.tokens)
        shared_key = self._shared_key()
        if shared_key is not None and self.controller.tpm is not None and self._board is not None:
            self._board.add_tokens(shared_key, sum(tries.tokens))
        self._conclude(position, key, prompt, tries, time.monotonic() - started)

    async def _tries(self, position: int, prompt: str) -> _Tries:
        """The row's turn, tried again after a per-minute 429 the agent did not get past."""
        tries = _Tries()
        try:
            for round_ in itertools.count():
                result, calls = await self._turn(position, prompt)
                tries.add(result, calls)
                if not self._try_again(result.error, round_):
                    break
                if self.run.cancel_requested or await self._quota_pause():
                    tries.error = TurnCancelled("cancelled while waiting to try again")
                    break
        except AgentError as exc:  # the runtime is shutting down, the agent was stopped
            tries.error = exc
        except Exception as exc:  # a bug of ours must not lose the row or the run
            log.exception("a map row failed")
            tries.error = BackendError(f"internal error: {exc.__class__.__name__}: {exc}")
        return tries

    def _try_again(self, error: BaseException | None, round_: int) -> bool:
        """A per-minute 429 the agent did not get past, with retries left and no stop."""
        if not (isinstance(error, QuotaExceeded) and error.scope == "minute"):
            return False
        return round_ < ROW_QUOTA_RETRIES and self.run.stopped is None

    def _conclude(
        self, position: int, key: str, prompt: str, tries: _Tries, latency: float
    ) -> None:
        """Record the row's outcome; a reply that fits the schema is kept in the store."""
        run = self.run
        error = tries.error
        if error is None and tries.text is not None:
            self._observe_quota()
            try:
                values = run.plan.schema.parse(tries.text) if run.plan.schema else None
            except SchemaMismatch as exc:
                error = exc
            else:
                self.controller.row_succeeded(prompt, *tries.tokens, limited=bool(tries.limited))
                run.finish_ok(
                    position, tries.text, values, tries.tokens, latency, tries.attempts,
                    key=key, logprob=tries.logprob,
                )  # fmt: skip
                return
        assert error is not None
        status = CANCELLED if isinstance(error, TurnCancelled) else ERROR
        if isinstance(error, QuotaExceeded) and error.scope in ("day", "zero", "billing", "budget"):
            run.stop(f"stopped: {error}")
        run.finish(
            position,
            status,
            error="cancelled" if status == CANCELLED else str(error),
            kind=error_kind(error),
            tokens=tries.tokens,
            latency=latency,
            attempts=tries.attempts,
        )

    async def _turn(self, position: int, prompt: str) -> tuple[TurnResult, list[LedgerEntry]]:
        """One try of a row on a fresh agent: its result and its ledger (the HTTP attempts)."""
        aio = self.run.runtime.aio
        agent = await aio.create_agent(self.run.plan.config)
        try:
            handle = await aio.chat(agent, prompt, refresh=self.run.plan.refresh)
            self._handles[position] = handle
            if self.run.cancel_requested:
                handle.cancel()
            await handle.wait_done()
            calls = await aio.agent_ledger(agent)
            result = handle.outcome()
            assert result is not None
            if isinstance(result.error, TurnCancelled):
                result = kept_if_arrived(result, await aio.history(agent))
        finally:
            self._handles.pop(position, None)
            with contextlib.suppress(AgentError):
                await aio.delete(agent)
        return result, calls

    async def _quota_pause(self) -> bool:
        """Wait out the credential's block before a row's retry; True if cancelled meanwhile."""
        left = self._observe_quota()
        if left > 0 and await self.run.until_cancelled(asyncio.sleep(left)):
            return True
        return self.run.cancel_requested
