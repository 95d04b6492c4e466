"""The map run's entry points: `runtime.map(df, "Classify: {text}")` and friends.

`start_map` checks the options (`plan`), chooses where results are kept (`records`) and how
rows are answered (`live`, or `remote` for `mode="batch"`), and starts a `BatchRun`;
`map_frame` and `amap_frame` wait for its result frame (see `outcomes` for its columns;
`frame.attrs["agentrt"]` is the run's final `BatchProgress`). The modules below: `controller`
(concurrency, rpm/tpm, budgets), `run` (the run), `outcomes` (the rows' outcomes and the
result frame), `progress` (snapshots, listeners, the view), `records` (the results table).

`OPERATORS` are what the runtime offers as methods (`runtime.map`, `runtime.aio.map`): the
package root registers them with `agentrt_jupyter.operators`, so the runtime imports none.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import weakref
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import InvalidConfig, RuntimeClosed, StoreError, WrongThread
from ..operators import Operator
from ..runtime import AgentRuntime
from ..stores.base import ResultsStore
from .explain import OperatorPlan, aconfirm_plan, confirm_plan, plan_frame, pop_explain
from .live import answer_live
from .plan import MapPlan, plan_map
from .progress import Listener, show
from .records import RowStore, RunResults, open_results
from .remote import answer_in_batch
from .run import BatchRun

log = logging.getLogger("agentrt_jupyter")

_running: weakref.WeakSet[BatchRun] = weakref.WeakSet()
_memory_stores: weakref.WeakKeyDictionary[AgentRuntime, RowStore] = weakref.WeakKeyDictionary()


def start_map(
    runtime: AgentRuntime,
    frame: pd.DataFrame,
    template: str,
    /,
    *,
    store: str | Path | None = None,
    **options: Any,
) -> BatchRun:
    """Check the options and start the run on the runtime loop; returns at once.

    The options are `plan_map`'s (config, concurrency, max_concurrency, schema,
    budget_tokens, budget_usd, key, refresh, mode, rpm, tpm) and AgentConfig fields for
    every row's agent (model, system_instruction, tools, temperature, ...). `store` keeps
    the results in that SQLite file instead of the runtime's store (or memory, for a
    runtime without one).
    """
    plan = checked_plan(runtime, frame, template, options)
    results, owned = _results_store(runtime, store)
    records = RunResults(results, plan.run_key, owned=owned)
    answer = answer_in_batch if plan.mode == "batch" else answer_live
    run = BatchRun(runtime, plan, frame, records, answer)
    _running.add(run)
    run.start()
    return run


def checked_plan(
    runtime: AgentRuntime, frame: object, template: object, options: dict[str, Any]
) -> MapPlan:
    """The plan of a map run of `template` over `frame` with `options` (see `start_map`),
    every option checked (`InvalidConfig`); nothing starts."""
    check_runtime(runtime)
    if "runtime" in options:
        raise InvalidConfig(
            "the map already runs on the runtime it was called on: leave out runtime=",
            field="runtime",
        )
    if runtime.closed:
        raise RuntimeClosed("the runtime was shut down; create a new AgentRuntime")
    planned = {name: options.pop(name) for name in _PLAN_OPTIONS if name in options}
    return plan_map(runtime.config, frame, template, settings=options, **planned)


_PLAN_OPTIONS = (
    "config", "concurrency", "max_concurrency", "schema", "budget_tokens", "budget_usd",
    "key", "refresh", "mode", "rpm", "tpm",
)  # fmt: skip


def explain_map(
    runtime: AgentRuntime,
    frame: pd.DataFrame,
    template: str,
    /,
    *,
    store: str | Path | None = None,
    step: str = "map",
    reply_tokens: int | None = None,
    **options: Any,
) -> OperatorPlan:
    """The plan of `map_frame(runtime, frame, template, **options)` without running it:
    one step named `step`, rows already kept under the run's key counted as cached; no
    request is sent (see `explain`)."""
    options.pop("progress", None)
    plan = checked_plan(runtime, frame, template, options)
    results, owned = _results_store(runtime, store)
    records = RunResults(results, plan.run_key, owned=owned)
    try:
        priced, notes = plan_frame(plan, frame, records, name=step, reply_tokens=reply_tokens)
    finally:
        records.close()
    return OperatorPlan("map", (priced,), notes)


def map_frame(
    runtime: AgentRuntime,
    frame: pd.DataFrame,
    template: str,
    /,
    *,
    progress: bool | Listener | None = None,
    **options: Any,
) -> Any:
    """Run `template` over every row of `frame` and wait; see `start_map` for the options.
    With `explain=True` (or `dry_run=True`), the `OperatorPlan` instead: nothing runs.

    `progress`: None shows a widget in a notebook and a tqdm bar on a terminal; True
    shows one even elsewhere; False nothing; a callable gets every `BatchProgress`.
    Ctrl-C (kernel interrupt) cancels the run, keeps the finished rows and re-raises.
    In a notebook, a run estimated above `AgentMagics.confirm_cost` asks first (see
    `explain`); `CostNotApproved` if it is not approved.
    """
    check_runtime(runtime)
    if pop_explain(options):
        return explain_map(runtime, frame, template, **options)
    if threading.current_thread() is runtime.thread:
        raise WrongThread("map() would deadlock on the runtime thread: await runtime.aio.map()")
    confirm_plan(functools.partial(explain_map, runtime, frame, template, **options))
    run = start_map(runtime, frame, template, **options)
    show(run, progress)
    return run.result()


async def amap_frame(
    runtime: AgentRuntime,
    frame: pd.DataFrame,
    template: str,
    /,
    *,
    progress: bool | Listener | None = None,
    **options: Any,
) -> Any:
    """`map_frame` for an event loop (a notebook cell's top-level await, so the widget's
    Cancel button works while the rows run); cancelling the awaiting task cancels the run."""
    if pop_explain(options):
        return await asyncio.to_thread(explain_map, runtime, frame, template, **options)
    await aconfirm_plan(functools.partial(explain_map, runtime, frame, template, **options))
    run = start_map(runtime, frame, template, **options)
    show(run, progress)
    return await run.aresult()


OPERATORS = {"map": Operator("map", map_frame, amap_frame)}


def running_maps(runtime: AgentRuntime) -> list[BatchRun]:
    """The map runs of `runtime` that have not finished."""
    return [run for run in list(_running) if run.runtime is runtime and not run.done]


def cancel_maps(runtime: AgentRuntime) -> int:
    """Cancel every running map of `runtime` (`%agent cancel`); how many there were."""
    runs = running_maps(runtime)
    for run in runs:
        run.cancel()
    return len(runs)


def check_runtime(runtime: object) -> AgentRuntime:
    """`runtime` if it is an `AgentRuntime` (a caller's `runtime=`; `InvalidConfig` if not)."""
    if not isinstance(runtime, AgentRuntime):
        raise InvalidConfig(
            f"must be an AgentRuntime, got {type(runtime).__name__}: pass runtime=AgentRuntime"
            "(...), or leave it out in a notebook after %load_ext agentrt_jupyter",
            field="runtime",
        )
    return runtime


def _results_store(runtime: AgentRuntime, store: str | Path | None) -> tuple[ResultsStore, bool]:
    """Where results go: `store`, else the runtime's store (file or database), else memory;
    and whether the run owns (closes) it."""
    if store is not None:
        if not isinstance(store, str | Path) or not str(store).strip():
            raise InvalidConfig("must be a file path or None", field="store")
        return RowStore(Path(store).expanduser()), True
    location = runtime.config.store_location
    if location is not None and runtime.store_problem is None:
        try:
            return open_results(location), True
        except StoreError as exc:
            log.warning("map results are kept in memory only: %s", exc)
    memory = _memory_stores.get(runtime)
    if memory is None:
        memory = _memory_stores[runtime] = RowStore(None)
    return memory, False
