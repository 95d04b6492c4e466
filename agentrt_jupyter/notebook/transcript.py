"""A turn's events as text: the one renderer behind the cell view (`display.TurnView`) and
the turns an `AgentPanel` streams.

Pure: no widgets, no I/O and no clock of its own (a retry wait is kept as a deadline on
the caller's clock, `now`). The text is markdown: tool calls are notes such as
``tool call `f({"x": 1})` `` and ``"`f` done"``, a retry wait is a countdown line, thoughts
are a quoted block when shown.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..events import TextDelta, ThoughtDelta, ToolCall, ToolResult, Waiting

NOTES_SHOWN = 3
"""The latest tool notes `render` shows below the reply (the transcript keeps all)."""
ARGS_SHOWN = 200
"""Characters of a call's JSON arguments a note shows."""


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """`1 turn`, `2 turns`, `1,000 turns` (`nouns` for an irregular plural: `2 replies`)."""
    return f"{count:,} {noun if count == 1 else nouns or noun + 's'}"


MISSING_COUNT = "—"
"""A token count the service did not report (missing, never shown as 0)."""


def token_count(count: int | None, spec: str = ",") -> str:
    """A token count as text (`spec` as in `format`), or a dash where none was reported."""
    return MISSING_COUNT if count is None else format(count, spec)


def call_note(name: str, args: Any) -> str:
    """A tool call as a note: tool call `name(args)` (arguments cut at `ARGS_SHOWN`).

    Not "calling": the call may still wait for approval (its block in the cell says which)."""
    shown = json.dumps(args, ensure_ascii=False, default=repr)
    return f"tool call `{name}({shown[:ARGS_SHOWN]})`"


def result_note(name: str, error: str | None) -> str:
    """A tool result as a note: `name` done, or `name` failed: why."""
    return f"`{name}` {f'failed: {error}' if error else 'done'}"


@dataclass
class Transcript:
    """What one turn's events said so far."""

    show_thoughts: bool = False
    notes: list[str] = field(default_factory=list)
    """One per tool call and per tool result, in order (`call_note`, `result_note`)."""
    waiting_reason: str = ""
    waiting_until: float | None = None
    """While a retry wait is on: when it ends, on the clock of the `now` given to `apply`."""
    _reply: list[str] = field(default_factory=list)
    _thoughts: list[str] = field(default_factory=list)

    @property
    def reply(self) -> str:
        return "".join(self._reply)

    @property
    def thoughts(self) -> str:
        return "".join(self._thoughts)

    def apply(self, event: Any, now: float) -> bool:
        """Take one event; whether what `render` shows changed (thoughts count only when
        shown; events that carry no text, such as the turn's end, change nothing)."""
        if isinstance(event, TextDelta):
            self._reply.append(event.text)
            self.waiting_until = None
        elif isinstance(event, ThoughtDelta):
            self._thoughts.append(event.text)
            return self.show_thoughts
        elif isinstance(event, ToolCall):
            self.notes.append(call_note(event.name, event.args))
        elif isinstance(event, ToolResult):
            self.notes.append(result_note(event.name, event.error))
        elif isinstance(event, Waiting):
            self.waiting_until = now + event.seconds
            self.waiting_reason = event.reason
        else:
            return False
        return True

    def waiting_note(self, now: float) -> str | None:
        """The retry wait's countdown (None when no wait is on)."""
        if self.waiting_until is None:
            return None
        left = max(0.0, self.waiting_until - now)
        # No emoji: an hourglass is a box where no emoji font is installed.
        return f"{self.waiting_reason}: retrying in {left:.0f} s…"

    def render(self, fmt: str, now: float) -> str:
        """The reply so far, then the shown thoughts, the latest notes and the wait, as
        markdown (`fmt` "text": the same lines, the reply first even when empty)."""
        text = self.reply
        extra = []
        if self.show_thoughts and self._thoughts:
            extra.append("> " + self.thoughts.replace("\n", "\n> "))
        if self.notes:
            extra.append("*" + " · ".join(self.notes[-NOTES_SHOWN:]) + "*")
        waiting = self.waiting_note(now)
        if waiting is not None:
            extra.append(f"*{waiting}*")
        if fmt == "text" or not extra:
            return text if not extra else "\n\n".join([text, *extra])
        return "\n\n".join([text, *extra]) if text else "\n\n".join(extra)
