"""How an operator over frames runs: a plan to price, then map runs one after another.

An operator is an `Operation`: `plan()` prices what it would send (an `OperatorPlan`,
nothing sent) and `steps()` is a generator that yields each map run it needs
(`MapCall`) and is sent that run's result frame back; what it returns is the operator's
result. The same generator is driven by a blocking caller (`run_operation`) and by an
awaiting one (`arun_operation`), so an operator is written once for both, and every map
run underneath keeps map's cache, quota-aware concurrency, resume, budgets, progress
and cancel (a cancelled run comes back with its finished rows; Ctrl-C, or the awaiting
task being cancelled, ends the operator after its run has settled).

Before the first request, a plan whose estimate passes the notebook's `confirm_cost`
asks for approval (see `explain`); `explain=True` returns the plan instead of running.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import WrongThread
from .engine import start_map
from .explain import OperatorPlan, aconfirm, confirm, cost_gate
from .progress import Listener, show

if TYPE_CHECKING:
    import pandas as pd

    from ..runtime import AgentRuntime


@dataclass(frozen=True)
class MapCall:
    """One map run an operator asks for: `template` over `frame` with map's `options`."""

    frame: pd.DataFrame
    template: str
    options: dict[str, Any] = field(default_factory=dict)


Steps = Generator[MapCall, "pd.DataFrame", Any]


class Operation(Protocol):
    """One call of an operator: what it would cost, and the map runs it makes."""

    def plan(self) -> OperatorPlan:
        """The price of the whole operation; sends nothing."""

    def steps(self) -> Steps:
        """Yield each `MapCall`, receive its result frame; return the operator's result."""


def run_operation(
    runtime: AgentRuntime,
    operation: Operation,
    *,
    explain: bool,
    progress: bool | Listener | None,
) -> Any:
    """The operation's result (its plan with `explain`), waited for here."""
    if explain:
        return operation.plan()
    if threading.current_thread() is runtime.thread:
        raise WrongThread("an operator would deadlock on the runtime thread: await runtime.aio.*")
    if (gate := cost_gate()) is not None:
        confirm(gate, operation.plan())
    steps = operation.steps()
    try:
        call = next(steps)
        while True:
            run = start_map(runtime, call.frame, call.template, **call.options)
            show(run, progress)
            call = steps.send(run.result())
    except StopIteration as done:
        return done.value


async def arun_operation(
    runtime: AgentRuntime,
    operation: Operation,
    *,
    explain: bool,
    progress: bool | Listener | None,
) -> Any:
    """`run_operation` for an event loop (a cell's top-level await)."""
    if explain:
        return await asyncio.to_thread(operation.plan)
    if (gate := cost_gate()) is not None:
        await aconfirm(gate, await asyncio.to_thread(operation.plan))
    steps = operation.steps()
    try:
        call = next(steps)
        while True:
            run = start_map(runtime, call.frame, call.template, **call.options)
            show(run, progress)
            call = steps.send(await run.aresult())
    except StopIteration as done:
        return done.value
