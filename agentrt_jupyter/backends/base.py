"""The backend seam: what one model call is, and what a provider's backend implements.

A `Backend` streams one HTTP attempt, its errors already ours. The runtime chooses one
per `Endpoint` through a `BackendFactory` (`AgentRuntime(backend_factory=...)`); the
wrappers in `retry.py` and `cache.py` add what every provider shares: retries, the
quota gate, one ledger row per attempt, reply-cache replay.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from ..config import AgentConfig, split_model
from ..content import FunctionCallPart, Part, TextPart
from ..conversation import UNREPORTED, CallStatus, ConversationMessage, LedgerEntry, Usage
from ..quota import QuotaInfo

EXCERPT_CHARS = 200
"""How much of what a service sent an error message quotes."""
_SPACES = re.compile(r"\s+")
_TAGS = re.compile(r"<[^>]*>")


def excerpt(value: object) -> str:
    """A short, one-line view of what the service sent (HTML tags and runs of space removed)."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = _SPACES.sub(" ", _TAGS.sub(" ", text)).strip()
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"


BLOCKED_FINISH_REASONS = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY", "LANGUAGE"}
)
"""Finish reasons that mean the service stopped the reply: never an empty success."""


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
    """One streamed chunk: new parts, the call's running usage, the finish reason if last,
    and the log probabilities of its tokens when they were asked for (one mean per chunk
    where the service gives only that)."""

    parts: tuple[Part, ...]
    usage: Usage | None
    finish_reason: str | None = None
    logprobs: tuple[float, ...] = ()


class QuotaHit(Exception):
    """A 429 from the service; the retry wrapper decides whether to wait or fail."""

    def __init__(self, info: QuotaInfo) -> None:
        super().__init__(info.message)
        self.info = info


@dataclass(frozen=True)
class Endpoint:
    """Where an agent's calls go and with which credential; a `BackendFactory` gets one.

    `provider` names the kind of service: "gemini" (or the runtime's "local"/"scripted"
    engines, which speak Gemini's wire format), "vertex" (google-genai with `project` and
    `location`), "openai" and "ollama" (Chat Completions), "anthropic" (Messages). The
    requests a backend gets carry the model name without its provider prefix.
    The key is final (the SDK's environment is already looked at) and never in a repr."""

    api_key: str | None = field(default=None, repr=False)
    base_url: str | None = None
    api_version: str | None = None
    provider: str = "gemini"
    project: str | None = None
    location: str | None = None


class Backend(Protocol):
    credential: str
    """A fingerprint of the credential, for the quota registry (never the key itself)."""

    def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        """Stream one attempt. Errors are already ours: BackendError, StreamBroken, QuotaHit."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class Embeddings:
    """One embedding call's vectors, one per text in order, and the tokens the service
    counted (None when it does not say)."""

    vectors: list[list[float]]
    tokens: int | None = None


class EmbeddingBackend(Protocol):
    """A backend that also embeds (Gemini's and OpenAI's; Anthropic has no embeddings API).

    Optional: the runtime checks for `embed` before it asks."""

    credential: str

    async def embed(self, texts: Sequence[str], model: str) -> Embeddings:
        """Vectors for `texts` from `model` (without its provider prefix), in one call
        where the API takes many; errors already ours, as `stream`'s."""
        ...


BackendFactory = Callable[[Endpoint], Backend]
"""Makes the backend of an endpoint; the runtime makes one per endpoint and closes it."""


class Reply:
    """What one model call has produced so far (kept for a partial record on cancel)."""

    __slots__ = (
        "_sealed", "calls", "finish_reason", "first_chunk_at", "logprobs", "reported", "segments",
    )  # fmt: skip

    def __init__(self) -> None:
        self.segments: list[tuple[str, list[str], bytes | None]] = []
        self.calls: list[FunctionCallPart] = []
        self.reported: Usage | None = None
        """The latest running usage the service sent (None: none yet)."""
        self.finish_reason: str | None = None
        self.first_chunk_at: float | None = None
        self.logprobs: list[float] = []
        self._sealed = False

    def add(self, chunk: ModelChunk) -> None:
        for part in chunk.parts:
            if isinstance(part, FunctionCallPart):
                self.calls.append(part)
            elif isinstance(part, TextPart):
                self._add_text(part)
        if chunk.usage is not None:
            self.reported = chunk.usage
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason
        self.logprobs.extend(chunk.logprobs)

    @property
    def logprob(self) -> float | None:
        """The mean log probability of the reply's tokens (None: the service gave none)."""
        return sum(self.logprobs) / len(self.logprobs) if self.logprobs else None

    def _add_text(self, part: TextPart) -> None:
        """A piece continues its segment of the same kind unless it is signed (a signed
        piece opens one); an empty signed thought after unsigned thought pieces is their
        signature, sent when the block ended (Anthropic's), and closes that segment."""
        kind = "thought" if part.thought else "text"
        last = self.segments[-1] if self.segments else None
        signature = part.thought_signature
        if last is not None and last[0] == kind and not self._sealed:
            if not signature:
                last[1].append(part.text)
                return
            if part.thought and not part.text and last[2] is None:
                self.segments[-1] = (kind, last[1], signature)
                self._sealed = True
                return
        self.segments.append((kind, [part.text], signature))
        self._sealed = False

    @property
    def usage(self) -> Usage:
        """The call's usage: what the service reported; missing counts if it answered
        without any (never zeros); zeros if nothing came (nothing to bill)."""
        if self.reported is not None:
            return self.reported
        answered = self.produced or self.finish_reason is not None
        return UNREPORTED if answered else Usage()

    def reset(self) -> None:
        """Forget a failed attempt that produced nothing, before the next one."""
        self.segments, self.calls = [], []
        self.reported, self.finish_reason, self.first_chunk_at = None, None, None
        self.logprobs = []
        self._sealed = False

    @property
    def produced(self) -> bool:
        """Something reached the consumers: a retry would repeat it."""
        return bool(self.segments or self.calls)

    def parts(self) -> tuple[Part, ...]:
        texts: list[Part] = [
            TextPart("".join(chunks), kind == "thought", signature)
            for kind, chunks, signature in self.segments
        ]
        return (*texts, *self.calls)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One HTTP attempt (or one replay) as the ledger records it."""

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

    def entry(self, agent: str, turn: int, call: int) -> LedgerEntry:
        """Its ledger row: the provider in its own column, the model without the prefix."""
        provider, model = split_model(self.model)
        return LedgerEntry(
            agent=agent,
            turn=turn,
            call=call,
            model=model,
            provider=provider,
            started=self.started,
            usage=self.usage,
            time_to_first_chunk=self.time_to_first_chunk,
            duration=self.duration,
            finish_reason=self.finish_reason,
            status=self.status,
            retry_wait=self.retry_wait,
            error=self.error,
            saved_tokens=self.saved_tokens,
        )


class CallListener(Protocol):
    """Who follows one model call (an agent's turn): chunks, pauses, one row per attempt."""

    def on_chunk(self, chunk: ModelChunk, reply: Reply) -> None:
        """A chunk arrived and is already in `reply`: show it (called on the pump task)."""
        ...

    def on_waiting(self, seconds: float, reason: str) -> None:
        """The call pauses (a rate limit, a retry's backoff) for about `seconds`."""
        ...

    def on_attempt(self, attempt: Attempt) -> None:
        """An attempt ended, however it ended: its ledger row."""
        ...


class ModelCaller(Protocol):
    """One model call as the agent's turn sees it, whatever retries or replays it takes."""

    async def call(
        self,
        request: ModelRequest,
        reply: Reply,
        listener: CallListener,
        *,
        refresh: bool = False,
    ) -> None:
        """Fill `reply`; raise the call's `TurnError`. `refresh` skips recorded replies."""
        ...
