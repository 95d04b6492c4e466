"""`%load_ext agentrt_jupyter`: one `AgentMagics` per kernel, over the kernel's session
(`session.KernelSession`: its runtime, agents, tool sources and lab comm).

Loading registers the magics, starts the runtime, adds an input transformer that turns
a `%%agent` cell into a top-level `await` (see `magics`) and registers the comm target
of the JupyterLab extension (see `labcomm`). It returns at once and leaves the slow part
of a first turn to the runtime thread, in the background: the SDK import, the client,
the local server (without an API key), the SDK's models and then ipywidgets, so the first
`%%agent` cell does not wait for them. Loading again is a no-op; unloading removes all of
them and shuts the runtime down (the session stays, with the names its cells used).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import logging
import re
import sys
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

from IPython.core.error import UsageError

from ..salvage import StoreRecovery
from .labcomm import register_lab_comm, unregister_lab_comm
from .magics import AgentMagics

if TYPE_CHECKING:
    from ..runtime import AgentInfo, AgentRuntime

_CELL = re.compile(r"%%agent(?:[ \t]|$)")


def load(shell: Any) -> None:
    """Register the magics and the await transformer, and start the runtime."""
    if _registered(shell) is not None:
        return
    magics = AgentMagics(shell=shell)
    shell.register_magics(magics)
    magics.transform = _await_transform(shell, magics)
    shell.input_transformer_manager.line_transforms.insert(0, magics.transform)
    session = magics.session
    session.lab_comm = register_lab_comm(shell, lambda: session.runtime)
    shell.events.register("post_run_cell", magics.rewarm_after_cell)
    try:
        with _recovery_said_here():
            runtime = session.ensure_runtime()
    except UsageError:  # a bad setting: the first %%agent cell reports it
        return
    if runtime.store_recovery is not None:
        print(f"agentrt: {runtime.store_recovery}", file=sys.stderr)
    warm_up = session.start_warm_up()
    runtime.start_task_soon(_import_widgets, runtime, warm_up)


@contextlib.contextmanager
def _recovery_said_here() -> Iterator[None]:
    """While loading starts the runtime, drop its log line about a store recovered from
    corrupt pages: loading says it, once, in its own words."""
    logger = logging.getLogger("agentrt_jupyter")
    quiet = _NoRecoveryLine()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


class _NoRecoveryLine(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not any(isinstance(arg, StoreRecovery) for arg in args)


async def _import_widgets(runtime: AgentRuntime, warm_up: concurrent.futures.Future[None]) -> None:
    """Import ipywidgets ahead of the first Cancel button (~0.15 s), off the main thread.

    Once the warm-up is done and no turn runs: a first cell sent during the warm-up then
    does not share the interpreter with the import. On a worker thread, so that the
    runtime loop goes on answering meanwhile."""
    await asyncio.wrap_future(warm_up)
    watch = cast("AsyncGenerator[list[AgentInfo], None]", runtime.aio.watch(interval=0.25))
    async with contextlib.aclosing(watch) as changes:
        async for infos in changes:
            if all(info.state != "running" for info in infos):
                break
    with contextlib.suppress(ImportError):
        await asyncio.to_thread(importlib.import_module, "ipywidgets")


def unload(shell: Any) -> None:
    """Remove the magics and the transformer; shut the runtime down (cancelling turns).
    The kernel's session stays: a later load continues the names its cells used."""
    magics = _registered(shell)
    if magics is None:
        return
    session = magics.session
    if session.lab_comm is not None:
        unregister_lab_comm(shell, session.lab_comm)
        session.lab_comm = None
    with contextlib.suppress(ValueError):
        shell.events.unregister("post_run_cell", magics.rewarm_after_cell)
    with contextlib.suppress(ValueError):
        shell.input_transformer_manager.line_transforms.remove(magics.transform)
    registry = shell.magics_manager.magics
    for kind in ("line", "cell"):
        if getattr(registry[kind].get("agent"), "__self__", None) is magics:
            del registry[kind]["agent"]
    shell.magics_manager.registry.pop(type(magics).__name__, None)
    with contextlib.suppress(ValueError):
        shell.configurables.remove(magics)
    session.shutdown_runtime()


def loaded_magics(shell: Any) -> AgentMagics:
    """The magics of `shell` (the transformer's cells call into them)."""
    magics = _registered(shell)
    if magics is None:
        raise UsageError("agentrt_jupyter is not loaded: run %load_ext agentrt_jupyter")
    return magics


def _registered(shell: Any) -> AgentMagics | None:
    """The magics registered on `shell` (IPython keeps them by class name)."""
    magics = shell.magics_manager.registry.get(AgentMagics.__name__)
    return magics if isinstance(magics, AgentMagics) else None


async def run_agent_cell(line: str, cell: str) -> None:
    """What a transformed `%%agent` cell awaits."""
    from IPython import get_ipython

    await loaded_magics(get_ipython()).acell(line, cell)


def _await_transform(shell: Any, magics: AgentMagics) -> Callable[[list[str]], list[str]]:
    """An IPython line transform: `%%agent ...` becomes `await run_agent_cell(...)`.

    Only where the cell can be awaited on an asyncio loop (autoawait on); otherwise the
    cell runs as an ordinary, blocking cell magic."""
    from IPython.core.async_helpers import _asyncio_runner

    def transform(lines: list[str]) -> list[str]:
        if not lines or not _CELL.match(lines[0]) or not magics.await_cells:
            return lines
        if not shell.autoawait or shell.loop_runner is not _asyncio_runner:
            return lines
        line = lines[0][len("%%agent") :].strip()
        body = "".join(lines[1:])
        return [
            f"await __import__({__name__!r}, fromlist=['_']).run_agent_cell({line!r}, {body!r})\n"
        ]

    return transform
