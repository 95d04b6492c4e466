"""One `%%agent` turn in its cell: started on the runtime with its view, then waited for
by the cell, in short slices (a blocking cell) or awaiting (an awaiting cell), so that an
interrupt is seen at once and cancels the turn.

The view's task (`TurnView.follow`, or the data cell's) is started with the runtime's
`start_task_soon` from the cell, so it inherits the cell's context and its output lands
in that cell (see `display`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from ..errors import AgentError, TurnCancelled
from ..handle import WAIT_SLICE, ChatHandle, TurnResult
from .display import TurnView, shorten
from .session import KernelSession, Run

if TYPE_CHECKING:
    from ..runtime import AgentRuntime
    from .datacell import CellData

SETTLE_TIMEOUT = 10.0
"""After an interrupt, how long to wait for the turn to end so its partial reply shows."""


def start_run(
    session: KernelSession,
    runtime: AgentRuntime,
    handle: ChatHandle,
    view: TurnView,
    data: CellData | None,
    *,
    agent: str,
    out: str | None,
    background: bool,
) -> Run | None:
    """Show the turn's displays and start the task rendering it on `runtime` (the turn's);
    returns the run to wait for, or None for a background run (kept in
    `session.background`)."""
    # The data cell's follow opens the tool calls' display, before the reply's.
    follow = view.follow(handle) if data is None else data.follow(view, handle)
    view.show(handle)
    future = runtime.start_task_soon(_await, follow)
    keeps_out = data is not None and data.keeps_out
    run = Run(agent, handle, future, None if keeps_out else out)
    if not background:
        return run
    session.background[agent] = run
    if out is not None:
        namespace = session.user_ns
        future.add_done_callback(lambda done: _store_out(run, done, namespace))
    return None


async def _await(follow: Coroutine[Any, Any, TurnResult]) -> TurnResult:
    """`follow`, made in the cell, as the coroutine function `start_task_soon` takes."""
    return await follow


def _store_out(
    run: Run, done: concurrent.futures.Future[TurnResult], namespace: dict[str, Any]
) -> None:
    if run.out is not None and not done.cancelled() and done.exception() is None:
        namespace[run.out] = done.result()


def block(run: Run) -> TurnResult:
    """Wait in short slices, so an interrupt is seen at once and cancels the turn."""
    try:
        while not run.future.done():
            concurrent.futures.wait([run.future], WAIT_SLICE)
    except KeyboardInterrupt:
        run.handle.cancel()
        with contextlib.suppress(KeyboardInterrupt):
            concurrent.futures.wait([run.future], SETTLE_TIMEOUT)
        raise interrupted(run) from None
    return run.future.result()


async def wait_async(run: Run) -> TurnResult:
    """Await on the kernel's loop; an interrupt arrives as CancelledError and cancels.

    The loop wakes every slice: a SIGINT's Python handler runs only when the main
    thread runs Python code, and nothing else may wake it while the reply streams."""
    done = asyncio.wrap_future(run.future)
    try:
        while not done.done():
            await asyncio.wait({done}, timeout=WAIT_SLICE)
    except asyncio.CancelledError:
        run.handle.cancel()
        await asyncio.wait({done}, timeout=SETTLE_TIMEOUT)
        raise interrupted(run) from None
    return done.result()


def interrupted(run: Run) -> AgentError:
    """The short error an interrupted cell raises: the turn's own TurnCancelled."""
    result = run.handle.outcome()
    error = result.error if result is not None else None
    if not isinstance(error, TurnCancelled):
        error = TurnCancelled(
            f"the turn of {run.agent!r} was cancelled",
            partial_text=run.handle.partial_text,
            agent=run.agent,
        )
    kept = len(error.partial_text)
    return shorten(
        error,
        f"interrupted: the turn of {run.agent!r} was cancelled; its partial reply "
        f"({kept} characters) is kept in history, marked cancelled",
    )


def conclude(run: Run, result: TurnResult, namespace: dict[str, Any]) -> None:
    """Store --out, and raise the turn's error (not for a cancel the user asked for)."""
    if run.out is not None:
        namespace[run.out] = result
    error = result.error
    if error is not None and not isinstance(error, TurnCancelled):
        raise shorten(error) from None
