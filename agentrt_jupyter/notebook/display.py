"""How a `%%agent` turn appears in its cell: a reply display updated in place, a Cancel
button that becomes a one-line footer, and short error messages.

`TurnView.follow` runs as a task on the runtime loop and is the only writer of the
cell's displays. It is started with `run_coroutine_threadsafe` from the magic, so it
inherits the cell's context (its parent header); on kernels that have
`set_thread_parent` it also pins it, and on older kernels it sends each update with the
cell's parent header explicitly. Either way output never lands in another cell, even
when the turn streams in the background while other cells run.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from IPython import display as ipython_display

from ..errors import AgentError, BackendError, QuotaExceeded, TurnCancelled, TurnError
from ..events import TextDelta, ThoughtDelta, ToolCall, ToolResult, TurnEnd, Waiting
from ..handle import ChatHandle, TurnResult

FORMATS = ("markdown", "text", "code", "json")
_FENCE = re.compile(r"^\s*```[\w+-]*\s*\n(.*?)\n?```\s*$", re.DOTALL)
Bundle = dict[str, Any]
display: Callable[..., Any] = ipython_display.display
update_display: Callable[..., Any] = ipython_display.update_display


def reply_bundle(text: str, fmt: str, *, final: bool) -> Bundle:
    """The MIME bundle showing `text` in format `fmt` (JSON is parsed only when final)."""
    if fmt == "text":
        return {"text/plain": text}
    if fmt == "code" or (fmt == "json" and not final):
        return {"text/markdown": _fenced(text), "text/plain": text}
    if fmt == "json":
        match = _FENCE.match(text)
        try:
            value = json.loads(match.group(1) if match else text)
        except ValueError:
            note = "*(the reply is not valid JSON)*"
            return {"text/markdown": f"{_fenced(text)}\n\n{note}", "text/plain": text}
        shown = json.dumps(value, indent=2, ensure_ascii=False)
        bundle: Bundle = {"text/plain": shown}
        bundle["application/json"] = value if isinstance(value, dict | list) else {"value": value}
        return bundle
    return {"text/markdown": text, "text/plain": text}


def _fenced(text: str) -> str:
    if _FENCE.match(text):
        return text
    fence = "````" if "```" in text else "```"
    return f"{fence}\n{text}\n{fence}"


def footer_line(result: TurnResult) -> str:
    """Model, tokens in/out/thoughts, time to first token, duration, and how it ended."""
    usage = result.usage
    parts = [
        result.model,
        f"{usage.prompt_tokens} in / {usage.candidates_tokens} out / "
        f"{usage.thoughts_tokens} thoughts",
    ]
    if result.time_to_first_chunk is not None:
        parts.append(f"first token {result.time_to_first_chunk:.2f} s")
    parts.append(f"{result.duration:.2f} s")
    if result.tool_calls:
        parts.append(f"{result.tool_calls} tool call{'s' if result.tool_calls > 1 else ''}")
    if result.replayed:
        parts.append(f"replayed from the reply cache, {result.saved_tokens} tokens saved")
    if result.status != "complete":
        parts.insert(0, result.status.upper())
    return " · ".join(parts)


def short_message(error: BaseException) -> str:
    """One actionable line for a failed turn."""
    if isinstance(error, QuotaExceeded):
        scope = {"day": "per-day", "minute": "per-minute", "zero": "limit 0"}.get(
            error.scope, error.scope
        )
        advice = (
            f"try again in {_duration(error.retry_after)}"
            if error.retry_after and error.scope == "minute"
            else "wait for the quota to reset (per-day quotas reset at midnight Pacific time), "
            "use another key, or enable billing"
        )
        return (
            f"quota exceeded ({scope}{', ' + error.quota_id if error.quota_id else ''}): {advice}"
        )
    if isinstance(error, BackendError) and error.code in (401, 403):
        return (
            f"the API key was refused ({error.code} {error.status}): check GOOGLE_API_KEY / "
            "GEMINI_API_KEY, or unset both to use the embedded local model"
        )
    text = str(error)
    if isinstance(error, TurnError) and error.partial_text and not isinstance(error, TurnCancelled):
        text += f" (the partial reply, {len(error.partial_text)} characters, is kept in history)"
    return text


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "a moment"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def shorten(error: AgentError, message: str | None = None) -> AgentError:
    """Make IPython show `error` as one red line instead of a traceback; returns it."""
    line = f"\x1b[0;31m{type(error).__name__}\x1b[0m: {message or short_message(error)}"
    error._render_traceback_ = lambda: [line]  # type: ignore[attr-defined]
    return error


class TurnView:
    """The displays of one turn in the cell that started it."""

    def __init__(
        self,
        shell: Any,
        *,
        fmt: str = "markdown",
        rate: float = 20.0,
        show_thoughts: bool = False,
    ) -> None:
        self.shell = shell
        self.fmt = fmt
        self.interval = 1.0 / rate
        self.show_thoughts = show_thoughts
        self.live = getattr(shell, "kernel", None) is not None
        self.parent: Any = getattr(shell, "parent_header", None) if self.live else None
        self.reply_id = f"agentrt-{uuid.uuid4().hex}"
        self.status_id = f"{self.reply_id}-status"
        self.updates = 0
        self.button: Any = None
        self._text: list[str] = []
        self._thoughts: list[str] = []
        self._notes: list[str] = []
        self._waiting_until: float | None = None
        self._waiting_reason = ""

    def show(self, handle: ChatHandle) -> None:
        """Create the cell's displays; call on the kernel's main thread, in the cell."""
        if not self.live:
            return
        waiting = "*waiting for the reply…*"
        display({"text/markdown": waiting, "text/plain": ""}, raw=True, display_id=self.reply_id)
        self.button = _cancel_button(handle.cancel)
        if self.button is not None:
            display(self.button, display_id=self.status_id)

    async def follow(self, handle: ChatHandle) -> TurnResult:
        """Render the turn as it streams, at most `rate` updates a second; returns its result."""
        pin = getattr(self.shell, "set_thread_parent", None)
        tokens = pin(self.parent) if self.live and pin is not None and self.parent else None
        try:
            return await self._follow(handle)
        finally:
            if tokens is not None:
                self.shell.reset_thread_parent(tokens)

    async def _follow(self, handle: ChatHandle) -> TurnResult:
        """Wake for the first new event, then at most `rate` times a second, and at once
        when the turn ends: never once per chunk (this runs on the runtime loop, beside
        the streams it renders)."""
        loop = asyncio.get_running_loop()
        seen = 0
        last_flush = -1e9
        ended = False
        while not ended:
            left = last_flush + self.interval - loop.time()
            if left > 0:
                await handle.wait_done(timeout=left)
            elif self._waiting_until is not None:
                await handle.wait_past(seen, timeout=1.0)
            else:
                await handle.wait_past(seen)
            events = handle.events_since(seen)
            seen += len(events)
            dirty = self._waiting_until is not None
            for event in events:
                if isinstance(event, TurnEnd):
                    ended = True
                    break
                dirty = self._apply(event) or dirty
            if dirty and not ended:
                self._publish(self.reply_id, reply_bundle(self._live_text(), self.fmt, final=False))
                last_flush = loop.time()
        result = handle.outcome()
        assert result is not None
        self._finish(result)
        return result

    def _apply(self, event: Any) -> bool:
        if isinstance(event, TextDelta):
            self._text.append(event.text)
            self._waiting_until = None
        elif isinstance(event, ThoughtDelta):
            self._thoughts.append(event.text)
            return self.show_thoughts
        elif isinstance(event, ToolCall):
            args = json.dumps(event.args, ensure_ascii=False)
            self._notes.append(f"calling `{event.name}({args[:200]})`")
        elif isinstance(event, ToolResult):
            outcome = f"failed: {event.error}" if event.error else "done"
            self._notes.append(f"`{event.name}` {outcome}")
        elif isinstance(event, Waiting):
            self._waiting_until = time.monotonic() + event.seconds
            self._waiting_reason = event.reason
        else:
            return False
        return True

    def _live_text(self) -> str:
        text = "".join(self._text)
        extra = []
        if self.show_thoughts and self._thoughts:
            extra.append("> " + "".join(self._thoughts).replace("\n", "\n> "))
        if self._notes:
            extra.append("*" + " · ".join(self._notes[-3:]) + "*")
        if self._waiting_until is not None:
            left = max(0.0, self._waiting_until - time.monotonic())
            extra.append(f"⏳ *{self._waiting_reason}: retrying in {left:.0f} s*")
        if self.fmt == "text" or not extra:
            return text if not extra else "\n\n".join([text, *extra])
        return "\n\n".join([text, *extra]) if text else "\n\n".join(extra)

    def _finish(self, result: TurnResult) -> None:
        text = result.text or ("" if result.error is None else f"*({result.status})*")
        final = reply_bundle(text, self.fmt, final=result.status == "complete")
        footer = footer_line(result)
        if result.error is not None and not isinstance(result.error, TurnCancelled):
            footer += f"\n{type(result.error).__name__}: {short_message(result.error)}"
        footer_bundle = {"text/markdown": f"<sub>{_escape(footer)}</sub>", "text/plain": footer}
        if not self.live:
            display(final, raw=True)
            display(footer_bundle, raw=True)
            return
        self._publish(self.reply_id, final)
        self._publish(self.status_id, footer_bundle, new=self.button is None)
        if self.button is not None:
            self.button.close()

    def _publish(self, display_id: str, bundle: Bundle, *, new: bool = False) -> None:
        if not self.live:
            return
        self.updates += 1
        if getattr(self.shell, "set_thread_parent", None) is not None:
            if new:
                display(bundle, raw=True, display_id=display_id)
            else:
                update_display(bundle, raw=True, display_id=display_id)
            return
        pub = self.shell.display_pub
        content = {"data": bundle, "metadata": {}, "transient": {"display_id": display_id}}
        msg_type = "display_data" if new else "update_display_data"
        pub.session.send(pub.pub_socket, msg_type, content, parent=self.parent, ident=pub.topic)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace("\n", "<br>")


_button_parts: tuple[Any, Any] | None = None


def _cancel_button(cancel: Callable[[], None]) -> Any:
    """A plain ipywidgets Button that cancels the turn (None without ipywidgets)."""
    try:
        import ipywidgets
    except ImportError:
        return None
    global _button_parts
    if _button_parts is None:
        # One Layout and one ButtonStyle for every Cancel button: a cell then opens one
        # widget comm instead of three.
        _button_parts = (ipywidgets.Layout(width="auto"), ipywidgets.ButtonStyle())
    layout, style = _button_parts
    button = ipywidgets.Button(
        description="Cancel",
        icon="stop",
        tooltip="Stop this turn (the partial reply is kept)",
        layout=layout,
        style=style,
    )
    button.on_click(lambda _: cancel())
    return button
