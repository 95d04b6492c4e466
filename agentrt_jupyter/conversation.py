"""An agent's record: messages, turns, the per-call usage ledger, and compaction.

Lives on the runtime loop; readers get immutable snapshots. Usage is counted once per
API call (the last running total the server sent), summed per turn, and the ledger is
never cleared, so total usage is what was billed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Literal

from .content import FunctionCallPart, FunctionResponsePart, Part, TextPart

Role = Literal["user", "model", "summary"]
MessageStatus = Literal["complete", "cancelled", "incomplete", "error"]
CallStatus = Literal["ok", "retried", "replayed", "cancelled", "error", "rate-limited"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def _sum(left: int | None, right: int | None) -> int | None:
    return None if left is None or right is None else left + right


_METADATA_COUNTS = (
    "prompt_token_count",
    "cached_content_token_count",
    "candidates_token_count",
    "thoughts_token_count",
    "tool_use_prompt_token_count",
    "total_token_count",
)
"""The SDK's usage fields, in the order of `Usage`'s."""


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts; adding two gives their sum.

    A count is None where the service reported none (an OpenAI-compatible server that
    sends no usage in its stream): missing, never 0. A sum with a missing count is
    missing, so a turn or a total that includes such a call shows no number rather
    than too small a one."""

    prompt_tokens: int | None = 0
    cached_tokens: int | None = 0
    candidates_tokens: int | None = 0
    thoughts_tokens: int | None = 0
    tool_use_prompt_tokens: int | None = 0
    total_tokens: int | None = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(*(_sum(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)))

    @property
    def missing(self) -> bool:
        """Some count was not reported."""
        return any(getattr(self, f.name) is None for f in fields(self))

    def split(self) -> tuple[int | None, int | None]:
        """Input (prompt and tool-use prompt) and output (candidates and thoughts) tokens,
        each None if a count of it is missing."""
        return (
            _sum(self.prompt_tokens, self.tool_use_prompt_tokens),
            _sum(self.candidates_tokens, self.thoughts_tokens),
        )

    @classmethod
    def from_metadata(cls, meta: Any) -> Usage:
        """From the SDK's `usage_metadata` (missing counts are 0)."""
        if meta is None:
            return cls()
        # Once per streamed chunk: one look at the model's fields, not six getattr calls.
        counts = getattr(meta, "__dict__", None)
        if counts is None:
            counts = {name: getattr(meta, name, None) for name in _METADATA_COUNTS}
        get = counts.get
        return cls(
            int(get("prompt_token_count") or 0),
            int(get("cached_content_token_count") or 0),
            int(get("candidates_token_count") or 0),
            int(get("thoughts_token_count") or 0),
            int(get("tool_use_prompt_token_count") or 0),
            int(get("total_token_count") or 0),
        )


UNREPORTED = Usage(None, None, None, None, None, None)
"""The usage of a call whose reply came without any: every count missing."""


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One API call: what it cost, how long it took, how it ended."""

    agent: str
    turn: int
    call: int
    model: str
    started: datetime
    usage: Usage
    time_to_first_chunk: float | None
    duration: float
    finish_reason: str | None
    status: CallStatus
    retry_wait: float = 0.0
    error: str | None = None
    saved_tokens: int = 0
    """For a reply replayed from the cache: the tokens it cost when recorded (not billed)."""
    provider: str = "gemini"
    """Who answered: gemini, vertex, openai, anthropic or ollama (`model` has no prefix)."""


@dataclass(frozen=True, slots=True)
class ConversationMessage:
    """One message in history; `usage` is set on model messages (that call's usage)."""

    role: Role
    parts: tuple[Part, ...]
    turn: int
    time: datetime = field(default_factory=utcnow)
    status: MessageStatus = "complete"
    usage: Usage | None = None
    model: str | None = None
    finish_reason: str | None = None

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, TextPart) and not p.thought)

    @property
    def thoughts(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, TextPart) and p.thought)

    @property
    def tool_calls(self) -> tuple[FunctionCallPart, ...]:
        return tuple(p for p in self.parts if isinstance(p, FunctionCallPart))


class Conversation:
    """Messages and ledger of one agent, plus what the model sees next."""

    def __init__(self) -> None:
        self.messages: list[ConversationMessage] = []
        self.ledger: list[LedgerEntry] = []
        self.turn_count = 0
        self.turn_seq = 0
        self.compactions: list[int] = []

    def start_turn(self) -> int:
        """Number the next turn; numbers grow across `clear` so ledger rows stay distinct."""
        self.turn_count += 1
        self.turn_seq += 1
        return self.turn_seq

    @property
    def summary(self) -> str | None:
        """The latest compaction summary, added to the system instruction."""
        return self.messages[self.compactions[-1]].text if self.compactions else None

    def context(self) -> list[ConversationMessage]:
        """What the model sees: messages after the latest summary."""
        start = self.compactions[-1] + 1 if self.compactions else 0
        return self.messages[start:]

    def append(self, message: ConversationMessage) -> None:
        self.messages.append(message)

    def record_compaction(self, summary: str, turn: int) -> int:
        self.messages.append(ConversationMessage("summary", (TextPart(summary),), turn))
        self.compactions.append(len(self.messages) - 1)
        return self.compactions[-1]

    def clear(self) -> None:
        """Forget what the model sees; the ledger (what was billed) stays."""
        self.messages.clear()
        self.compactions.clear()
        self.turn_count = 0

    def total_usage(self) -> Usage:
        return sum((entry.usage for entry in self.ledger), Usage())

    def turn_usage(self, turn: int) -> Usage:
        return sum((e.usage for e in self.ledger if e.turn == turn), Usage())

    def last_response(self) -> ConversationMessage | None:
        for message in reversed(self.messages):
            if message.role == "model" and (message.text or not message.tool_calls):
                return message
        return None


def dangling_calls(messages: list[ConversationMessage]) -> list[FunctionCallPart]:
    """Function calls in the latest model message that have no response yet."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.role == "model":
            answered = {
                p.id or p.name
                for later in messages[index + 1 :]
                for p in later.parts
                if isinstance(p, FunctionResponsePart)
            }
            return [c for c in message.tool_calls if (c.id or c.name) not in answered]
    return []


def unanswered_calls(
    messages: list[ConversationMessage],
) -> list[tuple[int, list[FunctionCallPart]]]:
    """Calls Gemini would see unanswered, each group with the index its responses belong at.

    `contents` merges consecutive messages of one role, and every call in a model content
    must be answered by the user content right after it. So for each run of model messages,
    the calls that the run of user messages after it leaves unanswered belong right after
    the model run (at the end of `messages` for the usual case: a reply cut off by a crash).
    """
    found: list[tuple[int, list[FunctionCallPart]]] = []
    index = 0
    while index < len(messages):
        if messages[index].role != "model":
            index += 1
            continue
        calls: list[FunctionCallPart] = []
        while index < len(messages) and messages[index].role == "model":
            calls.extend(messages[index].tool_calls)
            index += 1
        answered: set[str] = set()
        following = index
        while following < len(messages) and messages[following].role == "user":
            answered.update(
                p.id or p.name
                for p in messages[following].parts
                if isinstance(p, FunctionResponsePart)
            )
            following += 1
        missing = [c for c in calls if (c.id or c.name) not in answered]
        if missing:
            found.append((index, missing))
    return found
