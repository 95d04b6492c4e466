"""Messages, ledger rows and cached replies the store tests write (SQLite's and the
contract both stores keep)."""

from __future__ import annotations

from datetime import UTC, datetime

from agentrt_jupyter.content import FunctionCallPart, FunctionResponsePart, TextPart
from agentrt_jupyter.conversation import ConversationMessage, LedgerEntry, Usage
from agentrt_jupyter.store import CachedReply

USAGE = Usage(prompt_tokens=12, candidates_tokens=3, total_tokens=15)
WHEN = datetime(2026, 2, 1, 12, 0, tzinfo=UTC)


def user(text: str, turn: int) -> ConversationMessage:
    return ConversationMessage("user", (TextPart(text),), turn)


def model(text: str, turn: int, *calls: FunctionCallPart) -> ConversationMessage:
    return ConversationMessage(
        "model", (TextPart(text), *calls), turn, usage=USAGE, model="m", finish_reason="STOP"
    )


def answers(turn: int, *calls: FunctionCallPart) -> ConversationMessage:
    parts = tuple(FunctionResponsePart(c.name, {"result": 1}, c.id) for c in calls)
    return ConversationMessage("user", parts, turn)


def ledger_row(turn: int, error: str | None = None) -> LedgerEntry:
    return LedgerEntry("a", turn, 0, "m", WHEN, USAGE, 0.1, 0.5, "STOP", "ok", 0.0, error)


def reply(text: str) -> CachedReply:
    return CachedReply((TextPart(text), FunctionCallPart("f", {"x": 1}, "c")), USAGE, "STOP", "m")
