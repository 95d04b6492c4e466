"""Widgets: `AgentPanel` (chat with one agent) and `RuntimeMonitor` (every agent at a glance).

Core ipywidgets only, so they work in JupyterLab, Notebook 7, VS Code and Colab. Each
widget has one writer: a single task on the runtime loop makes every trait update,
coalesced to at most `MAX_UPDATES_PER_SECOND` and always ending on the exact final state.
The writer is woken by the runtime's change signal (`runtime.aio.watch()`), so token
counts go up while a reply streams and nothing is sent while nothing happens. Click
handlers only post work to the runtime loop, so they return at once and never block the
kernel (on ipykernel >= 7.4 they are handled even while an awaiting cell runs).

A displayed widget leaves a static copy of itself beside its view (`StaticCopy`), so a
saved notebook reads well without a kernel: in JupyterLab, Notebook 7, nbviewer/nbconvert
and on GitHub.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import html
import json
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
import traitlets
from IPython import display as ipython_display
from IPython import get_ipython

from ..content import FunctionResponsePart
from ..conversation import ConversationMessage, Usage
from ..errors import AgentError, RuntimeClosed
from ..events import Error, TurnEnd
from ..handle import ChatHandle
from ..runtime import Agent, AgentInfo, AgentRuntime
from .display import LIVE_CLASS, close_tree, copy_hider, saved_copy
from .listing import agent_row
from .transcript import Transcript, plural

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["AgentPanel", "RuntimeMonitor"]

MAX_UPDATES_PER_SECOND = 10
"""Trait flushes per widget; the server drops IOPub above ~1000 msg/s, the eye sees ~10/s."""
MONITOR_INTERVAL = 0.25
"""RuntimeMonitor: the least time between two renders (every streamed chunk is a change)."""
ELAPSED_TICK = 1.0
"""While a turn runs the monitor re-renders this often even without a change (elapsed time)."""
SNAPSHOT_INTERVAL = 2.0
"""While something runs, a widget's static copy is rewritten at most this often."""
HISTORY_ROWS = 200
"""The transcript and History tab show the latest messages; `history_frame(agent)` has all."""
CLOSE_TIMEOUT = 2.0

_BOX = "border-left:3px solid {color};padding:2px 8px;margin:4px 0"
_COLORS = {"user": "#1f77b4", "model": "#2ca02c", "summary": "#9467bd"}
_BADGES = {"cancelled": "#d62728", "incomplete": "#ff7f0e", "error": "#d62728"}
_GONE = ("shutdown", "disconnected")
_display: Callable[..., Any] = ipython_display.display


class _Writer:
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
    at most every `SNAPSHOT_INTERVAL` while something does.
    """

    def __init__(self, what: str) -> None:
        self.display_id = f"agentrt-snapshot-{uuid.uuid4().hex}"
        self.hider = copy_hider(self.display_id)
        self._bundle = saved_copy(
            self.display_id, f"<i>{html.escape(what)}: not rendered yet.</i>", what
        )
        self._sent = self._bundle
        self._targets: list[tuple[Any, dict[str, Any]]] = []
        self._last = -1e9

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
        due = self._last + SNAPSHOT_INTERVAL - time.monotonic()
        if due > 0 and not settled:
            return due
        self._publish(self._bundle)
        return None

    def _publish(self, bundle: dict[str, str]) -> None:
        self._sent = bundle
        self._last = time.monotonic()
        content = {"data": bundle, "metadata": {}, "transient": {"display_id": self.display_id}}
        for pub, parent in self._targets:
            # Sent with the displaying cell's parent header, so the frontend routes it to
            # that cell whatever runs now; the IOPub socket is safe to use from any thread.
            with contextlib.suppress(Exception):
                pub.session.send(
                    pub.pub_socket, "update_display_data", content, parent=parent, ident=pub.topic
                )


def view_bundle(widget: widgets.DOMWidget, plain: str) -> dict[str, Any]:
    """The widget's own view bundle, with a plain text that says what follows it."""
    bundle: dict[str, Any] = dict(widget._repr_mimebundle_() or {})
    bundle["text/plain"] = plain
    return bundle


@dataclass
class _LiveTurn:
    """What this panel has seen of a turn that is not in history yet (loop-side state)."""

    prompt: str
    handle: ChatHandle
    transcript: Transcript = field(default_factory=Transcript)


class AgentPanel(widgets.VBox):  # type: ignore[misc]
    """Chat with one agent: a streaming transcript, input, Send / Cancel / Shutdown, usage,
    and a History tab with `history_frame` of the conversation.

    `transcript` holds the settled messages and is rewritten only when a turn ends;
    `streaming` holds the turns in progress and is rewritten as text arrives. Splitting them
    keeps each update small: a long conversation is not re-sent ten times a second. The box
    holding both follows the end of the stream unless the user scrolled up (it is anchored
    at its bottom). The panel follows its agent's record live (usage counts up while a reply
    streams, turns sent elsewhere appear when they end), and when the agent is gone and an
    agent of the same name appears (a `%%agent NAME` cell after Shutdown), it re-attaches
    to that one. A tool call of a turn sent from the panel that needs approval is asked in
    the panel (`approvals`, between the transcript and the input). Other public parts:
    `conversation` (the box), `input`, `send_button`,
    `cancel_button`, `shutdown_button`, `usage`, `status`, `history` (the History tab),
    `tabs`; `last_handle` is the latest turn sent from the panel.
    """

    ended_turns = traitlets.Int(0, help="Turns sent from this panel whose end is displayed.")

    def __init__(self, runtime: AgentRuntime, agent: Agent | str, **kwargs: Any) -> None:
        # pandas costs ~0.4 s to import: load it when a panel is made, not with the extension.
        from ..frames import history_frame

        self._history_frame = history_frame
        self._runtime = runtime
        self.agent = agent if isinstance(agent, Agent) else runtime.agent(agent)
        self.transcript = widgets.HTML()
        self.streaming = widgets.HTML()
        self.input = widgets.Textarea(
            placeholder=f"Message {self.agent.name}…",
            layout=widgets.Layout(width="100%", height="4.5em"),
        )
        self.send_button = widgets.Button(description="Send", button_style="primary", icon="send")
        self.cancel_button = widgets.Button(description="Cancel", icon="stop", disabled=True)
        self.shutdown_button = widgets.Button(description="Shutdown", icon="power-off")
        self.usage = widgets.HTML()
        self.status = widgets.HTML()
        self.history = widgets.HTML(layout=widgets.Layout(max_height="420px", overflow="auto"))
        # column-reverse anchors the scroll position at the bottom: the box follows what is
        # appended, and stays put once the user scrolls up (pure CSS, every frontend).
        self.conversation = widgets.Box(
            [
                widgets.VBox(
                    [self.transcript, self.streaming],
                    layout=widgets.Layout(flex="0 0 auto", overflow="visible"),
                )
            ],
            layout=widgets.Layout(
                display="flex",
                flex_flow="column-reverse",
                max_height="420px",
                overflow="auto",
                width="100%",
            ),
        )
        self.conversation.add_class("agentrt-conversation")
        from .approval import ApprovalHost

        self.approvals = ApprovalHost(
            self.agent.name, on_change=lambda: self._writer.wake_on_loop(), quiet=True
        )
        chat = widgets.VBox(
            [
                self.conversation,
                self.approvals.box,
                self.input,
                widgets.HBox([self.send_button, self.cancel_button, self.shutdown_button]),
                self.status,
                self.usage,
            ]
        )
        self.tabs = widgets.Tab(children=[chat, self.history], titles=("Chat", "History"))
        self._copy = StaticCopy(f"AgentPanel of {self.agent.name!r}")
        super().__init__([self.tabs, self._copy.hider], **kwargs)
        self.add_class(LIVE_CLASS)
        self.last_handle: ChatHandle | None = None
        self._history: list[ConversationMessage] = []
        self._history_html = ""
        self._frame_html = ""
        self._live: list[_LiveTurn] = []
        self._shown_upto: int | None = None
        self._total = Usage()
        self._turns = 0
        self._seen: tuple[int, int | None] = (0, None)
        self._running = False
        self._own_ended: set[int] = set()
        self._note = "idle"
        self._shut_down = False
        self._sent: str | None = None
        self._loaded = False
        self._ended = 0
        self.send_button.on_click(self._on_send)
        self.cancel_button.on_click(self._on_cancel)
        self.shutdown_button.on_click(self._on_shutdown)
        self._writer = _Writer(
            runtime, self._render, 1.0 / MAX_UPDATES_PER_SECOND, watch=True, on_agents=self._follow
        )

    def __repr__(self) -> str:
        return f"<AgentPanel agent={self.agent.name!r} live={len(self._live)}>"

    def _ipython_display_(self) -> None:
        """The view, then its static copy for saved notebooks (see `StaticCopy`)."""
        plain = f"AgentPanel of agent {self.agent.name!r} (its transcript follows)"
        self._copy.show(view_bundle(self, plain))
        self._writer.wake()

    def send(self, text: str) -> concurrent.futures.Future[ChatHandle]:
        """Send a message as if typed; returns at once, with a future of the turn's handle."""
        started: concurrent.futures.Future[ChatHandle] = concurrent.futures.Future()
        if not text.strip():
            started.set_exception(ValueError("nothing to send"))
        elif not self._writer.post(lambda: self._writer.spawn(self._start_turn(text, started))):
            started.set_exception(RuntimeClosed("the runtime was shut down"))
        return started

    def refresh(self) -> concurrent.futures.Future[None]:
        """Re-read history and usage from the runtime now (it also follows them on its own)."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        async def sync() -> None:
            await self._sync(history=not self._live)
            self._writer.wake().add_done_callback(lambda _: done.set_result(None))

        if not self._writer.post(lambda: self._writer.spawn(sync())):
            done.set_result(None)
        return done

    def close(self) -> None:
        """Stop the writer task, then close every child widget; turns keep running (a
        question of theirs left open is answered by `%agent approve` / `deny`, or times out)."""
        self._writer.close()
        self.approvals.close()
        for child in self.children:
            close_tree(child)
        super().close()

    def _on_send(self, _button: widgets.Button) -> None:
        if self.input.value.strip():
            self.send(self.input.value)

    def _on_cancel(self, _button: widgets.Button) -> None:
        self._writer.post(lambda: self._writer.spawn(self._cancel()))

    def _on_shutdown(self, _button: widgets.Button) -> None:
        self._writer.post(lambda: self._writer.spawn(self._shutdown()))

    async def _start_turn(self, text: str, started: concurrent.futures.Future[ChatHandle]) -> None:
        try:
            handle = await self._runtime.aio.chat(self.agent, text)
        except AgentError as exc:
            self._note = f"not sent: {exc}"
            self._writer.wake_on_loop()
            started.set_exception(exc)
            return
        started.set_result(handle)
        live = _LiveTurn(text, handle)
        self.last_handle = handle
        self._live.append(live)
        self._sent = text
        self._writer.wake_on_loop()
        try:
            async for event in handle:
                self._apply(live, event)
                self._writer.wake_on_loop()
        finally:
            self._live.remove(live)
            self._ended += 1
            outcome = handle.outcome()
            ended = outcome is not None and outcome.turn > 0
            if ended and outcome is not None:
                # The runtime may still list it as current for a moment: it is not running.
                self._own_ended.add(outcome.turn)
            if not self._live:
                self._shown_upto = None
            elif ended and outcome is not None:
                self._shown_upto = outcome.turn
            await self._sync(history=ended or not self._live)
            self._writer.wake_on_loop()

    def _apply(self, live: _LiveTurn, event: Any) -> None:
        if live.transcript.apply(event, time.monotonic()):
            return
        if isinstance(event, Error):
            self._note = f"{type(event.error).__name__}: {event.error}"
        elif isinstance(event, TurnEnd):
            self._note = {
                "complete": "idle",
                "cancelled": "cancelled (partial reply kept)",
            }.get(event.status, self._note)

    async def _cancel(self) -> None:
        with contextlib.suppress(AgentError):
            await self._runtime.aio.cancel(self.agent)

    async def _shutdown(self) -> None:
        try:
            await self._runtime.aio.shutdown_agent(self.agent)
        except AgentError as exc:
            self._note = f"shutdown failed: {exc}"
        await self._sync()
        self._writer.wake_on_loop()

    async def _follow(self, infos: list[AgentInfo]) -> None:
        """The change signal's agents: follow this panel's one (see `_take`)."""
        if self._take(infos):
            await self._read_history()

    def _take(self, infos: list[AgentInfo]) -> bool:
        """Take the agent's record; when it is gone, re-attach to a new agent of its name.

        True when history should be re-read: after a re-attach, and when a turn started or
        ended while no turn of this panel streams (turns sent elsewhere, e.g. by
        `%%agent NAME` cells)."""
        mine = next((i for i in infos if i.id == self.agent.id), None)
        reattached = False
        if mine is None or mine.state in _GONE:
            successor = next(
                (i for i in infos if i.name == self.agent.name and i.state not in _GONE), None
            )
            if successor is not None:
                self.agent = Agent(self._runtime, successor.id, successor.name)
                self._note = f"re-attached to the new agent {successor.name!r}"
                self._shown_upto = None
                self._own_ended.clear()
                mine, reattached = successor, True
        seen = self._seen
        if mine is None:
            self._shut_down, self._running = True, False
            self._note = f"agent {self.agent.name!r} was deleted"
            return False
        self._total, self._turns = mine.total_usage, mine.turn_count
        self._seen = (mine.turn_count, mine.current_turn)
        self._running = mine.current_turn is not None and mine.current_turn not in self._own_ended
        self._shut_down = mine.state in _GONE
        if self._shut_down:
            self._note = _gone_note(mine)
        return reattached or (self._seen != seen and not self._live)

    async def _sync(self, history: bool = True) -> None:
        """Re-read the agent's record; history is shown up to the last turn that ended.

        While a turn of this panel streams, history already holds its first messages: they
        are shown from the live turn instead, so history is re-read only at a turn's end.
        """
        try:
            infos = await self._runtime.aio.agents()
        except AgentError as exc:
            self._note = str(exc)
            self._shut_down = True
            return
        if self._take(infos) or history:
            await self._read_history()

    async def _read_history(self) -> None:
        try:
            self._history = await self._runtime.aio.history(self.agent)
        except AgentError as exc:
            self._note = str(exc)
            return
        upto = self._shown_upto
        shown = [m for m in self._history if upto is None or m.turn <= upto]
        earlier = len(shown) - HISTORY_ROWS
        note = f"<p><i>{earlier} earlier messages: see History.</i></p>" if earlier > 0 else ""
        self._history_html = note + "".join(_message_html(m) for m in shown[-HISTORY_ROWS:])
        self._frame_html = self._frame_table()

    def _frame_table(self) -> str:
        start = max(0, len(self._history) - HISTORY_ROWS)
        frame: pd.DataFrame = self._history_frame(self._history[start:], agent=self.agent.name)
        if frame.empty:
            return "<i>No messages yet.</i>"
        frame.index = range(start, len(self._history))
        frame["text"] = frame["text"].str.slice(0, 300)
        columns = ["turn", "role", "status", "time", "text", "tool_calls", "total_tokens"]
        note = f"<p>Latest {len(frame)} of {len(self._history)} messages.</p>" if start else ""
        return note + str(frame[columns].to_html(na_rep="", max_cols=len(columns)))

    def _status_text(self) -> str:
        running = [live for live in self._live if live.handle.status == "running"]
        if self._shut_down:
            return self._note
        waiting = self.approvals.waiting()
        if waiting:
            return f"waiting for your approval: {'; '.join(waiting)}"

        if running:
            status = running[0].transcript.waiting_note(time.monotonic()) or "running…"
            queued = len(self._live) - len(running)
            return status + (f" ({queued} queued)" if queued else "")
        if self._live:
            return "queued…"
        return "running (a turn sent elsewhere)…" if self._running else self._note

    async def _render(self) -> float | None:
        if not self._loaded:
            self._loaded = True
            await self._sync()
        streaming = "".join(_live_html(live) for live in self._live)
        status = self._status_text()
        usage = _usage_line(self._total, self._turns)
        self.transcript.value = self._history_html
        self.streaming.value = streaming
        self.status.value = f"<small>{html.escape(status)}</small>"
        self.usage.value = f"<small>{html.escape(usage)}</small>"
        self.history.value = self._frame_html
        self.send_button.disabled = self._shut_down
        self.shutdown_button.disabled = self._shut_down
        self.cancel_button.disabled = not (
            self._running or any(live.handle.status == "running" for live in self._live)
        )
        if self._sent is not None and self.input.value == self._sent:
            self.input.value = ""
        self._sent = None
        self.ended_turns = self._ended
        return self._offer_copy(streaming, usage)

    def _offer_copy(self, streaming: str, usage: str) -> float | None:
        """The static copy: a title, the transcript as shown, and the usage line."""
        title = f"Agent {self.agent.name} (AgentPanel{', shut down' if self._shut_down else ''})"
        waiting = [f"waiting for approval: {line}" for line in self.approvals.waiting()]
        body = (
            f"<div><b>{html.escape(title)}</b></div>"
            + self._history_html
            + streaming
            + "".join(f"<div><small>{html.escape(line)}</small></div>" for line in waiting)
            + f"<div><small>{html.escape(usage)}</small></div>"
        )
        upto = self._shown_upto
        lines = [title]
        for message in self._history[-HISTORY_ROWS:]:
            if upto is None or message.turn <= upto:
                badge = "" if message.status == "complete" else f" [{message.status}]"
                lines.append(f"{message.role}{badge}: {message.text}")
        for live in self._live:
            lines += [f"user: {live.prompt}", f"model [streaming]: {live.transcript.reply}"]
        lines += waiting
        lines.append(usage)
        settled = not self._live and not self._running
        return self._copy.offer(body, "\n".join(lines), settled=settled)


def _gone_note(info: AgentInfo) -> str:
    said = "shut down" if info.state == "shutdown" else "disconnected"
    return f"{said}: a new agent named {info.name!r} (e.g. a %%agent cell) re-attaches this panel"


@dataclass
class _Row:
    """The widgets of one agent's row in the monitor."""

    cells: tuple[widgets.HTML, ...]
    cancel: widgets.Button
    shutdown: widgets.Button

    @property
    def members(self) -> list[widgets.Widget]:
        return [*self.cells, self.cancel, self.shutdown]


class RuntimeMonitor(widgets.VBox):  # type: ignore[misc]
    """Every agent of a runtime: state, current turn, elapsed time, tokens, Cancel / Shutdown.

    Fed by the runtime's change signal: it renders when agents or turns change and while a
    reply streams (tokens count up, at most `1 / MONITOR_INTERVAL` times a second), ticks
    the elapsed time every `ELAPSED_TICK` while a turn runs, and sends nothing while all
    are idle. `refresh()` updates it now.
    """

    COLUMNS = ("agent", "model", "state", "turn", "elapsed", "queued", "tokens")

    def __init__(self, runtime: AgentRuntime, **kwargs: Any) -> None:
        self._runtime = runtime
        self.summary = widgets.HTML()
        self.grid = widgets.GridBox(
            layout=widgets.Layout(
                grid_template_columns=f"repeat({len(self.COLUMNS)}, auto) auto auto",
                grid_gap="2px 12px",
                align_items="center",
            )
        )
        self._header = [widgets.HTML(f"<b>{name}</b>") for name in self.COLUMNS]
        self._header += [widgets.HTML(""), widgets.HTML("")]
        self.rows: dict[str, _Row] = {}
        self._copy = StaticCopy("RuntimeMonitor")
        super().__init__([self.summary, self.grid, self._copy.hider], **kwargs)
        self.add_class(LIVE_CLASS)
        self._writer = _Writer(runtime, self._render, MONITOR_INTERVAL, watch=True)

    def __repr__(self) -> str:
        return f"<RuntimeMonitor agents={len(self.rows)}>"

    def _ipython_display_(self) -> None:
        """The view, then its static copy for saved notebooks (see `StaticCopy`)."""
        self._copy.show(view_bundle(self, "RuntimeMonitor (its agent table follows)"))
        self._writer.wake()

    def refresh(self) -> concurrent.futures.Future[None]:
        """Update now (coalesced); the future resolves once the widgets show the new state."""
        return self._writer.wake()

    def close(self) -> None:
        """Stop the refresh task, then close every child widget."""
        self._writer.close()
        for row in self.rows.values():
            for child in row.members:
                child.close()
        for child in (*self._header, self.summary, self.grid, self._copy.hider):
            child.close()
        super().close()

    async def _render(self) -> float | None:
        try:
            infos = await self._runtime.aio.agents()
        except RuntimeClosed:
            infos = []
        for info in infos:
            row = self.rows.get(info.id) or self._add_row(info)
            for cell, value in zip(row.cells, _cells(info), strict=True):
                cell.value = html.escape(value)
            row.cancel.disabled = info.current_turn is None
            row.shutdown.disabled = info.state in _GONE
        live = {info.id for info in infos}
        gone = [self.rows.pop(agent_id) for agent_id in list(self.rows) if agent_id not in live]
        children = (*self._header, *(w for row in self.rows.values() for w in row.members))
        if tuple(self.grid.children) != children:
            self.grid.children = children
        for row in gone:
            for child in row.members:
                child.close()
        running = sum(info.state == "running" for info in infos)
        summary = f"{plural(len(infos), 'agent')}, {running} running"
        self.summary.value = f"<small>{summary}</small>"
        again = self._copy.offer(
            f"<b>Agents</b> <small>(RuntimeMonitor): {summary}</small>" + _agents_table(infos),
            "\n".join([f"RuntimeMonitor: {summary}", *(" · ".join(_cells(i)) for i in infos)]),
            settled=not running,
        )
        if running:
            return ELAPSED_TICK if again is None else min(again, ELAPSED_TICK)
        return again

    def _add_row(self, info: AgentInfo) -> _Row:
        cancel = widgets.Button(description="Cancel", icon="stop", layout={"width": "auto"})
        shutdown = widgets.Button(
            description="Shutdown", icon="power-off", layout={"width": "auto"}
        )
        cancel.on_click(lambda _: self._act(self._runtime.aio.cancel, info.id))
        shutdown.on_click(lambda _: self._act(self._runtime.aio.shutdown_agent, info.id))
        row = _Row(tuple(widgets.HTML() for _ in self.COLUMNS), cancel, shutdown)
        self.rows[info.id] = row
        return row

    def _act(self, action: Callable[[str], Awaitable[Any]], agent_id: str) -> None:
        async def run() -> None:
            with contextlib.suppress(AgentError):
                await action(agent_id)
            self._writer.wake_on_loop()

        self._writer.post(lambda: self._writer.spawn(run()))


def _cells(info: AgentInfo) -> tuple[str, ...]:
    """The monitor's columns (`RuntimeMonitor.COLUMNS`) of one agent's row, as text."""
    row = agent_row(info)
    running_for, turn = row["running_for"], row["current_turn"]
    return (
        row["name"],
        row["model"],
        row["state"],
        "" if turn is None else str(turn),
        "" if running_for is None else f"{running_for:.1f} s",
        str(row["queued"]),
        f"{row['usage']['total_tokens']:,}",
    )


def _agents_table(infos: Sequence[AgentInfo]) -> str:
    if not infos:
        return "<p><i>No agents.</i></p>"
    cell = "padding:1px 10px 1px 0;text-align:left"
    head = "".join(f'<th style="{cell}">{name}</th>' for name in RuntimeMonitor.COLUMNS)
    rows = "".join(
        "<tr>" + "".join(f'<td style="{cell}">{html.escape(v)}</td>' for v in _cells(i)) + "</tr>"
        for i in infos
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _usage_line(usage: Usage, turns: int) -> str:
    return (
        f"{plural(turns, 'turn')} · {usage.total_tokens:,} tokens "
        f"({usage.prompt_tokens:,} prompt, {usage.candidates_tokens:,} output, "
        f"{usage.thoughts_tokens:,} thoughts, {usage.cached_tokens:,} cached)"
    )


def _short_json(value: Any, limit: int = 200) -> str:
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _block(role: str, body: str, badge: str = "") -> str:
    label = f"<b>{role}</b>"
    if badge:
        color = _BADGES.get(badge, "#777")
        label += f' <span style="color:{color}">[{html.escape(badge)}]</span>'
    style = _BOX.format(color=_COLORS.get(role, "#777"))
    return f'<div style="{style}">{label}{body}</div>'


def _text(text: str) -> str:
    return f'<div style="white-space:pre-wrap">{html.escape(text)}</div>' if text else ""


def _thoughts(text: str) -> str:
    if not text:
        return ""
    return f"<details><summary><i>thoughts</i></summary><i>{_text(text)}</i></details>"


def _tools(lines: Sequence[str]) -> str:
    return "".join(f"<div><code>{html.escape(line)}</code></div>" for line in lines)


def _notes(notes: Sequence[str]) -> str:
    """A transcript's notes as HTML: their `code` spans as code."""
    return "".join(f"<div><small>{_inline_code(note)}</small></div>" for note in notes)


def _inline_code(text: str) -> str:
    pieces = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(pieces))


def _message_html(message: ConversationMessage) -> str:
    tools = [f"→ {c.name}({_short_json(c.args)})" for c in message.tool_calls]
    tools += [
        f"← {p.name}: {_short_json(p.response)}"
        for p in message.parts
        if isinstance(p, FunctionResponsePart)
    ]
    badge = "" if message.status == "complete" else message.status
    body = _thoughts(message.thoughts) + _text(message.text) + _tools(tools)
    return _block(message.role, body, badge)


def _live_html(live: _LiveTurn) -> str:
    transcript = live.transcript
    reply = _thoughts(transcript.thoughts) + _text(transcript.reply) + _notes(transcript.notes)
    badge = "queued" if live.handle.status == "queued" else "streaming"
    return _block("user", _text(live.prompt)) + _block("model", reply, badge)
