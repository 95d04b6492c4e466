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
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..errors import WrongThread
from .engine import start_map
from .explain import OperatorPlan, aconfirm_plan, confirm_plan
from .progress import Listener, show

if TYPE_CHECKING:
    import pandas as pd

    from ..runtime import AgentRuntime
    from .run import BatchRun

N = TypeVar("N")
T = TypeVar("T")


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
    confirm_plan(operation.plan)
    return run_steps(operation.steps(), lambda call: start_call(runtime, call, progress).result())


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
    await aconfirm_plan(operation.plan)
    return await arun_steps(
        operation.steps(), lambda call: start_call(runtime, call, progress).aresult()
    )


def run_steps(steps: Generator[N, Any, T], answer: Callable[[N], Any]) -> T:
    """Drive `steps` with blocking calls: each need it yields is sent `answer(need)`; what
    it returns. (Operators written as generators, here and in `rounds`, run on this.)"""
    answered: Any = None
    try:
        while True:
            answered = answer(steps.send(answered))
    except StopIteration as done:
        value: T = done.value
        return value


async def arun_steps(steps: Generator[N, Any, T], answer: Callable[[N], Awaitable[Any]]) -> T:
    """`run_steps` for an event loop: each answer is awaited."""
    answered: Any = None
    try:
        while True:
            answered = await answer(steps.send(answered))
    except StopIteration as done:
        value: T = done.value
        return value


def start_call(runtime: AgentRuntime, call: MapCall, progress: bool | Listener | None) -> BatchRun:
    """The map run `call` asks for, started, its progress shown (every operator's map runs
    start here)."""
    run = start_map(runtime, call.frame, call.template, **call.options)
    show(run, progress)
    return run
