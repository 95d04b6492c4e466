"""Agents on the OpenAI backend: the real `openai` SDK over HTTP to the local server's
Chat Completions route, through the runtime (retries, quota waits, ledger, cancel)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

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
)
from agentrt_jupyter.backends.openai import (
    OpenAIBackend,
    ToolCallAssembler,
    go_duration,
    read_chunk,
    retry_after,
)
from agentrt_jupyter.content import blob, image, pdf
from agentrt_jupyter.notebook.display import short_message
from agentrt_jupyter.server.process import LocalServer

from .conftest import (
    every_agent_on,
    requests_with,
    runtime_config,
    use_provider,
    wait_finished,
    wait_for_tagged,
)

openai = pytest.importorskip("openai")

NAME = "gpt-4.1-mini"
MODEL = f"openai:{NAME}"


@pytest.fixture
def runtime(server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[AgentRuntime]:
    """A runtime whose `openai:` agents talk Chat Completions to the local server (the
    reliability suites' provider set-up: the SDK's environment points there)."""
    made = AgentRuntime(use_provider("openai", server, monkeypatch).config())
    yield made
    made.shutdown(10.0)


@pytest.fixture
def backend_only(server: LocalServer) -> Iterator[AgentRuntime]:
    """Every agent on `OpenAIBackend`, whatever its model (an `openai:` agent is refused
    earlier, by the runtime)."""
    with every_agent_on(
        server, lambda: OpenAIBackend(api_key=server.token, base_url=server.openai_base_url)
    ) as made:
        yield made


def bodies(server: LocalServer, tag: str) -> list[dict[str, Any]]:
    return [r["body"] for r in requests_with(server, tag)]


def test_text_streams_into_chat_in_several_deltas(
    runtime: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = runtime.create_agent(model=MODEL, system_instruction="be brief")
    handle = agent.chat(f"hello there {tag}")

    deltas = [e.text for e in handle if isinstance(e, TextDelta)]

    assert handle.text() == f"Echo: hello there {tag}"
    assert len(deltas) == 4 and "".join(deltas) == handle.text()
    (record,) = requests_with(server, tag)
    assert record["path"] == "/v1/chat/completions"
    body = record["body"]
    assert body["model"] == NAME
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": f"hello there {tag}"},
    ]


def test_usage_of_the_stream_reaches_the_ledger_and_the_result(
    runtime: AgentRuntime, tag: str
) -> None:
    agent = runtime.create_agent(model=MODEL)
    result = agent.chat(f"@@reply one two three\n{tag}").result(timeout=10)

    (entry,) = agent.ledger()
    assert (entry.status, entry.finish_reason, entry.model) == ("ok", "STOP", NAME)
    # Prompt tokens are the prompt's words, the directive and the tag included.
    assert (entry.usage.prompt_tokens, entry.usage.candidates_tokens) == (5, 3)
    assert entry.usage.total_tokens == 8
    assert result.usage.total_tokens == 8


def test_reasoning_streams_as_thoughts_and_counts_as_thought_tokens(
    runtime: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = runtime.create_agent(model=MODEL, thinking_budget=1024, include_thoughts=True)
    handle = agent.chat(f"@@thought weigh it up\n@@reply done\n{tag}")

    thoughts = [e.text for e in handle if isinstance(e, ThoughtDelta)]
    result = handle.result(timeout=10)

    assert (result.text, result.thoughts, thoughts) == ("done", "weigh it up", ["weigh it up"])
    usage = agent.ledger()[-1].usage
    assert (usage.thoughts_tokens, usage.candidates_tokens) == (3, 1)
    assert bodies(server, tag)[0]["reasoning_effort"] == "low"


def test_a_server_that_sends_no_usage_gives_chunks_without_usage() -> None:
    from openai.types.chat import ChatCompletionChunk

    chunk = ChatCompletionChunk.model_validate(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": NAME,
            "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}],
        }
    )

    read = read_chunk(chunk, ToolCallAssembler())

    assert read is not None
    assert (read.usage, read.finish_reason, [p.text for p in read.parts]) == (None, "STOP", ["hi"])


def test_a_tool_call_round_trip_runs_the_python_function(
    runtime: AgentRuntime, server: LocalServer, tag: str
) -> None:
    def lookup(word: str) -> str:
        """Look a word up."""
        return f"{word} is a pet"

    agent = runtime.create_agent(model=MODEL, tools=[lookup])
    handle = agent.chat(f'@@call lookup {{"word": "cat"}}\n{tag}')

    calls = [e for e in handle if isinstance(e, ToolCall)]

    assert handle.text() == 'Tool results: {"lookup":{"result":"cat is a pet"}}'
    assert [(c.name, c.args) for c in calls] == [("lookup", {"word": "cat"})]
    first, second = bodies(server, tag)
    [declared] = first["tools"]
    assert declared["function"]["name"] == "lookup"
    assert declared["function"]["parameters"]["properties"] == {"word": {"type": "string"}}
    assistant, tool = second["messages"][1:]
    [call] = assistant["tool_calls"]
    assert json.loads(call["function"]["arguments"]) == {"word": "cat"}
    assert tool == {
        "role": "tool",
        "tool_call_id": call["id"],
        "content": '{"result": "cat is a pet"}',
    }
    assert [e.status for e in agent.ledger()] == ["ok", "ok"]


def test_parallel_tool_calls_each_run_and_answer_their_own_id(
    runtime: AgentRuntime, server: LocalServer, tag: str
) -> None:
    def lookup(word: str) -> str:
        """Look a word up."""
        return f"{word}: found"

    def define(word: str) -> str:
        """Define a word."""
        return f"{word}: defined"

    agent = runtime.create_agent(model=MODEL, tools=[lookup, define])
    handle = agent.chat(f'@@call lookup {{"word": "cat"}}\n@@call define {{"word": "dog"}}\n{tag}')

    assert handle.text(timeout=10) == (
        'Tool results: {"lookup":{"result":"cat: found"},"define":{"result":"dog: defined"}}'
    )
    second = bodies(server, tag)[1]["messages"]
    ids = [c["id"] for c in second[1]["tool_calls"]]
    assert len(set(ids)) == 2
    assert [(m["role"], m["tool_call_id"]) for m in second[2:]] == [("tool", i) for i in ids]


def test_response_schema_is_sent_as_json_schema_structured_output(
    runtime: AgentRuntime, server: LocalServer, tag: str
) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    agent = runtime.create_agent(model=MODEL, response_schema=schema)

    assert agent.chat(f'@@reply {{"n": 3}}\n{tag}').text(timeout=10) == '{"n": 3}'
    assert bodies(server, tag)[0]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "reply", "schema": schema, "strict": False},
    }


def test_images_and_pdfs_reach_the_model_as_content_parts(
    runtime: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = runtime.create_agent(model=MODEL)
    parts = [f"look {tag}", image(b"\x89PNG\r\n\x1a\n", "image/png"), pdf(b"%PDF-1.4")]

    assert (
        agent.chat(parts).text(timeout=10)
        == f"Echo: look {tag} [parts: image/png, application/pdf]"
    )
    content = bodies(server, tag)[0]["messages"][0]["content"]
    assert [c["type"] for c in content] == ["text", "image_url", "file"]


def test_a_part_the_provider_cannot_take_fails_before_anything_is_sent(
    backend_only: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = backend_only.create_agent(model=NAME)
    with pytest.raises(BackendError, match=r"openai provider .* video/mp4") as caught:
        agent.chat([f"watch {tag}", blob(b"\0\0\0\x18ftyp", "video/mp4")]).text(timeout=10)

    assert caught.value.status == "INVALID_ARGUMENT"
    assert requests_with(server, tag) == []


def test_top_k_is_refused_naming_the_setting_and_the_provider(
    backend_only: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = backend_only.create_agent(model=NAME, top_k=5)
    with pytest.raises(BackendError, match="top_k: the openai provider"):
        agent.chat(f"hi {tag}").text(timeout=10)

    assert requests_with(server, tag) == []


def test_the_second_turn_sends_the_first_turn_back(
    runtime: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = runtime.create_agent(model=MODEL)
    agent.chat(f"first {tag}").text(timeout=10)
    agent.chat(f"second {tag}").text(timeout=10)

    assert bodies(server, tag)[1]["messages"] == [
        {"role": "user", "content": f"first {tag}"},
        {"role": "assistant", "content": f"Echo: first {tag}"},
        {"role": "user", "content": f"second {tag}"},
    ]


def test_cancel_mid_stream_closes_the_request(
    runtime: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = runtime.create_agent(model=MODEL)
    handle = agent.chat(f"@@delay 50\none two three four five six seven eight {tag}")
    first = next(iter(handle))
    assert isinstance(first, TextDelta)

    handle.cancel()

    with pytest.raises(TurnCancelled) as caught:
        handle.text(timeout=10)
    assert caught.value.partial_text.startswith("Echo: ")
    (request,) = wait_finished(server, tag)
    assert request["outcome"] == "client_closed"
    assert agent.ledger()[-1].status == "cancelled"
    assert agent.history()[-1].status == "cancelled"


def test_cancel_before_the_headers_closes_the_request(
    runtime: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = runtime.create_agent(model=MODEL)
    handle = agent.chat(f"@@fault hang_headers\nwaiting {tag}")
    request = wait_for_tagged(server, tag)

    handle.cancel()

    with pytest.raises(TurnCancelled):
        handle.text(timeout=10)
    assert server.wait_for_request(request["id"])["outcome"] == "client_closed"


def test_a_429_with_retry_after_waits_then_succeeds_one_ledger_row_per_request(
    runtime: AgentRuntime, server: LocalServer, tag: str
) -> None:
    server.push_faults("429 minute 0.3s", match=tag)
    agent = runtime.create_agent(model=MODEL)
    handle = agent.chat(f"limited {tag}")

    assert handle.text(timeout=20) == f"Echo: limited {tag}"
    waits = [e for e in handle if isinstance(e, Waiting)]
    assert len(waits) == 1 and waits[0].seconds >= 0.25
    ledger = agent.ledger()
    assert [e.status for e in ledger] == ["rate-limited", "ok"]
    assert ledger[1].retry_wait >= 0.3
    first, second = requests_with(server, tag)
    assert (first["status"], second["status"]) == (429, 200)
    assert second["received"] - first["received"] >= 0.3


def test_insufficient_quota_is_a_billing_refusal_that_fails_at_once_with_advice(
    runtime: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = runtime.create_agent(model=MODEL)
    with pytest.raises(QuotaExceeded) as caught:
        agent.chat(f"@@fault 429 day\n{tag}").text(timeout=20)

    assert (caught.value.scope, caught.value.quota_id) == ("billing", "insufficient_quota")
    assert "add credit or check the billing settings at the provider" in str(caught.value)
    assert "You exceeded your current quota" in str(caught.value)
    assert short_message(caught.value) == (
        "the provider refused for billing (insufficient_quota): add credit or check the "
        "billing settings at the provider"
    )
    assert len(requests_with(server, tag)) == 1
    assert [e.status for e in agent.ledger()] == ["error"]


def test_a_503_is_retried_then_succeeds(
    runtime: AgentRuntime, server: LocalServer, tag: str
) -> None:
    server.push_faults("503", match=tag)
    agent = runtime.create_agent(model=MODEL)

    assert agent.chat(f"flaky {tag}").text(timeout=20) == f"Echo: flaky {tag}"
    assert [r["status"] for r in requests_with(server, tag)] == [503, 200]
    assert [e.status for e in agent.ledger()] == ["retried", "ok"]


def test_a_persistent_500_is_a_backend_error_with_the_code_after_every_attempt(
    runtime: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = runtime.create_agent(model=MODEL)
    with pytest.raises(BackendError) as caught:
        agent.chat(f"@@fault 500\n{tag}").text(timeout=30)

    assert (caught.value.code, caught.value.status) == (500, "server_error")
    attempts = runtime.config.http_retry_attempts
    assert len(requests_with(server, tag)) == len(agent.ledger()) == attempts


def test_a_drop_before_the_headers_is_retried_as_a_failed_connection(
    runtime: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = runtime.create_agent(model=MODEL)
    with pytest.raises(BackendError, match="connection failed before a reply") as caught:
        agent.chat(f"@@fault drop_headers\n{tag}").text(timeout=30)

    assert caught.value.status == "UNAVAILABLE"
    assert len(requests_with(server, tag)) == runtime.config.http_retry_attempts


def test_a_drop_mid_stream_is_stream_broken_keeping_the_partial_text(
    runtime: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = runtime.create_agent(model=MODEL)
    with pytest.raises(StreamBroken) as caught:
        agent.chat(f"@@fault drop_after 3\nalpha beta gamma delta {tag}").text(timeout=20)

    assert caught.value.partial_text == "Echo: alpha beta "
    assert len(requests_with(server, tag)) == 1
    model = agent.history()[-1]
    assert (model.role, model.status, model.text) == ("model", "incomplete", "Echo: alpha beta ")


def test_an_error_event_after_text_is_not_retried(
    runtime: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = runtime.create_agent(model=MODEL)
    with pytest.raises(BackendError, match="error in the stream") as caught:
        agent.chat(f"@@fault sse_error 2 503\none two three {tag}").text(timeout=20)

    assert caught.value.partial_text == "Echo: one "
    assert len(requests_with(server, tag)) == 1
    assert [e.status for e in agent.ledger()] == ["error"]


def test_a_stream_of_garbage_is_a_bad_response(
    runtime: AgentRuntime, server: LocalServer, tag: str
) -> None:
    agent = runtime.create_agent(model=MODEL)
    with pytest.raises(BackendError) as caught:
        agent.chat(f"@@fault sse_garbage 1\none two {tag}").text(timeout=20)

    assert caught.value.status == "BAD_RESPONSE"
    assert caught.value.partial_text == "Echo: "
    assert len(requests_with(server, tag)) == 1


def test_a_wrong_key_is_refused_and_never_shown(server: LocalServer, tag: str) -> None:
    secret = "sk-wrong-key-0123456789"
    backend = OpenAIBackend(api_key=secret, base_url=server.openai_base_url)
    with AgentRuntime(runtime_config(server), backend_factory=lambda e: backend) as runtime:
        agent = runtime.create_agent(model=NAME)  # the backend is given
        with pytest.raises(BackendError) as caught:
            agent.chat(f"hi {tag}").text(timeout=10)

        assert caught.value.code == 401
        ledger = agent.ledger()
    shown = [str(caught.value), repr(caught.value), repr(backend), repr(ledger)]
    assert not any(secret in text for text in shown)
    assert backend.credential.startswith("cred-") and secret not in backend.credential


def test_a_missing_sdk_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openai", None)

    with pytest.raises(InvalidConfig) as caught:
        OpenAIBackend(api_key="k", base_url=None)

    assert (
        "the openai provider needs the [openai] extra: pip install 'agentrt-jupyter[openai]'"
        in (str(caught.value))
    )


def test_the_openai_provider_without_a_key_says_where_to_put_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)

    with pytest.raises(InvalidConfig, match="OPENAI_API_KEY") as caught:
        OpenAIBackend(api_key=None, base_url=None)

    assert caught.value.field == "api_key"


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after": "2"}, 2.0),
        (
            {
                "x-ratelimit-reset-requests": "200ms",
                "x-ratelimit-reset-tokens": "6m0s",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-remaining-tokens": "900",
            },
            0.2,
        ),
        ({"x-ratelimit-reset-tokens": "1h2m3.5s"}, 3723.5),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_reads_openai_rate_limit_headers(
    headers: dict[str, str], seconds: float | None
) -> None:
    assert retry_after(headers) == seconds


def test_go_durations_that_are_not_durations_are_none() -> None:
    assert [go_duration(v) for v in ("1s", "1.5s", "20ms", "bogus", "5", "")] == [
        1.0,
        1.5,
        0.02,
        None,
        None,
        None,
    ]
