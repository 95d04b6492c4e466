"""A backend answered by your own function, for tests without a network (as httpx's
`MockTransport`).

```python
from agentrt_jupyter import AgentRuntime, FakeBackend

def handler(request):                      # a ModelRequest: model, messages, config
    return "Hello from the fake"

with AgentRuntime(backend_factory=lambda endpoint: FakeBackend(handler)) as runtime:
    agent = runtime.create_agent()
    assert agent.chat("hi").text() == "Hello from the fake"
```

The handler (sync or async) returns the reply: a `str`; a `Part` (`FunctionCallPart`
asks for a tool) or `ModelChunk`; or a sequence, iterator or async iterator of them,
streamed one chunk each. The stream ends with finish reason "STOP" and word counts as
token usage, unless a chunk of yours carries a finish reason. To fail, it raises (or its
iterator raises after some chunks) `RateLimited`, `ServerError`, `ConnectionDropped`, or
any of the package's `TurnError`s, which reach the retry layer exactly as the real
backend's do. Every request is kept in `requests`, one per HTTP attempt.

`embed` answers with `embedder(texts)` when given one, else with the local server's
scripted vectors (hashed bags of words: texts that share words are close); every call's
texts are kept in `embedded`.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeAlias

from ..content import BlobPart, FunctionCallPart, FunctionResponsePart, Part, TextPart
from ..conversation import Usage
from ..errors import BackendError, StreamBroken
from ..quota import QuotaInfo, QuotaScope
from ..server.engines.vectors import count_words, hashed_vector
from .base import Embeddings, ModelChunk, ModelRequest, QuotaHit

ReplyItem: TypeAlias = str | Part | ModelChunk
FakeReply: TypeAlias = ReplyItem | Iterable[ReplyItem] | AsyncIterable[ReplyItem]
FakeHandler: TypeAlias = Callable[[ModelRequest], FakeReply | Awaitable[FakeReply]]
FakeEmbedder: TypeAlias = Callable[[list[str]], list[list[float]]]


class RateLimited(QuotaHit):
    """A 429: `retry_after` seconds (the service's RetryInfo, or None), and its scope:
    "minute" waits and retries; "day" and "zero" (no quota for the model) fail at once."""

    def __init__(
        self,
        retry_after: float | None = None,
        *,
        scope: QuotaScope = "minute",
        quota_id: str | None = None,
        message: str = "Resource has been exhausted (e.g. check quota).",
    ) -> None:
        super().__init__(QuotaInfo(scope, retry_after, quota_id, message))


class ServerError(BackendError):
    """A 5xx (or 408) from the service: retried if nothing streamed yet."""

    def __init__(self, code: int = 503, status: str = "UNAVAILABLE", message: str = "") -> None:
        super().__init__(f"{code} {status}: {message or 'the fake service failed'}", code=code)
        self.status = status


class ConnectionDropped(Exception):
    """The connection broke: before the first chunk it is retried like a failed
    connection; after some chunks it is a `StreamBroken` (never retried: no repeated text)."""


class FakeBackend:
    """A `Backend` whose replies come from `handler`; see the module's docstring."""

    def __init__(
        self,
        handler: FakeHandler,
        *,
        credential: str = "fake",
        embedder: FakeEmbedder | None = None,
    ) -> None:
        if not callable(handler):
            raise TypeError(f"FakeBackend needs a callable handler, got {type(handler).__name__}")
        self.handler = handler
        self.credential = credential
        self.embedder = embedder
        self.requests: list[ModelRequest] = []
        """Every request the handler was given, one per HTTP attempt."""
        self.embedded: list[list[str]] = []
        """The texts of every embedding call, one list per call."""
        self.closed = False

    def __repr__(self) -> str:
        return f"<FakeBackend {getattr(self.handler, '__name__', 'handler')} {self.credential}>"

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        self.requests.append(request)
        sent = 0
        words = 0
        finished = False
        try:
            async for item in _items(self.handler(request)):
                chunk = _chunk(item)
                sent += 1
                words += sum(len(p.text.split()) for p in chunk.parts if isinstance(p, TextPart))
                finished = finished or chunk.finish_reason is not None
                yield chunk
        except ConnectionDropped as exc:
            raise _dropped(exc, sent) from None
        if not finished:
            usage = Usage(
                prompt_tokens=(prompt := _prompt_words(request)),
                candidates_tokens=words,
                total_tokens=prompt + words,
            )
            yield ModelChunk((), usage, "STOP")

    async def embed(self, texts: Sequence[str], model: str) -> Embeddings:
        batch = list(texts)
        self.embedded.append(batch)
        if self.embedder is not None:
            return Embeddings(self.embedder(batch))
        vectors = [hashed_vector(text) for text in batch]
        return Embeddings(vectors, sum(count_words(text) for text in batch))

    async def aclose(self) -> None:
        self.closed = True


async def _items(reply: Any) -> AsyncIterator[ReplyItem]:
    if inspect.isawaitable(reply):
        reply = await reply
    if isinstance(
        reply, str | ModelChunk | TextPart | BlobPart | FunctionCallPart | FunctionResponsePart
    ):
        yield reply
    elif isinstance(reply, AsyncIterable):
        async for item in reply:
            yield item
    elif isinstance(reply, Iterable):
        for item in reply:
            yield item
    else:
        raise TypeError(f"a FakeBackend handler returned {type(reply).__name__}, not a reply")


def _chunk(item: ReplyItem) -> ModelChunk:
    if isinstance(item, ModelChunk):
        return item
    if isinstance(item, str):
        return ModelChunk((TextPart(item),), None)
    return ModelChunk((item,), None)


def _dropped(exc: ConnectionDropped, chunks: int) -> BackendError | StreamBroken:
    if chunks:
        return StreamBroken(f"the reply stream was cut after {chunks} chunks ({exc})")
    return BackendError(f"the connection failed before a reply ({exc})", status="UNAVAILABLE")


def _prompt_words(request: ModelRequest) -> int:
    texts = (p.text for m in request.messages for p in m.parts if isinstance(p, TextPart))
    return sum(len(text.split()) for text in texts) + len(
        (request.system_instruction or "").split()
    )
