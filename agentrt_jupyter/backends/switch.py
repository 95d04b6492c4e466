"""A conversation as another provider takes it, after an agent switched provider.

Text, tool calls and their results go to any provider (each backend builds its own wire
format from them). What stays behind: thinking from another provider (its signatures mean
nothing elsewhere, and none of the builders sends another provider's thoughts), and an
attachment the new provider refuses, which would otherwise fail every later turn. An
attachment left out is replaced by a line saying so, so its message keeps its place.
The agent's history keeps everything; only what is sent changes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

from ..config import provider_of
from ..content import BlobPart, Part, TextPart
from ..conversation import ConversationMessage
from ..errors import InvalidContent
from . import check_parts

FAMILIES = {"vertex": "gemini", "ollama": "openai"}
"""Providers that speak another's wire format: their parts go to each other as they are."""


def family(provider: str) -> str:
    return FAMILIES.get(provider, provider)


def sendable(
    messages: Sequence[ConversationMessage], provider: str
) -> tuple[list[ConversationMessage], Counter[str]]:
    """`messages` as `provider` takes them, and what was left out ("thinking" and each
    refused MIME type, counted). Messages that need no change are the same objects."""
    left_out: Counter[str] = Counter()
    kept = [_sendable(message, provider, left_out) for message in messages]
    return kept, left_out


def _sendable(
    message: ConversationMessage, provider: str, left_out: Counter[str]
) -> ConversationMessage:
    if message.role == "model":
        if message.model is None or family(provider_of(message.model)) == family(provider):
            return message
        parts = tuple(p for p in message.parts if not (isinstance(p, TextPart) and p.thought))
        if len(parts) < len(message.parts):
            left_out["thinking"] += len(message.parts) - len(parts)
    elif message.role == "user" and any(isinstance(p, BlobPart) for p in message.parts):
        parts = tuple(_taken(part, provider, left_out) for part in message.parts)
    else:
        return message
    return message if parts == message.parts else replace(message, parts=parts)


def _taken(part: Part, provider: str, left_out: Counter[str]) -> Part:
    """The part, or a line in its place if `provider` refuses it."""
    if not isinstance(part, BlobPart):
        return part
    try:
        check_parts(provider, [part])
    except InvalidContent:
        left_out[part.mime_type] += 1
        return TextPart(f"[a {part.mime_type} attachment, left out: {provider} cannot take it]")
    return part


def switch_note(messages: Sequence[ConversationMessage], provider: str) -> str | None:
    """The one line a switch to `provider` deserves (None if nothing is left out)."""
    _, left_out = sendable(messages, provider)
    if not left_out:
        return None
    thinking = left_out.pop("thinking", 0)
    items = [f"{thinking} thinking part{'' if thinking == 1 else 's'}"] if thinking else []
    items += [
        f"{count} {mime} attachment{'' if count == 1 else 's'}" for mime, count in left_out.items()
    ]
    return f"switched to {provider}: dropped {' and '.join(items)} from earlier turns"
