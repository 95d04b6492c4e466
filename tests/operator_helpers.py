"""What the operator tests share: the prompt a judge was sent, and a runtime whose every
agent answers from a `FakeBackend` (no server, no store), to count exactly what an
operator asks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from agentrt_jupyter import AgentRuntime, FakeBackend, RuntimeConfig
from agentrt_jupyter.backends.base import ModelRequest
from agentrt_jupyter.backends.fake import FakeEmbedder, FakeHandler
from agentrt_jupyter.content import TextPart


def prompt_of(request: ModelRequest) -> str:
    """The text of the request's last part: the prompt the operator sent."""
    part = request.messages[-1].parts[-1]
    assert isinstance(part, TextPart)
    return part.text


@contextmanager
def fake_runtime(
    handler: FakeHandler, embedder: FakeEmbedder | None = None
) -> Iterator[tuple[AgentRuntime, FakeBackend]]:
    """A runtime whose every agent gets `FakeBackend(handler, embedder=embedder)`, and
    that backend (what it was asked); the runtime is shut down after."""
    fake = FakeBackend(handler, embedder=embedder)
    config = RuntimeConfig(store_path=None, api_key="k")
    with AgentRuntime(config, backend_factory=lambda endpoint: fake) as runtime:
        yield runtime, fake
