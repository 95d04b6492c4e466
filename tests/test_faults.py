"""Server faults and rate limits, through the real SDK: typed errors, kept text, valid history."""

from __future__ import annotations

import pytest

from agentrt_jupyter import (
    AgentRuntime,
    BackendError,
    QuotaExceeded,
    StreamBroken,
    TextDelta,
    Waiting,
)
from agentrt_jupyter.server.process import LocalServer

from .conftest import assert_valid_conversation, requests_with, runtime_config, wait_finished


def test_server_error_is_retried_by_the_sdk_then_succeeds(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    server.push_faults("503", match=tag)
    agent = rt.create_agent()
    assert agent.chat(f"flaky {tag}").text(timeout=20) == f"Echo: flaky {tag}"
    assert [r["status"] for r in requests_with(server, tag)] == [503, 200]


def test_persistent_server_error_becomes_backend_error_with_the_service_code(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = rt.create_agent()
    with pytest.raises(BackendError) as caught:
        agent.chat(f"@@fault 500\n{tag}").text(timeout=30)
    assert caught.value.code == 500
    assert caught.value.status == "INTERNAL"
    assert len(requests_with(server, tag)) == rt.config.http_retry_attempts
    assert agent.history()[-1].role == "user"
    assert agent.ledger()[-1].status == "error"
    assert agent.chat(f"recovered {tag}").text(timeout=10) == f"Echo: recovered {tag}"


def test_drop_before_headers_is_a_connection_error(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = rt.create_agent()
    with pytest.raises(BackendError, match="connection failed before a reply") as caught:
        agent.chat(f"@@fault drop_headers\n{tag}").text(timeout=30)
    assert caught.value.status == "UNAVAILABLE"
    assert len(requests_with(server, tag)) == rt.config.http_retry_attempts


def test_a_redirect_loop_is_one_attempt_naming_the_status_and_where_it_pointed(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = rt.create_agent()
    with pytest.raises(BackendError, match="check base_url") as caught:
        agent.chat(f"@@fault redirect 307\n{tag}").text(timeout=30)
    assert (caught.value.code, caught.value.status) == (307, "REDIRECT")
    assert "redirect to /v1beta/models/" in str(caught.value)
    assert "?" not in str(caught.value)  # the query is left out: it may carry tokens
    assert [e.status for e in agent.ledger()] == ["error"]
    assert agent.chat(f"recovered {tag}").text(timeout=10) == f"Echo: recovered {tag}"


def test_mid_stream_drop_is_stream_broken_with_partial_text(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = rt.create_agent()
    handle = agent.chat(f"@@fault drop_after 3\nalpha beta gamma delta epsilon {tag}")
    with pytest.raises(StreamBroken) as caught:
        handle.text(timeout=20)
    assert caught.value.partial_text == "Echo: alpha beta "
    assert len(requests_with(server, tag)) == 1
    model = agent.history()[-1]
    assert (model.role, model.status, model.text) == ("model", "incomplete", "Echo: alpha beta ")
    agent.chat(f"again {tag}").text(timeout=10)
    body = requests_with(server, f"again {tag}")[-1]["body"]
    assert_valid_conversation(body["contents"])


def test_sse_error_event_is_a_backend_error_keeping_text(rt: AgentRuntime, tag: str) -> None:
    agent = rt.create_agent()
    with pytest.raises(BackendError) as caught:
        agent.chat(f"@@fault sse_error 2 503\none two three {tag}").text(timeout=20)
    assert caught.value.code == 503
    assert caught.value.partial_text == "Echo: one "


def test_a_stalled_stream_is_cut_by_the_idle_chunk_timeout(server: LocalServer, tag: str) -> None:
    with AgentRuntime(runtime_config(server, idle_chunk_timeout=0.3)) as runtime:
        agent = runtime.create_agent()
        with pytest.raises(StreamBroken, match="idle_chunk_timeout") as caught:
            agent.chat(f"@@fault hang_after 2\nsome words here {tag}").text(timeout=20)
        assert caught.value.partial_text == "Echo: some "
        (request,) = wait_finished(server, tag)
        assert request["outcome"] == "client_closed"


def test_slow_chunks_still_complete(rt: AgentRuntime, tag: str) -> None:
    agent = rt.create_agent()
    assert agent.chat(f"@@fault slow 20\nslow but sure {tag}").text(timeout=20) == (
        f"Echo: slow but sure {tag}"
    )


def test_many_tiny_chunks_all_arrive_in_order(rt: AgentRuntime, tag: str) -> None:
    agent = rt.create_agent()
    handle = agent.chat(f"@@tiny 2000\n{tag}")
    deltas = [e.text for e in handle if isinstance(e, TextDelta)]
    assert len(deltas) == 2000
    assert handle.text() == "x" * 2000


def test_truncated_stream_without_finish_reason_is_marked(rt: AgentRuntime, tag: str) -> None:
    agent = rt.create_agent()
    with pytest.raises(StreamBroken, match="truncated") as caught:
        agent.chat(f"@@finish none\ncut short {tag}").text(timeout=10)
    assert caught.value.partial_text == f"Echo: cut short {tag}"
    assert agent.history()[-1].status == "incomplete"


def test_per_minute_429_waits_for_retry_delay_then_succeeds(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    server.push_faults("429 minute 0.3s", match=tag)
    agent = rt.create_agent()
    handle = agent.chat(f"limited {tag}")
    assert handle.text(timeout=20) == f"Echo: limited {tag}"
    waits = [e for e in handle if isinstance(e, Waiting)]
    assert len(waits) == 1 and waits[0].seconds >= 0.25
    ledger = agent.ledger()
    assert [e.status for e in ledger] == ["rate-limited", "ok"]
    assert ledger[1].retry_wait >= 0.3
    state = rt.quota_state
    assert state is not None and state.total_hits >= 1 and not state.blocked
    first, second = requests_with(server, tag)
    assert second["received"] - first["received"] >= 0.3


def test_every_agent_on_the_credential_waits_after_a_429(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    server.push_faults("429 minute 0.5s", match=f"first {tag}")
    limited = rt.create_agent()
    sibling = rt.create_agent()
    handle = limited.chat(f"first {tag}")
    next(e for e in handle if isinstance(e, Waiting))
    waiting = sibling.chat(f"second {tag}")
    assert waiting.text(timeout=20) == f"Echo: second {tag}"
    assert sibling.ledger()[-1].retry_wait > 0
    assert any(isinstance(e, Waiting) for e in waiting)
    handle.text(timeout=20)


def test_per_day_quota_fails_at_once_with_its_scope(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = rt.create_agent()
    with pytest.raises(QuotaExceeded) as caught:
        agent.chat(f"@@fault 429 day\n{tag}").text(timeout=20)
    assert caught.value.scope == "day"
    assert caught.value.quota_id == "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
    assert "daily quota" in str(caught.value)
    assert len(requests_with(server, tag)) == 1


def test_limit_zero_quota_says_the_model_has_no_quota(rt: AgentRuntime, tag: str) -> None:
    agent = rt.create_agent()
    with pytest.raises(QuotaExceeded, match="limit 0") as caught:
        agent.chat(f"@@fault 429 zero\n{tag}").text(timeout=20)
    assert caught.value.scope == "zero"


def test_429_retries_are_bounded(server: LocalServer, tag: str) -> None:
    with AgentRuntime(runtime_config(server, quota_max_retries=2)) as runtime:
        agent = runtime.create_agent()
        with pytest.raises(QuotaExceeded, match="after 2 retries") as caught:
            agent.chat(f"@@fault 429 minute 0.05s\n{tag}").text(timeout=20)
        assert caught.value.scope == "minute"
        assert len(requests_with(server, tag)) == 3
        assert [e.status for e in agent.ledger()] == ["rate-limited"] * 3


def test_record_quota_hit_makes_the_next_call_wait(rt: AgentRuntime, tag: str) -> None:
    agent = rt.create_agent()
    agent.chat(f"warm up {tag}").text()
    waited_for = rt.record_quota_hit(0.3)
    assert waited_for >= 0.3
    assert rt.quota_state is not None and rt.quota_state.blocked
    assert rt.wait_for_quota(timeout=5) > 0
    assert not rt.quota_state.blocked
    assert rt.quota_state.fingerprint.startswith("cred-")
    assert rt.config.api_key not in repr(rt.quota_registry.states())
