"""Widgets: `AgentPanel` (chat with one agent) and `RuntimeMonitor` (every agent at a
glance, in `monitor`).

Core ipywidgets only, so they work in JupyterLab, Notebook 7, VS Code and Colab. Each
widget has one writer (`livewidget.Writer`): a single task on the runtime loop makes every
trait update, coalesced to at most `MAX_UPDATES_PER_SECOND` and always ending on the exact
final state. The writer is woken by the runtime's change signal (`runtime.aio.watch()`),
so token counts go up while a reply streams and nothing is sent while nothing happens.
Click handlers only post work to the runtime loop, so they return at once and never block
the kernel (on ipykernel >= 7.4 they are handled even while an awaiting cell runs). A
displayed widget leaves a static copy beside its view (`livewidget.StaticCopy`).

The streaming turns of a panel are rendered by the cell view's `Transcript`; its settled
messages come from history.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import html
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
import traitlets

from ..content import FunctionResponsePart, TextPart
from ..conversation import ConversationMessage, Usage
from ..errors import AgentError, RuntimeClosed
from ..events import Error, TurnEnd
from ..handle import ChatHandle
from ..runtime import Agent, AgentInfo, AgentRuntime
from .display import LIVE_CLASS, close_tree
from .listing import GONE
from .livewidget import StaticCopy as StaticCopy
from .livewidget import Writer
from .livewidget import view_bundle as view_bundle
from .monitor import RuntimeMonitor as RuntimeMonitor
from .transcript import Transcript, plural, token_count

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["AgentPanel", "RuntimeMonitor"]

MAX_UPDATES_PER_SECOND = 10
"""Trait flushes per widget; the server drops IOPub above ~1000 msg/s, the eye sees ~10/s."""
HISTORY_ROWS = 200
"""The transcript and History tab show the latest messages; `history_frame(agent)` has all."""

_BOX = "border-left:3px solid {color};padding:2px 8px;margin:4px 0"
_COLORS = {"user": "#1f77b4", "model": "#2ca02c", "summary": "#9467bd"}
_BADGES = {"cancelled": "#d62728", "incomplete": "#ff7f0e", "error": "#d62728"}


@dataclass
class _LiveTurn:
    """What this panel has seen of a turn that is not in history yet (loop-side state):
    one sent from the panel (`own`) or one it follows, sent elsewhere (a `%%agent` cell)."""

    prompt: str
    handle: ChatHandle
    own: bool = True
    transcript: Transcript = field(default_factory=Transcript)


class AgentPanel(widgets.VBox):  # type: ignore[misc]
    """Chat with one agent: a streaming transcript, input, Send / Cancel / Shutdown, usage,
    and a History tab with `history_frame` of the conversation.

    `transcript` holds the settled messages and is rewritten only when a turn ends;
    `streaming` holds the turns in progress and is rewritten as text arrives. Splitting them
    keeps each update small: a long conversation is not re-sent ten times a second. The box
    holding both follows the end of the stream unless the user scrolled up (it is anchored
    at its bottom). The panel follows its agent's record live: usage counts up while a reply
    streams, and a turn sent elsewhere (a `%%agent NAME` cell) streams in it as one sent
    from the panel does. When the agent is gone and an
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
        self._ended_shown: set[int] = set()
        self._following = False
        self._note = "idle"
        self._shut_down = False
        self._sent: str | None = None
        self._loaded = False
        self._ended = 0
        self.send_button.on_click(self._on_send)
        self.cancel_button.on_click(self._on_cancel)
        self.shutdown_button.on_click(self._on_shutdown)
        self._writer = Writer(
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
        self._sent = text
        await self._show(live)
        self._ended += 1

    def _follow_running(self, turn: int) -> None:
        """The agent runs a turn: stream it here unless it is one sent from the panel.

        Its messages in history are held back (`_shown_upto`) while it streams, so they
        do not show twice."""
        if any(live.own and live.handle.status == "running" for live in self._live):
            return
        if turn and (self._shown_upto is None or self._shown_upto >= turn):
            self._shown_upto = turn - 1
        if not self._following:
            self._following = True
            self._writer.spawn(self._follow_elsewhere())

    async def _follow_elsewhere(self) -> None:
        """Stream the agent's running turn that was sent elsewhere, as if sent from here."""
        try:
            running = await _running_turn(self._runtime, self.agent)
            own = [live.handle for live in self._live if live.own]
            if running is None or any(running[0] == h for h in own):
                return
            await self._show(_LiveTurn(running[1], running[0], own=False))
        finally:
            self._following = False

    async def _show(self, live: _LiveTurn) -> None:
        """Show a turn's events as they come, then its messages from history.

        Reads the events without owning the turn: closing the panel never cancels it."""
        handle = live.handle
        self._live.append(live)
        self._writer.wake_on_loop()
        seen, ended = 0, False
        try:
            while not ended:
                events = handle.events_since(seen)
                seen += len(events)
                for event in events:
                    self._apply(live, event)
                    ended = ended or isinstance(event, TurnEnd)
                if events:
                    self._writer.wake_on_loop()
                if not ended:
                    await handle.wait_past(seen)
        finally:
            self._live.remove(live)
            outcome = handle.outcome()
            ended = outcome is not None and outcome.turn > 0
            if ended and outcome is not None:
                # The runtime may still list it as current for a moment: it is not running.
                self._ended_shown.add(outcome.turn)
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
        elif isinstance(event, TurnEnd) and (live.own or event.status != "complete"):
            # A turn sent elsewhere that ends well leaves the note as it was (such as
            # "re-attached ...": the cell that re-created the agent sent it).
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
        if mine is None or mine.state in GONE:
            successor = next(
                (i for i in infos if i.name == self.agent.name and i.state not in GONE), None
            )
            if successor is not None:
                self.agent = Agent(self._runtime, successor.id, successor.name)
                self._note = f"re-attached to the new agent {successor.name!r}"
                self._shown_upto = None
                self._ended_shown.clear()
                mine, reattached = successor, True
        seen = self._seen
        if mine is None:
            self._shut_down, self._running = True, False
            self._note = f"agent {self.agent.name!r} was deleted"
            return False
        self._total, self._turns = mine.total_usage, mine.turn_count
        self._seen = (mine.turn_count, mine.current_turn)
        self._running = mine.current_turn is not None and mine.current_turn not in self._ended_shown
        if self._running and not self._shut_down and mine.current_turn is not None:
            self._follow_running(mine.current_turn)
        self._shut_down = mine.state in GONE
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


async def _running_turn(runtime: AgentRuntime, agent: Agent) -> tuple[ChatHandle, str] | None:
    """A handle on the agent's running turn and its prompt, wherever it was sent from."""
    try:
        handle = await runtime.aio.running_turn(agent)
    except AgentError:
        return None
    if handle is None:
        return None
    return handle, "".join(p.text for p in handle.content if isinstance(p, TextPart))


def _gone_note(info: AgentInfo) -> str:
    said = "shut down" if info.state == "shutdown" else "disconnected"
    return f"{said}: a new agent named {info.name!r} (e.g. a %%agent cell) re-attaches this panel"


def _usage_line(usage: Usage, turns: int) -> str:
    return (
        f"{plural(turns, 'turn')} · {token_count(usage.total_tokens)} tokens "
        f"({token_count(usage.prompt_tokens)} prompt, "
        f"{token_count(usage.candidates_tokens)} output, "
        f"{token_count(usage.thoughts_tokens)} thoughts, {token_count(usage.cached_tokens)} cached)"
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
