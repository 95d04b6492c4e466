"""The one renderer of a turn's events: `Transcript` (pure: no widgets, no I/O, no clock)."""

from __future__ import annotations

from agentrt_jupyter.conversation import Usage
from agentrt_jupyter.events import (
    TextDelta,
    ThoughtDelta,
    ToolCall,
    ToolResult,
    TurnEnd,
    UsageUpdate,
    Waiting,
)
from agentrt_jupyter.notebook.transcript import ARGS_SHOWN, Transcript, plural


def test_the_reply_is_the_text_deltas_joined() -> None:
    transcript = Transcript()
    assert transcript.render("markdown", now=0.0) == ""
    assert transcript.apply(TextDelta("Hello, "), now=0.0)
    assert transcript.apply(TextDelta("world"), now=0.0)
    assert transcript.reply == "Hello, world"
    assert transcript.render("markdown", now=0.0) == "Hello, world"


def test_events_without_text_change_nothing_shown() -> None:
    transcript = Transcript()
    transcript.apply(TextDelta("done"), now=0.0)
    assert not transcript.apply(UsageUpdate(Usage(total_tokens=5)), now=0.0)
    assert not transcript.apply(TurnEnd("complete", "done", Usage(), "STOP"), now=0.0)
    assert transcript.render("markdown", now=0.0) == "done"


def test_thoughts_are_shown_quoted_only_when_asked_for() -> None:
    hidden, shown = Transcript(), Transcript(show_thoughts=True)
    for transcript in (hidden, shown):
        transcript.apply(ThoughtDelta("first\nsecond"), now=0.0)
        transcript.apply(TextDelta("answer"), now=0.0)
    assert hidden.thoughts == shown.thoughts == "first\nsecond"
    assert not Transcript().apply(ThoughtDelta("x"), now=0.0)
    assert Transcript(show_thoughts=True).apply(ThoughtDelta("x"), now=0.0)
    assert hidden.render("markdown", now=0.0) == "answer"
    assert shown.render("markdown", now=0.0) == "answer\n\n> first\n> second"


def test_tool_calls_are_notes_and_the_latest_three_are_shown() -> None:
    transcript = Transcript()
    transcript.apply(ToolCall("1", "lookup", {"city": "Oslo"}), now=0.0)
    transcript.apply(ToolResult("1", "lookup", {"t": 3}), now=0.0)
    transcript.apply(ToolCall("2", "fail", {}), now=0.0)
    transcript.apply(ToolResult("2", "fail", None, error="ValueError: no"), now=0.0)
    assert transcript.notes == [
        'tool call `lookup({"city": "Oslo"})`',
        "`lookup` done",
        "tool call `fail({})`",
        "`fail` failed: ValueError: no",
    ]
    shown = transcript.render("markdown", now=0.0)
    assert shown == "*`lookup` done · tool call `fail({})` · `fail` failed: ValueError: no*"


def test_a_call_note_cuts_long_arguments() -> None:
    transcript = Transcript()
    transcript.apply(ToolCall(None, "f", {"text": "x" * 1000}), now=0.0)
    note = transcript.notes[0]
    assert note.startswith("tool call `f(") and note.endswith(")`")
    assert len(note) == len("tool call `f()`") + ARGS_SHOWN


def test_a_retry_wait_counts_down_on_the_callers_clock_until_text_arrives() -> None:
    transcript = Transcript()
    assert transcript.waiting_note(now=0.0) is None
    assert transcript.apply(Waiting(seconds=30.0, reason="rate limited"), now=100.0)
    assert transcript.waiting_note(now=110.0) == "rate limited: retrying in 20 s…"
    assert transcript.waiting_note(now=500.0) == "rate limited: retrying in 0 s…"
    assert transcript.render("markdown", now=100.0) == "*rate limited: retrying in 30 s…*"
    transcript.apply(TextDelta("back"), now=131.0)
    assert transcript.waiting_note(now=131.0) is None
    assert transcript.render("markdown", now=131.0) == "back"


def test_plain_text_keeps_the_reply_first_even_when_empty() -> None:
    transcript = Transcript()
    transcript.apply(ToolCall(None, "f", {}), now=0.0)
    assert transcript.render("text", now=0.0) == "\n\n*tool call `f({})`*"
    assert transcript.render("markdown", now=0.0) == "*tool call `f({})`*"


def test_plural_counts_with_separators_and_irregular_plurals() -> None:
    assert plural(1, "turn") == "1 turn"
    assert plural(0, "turn") == "0 turns"
    assert plural(1234, "agent") == "1,234 agents"
    assert plural(2, "reply", "replies") == "2 replies"
