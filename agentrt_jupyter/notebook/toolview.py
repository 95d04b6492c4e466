"""The tool calls of a `%%agent` turn, shown in its cell: one collapsed block per call and,
while a call waits for approval, its question with Approve / Deny buttons.

A block says the tool, its arguments, its result or error, how long it ran (from the
approval, not from the question) and how its approval ended; it is an HTML `<details>`
with a plain-text fallback, and its result is cut to `SHOWN_CHARS` for display only (the
model gets the whole result, up to `RuntimeConfig.max_tool_result_chars`).

`ToolCallsView.follow` is a task on the runtime loop beside the turn's `TurnView`, and the
only writer of its own display, which it opens in the cell before the reply's display so
a cell reads calls, then the reply. The approver hands it questions (`ask`, `settle`,
`running`: state changes only, on the loop); the task makes and closes the widgets, in the
cell's context, so their messages belong to the cell.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..events import ToolCall, ToolResult, TurnEnd
from .approval import Request, question_widget, short_json
from .display import WIDGET_VIEW, close_tree, copy_hider, live_box, saved_copy

if TYPE_CHECKING:
    from ..handle import ChatHandle
    from .display import TurnView

log = logging.getLogger("agentrt_jupyter")

SHOWN_CHARS = 2_000
"""Characters of a call's arguments and of its result a block shows."""
WAKE_INTERVAL = 0.05
"""While no call is open the view reads the turn's events at most this often; during a
call (and while a question waits) it reads them as they come, so durations are exact."""
_EMPTY = {"text/plain": ""}
_ERROR_COLOR = "var(--jp-error-color1, #c62828)"


@dataclass
class CallBlock:
    """One tool call as the cell shows it."""

    name: str
    args: dict[str, Any]
    seen_at: float
    ran_from: float | None = None
    ended_at: float | None = None
    result: Any = None
    error: str | None = None
    note: str = ""
    """How its approval went (empty when it was not asked about)."""

    @property
    def open(self) -> bool:
        return self.ended_at is None

    @property
    def duration(self) -> float | None:
        if self.ended_at is None:
            return None
        return self.ended_at - (self.ran_from if self.ran_from is not None else self.seen_at)

    def state(self) -> str:
        if self.open:
            if self.note:
                return self.note
            # It runs once the approver lets it (`running`); until then it may still be
            # about to be asked, so it is only requested.
            return "running…" if self.ran_from is not None else "requested…"
        shown = "error" if self.error else "ok"
        if self.duration is not None and self.ran_from is not None:
            shown += f" · {self.duration:.2f} s"
        return f"{shown} · {self.note}" if self.note else shown

    def html(self) -> str:
        state = html.escape(self.state())
        if self.error:
            state = f'<span style="color:{_ERROR_COLOR}">{state}</span>'
        summary = (
            f"<code>{html.escape(self.name)}</code>"
            f"<code>({html.escape(short_json(self.args, 120))})</code> · {state}"
        )
        code = self.args.get("code") if set(self.args) == {"code"} else None
        if isinstance(code, str):
            arguments = _pre(code)
        else:
            arguments = _pre(json.dumps(self.args, indent=2, ensure_ascii=False, default=repr))
        parts = [f"<div><small>arguments</small></div>{arguments}"]
        if self.error:
            parts.append(f"<div><small>error</small></div>{_pre(self.error)}")
        elif not self.open:
            parts.append(f"<div><small>result</small></div>{_pre(_shown_result(self.result))}")
        body = "".join(parts)
        return (
            f'<details style="margin:2px 0"><summary>{summary}</summary>'
            f'<div style="margin-left:1.2em">{body}</div></details>'
        )

    def text(self) -> str:
        line = f"tool {self.name}({short_json(self.args, 120)}): {self.state()}"
        if self.error:
            return f"{line}\n  {_cut(self.error, 300)}"
        if not self.open:
            return f"{line}\n  -> {_cut(_shown_result(self.result), 300)}"
        return line


def _pre(text: str) -> str:
    return f'<pre style="margin:2px 0;max-height:20em;overflow:auto">{html.escape(text)}</pre>'


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit:,} more characters, not shown)"


def _shown_result(result: Any) -> str:
    text = result if isinstance(result, str) else None
    if text is None:
        try:
            text = json.dumps(result, indent=2, ensure_ascii=False, default=repr)
        except (TypeError, ValueError, RecursionError):
            text = repr(result)
    return _cut(text, SHOWN_CHARS)


class ToolCallsView:
    """The tool-call display of one cell's turn, and the approval surface of that turn."""

    per_turn = True

    def __init__(self, view: TurnView, *, why_not: str | None = None) -> None:
        self.view = view
        self.display_id = f"{view.reply_id}-tools"
        self.copy_id = f"{self.display_id}-copy"
        """Right after the calls' display: their static copy while a question's widget
        shows there (for a notebook saved then; see `display.saved_copy`)."""
        self.blocks: list[CallBlock] = []
        self.questions: list[Request] = []
        self.approve_all = False
        self.opened = False
        self._why_not = why_not
        self._handle: ChatHandle | None = None
        self._seen = 0
        self._ended = False
        self._changed = False
        self._wake = asyncio.Event()
        self._box: Any = None
        self._blocks_widget: Any = None
        self._hider: Any = None
        self._question_widgets: dict[str, Any] = {}
        self._to_close: list[Any] = []
        self._shown: dict[str, Any] | None = None

    def open(self) -> None:
        """Reserve the displays in the cell, above the reply (main thread, in the cell)."""
        if self.view.live:
            self.view._publish(self.display_id, _EMPTY, new=True)
            self.view._publish(self.copy_id, _EMPTY, new=True)
            self.opened = True
            self._shown = _EMPTY

    def why_not(self) -> str | None:
        return self._why_not

    def ask(self, request: Request) -> None:
        self._catch_up()
        self.questions.append(request)
        block = self._open_block(request.tool)
        if block is not None:
            block.note = "waiting for your approval"
        self._mark()

    def settle(self, request: Request) -> None:
        self._catch_up()
        if request in self.questions:
            self.questions.remove(request)
        shown = self._question_widgets.pop(request.id, None)
        if shown is not None:
            self._to_close.append(shown)
        block = self._open_block(request.tool)
        if block is not None:
            block.note = request.outcome
        self._mark()

    def running(self, tool: str) -> None:
        self._catch_up()
        block = self._open_block(tool)
        if block is not None:
            block.ran_from = time.monotonic()
        self._mark()

    async def follow(self, handle: ChatHandle) -> None:
        """Show the turn's calls until it ends; never raises into the cell's turn."""
        shell = self.view.shell
        pin = getattr(shell, "set_thread_parent", None)
        parent = self.view.parent
        tokens = pin(parent) if self.view.live and pin is not None and parent else None
        try:
            await self._follow(handle)
        except Exception:
            log.exception("the tool-call display of a turn failed")
        finally:
            if tokens is not None:
                shell.reset_thread_parent(tokens)

    async def _follow(self, handle: ChatHandle) -> None:
        self._handle = handle
        loop = asyncio.get_running_loop()
        last_read = -1e9
        while True:
            self._wake.clear()
            self._catch_up()
            if self._changed:
                self._render()
            if self._ended:
                break
            busy = self.questions or any(block.open for block in self.blocks)
            left = last_read + WAKE_INTERVAL - loop.time()
            if not busy and left > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), left)
                continue
            await self._next(handle)
            last_read = loop.time()
        self._finish()

    async def _next(self, handle: ChatHandle) -> None:
        """Until the turn has new events, or the approver changed something."""
        arrived = asyncio.ensure_future(handle.wait_past(self._seen))
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({arrived, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (arrived, woken):
                if not waiter.done():
                    waiter.cancel()

    def _mark(self) -> None:
        self._changed = True
        self._wake.set()

    def _catch_up(self) -> None:
        """Read the turn's events so far (on the loop: also from the approver's calls)."""
        handle = self._handle
        if handle is None:
            return
        events = handle.events_since(self._seen)
        self._seen += len(events)
        now = time.monotonic()
        for event in events:
            if isinstance(event, ToolCall):
                self.blocks.append(CallBlock(event.name, dict(event.args), now))
                self._changed = True
            elif isinstance(event, ToolResult):
                block = self._open_block(event.name)
                if block is not None:
                    block.ended_at, block.result, block.error = now, event.result, event.error
                    self._changed = True
            elif isinstance(event, TurnEnd):
                self._ended = True

    def _open_block(self, tool: str) -> CallBlock | None:
        """The call of `tool` running now (one call runs at a time)."""
        return next((b for b in reversed(self.blocks) if b.open and b.name == tool), None)

    def bundle(self) -> dict[str, Any]:
        """The calls as a plain display (no widgets)."""
        if not self.blocks:
            return _EMPTY
        return {
            "text/html": "".join(block.html() for block in self.blocks),
            "text/plain": "\n".join(block.text() for block in self.blocks),
        }

    def _render(self) -> None:
        self._changed = False
        for widget in self._to_close:
            close_tree(widget)
        self._to_close.clear()
        if not self.view.live:
            return
        plain = self.bundle()
        if not self.questions:
            if self._box is not None:
                close_tree(self._box)
                self._box = self._blocks_widget = self._hider = None
                self._shown = None
                self.view._publish(self.copy_id, _EMPTY)
            if plain != self._shown:
                self._publish(plain)
            return
        import ipywidgets as widgets

        created = self._box is None
        if created:
            self._blocks_widget = widgets.HTML()
            self._hider = copy_hider(self.copy_id)
            self._box = live_box([], vertical=True)
        self._blocks_widget.value = plain.get("text/html", "")
        shown = [self._blocks_widget, self._hider]
        for request in self.questions:
            if request.id not in self._question_widgets:
                self._question_widgets[request.id] = question_widget(request)
            shown.append(self._question_widgets[request.id])
        if tuple(self._box.children) != tuple(shown):
            self._box.children = shown
        if created:
            self._publish({WIDGET_VIEW: self._box._repr_mimebundle_()[WIDGET_VIEW], **_EMPTY})
        self.view._publish(self.copy_id, self._copy(plain))

    def _copy(self, plain: dict[str, Any]) -> dict[str, Any]:
        """What a notebook saved while a question waits shows in place of its widget."""
        waiting = "; ".join(request.describe() for request in self.questions)
        # Read where the buttons are gone (a reopened notebook, nbconvert): say what
        # the state was, not how to answer.
        note = f"waiting for approval: {waiting} (when saved; unanswered then)"
        body = plain.get("text/html", "") + f"<div><sub>{html.escape(note)}</sub></div>"
        text = "\n".join(t for t in (plain.get("text/plain", ""), note) if t)
        return saved_copy(self.copy_id, body, text)

    def _publish(self, bundle: dict[str, Any]) -> None:
        self.view._publish(self.display_id, bundle, new=not self.opened)
        self.opened = True
        self._shown = bundle

    def _finish(self) -> None:
        self.questions.clear()
        for widget in self._question_widgets.values():
            self._to_close.append(widget)
        self._question_widgets.clear()
        self._render()
        if not self.view.live and self.blocks:
            from .display import display

            display(self.bundle(), raw=True)
