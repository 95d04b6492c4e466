"""The engine interface: what the HTTP layer asks of a model.

The server turns a Gemini REST request into a `GenerateRequest`, asks an engine for
a stream of `EngineChunk`s and writes them out in the Gemini wire format. Faults are
applied by the HTTP layer, around any engine: those queued through the control API for
every engine, and those a request asks for only when its engine reads them
(`Engine.requested_fault`; the scripted engine's `@@fault`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class GenerateRequest:
    """One generate call, with camelCase keys already normalised."""

    model: str
    contents: list[dict[str, Any]]
    system_instruction: str | None = None
    generation_config: dict[str, Any] = field(default_factory=dict)
    tools: list[dict[str, Any]] = field(default_factory=list)
    stream: bool = True


@dataclass(frozen=True)
class EngineChunk:
    """One streamed piece: Gemini parts, the running usage for the call, the finish
    reason on the last chunk only, and the mean log probability of its tokens when the
    request asked for them (`responseLogprobs`)."""

    parts: list[dict[str, Any]]
    usage: dict[str, int]
    finish_reason: str | None = None
    logprob: float | None = None


class EngineError(Exception):
    """A request the engine refuses; sent as a Gemini error body with this status."""

    def __init__(self, code: int, message: str, *, status: str = "INVALID_ARGUMENT") -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message


def prompt_message(contents: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """The prompt: the last text part of the latest user message that has one, and that
    message's parts (`("", [])` if there is none)."""
    for content in reversed(contents):
        if content.get("role", "user") != "user":
            continue
        parts = content.get("parts") or []
        texts = [p["text"] for p in parts if isinstance(p.get("text"), str)]
        if texts:
            return texts[-1], parts
    return "", []


class Engine(Protocol):
    name: str

    def requested_fault(self, request: GenerateRequest) -> str | None:
        """The fault SPEC the request itself asks for, if this engine lets prompts ask
        (only the scripted one does); EngineError if the request is malformed."""
        ...

    def generate(self, request: GenerateRequest) -> AsyncIterator[EngineChunk]:
        """Stream the reply. Cancelling the consuming task must stop generation."""
        ...

    async def count_tokens(self, request: GenerateRequest) -> int: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class Embedded:
    """An engine's vectors for texts, in order, and the tokens it read."""

    vectors: list[list[float]]
    tokens: int


class Embedder(Protocol):
    """An engine that also embeds (the embedding routes answer 400 for one that does not)."""

    async def embed(self, texts: list[str], dimensions: int | None) -> Embedded:
        """Vectors for `texts`; `dimensions` the length asked for (None: the engine's own)."""
        ...
