"""Typed events a turn streams, in order; every event has a `kind` for cheap dispatch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from .conversation import Usage
from .errors import TurnError

TurnStatus = Literal["complete", "cancelled", "incomplete", "error"]


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str
    kind: Literal["text"] = "text"


@dataclass(frozen=True, slots=True)
class ThoughtDelta:
    text: str
    kind: Literal["thought"] = "thought"


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str | None
    name: str
    args: dict[str, Any]
    kind: Literal["tool_call"] = "tool_call"


@dataclass(frozen=True, slots=True)
class ToolResult:
    id: str | None
    name: str
    result: Any
    error: str | None = None
    kind: Literal["tool_result"] = "tool_result"


@dataclass(frozen=True, slots=True)
class UsageUpdate:
    """Running usage of the turn after an API call finished."""

    usage: Usage
    kind: Literal["usage"] = "usage"


@dataclass(frozen=True, slots=True)
class Waiting:
    """The turn waits (rate limit) before retrying; `seconds` is the countdown start."""

    seconds: float
    reason: str
    kind: Literal["waiting"] = "waiting"


@dataclass(frozen=True, slots=True)
class TurnEnd:
    status: TurnStatus
    text: str
    usage: Usage
    finish_reason: str | None
    kind: Literal["end"] = "end"


@dataclass(frozen=True, slots=True)
class Error:
    error: TurnError
    kind: Literal["error"] = "error"


Event: TypeAlias = (
    TextDelta | ThoughtDelta | ToolCall | ToolResult | UsageUpdate | Waiting | TurnEnd | Error
)
