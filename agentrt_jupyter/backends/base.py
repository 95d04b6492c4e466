"""The backend interface: stream one model call, translated into our types."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from ..config import AgentConfig
from ..content import Part
from ..conversation import ConversationMessage, Usage
from ..quota import QuotaInfo


@dataclass(frozen=True)
class ModelRequest:
    """One API call: the model, what it sees, and the agent's settings."""

    model: str
    messages: list[ConversationMessage]
    system_instruction: str | None
    config: AgentConfig
    with_tools: bool = True


@dataclass(frozen=True, slots=True)
class ModelChunk:
    """One streamed chunk: new parts, the call's running usage, the finish reason if last."""

    parts: tuple[Part, ...]
    usage: Usage | None
    finish_reason: str | None = None


class QuotaHit(Exception):
    """A 429 from the service; the agent decides whether to wait or fail."""

    def __init__(self, info: QuotaInfo) -> None:
        super().__init__(info.message)
        self.info = info


class Backend(Protocol):
    credential: str
    """A fingerprint of the credential, for the quota registry."""

    def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        """Stream one call. Errors are already ours: BackendError, StreamBroken, QuotaHit."""
        ...

    async def aclose(self) -> None: ...
