"""An agent's turn on the public `FakeBackend`: no server process, no network.

The fake plugs in where google-genai does (`AgentRuntime(backend_factory=...)`), so these
turns go through the same retry, quota and cache wrappers as the real backend's; the
same behaviours are tested through the real SDK against the local server elsewhere.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

import agentrt_jupyter.backends.retry
from agentrt_jupyter import (
    AgentRuntime,
    BackendError,
    FakeBackend,
    FunctionCallPart,
    FunctionResponsePart,
    InvalidConfig,
    QuotaExceeded,
    RuntimeConfig,
    StreamBroken,
    TextDelta,
    ToolCall,
    ToolResult,
    TurnCancelled,
    Waiting,
)
from agentrt_jupyter.backends.base import Endpoint, ModelRequest
from agentrt_jupyter.backends.fake import ConnectionDropped, FakeReply, RateLimited, ServerError

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def fake() -> Iterator[Callable[..., tuple[AgentRuntime, list[FakeBackend]]]]:
    """`fake(handler, **settings)`: a runtime whose every endpoint answers with `handler`."""
    runtimes: list[AgentRuntime] = []

    def start(
        handler: Callable[[ModelRequest], FakeReply], **settings: object
    ) -> tuple[AgentRuntime, list[FakeBackend]]:
        backends: list[FakeBackend] = []

        def factory(endpoint: Endpoint) -> FakeBackend:
            backends.append(FakeBackend(handler))
            return backends[-1]

        config = RuntimeConfig(store_path=None, **settings)  # type: ignore[arg-type]
        runtimes.append(AgentRuntime(config, backend_factory=factory))
        return runtimes[-1], backends

    yield start
    for runtime in runtimes:
        runtime.shutdown(5.0)


def test_a_turn_streams_the_handlers_reply_with_no_server_process(fake) -> None:
    runtime, backends = fake(lambda request: ["Hello ", "from ", "the fake"])
    agent = runtime.create_agent(system_instruction="Be brief.")
    handle = agent.chat("hi")
    deltas = [e.text for e in handle if isinstance(e, TextDelta)]
    assert deltas == ["Hello ", "from ", "the fake"]
    assert handle.text() == "Hello from the fake"
    (request,) = backends[0].requests
    assert request.system_instruction == "Be brief."
    assert [m.text for m in request.messages] == ["hi"]
    (row,) = agent.ledger()
    assert row.status == "ok" and row.usage.candidates_tokens == 4  # word counts
    assert handle.result().usage == row.usage
    assert runtime.local_server is None


def test_a_tool_call_runs_the_tool_and_its_result_reaches_the_next_request(fake) -> None:
    def weather(city: str) -> dict:
        """The forecast for a city."""
        return {"city": city, "forecast": "sunny"}

    def handler(request: ModelRequest) -> FakeReply:
        answers = [p for p in request.messages[-1].parts if isinstance(p, FunctionResponsePart)]
        if not answers:
            return FunctionCallPart("weather", {"city": "Paris"}, "call-1")
        return f"It is {answers[0].response['forecast']} in {answers[0].response['city']}."

    runtime, backends = fake(handler)
    agent = runtime.create_agent(tools=[weather])
    handle = agent.chat("Weather in Paris?")
    events = list(handle)
    assert handle.text() == "It is sunny in Paris."
    assert ToolCall("call-1", "weather", {"city": "Paris"}) in events
    assert ToolResult("call-1", "weather", {"city": "Paris", "forecast": "sunny"}) in events
    assert [m.role for m in agent.history()] == ["user", "model", "user", "model"]
    assert [row.status for row in agent.ledger()] == ["ok", "ok"]
    assert len(backends[0].requests) == 2
    assert [t.name for t in backends[0].requests[0].config.tool_list] == ["weather"]


def test_a_429_episode_waits_then_retries_with_a_ledger_row_per_attempt(fake) -> None:
    attempts: list[int] = []

    def handler(request: ModelRequest) -> FakeReply:
        attempts.append(1)
        if len(attempts) <= 2:
            raise RateLimited(0.02, quota_id="GenerateRequestsPerMinutePerProjectPerModel")
        return "through"

    runtime, backends = fake(handler)
    agent = runtime.create_agent()
    handle = agent.chat("busy key")
    waits = [e for e in handle if isinstance(e, Waiting)]
    assert handle.text() == "through"
    assert [row.status for row in agent.ledger()] == ["rate-limited", "rate-limited", "ok"]
    assert len(backends[0].requests) == 3
    assert len(waits) == 2 and all("PerMinute" in w.reason for w in waits)
    assert agent.ledger()[1].retry_wait > 0
    state = runtime.quota_state
    assert state is not None and state.total_hits == 2 and not state.blocked


def test_a_429_that_stays_fails_typed_after_the_configured_retries(fake) -> None:
    def handler(request: ModelRequest) -> FakeReply:
        raise RateLimited(0.01)

    runtime, backends = fake(handler, quota_max_retries=2)
    agent = runtime.create_agent()
    with pytest.raises(QuotaExceeded, match="still limited after 2 retries") as caught:
        agent.chat("never").text(timeout=5)
    assert caught.value.scope == "minute"
    assert [row.status for row in agent.ledger()] == ["rate-limited"] * 3
    assert len(backends[0].requests) == 3


@pytest.mark.parametrize("scope", ["day", "zero"])
def test_a_per_day_or_zero_quota_fails_at_once_without_waiting(fake, scope: str) -> None:
    def handler(request: ModelRequest) -> FakeReply:
        raise RateLimited(30.0, scope=scope)  # type: ignore[arg-type]

    runtime, backends = fake(handler)
    agent = runtime.create_agent()
    handle = agent.chat("one more")
    with pytest.raises(QuotaExceeded) as caught:
        handle.text(timeout=5)
    assert caught.value.scope == scope
    assert not any(isinstance(e, Waiting) for e in handle)
    assert [row.status for row in agent.ledger()] == ["rate-limited"]
    assert len(backends[0].requests) == 1


def test_cancel_mid_stream_ends_the_turn_cancelled_with_the_partial_text_kept(fake) -> None:
    closed = threading.Event()

    async def handler(request: ModelRequest) -> AsyncIterator[str]:
        try:
            yield "partial "
            await asyncio.Event().wait()  # the rest never comes
            yield "never sent"
        finally:
            closed.set()

    runtime, backends = fake(handler)
    agent = runtime.create_agent()
    handle = agent.chat("a long answer, please")
    assert isinstance(next(iter(handle)), TextDelta)
    handle.cancel()
    with pytest.raises(TurnCancelled) as caught:
        handle.text(timeout=5)
    assert caught.value.partial_text == "partial "
    assert closed.wait(5)  # the stream was closed, as the real backend's socket is
    model = agent.history()[-1]
    assert model.role == "model" and model.status == "cancelled" and model.text == "partial "
    assert [row.status for row in agent.ledger()] == ["cancelled"]
    assert len(backends[0].requests) == 1


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retry backoffs of 10 ms (the rule is the same; its half-second first step is not)."""
    monkeypatch.setattr(agentrt_jupyter.backends.retry, "MAX_RETRY_PAUSE", 0.01)


@pytest.mark.usefixtures("quick_retries")
@pytest.mark.parametrize(
    "failure", [ConnectionDropped("reset by peer"), ServerError(503)], ids=["dropped", "503"]
)
def test_a_failure_before_the_reply_is_retried_and_the_turn_completes(
    fake, failure: Exception
) -> None:
    attempts: list[int] = []

    def handler(request: ModelRequest) -> Iterator[str]:
        attempts.append(1)
        if len(attempts) == 1:
            raise failure
        yield "second time lucky"

    runtime, backends = fake(handler)
    agent = runtime.create_agent()
    handle = agent.chat("flaky")
    assert handle.text(timeout=5) == "second time lucky"
    assert any(isinstance(e, Waiting) and "retrying after" in e.reason for e in handle)
    assert [row.status for row in agent.ledger()] == ["retried", "ok"]
    assert len(backends[0].requests) == 2


def test_a_dropped_connection_after_some_text_fails_the_turn_and_is_never_retried(fake) -> None:
    def handler(request: ModelRequest) -> Iterator[str]:
        yield "the first half"
        raise ConnectionDropped("reset by peer")

    runtime, backends = fake(handler)
    agent = runtime.create_agent()
    with pytest.raises(StreamBroken) as caught:
        agent.chat("cut").text(timeout=5)
    assert caught.value.partial_text == "the first half"
    assert [row.status for row in agent.ledger()] == ["error"]
    assert len(backends[0].requests) == 1
    assert agent.history()[-1].status == "incomplete"


def test_a_recorded_reply_replays_from_the_cache_without_calling_the_handler(fake) -> None:
    runtime, backends = fake(lambda request: "recorded once", reply_cache=True)
    first = runtime.create_agent()
    assert first.chat("same question").text(timeout=5) == "recorded once"
    second = runtime.create_agent()
    handle = second.chat("same question")
    assert handle.text(timeout=5) == "recorded once"
    assert handle.result().replayed
    assert [row.status for row in second.ledger()] == ["replayed"]
    assert len(backends[0].requests) == 1


def test_the_factory_gets_each_endpoint_once_and_its_backend_is_closed_at_shutdown() -> None:
    endpoints: list[Endpoint] = []
    backends: list[FakeBackend] = []

    def factory(endpoint: Endpoint) -> FakeBackend:
        endpoints.append(endpoint)
        backends.append(FakeBackend(lambda request: "ok"))
        return backends[-1]

    config = RuntimeConfig(store_path=None, api_key="secret-key-123", base_url="http://fake")
    with AgentRuntime(config, backend_factory=factory) as runtime:
        for _ in range(2):
            runtime.create_agent().chat("hi").text(timeout=5)
    (endpoint,) = endpoints
    assert endpoint == Endpoint("secret-key-123", "http://fake", None, "gemini")
    assert "secret-key-123" not in repr(endpoint)
    assert backends[0].closed


def test_a_backend_factory_that_is_not_callable_is_refused() -> None:
    with pytest.raises(InvalidConfig) as caught:
        AgentRuntime(RuntimeConfig(store_path=None), backend_factory="gemini")  # type: ignore[arg-type]
    assert caught.value.field == "backend_factory"


def test_a_setting_refused_when_the_backend_is_made_ends_the_turn_typed_and_the_agent_lives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    made: list[int] = []

    def factory(endpoint: Endpoint) -> FakeBackend:
        made.append(1)
        if len(made) == 1:
            raise InvalidConfig("no project for vertex: set project=...", field="project")
        return FakeBackend(lambda request: "ok")

    with AgentRuntime(RuntimeConfig(store_path=None), backend_factory=factory) as runtime:
        agent = runtime.create_agent()
        with pytest.raises(BackendError, match="no project for vertex") as caught:
            agent.chat("hi").text(timeout=5)
        assert caught.value.status == "INVALID_ARGUMENT"
        assert "internal error" not in str(caught.value)
        assert agent.chat("again").text(timeout=5) == "ok"
    assert not [r for r in caplog.records if r.exc_info]
