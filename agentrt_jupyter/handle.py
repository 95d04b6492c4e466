"""`Turn` (the loop's record of one turn) and `ChatHandle` (how callers follow it from any thread).

A turn keeps every event it published, so a consumer that subscribes late misses
nothing. Waiting consumers register a wake-up callback; the publisher appends first
and then wakes, the consumer registers first and then re-checks, so no wake-up is lost.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .content import Part
from .conversation import Usage
from .errors import Timeout, TurnCancelled, TurnError
from .events import Error, Event, TurnEnd, TurnStatus

WAIT_SLICE = 0.05
"""Blocking waits wake this often, so Ctrl-C / kernel interrupt is seen at once."""
WAKE_EVERY = 0.001
"""Waiting readers are woken at most this often while events stream (the first at once)."""


@dataclass(frozen=True)
class TurnResult:
    """The outcome of a finished turn."""

    agent: str
    turn: int
    status: TurnStatus
    text: str
    thoughts: str
    usage: Usage
    finish_reason: str | None
    model: str
    time_to_first_chunk: float | None
    duration: float
    tool_calls: int
    error: TurnError | None = None
    saved_tokens: int = 0
    """Tokens of the replies replayed from the reply cache (recorded, not billed again)."""
    replayed_calls: int = 0
    """Calls answered from the reply cache (a reply recorded without usage saves 0 tokens)."""
    logprob: float | None = None
    """The mean token log probability of the last reply, with `logprobs=True` where the
    service gives them (None otherwise, and for a replayed reply)."""

    @property
    def replayed(self) -> bool:
        return self.replayed_calls > 0

    def __str__(self) -> str:
        return self.text


class Turn:
    """One turn on the runtime loop. Written only by the loop; read from anywhere."""

    def __init__(self, agent: str, parts: tuple[Part, ...], model: str) -> None:
        self.agent = agent
        self.parts = parts
        self.model = model
        self.number = 0
        self.events: list[Event] = []
        self.finished = False
        self.started_at: float | None = None
        self.first_chunk_at: float | None = None
        self.logprob: float | None = None
        self.ended_at: float | None = None
        self.usage = Usage()
        self.text_parts: list[str] = []
        self.thought_parts: list[str] = []
        self.tool_calls = 0
        self.refresh = False
        """Call the model even when the reply cache holds this request's reply."""
        self.saved_tokens = 0
        self.replayed_calls = 0
        self.task: asyncio.Task[None] | None = None
        self.result: TurnResult | None = None
        self._waiters: list[Callable[[], None]] = []
        self._wake_scheduled = False
        self._woken_at = 0.0
        self._on_finish: list[Callable[[], None]] = []
        self._finish_lock = threading.Lock()

    @property
    def status(self) -> str:
        if self.result is not None:
            return self.result.status
        return "running" if self.task is not None else "queued"

    def publish(self, event: Event) -> None:
        """Record an event; waiting readers are woken at most once per `WAKE_EVERY` and
        once per loop iteration, not per event (a stream parses many buffered chunks in
        one step; waking another thread costs a GIL hand-off). After a quiet spell the
        first event wakes them in this iteration."""
        self.events.append(event)
        if self._waiters and not self._wake_scheduled:
            self._wake_scheduled = True
            loop = asyncio.get_running_loop()
            early = self._woken_at + WAKE_EVERY - time.monotonic()
            if early > 0:
                loop.call_later(early, self._wake)
            else:
                loop.call_soon(self._wake)

    def _wake(self) -> None:
        self._wake_scheduled = False
        self._woken_at = time.monotonic()
        waiters, self._waiters = self._waiters, []
        for wake in waiters:
            wake()

    def finish(self, result: TurnResult) -> None:
        self.result = result
        self.finished = True
        if result.error is not None:
            self.events.append(Error(result.error))
        self.events.append(TurnEnd(result.status, result.text, result.usage, result.finish_reason))
        self._wake()  # at once: the end must reach readers even if the loop stops next
        with self._finish_lock:
            callbacks, self._on_finish = self._on_finish, []
        for callback in callbacks:
            callback()

    def add_finish_callback(self, callback: Callable[[], None]) -> None:
        """Called once when the turn finishes (at once if it has); from any thread."""
        with self._finish_lock:
            if not self.finished:
                self._on_finish.append(callback)
                return
        callback()

    def remove_finish_callback(self, callback: Callable[[], None]) -> None:
        """Forget a callback that is no longer wanted (a wait that timed out)."""
        with self._finish_lock, contextlib.suppress(ValueError):
            self._on_finish.remove(callback)

    def add_waiter(self, wake: Callable[[], None]) -> None:
        """Called once when events arrive after this; re-add to wait again."""
        self._waiters.append(wake)


class ChatHandle:
    """A turn in progress: iterate its events (sync or async), or wait for its text.

    `text()` raises the turn's error (never an empty success); `cancel()` stops it and
    keeps the partial reply in history, marked cancelled.
    """

    def __init__(self, turn: Turn, cancel: Callable[[], Any]) -> None:
        self._turn = turn
        self._cancel = cancel

    def __repr__(self) -> str:
        return f"<ChatHandle agent={self._turn.agent!r} turn={self._turn.number} {self.status}>"

    def __eq__(self, other: object) -> bool:
        """Two handles on one turn are equal (a panel following a turn sent elsewhere)."""
        return isinstance(other, ChatHandle) and other._turn is self._turn

    def __hash__(self) -> int:
        return id(self._turn)

    @property
    def content(self) -> tuple[Part, ...]:
        """What the turn sends the model: the user's parts."""
        return self._turn.parts

    @property
    def agent(self) -> str:
        return self._turn.agent

    @property
    def turn(self) -> int:
        """The turn's number in its agent's life (0 until it starts)."""
        return self._turn.number

    @property
    def status(self) -> str:
        """queued, running, complete, cancelled, incomplete or error."""
        return self._turn.status

    @property
    def done(self) -> bool:
        return self._turn.finished

    @property
    def usage(self) -> Usage:
        """Usage so far (final once the turn is done)."""
        return self._turn.usage

    @property
    def partial_text(self) -> str:
        return "".join(self._turn.text_parts)

    def cancel(self) -> None:
        """Stop the turn; returns at once (the stop is confirmed by the turn's end)."""
        if not self._turn.finished:
            self._cancel()

    def _wait_sync(self, seen: int, deadline: float | None) -> None:
        """Block until there are more than `seen` events, in short interruptible slices."""
        arrived = threading.Event()
        self._turn.add_waiter(arrived.set)
        try:
            while len(self._turn.events) <= seen:
                if deadline is not None and time.monotonic() >= deadline:
                    raise Timeout(f"turn of {self.agent!r} still running after the timeout")
                arrived.wait(WAIT_SLICE)
        except KeyboardInterrupt:
            self.cancel()
            raise

    def __iter__(self) -> Iterator[Event]:
        return self.events()

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Every event of the turn, from the first, blocking between them."""
        deadline = None if timeout is None else time.monotonic() + timeout
        index = 0
        while True:
            while index < len(self._turn.events):
                event = self._turn.events[index]
                index += 1
                yield event
                if isinstance(event, TurnEnd):
                    return
            self._wait_sync(index, deadline)

    async def _arrival(self, seen: int) -> None:
        """Until there are more than `seen` events."""
        loop = asyncio.get_running_loop()
        arrived: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            loop.call_soon_threadsafe(_resolve, arrived)

        self._turn.add_waiter(wake)
        if len(self._turn.events) <= seen:
            await arrived

    async def _wait_async(self, seen: int) -> None:
        """`_arrival` for the consumers that own the turn: giving up cancels it."""
        try:
            await self._arrival(seen)
        except asyncio.CancelledError:
            self.cancel()
            raise

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._aevents()

    async def _aevents(self) -> AsyncIterator[Event]:
        index = 0
        while True:
            while index < len(self._turn.events):
                event = self._turn.events[index]
                index += 1
                yield event
                if isinstance(event, TurnEnd):
                    return
            await self._wait_async(index)

    def events_since(self, index: int) -> list[Event]:
        """The events after the first `index` (a snapshot; never blocks)."""
        return self._turn.events[index:]

    async def wait_past(self, index: int, timeout: float | None = None) -> bool:
        """Wait until there are more than `index` events; False if `timeout` passed first."""
        if len(self._turn.events) > index:
            return True
        try:
            await asyncio.wait_for(self._arrival(index), timeout)
        except TimeoutError:
            return False
        return True

    async def wait_done(self, timeout: float | None = None) -> bool:
        """Wait until the turn has finished, woken by its end only (not by each event)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def finished() -> None:
            loop.call_soon_threadsafe(_resolve, done)

        self._turn.add_finish_callback(finished)
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout)
        except TimeoutError:
            return False
        return True

    def result(self, timeout: float | None = None) -> TurnResult:
        """Wait for the turn; its error (cancel included) is raised, with partial text on it.

        Woken by the turn's end only: a waiter woken per event would take the GIL from
        the runtime thread at every loop step of a long stream."""
        if not self._turn.finished:
            self._wait_finished(None if timeout is None else time.monotonic() + timeout)
        return self._outcome()

    def _wait_finished(self, deadline: float | None) -> None:
        finished = threading.Event()
        self._turn.add_finish_callback(finished.set)
        try:
            while not finished.wait(_slice(deadline)):
                if deadline is not None and time.monotonic() >= deadline:
                    self._turn.remove_finish_callback(finished.set)
                    raise Timeout(f"turn of {self.agent!r} still running after the timeout")
        except KeyboardInterrupt:
            self.cancel()
            raise

    def text(self, timeout: float | None = None) -> str:
        """The whole reply text; raises the turn's error instead of returning partial text."""
        return self.result(timeout).text

    async def aresult(self) -> TurnResult:
        while not self._turn.finished:
            await self._wait_async(len(self._turn.events))
        return self._outcome()

    async def atext(self) -> str:
        return (await self.aresult()).text

    def __await__(self) -> Any:
        return self.aresult().__await__()

    def _outcome(self) -> TurnResult:
        result = self._turn.result
        assert result is not None
        if result.error is not None:
            raise result.error
        return result

    def outcome(self) -> TurnResult | None:
        """The finished turn's result without raising (None while it runs)."""
        return self._turn.result


def _slice(deadline: float | None) -> float:
    """How long the next interruptible wait may block: a slice, or less before a deadline."""
    if deadline is None:
        return WAIT_SLICE
    return max(0.0, min(WAIT_SLICE, deadline - time.monotonic()))


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def cancelled_error(agent: str, partial: str) -> TurnCancelled:
    return TurnCancelled(f"the turn of {agent!r} was cancelled", partial_text=partial, agent=agent)


def wait_future(future: concurrent.futures.Future[Any], timeout: float | None) -> Any:
    """Block on a runtime future in short slices; Ctrl-C cancels it and propagates."""
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while not future.done():
            slice_ = WAIT_SLICE
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    future.cancel()
                    raise Timeout("the runtime did not answer within the timeout")
                slice_ = min(slice_, left)
            concurrent.futures.wait([future], slice_)
    except KeyboardInterrupt:
        future.cancel()
        raise
    return future.result()
