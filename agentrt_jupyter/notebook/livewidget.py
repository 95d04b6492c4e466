"""What every widget of the package is made of: one writer and a static copy.

Each widget has one writer (`Writer`): a single task on the runtime loop makes every trait
update, coalesced and always ending on the exact final state, woken by the runtime's change
signal (`runtime.aio.watch()`) or on request. Click handlers only post work to the runtime
loop (`Writer.post`), so they return at once and never block the kernel.

A displayed widget leaves a static copy of itself beside its view (`StaticCopy`), so a
saved notebook reads well without a kernel: in JupyterLab, Notebook 7, nbviewer/nbconvert
and on GitHub.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import html
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import ipywidgets as widgets
from IPython import display as ipython_display
from IPython import get_ipython

from ..errors import RuntimeClosed
from ..runtime import AgentInfo, AgentRuntime
from .display import copy_hider, saved_copy, view_with_copy

SNAPSHOT_INTERVAL = 2.0
"""While something runs, a widget's static copy is rewritten only on the ticks of this
interval (its multiples on the monotonic clock), the same for every widget: the copies of
a notebook saved mid-turn show one moment, not each its own."""
CLOSE_TIMEOUT = 2.0
"""How long closing a widget waits for its writer task to end."""
_display: Callable[..., Any] = ipython_display.display


class Writer:
    """The one task on the runtime loop that writes a widget's traits.

    `render` writes the traits from the current state and returns when to render again on
    its own (None: only when woken). Wakes are coalesced: renders are at least `interval`
    apart, and a render always follows the last wake, so the final state is always shown.
    With `watch`, the runtime's change signal wakes it after each change (at most once
    per `interval`), after handing the agents to `on_agents` if given.
    """

    def __init__(
        self,
        runtime: AgentRuntime,
        render: Callable[[], Awaitable[float | None]],
        interval: float,
        *,
        watch: bool = False,
        on_agents: Callable[[list[AgentInfo]], Awaitable[None]] | None = None,
    ) -> None:
        if runtime.closed:
            raise RuntimeClosed("the runtime was shut down; create a new AgentRuntime")
        self._runtime = runtime
        self._render = render
        self._watch_agents = watch
        self._on_agents = on_agents
        self._interval = interval
        self._wake = asyncio.Event()
        self._waiters: list[concurrent.futures.Future[None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopped = threading.Event()
        self.closed = False
        self.renders = 0
        self._future = runtime.start_task_soon(self._run)

    def post(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run `fn(*args)` on the runtime loop soon; False if the runtime is gone."""
        if self.closed:
            return False
        try:
            self._runtime.start_task_soon(fn, *args)
        except RuntimeError:  # RuntimeClosed, or the loop closed meanwhile
            return False
        return True

    def wake(self) -> concurrent.futures.Future[None]:
        """Ask for a render from any thread; the future resolves once it happened."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        if not self.post(self._add_waiter, done):
            done.set_result(None)
        return done

    def wake_on_loop(self) -> None:
        self._wake.set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a coroutine on the loop (called there), keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _add_waiter(self, done: concurrent.futures.Future[None]) -> None:
        self._waiters.append(done)
        self._wake.set()

    async def _watch(self) -> None:
        changes = self._runtime.aio.watch(self._interval)
        first = await anext(changes)  # the agents now: the first render reads them itself
        if self._on_agents is not None:
            await self._on_agents(first)
        async for infos in changes:
            if self._on_agents is not None:
                await self._on_agents(infos)
            self._wake.set()

    async def _run(self) -> None:
        watcher = asyncio.ensure_future(self._watch()) if self._watch_agents else None
        loop = asyncio.get_running_loop()
        try:
            timeout = await self._render_once()
            last = loop.time()
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                delay = last + self._interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                last = loop.time()
                timeout = await self._render_once()
        finally:
            if watcher is not None:
                watcher.cancel()
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._stopped.set()

    async def _render_once(self) -> float | None:
        self._wake.clear()
        waiters, self._waiters = self._waiters, []
        try:
            return await self._render()
        finally:
            self.renders += 1
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def close(self) -> None:
        """Stop writing; waits (briefly) until the task has ended unless called on the loop."""
        if self.closed:
            return
        self.closed = True
        self._future.cancel()
        runtime = self._runtime
        if threading.current_thread() is not runtime.thread and not runtime.closed:
            self._stopped.wait(CLOSE_TIMEOUT)


class StaticCopy:
    """What a displayed widget leaves in a saved notebook: an HTML output after its view.

    A widget view needs the kernel that made it; reopened without it, JupyterLab and
    Notebook 7 say "Error displaying widget: model not found" and nbconvert/nbviewer and
    GitHub show nothing. So the widget is displayed as two outputs: the view, then this
    copy (HTML and plain text, marked with `SNAPSHOT_CLASS`). While the view is live it
    hides the copy (a <style> in the view, for any frontend that shows both in one page;
    the lab extension's CSS in JupyterLab and Notebook 7, which also hides a dead view
    whose copy follows it). The widget's writer rewrites the copy (`update_display_data`
    with the parent header of each cell that displayed it): at once when nothing runs,
    on the next `SNAPSHOT_INTERVAL` tick, shared by all copies, while something does.
    """

    def __init__(self, what: str) -> None:
        self.display_id = f"agentrt-snapshot-{uuid.uuid4().hex}"
        self.hider = copy_hider(self.display_id)
        self._bundle = saved_copy(
            self.display_id, f"<i>{html.escape(what)}: not rendered yet.</i>", what
        )
        self._sent = self._bundle
        self._targets: list[tuple[Any, dict[str, Any]]] = []
        self._changed_in: float | None = None
        """The tick in which an unsettled change is waiting for the next tick."""

    def show(self, view: dict[str, Any]) -> None:
        """Display the view bundle, then the copy; call on the kernel's main thread."""
        shown = self._bundle
        _display(view, raw=True)
        _display(shown, raw=True, display_id=self.display_id)
        shell = get_ipython()
        pub = getattr(shell, "display_pub", None)
        parent = getattr(shell, "parent_header", None)
        if getattr(pub, "session", None) is not None and parent:
            self._targets = [*self._targets, (pub, parent.get("header", parent))]
            self._sent = {}
            if self._bundle != shown:  # the writer offered a newer state meanwhile
                self._publish(self._bundle)

    def offer(self, body: str, plain: str, *, settled: bool) -> float | None:
        """The widget's state now; rewrites the copy if due. Returns when to offer again
        (None: only when something changes)."""
        self._bundle = saved_copy(self.display_id, body, plain)
        if not self._targets or self._bundle == self._sent:
            return None
        now = time.monotonic()
        tick = now // SNAPSHOT_INTERVAL
        if not settled:
            if self._changed_in is None:
                self._changed_in = tick
            if tick == self._changed_in:
                return (tick + 1) * SNAPSHOT_INTERVAL - now
        self._publish(self._bundle)
        return None

    def _publish(self, bundle: dict[str, str]) -> None:
        self._sent = bundle
        self._changed_in = None
        content = {"data": bundle, "metadata": {}, "transient": {"display_id": self.display_id}}
        for pub, parent in self._targets:
            # Sent with the displaying cell's parent header, so the frontend routes it to
            # that cell whatever runs now; the IOPub socket is safe to use from any thread.
            with contextlib.suppress(Exception):
                pub.session.send(
                    pub.pub_socket, "update_display_data", content, parent=parent, ident=pub.topic
                )


def view_bundle(widget: widgets.DOMWidget, plain: str) -> dict[str, Any]:
    """The widget's own view bundle, with a plain text that says what follows it (for text
    frontends only: see `view_with_copy`)."""
    return view_with_copy(widget, plain)
