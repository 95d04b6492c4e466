"""Agents on the Anthropic backend: the official `anthropic` SDK over HTTP to the local
server's Messages API, through the runtime's retry, quota and ledger wrappers."""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from agentrt_jupyter import (
    AgentRuntime,
    BackendError,
    InvalidConfig,
    QuotaExceeded,
    StreamBroken,
    TextDelta,
    ThoughtDelta,
    ToolCall,
    TurnCancelled,
    Waiting,
    blob,
)
from agentrt_jupyter.content import FunctionCallPart, TextPart
from agentrt_jupyter.conversation import ConversationMessage, Usage
from agentrt_jupyter.quota import fingerprint
from agentrt_jupyter.server.process import LocalServer
from agentrt_jupyter.server.wire.base import signature

from .conftest import every_agent_on, requests_with, runtime_config, use_provider, wait_finished
from .reliability_helpers import assert_valid_messages

anthropic = pytest.importorskip("anthropic")

from agentrt_jupyter.backends.anthropic import (  # noqa: E402 - needs the SDK
    DEFAULT_MAX_TOKENS,
    DEFAULT_THINKING_BUDGET,
    AnthropicBackend,
    MessageStream,
    billing_refusal,
    rate_limit_wait,
    translate_errors,
    wire_messages,
)

NAME = "claude-sonnet-4-5"
MODEL = f"anthropic:{NAME}"


def lookup(word: str) -> str:
    """Look a word up."""
    return f"a small {word}"


@pytest.fixture
def backend_only(server: LocalServer) -> Iterator[AgentRuntime]:
    """Every agent on `AnthropicBackend`, whatever its model (an `anthropic:` agent is
    refused earlier, by the runtime)."""
    with every_agent_on(
        server, lambda: AnthropicBackend(api_key=server.token, base_url=server.anthropic_base_url)
    ) as made:
        yield made


@pytest.fixture
def rt(server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[AgentRuntime]:
    """A runtime whose `anthropic:` agents talk to the local server's Messages API (the
    reliability suites' provider set-up: the SDK's environment points there)."""
    runtime = AgentRuntime(use_provider("anthropic", server, monkeypatch).config())
    yield runtime
    runtime.shutdown(10.0)


def test_a_turn_streams_text_with_the_agents_settings_and_its_usage_in_the_ledger(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = rt.create_agent(
        model=MODEL,
        system_instruction="Be brief.",
        temperature=0.5,
        top_k=20,
        stop_sequences=["END"],
    )
    handle = agent.chat(f"@@reply one two three\n{tag}")

    assert [e.text for e in handle if isinstance(e, TextDelta)] == ["one ", "two ", "three"]
    assert handle.text() == "one two three"
    (request,) = wait_finished(server, tag)
    assert (request["path"], request["outcome"], request["model"]) == (
        "/v1/messages",
        "complete",
        NAME,
    )
    body = request["body"]
    assert body["stream"] is True
    assert body["max_tokens"] == DEFAULT_MAX_TOKENS  # required; the agent set none
    assert (body["system"], body["temperature"], body["top_k"]) == ("Be brief.", 0.5, 20)
    assert body["stop_sequences"] == ["END"]
    assert "thinking" not in body and "tools" not in body
    (row,) = agent.ledger()
    assert (row.status, row.finish_reason, row.model) == ("ok", "STOP", NAME)
    # the server counts words, the system instruction's and the directive's included
    assert row.usage == Usage(prompt_tokens=7, candidates_tokens=3, total_tokens=10)
    assert handle.result().usage == row.usage


def test_a_tool_call_round_trip_sends_the_thinking_block_back_with_its_signature(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = rt.create_agent(model=MODEL, tools=[lookup], include_thoughts=True)
    handle = agent.chat(f'@@thought check the word\n@@call lookup {{"word": "cat"}}\n{tag}')

    assert handle.text(timeout=10) == 'Tool results: {"lookup":{"result":"a small cat"}}'
    # a thinking block arrives whole, with its signature (the engine thinks again after
    # the tool's answer: two blocks)
    thoughts = [e.text for e in handle if isinstance(e, ThoughtDelta)]
    assert thoughts == ["check the word", "check the word"]
    assert [(e.name, e.args) for e in handle if isinstance(e, ToolCall)] == [
        ("lookup", {"word": "cat"})
    ]
    first, second = wait_finished(server, tag, count=2)
    sent = first["body"]
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": DEFAULT_THINKING_BUDGET}
    assert sent["max_tokens"] == DEFAULT_MAX_TOKENS + DEFAULT_THINKING_BUDGET
    [declared] = sent["tools"]
    assert (declared["name"], declared["description"]) == ("lookup", "Look a word up.")
    assert declared["input_schema"]["properties"] == {"word": {"type": "string"}}
    messages = second["body"]["messages"]
    assert_valid_messages(messages)
    think, call = messages[1]["content"]
    assert think == {
        "type": "thinking",
        "thinking": "check the word",
        "signature": signature("check the word"),  # exactly as it streamed
    }
    assert (call["type"], call["name"], call["input"]) == ("tool_use", "lookup", {"word": "cat"})
    [result] = messages[2]["content"]
    assert result == {
        "type": "tool_result",
        "tool_use_id": call["id"],
        "content": '{"result": "a small cat"}',
    }
    calls, answer = agent.ledger()
    assert (calls.status, calls.usage.thoughts_tokens, calls.usage.candidates_tokens) == (
        "ok",
        3,
        0,
    )
    assert answer.status == "ok"


def test_thinking_streams_per_delta_before_its_block_ends(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = rt.create_agent(model=MODEL, include_thoughts=True)
    # The server sends the thinking deltas, then stalls before the block's signature.
    handle = agent.chat(f"@@thought first half\n@@thought second half\n@@fault hang_after 1\n{tag}")
    events = iter(handle)
    first, second = next(events), next(events)

    assert (first, second) == (ThoughtDelta("first half"), ThoughtDelta("second half"))
    (request,) = requests_with(server, tag)
    assert request["outcome"] is None  # still streaming: the block has not ended
    handle.cancel()
    with pytest.raises(TurnCancelled):
        handle.text(timeout=10)
    [cut] = [m for m in agent.history() if m.role == "model"]
    assert cut.thoughts == "first halfsecond half" and cut.status == "cancelled"


def test_a_thinking_block_streamed_in_deltas_goes_back_whole_with_its_signature(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = rt.create_agent(model=MODEL, tools=[lookup], include_thoughts=True)
    handle = agent.chat(f'@@thought one\n@@thought two\n@@call lookup {{"word": "cat"}}\n{tag}')

    assert handle.text(timeout=10) == 'Tool results: {"lookup":{"result":"a small cat"}}'
    thoughts = [e.text for e in handle if isinstance(e, ThoughtDelta)]
    assert thoughts == ["one", "two", "one", "two"]  # two blocks, each in two deltas
    _, second = wait_finished(server, tag, count=2)
    think, call = second["body"]["messages"][1]["content"]
    assert think == {"type": "thinking", "thinking": "onetwo", "signature": signature("onetwo")}
    assert call["type"] == "tool_use"
    [first_reply, _] = [m for m in agent.history() if m.role == "model"]
    [thought] = [p for p in first_reply.parts if isinstance(p, TextPart) and p.thought]
    assert thought.text == "onetwo" and thought.thought_signature is not None


def test_a_thinking_block_that_comes_whole_at_its_start_is_one_delta() -> None:
    stream = MessageStream()
    block = {"type": "thinking", "thinking": "all at once", "signature": ""}
    chunks = [
        stream.chunk(e)
        for e in (
            {"type": "content_block_start", "index": 0, "content_block": block},
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "signature_delta", "signature": "sig"},
            },
            {"type": "content_block_stop", "index": 0},
        )
    ]

    assert [c.parts if c else None for c in chunks] == [
        (TextPart("all at once", True),),
        None,
        (TextPart("", True, b"anthropic:sig"),),
    ]


def test_a_response_schema_is_sent_as_messages_structured_output(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    agent = rt.create_agent(model=MODEL, response_schema=schema)

    handle = agent.chat(f'@@reply {{"answer": "yes"}}\n{tag}')

    assert handle.text(timeout=10) == '{"answer": "yes"}'
    body = wait_finished(server, tag)[0]["body"]
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}


def test_parallel_tool_calls_are_each_assembled_from_their_json_fragments(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    seen: list[tuple[str, int]] = []

    def lookup(word: str, n: int = 1) -> str:
        """Look a word up."""
        seen.append((word, n))
        return word * n

    agent = rt.create_agent(model=MODEL, tools=[lookup])
    handle = agent.chat(
        f'@@call lookup {{"word": "cat", "n": 2}}\n@@call lookup {{"word": "dog"}}\n{tag}'
    )

    assert handle.text(timeout=10).startswith("Tool results:")
    assert seen == [("cat", 2), ("dog", 1)]
    model_message = agent.history()[1]
    ids = [p.id for p in model_message.parts if isinstance(p, FunctionCallPart)]
    assert len(set(ids)) == 2 and all(ids)
    assert_valid_messages(requests_with(server, tag)[-1]["body"]["messages"])


def test_cancel_mid_stream_closes_the_request_and_the_next_turn_goes_on(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = rt.create_agent(model=MODEL)
    handle = agent.chat(f"@@reply a b c\n@@fault hang_after 1\n{tag}")
    first = next(iter(handle))
    assert isinstance(first, TextDelta) and first.text == "a "

    handle.cancel()

    with pytest.raises(TurnCancelled) as caught:
        handle.text(timeout=10)
    assert caught.value.partial_text == "a "
    (request,) = wait_finished(server, tag)
    assert (request["outcome"], request["chunks_sent"]) == ("client_closed", 1)
    assert agent.ledger()[-1].status == "cancelled"
    assert agent.chat(f"next {tag}").text(timeout=10) == f"Echo: next {tag}"
    assert_valid_messages(requests_with(server, f"next {tag}")[-1]["body"]["messages"])


def test_a_429_with_retry_after_waits_then_succeeds_one_ledger_row_per_request(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    server.push_faults("429 minute 0.3s", match=tag)
    agent = rt.create_agent(model=MODEL)
    handle = agent.chat(f"limited {tag}")

    assert handle.text(timeout=20) == f"Echo: limited {tag}"
    waits = [e for e in handle if isinstance(e, Waiting)]
    assert len(waits) == 1 and waits[0].seconds >= 0.25
    first, second = wait_finished(server, tag, count=2)
    assert (first["status"], second["status"]) == (429, 200)
    assert second["received"] - first["received"] >= 0.3
    ledger = agent.ledger()
    assert [e.status for e in ledger] == ["rate-limited", "ok"]
    assert "rate_limit_error" in (ledger[0].error or "")
    assert ledger[1].retry_wait >= 0.3
    credential = fingerprint(server.token, server.anthropic_base_url)
    [state] = [s for s in rt.quota_registry.states() if s.fingerprint == credential]
    assert state.total_hits == 1 and not state.blocked


def test_a_529_overloaded_is_retried_like_a_503(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    server.push_faults("529", match=tag)
    agent = rt.create_agent(model=MODEL)

    assert agent.chat(f"busy {tag}").text(timeout=20) == f"Echo: busy {tag}"
    assert [r["status"] for r in wait_finished(server, tag, count=2)] == [529, 200]
    assert [e.status for e in agent.ledger()] == ["retried", "ok"]


@pytest.mark.parametrize(
    ("spec", "code", "kind"),
    [("429 day", 400, "invalid_request_error"), ("402", 402, "billing_error")],
)
def test_a_billing_refusal_fails_at_once_with_advice_and_is_not_retried(
    rt: AgentRuntime, server: LocalServer, tag: str, spec: str, code: int, kind: str
) -> None:
    agent = rt.create_agent(model=MODEL)

    with pytest.raises(QuotaExceeded) as caught:
        agent.chat(f"@@fault {spec}\n{tag}").text(timeout=20)

    assert (caught.value.scope, caught.value.quota_id) == ("billing", kind)
    assert "add credit or check the billing settings at the provider" in str(caught.value)
    assert [r["status"] for r in wait_finished(server, tag, count=1)] == [code]
    assert [e.status for e in agent.ledger()] == ["error"]


def test_only_a_400_or_403_about_credit_or_billing_is_a_billing_refusal() -> None:
    assert billing_refusal(400, "invalid_request_error", "Your credit balance is too low")
    assert billing_refusal(403, "permission_error", "Billing is not set up for this workspace")
    assert billing_refusal(402, "billing_error", "There is an issue with your payment")
    assert not billing_refusal(400, "invalid_request_error", "max_tokens: field required")
    assert not billing_refusal(403, "permission_error", "no access to this model")


def test_a_lasting_529_fails_with_its_code_after_the_retry_attempts(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = rt.create_agent(model=MODEL)

    with pytest.raises(BackendError) as caught:
        agent.chat(f"@@fault 529\n{tag}").text(timeout=30)

    assert (caught.value.code, caught.value.status) == (529, "overloaded_error")
    attempts = rt.config.http_retry_attempts
    assert len(wait_finished(server, tag, count=attempts)) == attempts
    assert len(agent.ledger()) == attempts


def test_an_error_event_mid_stream_is_a_typed_error_keeping_the_text_and_not_retried(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = rt.create_agent(model=MODEL)

    with pytest.raises(BackendError) as caught:
        agent.chat(f"@@fault sse_error 2 529\none two three {tag}").text(timeout=20)

    assert (caught.value.code, caught.value.status) == (529, "overloaded_error")
    assert caught.value.partial_text == "Echo: one "
    (request,) = wait_finished(server, tag)
    assert (request["status"], request["outcome"]) == (200, "error")
    assert [e.status for e in agent.ledger()] == ["error"]
    kept = agent.history()[-1]
    assert (kept.role, kept.text) == ("model", "Echo: one ")


def test_a_drop_mid_stream_is_stream_broken_keeping_the_text(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = rt.create_agent(model=MODEL)

    with pytest.raises(StreamBroken) as caught:
        agent.chat(f"@@fault drop_after 2\none two three {tag}").text(timeout=20)

    assert caught.value.partial_text == "Echo: one "
    assert len(wait_finished(server, tag)) == 1


def test_images_and_pdfs_are_sent_as_blocks_and_audio_is_refused_before_sending(
    backend_only: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = backend_only.create_agent(model=NAME)
    image, pdf = blob(b"\x89PNG\r\n\x1a\n", "image/png"), blob(b"%PDF-1.4", "application/pdf")

    text = agent.chat([f"look {tag}", image, pdf]).text(timeout=10)

    assert text == f"Echo: look {tag} [parts: image/png, application/pdf]"
    with pytest.raises(BackendError, match="anthropic provider does not take audio/wav") as caught:
        agent.chat([f"listen {tag}", blob(b"RIFF", "audio/wav")]).text(timeout=10)
    assert caught.value.status == "INVALID_ARGUMENT"
    assert not requests_with(server, f"listen {tag}")


def test_a_setting_messages_cannot_honour_names_setting_and_provider(
    backend_only: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = backend_only.create_agent(model=NAME, seed=7)

    with pytest.raises(BackendError, match="seed: the anthropic provider has no seed"):
        agent.chat(f"hi {tag}").text(timeout=10)
    assert not requests_with(server, tag)


def test_a_wrong_key_is_a_401_that_never_shows_the_key(server: LocalServer, tag: str) -> None:
    key = "sk-ant-wrong-key-0123456789"
    backend = AnthropicBackend(api_key=key, base_url=server.anthropic_base_url)
    with AgentRuntime(runtime_config(server), backend_factory=lambda e: backend) as runtime:
        agent = runtime.create_agent(model=NAME)  # the backend is given
        with pytest.raises(BackendError) as caught:
            agent.chat(f"hi {tag}").text(timeout=10)
        rows = agent.ledger()

    assert (caught.value.code, caught.value.status) == (401, "authentication_error")
    assert [r.status for r in rows] == ["error"]
    shown = [str(caught.value), repr(caught.value), repr(backend), *map(repr, rows)]
    assert not [s for s in shown if key in s]
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def test_a_cancel_while_waiting_for_headers_closes_the_request(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = rt.create_agent(model=MODEL)
    logged = len(server.requests())
    handle = agent.chat(f"@@fault hang_headers\n{tag}")
    # the log holds a request from its headers on, before its body is read: wait for
    # the count, not for the tag
    request = server.wait_for_count(logged + 1)[-1]

    handle.cancel()

    with pytest.raises(TurnCancelled):
        handle.text(timeout=10)
    finished = server.wait_for_request(request["id"])
    assert tag in json.dumps(finished["body"])
    assert finished["outcome"] == "client_closed"
    assert agent.ledger()[-1].status == "cancelled"


def test_usage_counts_cache_reads_and_writes_as_prompt_and_thinking_apart() -> None:
    stream = MessageStream()
    start_usage = {
        "input_tokens": 5,
        "output_tokens": 1,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 20,
    }
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": NAME,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    delta_usage = {"output_tokens": 7, "output_tokens_details": {"thinking_tokens": 3}}
    chunks = [
        stream.chunk(e)
        for e in (
            {"type": "message_start", "message": message},
            {"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": delta_usage},
            {"type": "message_stop"},
        )
    ]

    last = chunks[-1]
    assert last is not None and last.finish_reason == "MAX_TOKENS"
    assert last.usage == Usage(
        prompt_tokens=125,
        cached_tokens=100,
        candidates_tokens=4,
        thoughts_tokens=3,
        total_tokens=132,
    )


def test_counts_a_message_delta_leaves_out_or_nulls_stay_as_they_were() -> None:
    stream = MessageStream()
    start_usage = {"input_tokens": 5, "output_tokens": 1, "cache_read_input_tokens": 100}
    message = {"type": "message", "role": "assistant", "content": [], "usage": start_usage}
    delta_usage = {"output_tokens": 7, "input_tokens": None}
    chunks = [
        stream.chunk(e)
        for e in (
            {"type": "message_start", "message": message},
            {"type": "message_delta", "delta": {}, "usage": delta_usage},
            {"type": "message_stop"},
        )
    ]

    last = chunks[-1]
    assert last is not None and last.finish_reason is None
    assert last.usage == Usage(
        prompt_tokens=105, cached_tokens=100, candidates_tokens=7, total_tokens=112
    )


def test_an_event_missing_a_field_is_a_bad_response() -> None:
    stream = MessageStream()
    stream.answered = True
    with pytest.raises(BackendError) as caught, translate_errors(stream):
        stream.chunk({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta"}})

    assert caught.value.status == "BAD_RESPONSE"


def test_a_redacted_thinking_block_is_kept_whole_for_the_next_request() -> None:
    stream = MessageStream()
    start = {"type": "redacted_thinking", "data": "opaque-bytes"}
    [_, chunk] = [
        stream.chunk(e)
        for e in (
            {"type": "content_block_start", "index": 0, "content_block": start},
            {"type": "content_block_stop", "index": 0},
        )
    ]

    assert chunk is not None
    [part] = chunk.parts
    assert isinstance(part, TextPart) and part.thought and part.text == ""
    history = [ConversationMessage("user", (TextPart("hi"),), 1)]
    history.append(ConversationMessage("model", (part, TextPart("ok")), 1))
    assert wire_messages(history)[1]["content"] == [
        {"type": "redacted_thinking", "data": "opaque-bytes"},
        {"type": "text", "text": "ok"},
    ]


def test_a_429_says_how_long_to_wait_from_whichever_header_it_has() -> None:
    soon = datetime.now(UTC) + timedelta(seconds=30)
    limits = {
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": soon.isoformat(timespec="seconds"),
        "anthropic-ratelimit-tokens-remaining": "900",
        "anthropic-ratelimit-tokens-reset": (soon + timedelta(hours=1)).isoformat(),
    }

    assert rate_limit_wait({"retry-after-ms": "250", "retry-after": "9"}) == (0.25, None)
    assert rate_limit_wait({"retry-after": "2", **limits}) == (
        2.0,
        "anthropic-ratelimit-requests",
    )
    dated, _ = rate_limit_wait({"retry-after": format_datetime(soon, usegmt=True)})
    assert dated is not None and 25 < dated <= 30
    reset, quota_id = rate_limit_wait(limits)
    assert reset is not None and 25 < reset <= 30  # the exhausted limit's reset, not tokens'
    assert quota_id == "anthropic-ratelimit-requests"
    assert rate_limit_wait({"retry-after": "soon"}) == (None, None)


def test_without_the_sdk_the_backend_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "anthropic", None)
    monkeypatch.delitem(sys.modules, "agentrt_jupyter.backends.anthropic")

    with pytest.raises(InvalidConfig) as caught:
        importlib.import_module("agentrt_jupyter.backends.anthropic")

    assert str(caught.value) == (
        "model: the anthropic provider needs the [anthropic] extra: "
        "pip install 'agentrt-jupyter[anthropic]'"
    )


def test_a_backend_without_a_key_never_takes_the_environments(
    monkeypatch: pytest.MonkeyPatch, server: LocalServer
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-from-the-environment")
    monkeypatch.setenv("ANTHROPIC_AUTH_TOKEN", "token-from-the-environment")
    backend = AnthropicBackend(api_key=None, base_url=server.anthropic_base_url)
    client = backend._client
    assert client.api_key == "no-key"
    assert client.auth_token is None
    assert "from-the-environment" not in repr(client.auth_headers)
