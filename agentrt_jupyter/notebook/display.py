"""How a `%%agent` turn appears in its cell: its reply and a one-line footer, and, for a
reply that takes a while, a live display updated in place and a Cancel button.

A reply that ends within `OPEN_DELAY` costs two plain displays (the reply, the footer),
as cheap as any display; only a longer one opens the live display and the button, which
the footer replaces when the turn ends, so a finished cell keeps no widget. A failed turn
shows its error once: the red line the cell raises, under the partial reply if any.

`TurnView.follow` runs as a task on the runtime loop and is the only writer of the
cell's displays. It is started with the runtime's `start_task_soon` from the magic (see
`cellrun`), so it inherits the cell's context (its parent header); on kernels that have
`set_thread_parent` it also pins it, and on older kernels it sends each message with the
cell's parent header explicitly. Either way output never lands in another cell, even
when the turn streams in the background while other cells run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import html
import json
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from IPython import display as ipython_display

from ..config import RuntimeConfig
from ..errors import (
    AgentError,
    BackendError,
    QuotaExceeded,
    ReplyInvalid,
    TurnCancelled,
    TurnError,
)
from ..events import TurnEnd
from ..handle import ChatHandle, TurnResult
from .transcript import Transcript, plural, token_count

FORMATS = ("markdown", "text", "code", "json")
OPEN_DELAY = 0.15
"""Seconds a turn may take before its cell gets the live display and the Cancel button
(`AgentMagics.live_after`)."""
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
LIVE_CLASS = "agentrt-live"
"""On the view of every widget the package displays: the lab extension's CSS then shows
either the live view or, where it cannot be drawn, the static copy displayed after it."""
SNAPSHOT_CLASS = "agentrt-snapshot"
"""On every static copy (the output after a widget view, for saved notebooks)."""
SAVED_MID_STREAM = "the reply was still streaming when this notebook was saved"
"""What the Cancel button's static copy says where its widget cannot be drawn (a notebook
saved during a stream, reopened without its kernel, or read on GitHub / nbviewer)."""
ENV_BASE_URL = "GOOGLE_GEMINI_BASE_URL"
"""Where google-genai reads a base URL from when none is configured."""
_WAITING = {"text/markdown": "*waiting for the reply…*", "text/plain": ""}
_EMPTY = {"text/plain": ""}
STARTING = "starting the runtime…"
STARTING_BUNDLE = {"text/markdown": f"*{STARTING}*", "text/plain": STARTING}
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


def footer_line(result: TurnResult, answered_by: str | None = None) -> str:
    """Who answered (`answered_by`, e.g. "scripted", beside the model), tokens
    in/out/thoughts, time to first token, duration, and how it ended."""
    usage = result.usage
    parts = [
        f"{answered_by} · {result.model}" if answered_by else result.model,
        f"{token_count(usage.prompt_tokens, '')} in / "
        f"{token_count(usage.candidates_tokens, '')} out / "
        f"{token_count(usage.thoughts_tokens, '')} thoughts",
    ]
    if result.time_to_first_chunk is not None:
        parts.append(f"first token {result.time_to_first_chunk:.2f} s")
    parts.append(f"{result.duration:.2f} s")
    if result.tool_calls:
        parts.append(plural(result.tool_calls, "tool call"))
    if result.replayed:
        saved = f", {result.saved_tokens} tokens saved" if result.saved_tokens else ""
        parts.append(f"replayed from the reply cache{saved}")
    if result.status != "complete":
        parts.insert(0, result.status.upper())
    return " · ".join(parts)


def answered_by(config: RuntimeConfig) -> str | None:
    """Who answers the cells when it is not Google's Gemini, for the footer beside the
    model name: the engine of the local server, or the host (and port) of the base URL
    (`base_url`, else google-genai's `$GOOGLE_GEMINI_BASE_URL`), never its user or
    password."""
    backend = config.resolved_backend()
    if backend != "gemini":
        return backend
    base_url = config.base_url or os.environ.get(ENV_BASE_URL)
    if not base_url:
        return None
    try:
        url = urlsplit(base_url)
        port = url.port
    except ValueError:  # the SDK will refuse it; the footer still says it is not Google's
        return "a base URL"
    host = url.hostname or "a base URL"
    return f"{host}:{port}" if port else host


def short_message(error: BaseException) -> str:
    """One actionable line for a failed turn."""
    if isinstance(error, QuotaExceeded) and error.scope == "billing":
        said = f" ({error.quota_id})" if error.quota_id else ""
        return (
            f"the provider refused for billing{said}: add credit or check the billing "
            "settings at the provider"
        )
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
    if isinstance(error, ReplyInvalid):  # a whole reply, not a partial one
        return f"{text} (the whole reply is in the error's raw_text and in history)"
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


class StartingNote:
    """The note "starting the runtime…" in a cell whose turn waits for the runtime's
    warm-up (the SDK import holds the runtime's loop for a second or more on a busy
    machine, and the turn's view, which runs there, cannot show anything meanwhile).
    Shown from the cell, at once, in the display the turn's reply then takes over
    (`TurnView(starting=)`)."""

    def __init__(self, shell: Any) -> None:
        self.live = getattr(shell, "kernel", None) is not None
        self.display_id = f"agentrt-{uuid.uuid4().hex}"
        self.shown = False

    def show_if_slow(self, warm_up: concurrent.futures.Future[None] | None, delay: float) -> None:
        """Wait up to `delay` for the warm-up; if it is still running, say so in the cell."""
        if not self.live or warm_up is None or warm_up.done():
            return
        concurrent.futures.wait([warm_up], timeout=delay)
        if not warm_up.done():
            display(STARTING_BUNDLE, raw=True, display_id=self.display_id)
            self.shown = True

    def withdraw(self) -> None:
        """Blank the note from the cell (its turn did not start)."""
        if self.shown:
            self.shown = False
            update_display(_EMPTY, raw=True, display_id=self.display_id)


@dataclass
class OnceHint:
    """A line for the status line of the first turn that opens one (then never again)."""

    text: str
    shown: bool = False


class TurnView:
    """The displays of one turn in the cell that started it.

    `background` turns open their live display at once, in the cell (which returns
    before the reply comes), and show their error in the cell, since no cell raises it.
    """

    def __init__(
        self,
        shell: Any,
        *,
        fmt: str = "markdown",
        rate: float = 20.0,
        show_thoughts: bool = False,
        background: bool = False,
        answered_by: str | None = None,
        hint: OnceHint | None = None,
        open_delay: float = OPEN_DELAY,
        starting: StartingNote | None = None,
    ) -> None:
        self.shell = shell
        self.fmt = fmt
        self.interval = 1.0 / rate
        self.background = background
        self.answered_by = answered_by
        self.hint = hint
        self.open_delay = open_delay
        self.live = getattr(shell, "kernel", None) is not None
        self.parent: Any = getattr(shell, "parent_header", None) if self.live else None
        self._in_cell: set[str] = set()
        """The displays already in the cell: publishing to one again updates it."""
        if starting is not None and starting.shown:  # the reply replaces the note
            self.reply_id = starting.display_id
            self._in_cell.add(self.reply_id)
        else:
            self.reply_id = f"agentrt-{uuid.uuid4().hex}"
        self.button_id = f"{self.reply_id}-button"
        self.status_id = f"{self.reply_id}-status"
        """The footer's display; while the live display is open, the button's static copy."""
        self.updates = 0
        self.opened = False
        """Whether the live display (and the status line, if any) is in the cell."""
        self.widgets: list[Any] = []
        self._status_shown = False
        self.transcript = Transcript(show_thoughts=show_thoughts)

    def show(self, handle: ChatHandle) -> None:
        """Open a background turn's displays; call on the kernel's main thread, in the cell.

        A foreground turn opens them from `follow`, only if it is still running after
        `open_delay`."""
        if self.live and self.background:
            self._open(handle)

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
        seen, ended = (0, False) if self.opened else await self._quiet(handle)
        if not ended and not self.opened:
            self._open(handle)
        last_flush = loop.time()
        while not ended:
            left = last_flush + self.interval - loop.time()
            if left > 0:
                await handle.wait_done(timeout=left)
            elif self.transcript.waiting_until is not None:
                await handle.wait_past(seen, timeout=1.0)
            else:
                await handle.wait_past(seen)
            events = handle.events_since(seen)
            seen += len(events)
            dirty = self.transcript.waiting_until is not None
            for event in events:
                if isinstance(event, TurnEnd):
                    ended = True
                    break
                dirty = self.transcript.apply(event, time.monotonic()) or dirty
            if dirty and not ended:
                self._publish(self.reply_id, self._live_bundle())
                last_flush = loop.time()
        result = handle.outcome()
        assert result is not None
        self._finish(result)
        return result

    async def _quiet(self, handle: ChatHandle) -> tuple[int, bool]:
        """Show nothing for `open_delay` unless the turn ends first: (events read so far,
        whether it has ended)."""
        await handle.wait_done(timeout=self.open_delay)
        events = handle.events_since(0)
        for event in events:
            if isinstance(event, TurnEnd):
                return len(events), True
            self.transcript.apply(event, time.monotonic())
        return len(events), False

    def _live_bundle(self) -> Bundle:
        text = self.transcript.render(self.fmt, time.monotonic())
        return reply_bundle(text, self.fmt, final=False) if text else _WAITING

    def _open(self, handle: ChatHandle) -> None:
        """The live display (what arrived so far, or a placeholder) and the status line."""
        self.opened = True
        if not self.live:
            return
        self._publish(self.reply_id, self._live_bundle(), new=True)
        status = self._status_line(handle.cancel)
        if status is not None:
            self._publish(self.button_id, status, new=True)
            note = f"({SAVED_MID_STREAM})"
            copy = saved_copy(self.status_id, f"<sub>{html.escape(note)}</sub>", note)
            self._publish(self.status_id, copy, new=True)
            self._status_shown = True

    def _status_line(self, cancel: Callable[[], None]) -> Bundle | None:
        """The Cancel button (beside the hint, the first time); None without ipywidgets.

        It is followed by a static copy (`saved_copy`) for wherever the widget cannot be
        drawn: the view hides it while live (the lab extension's CSS, or the hidden
        `<style>` of `copy_hider` elsewhere). At the turn's end the button's display is
        blanked and the footer replaces the copy."""
        button = _cancel_button(cancel)
        if button is None:
            return None
        parts = [button, copy_hider(self.status_id)]
        if self.hint is not None and not self.hint.shown:
            import ipywidgets

            self.hint.shown = True
            parts.insert(1, ipywidgets.HTML(f"<small>{html.escape(self.hint.text)}</small>"))
        shown = live_box(parts)
        self.widgets = [shown, *parts]
        return view_with_copy(shown)

    def _finish(self, result: TurnResult) -> None:
        reply, status = self._final_bundles(result)
        if not self.live:
            for bundle in (reply, status):
                if bundle is not None:
                    display(bundle, raw=True)
            return
        if self.opened:
            self._publish(self.reply_id, reply or _EMPTY)
            if self._status_shown:  # the footer takes the copy's place, after the button's
                self._publish(self.button_id, _EMPTY)
                self._publish(self.status_id, status or _EMPTY)
            elif status is not None:
                self._publish(self.status_id, status, new=True)
            for widget in self.widgets:
                widget.close()
            return
        if reply is None and self.reply_id in self._in_cell:
            reply = _EMPTY  # no reply text: the note it replaces goes
        for display_id, bundle in ((self.reply_id, reply), (self.status_id, status)):
            if bundle is not None:
                self._publish(display_id, bundle, new=True)

    def _final_bundles(self, result: TurnResult) -> tuple[Bundle | None, Bundle | None]:
        """(the reply, the footer) of a finished turn. A failed one keeps its partial reply;
        its error is the line the cell raises, or, in the background, the footer."""
        error = None if isinstance(result.error, TurnCancelled) else result.error
        if error is None:
            footer = footer_line(result, self.answered_by)
            final = reply_bundle(result.text, self.fmt, final=result.status == "complete")
            footer_bundle = {"text/html": f"<sub>{_escape(footer)}</sub>", "text/plain": footer}
            return (final if result.text else None), footer_bundle
        partial = reply_bundle(result.text, self.fmt, final=False) if result.text else None
        return partial, (error_bundle(error) if self.background else None)

    def _publish(self, display_id: str, bundle: Bundle, *, new: bool = False) -> None:
        if not self.live:
            return
        self.updates += 1
        new = new and display_id not in self._in_cell
        if new:
            self._in_cell.add(display_id)
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


def error_bundle(error: BaseException) -> Bundle:
    """A failed background turn's error, as the red line a cell would raise."""
    line = f"{type(error).__name__}: {short_message(error)}"
    name, message = html.escape(type(error).__name__), html.escape(short_message(error))
    shown = f'<span style="color: var(--jp-error-color1, #c62828)">{name}</span>: {message}'
    return {"text/html": shown, "text/plain": line}


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace("\n", "<br>")


def view_with_copy(widget: Any, plain: str = "") -> Bundle:
    """The bundle of a widget view that a static copy (`saved_copy`) follows: its HTML is
    empty, so where the view cannot be drawn (nbconvert's HTML or GitHub without saved
    widget state) only the copy shows, not `plain` in monospace above it; `plain` is for
    text frontends."""
    return {
        WIDGET_VIEW: widget._repr_mimebundle_()[WIDGET_VIEW],
        "text/html": "",
        "text/plain": plain,
    }


def saved_copy(copy_id: str, body: str, plain: str) -> Bundle:
    """The static copy (HTML `body`, text `plain`) displayed right after a widget view;
    `copy_id` is its display id and the class `copy_hider` hides."""
    shown = f'<div class="{SNAPSHOT_CLASS} {copy_id}">{body}</div>'
    return {"text/html": shown, "text/plain": plain}


def close_tree(widget: Any) -> None:
    """Close a widget and every widget inside it (a closed box leaves its children open)."""
    for child in getattr(widget, "children", ()):
        close_tree(child)
    widget.close()


def copy_hider(copy_id: str) -> Any:
    """An invisible widget whose `<style>` hides the copy `copy_id` while the view lives
    (for frontends without the lab extension's CSS: classic Notebook, VS Code)."""
    import ipywidgets

    layout, _, _ = _parts()
    return ipywidgets.HTML(f"<style>.{copy_id}{{display:none}}</style>", layout=layout)


_shared_parts: tuple[Any, Any, Any] | None = None


def _parts() -> tuple[Any, Any, Any]:
    """One hidden Layout, one button Layout and one ButtonStyle for every cell's status
    line: a cell then opens a few widget comms instead of a dozen."""
    import ipywidgets

    global _shared_parts
    if _shared_parts is None:
        _shared_parts = (
            ipywidgets.Layout(display="none"),
            ipywidgets.Layout(width="auto"),
            ipywidgets.ButtonStyle(),
        )
    return _shared_parts


def live_box(parts: list[Any], *, vertical: bool = False) -> Any:
    """A box of widgets marked as a live view (`LIVE_CLASS`), for a view with a copy."""
    import ipywidgets

    box = ipywidgets.VBox(parts) if vertical else ipywidgets.HBox(parts)
    box.add_class(LIVE_CLASS)
    return box


def _cancel_button(cancel: Callable[[], None]) -> Any:
    """A plain ipywidgets Button that cancels the turn (None without ipywidgets)."""
    try:
        import ipywidgets
    except ImportError:
        return None
    _, layout, style = _parts()
    button = ipywidgets.Button(
        description="Cancel",
        icon="stop",
        tooltip="Stop this turn (the partial reply is kept)",
        layout=layout,
        style=style,
    )
    button.on_click(lambda _: cancel())
    return button
