"""The local server's Anthropic Messages API, driven by the official `anthropic` SDK."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agentrt_jupyter.server.batches import DEFAULT_DELAY
from agentrt_jupyter.server.process import LocalServer

anthropic = pytest.importorskip("anthropic")

MODEL = "claude-sonnet-4-5"
TOOL = {
    "name": "lookup",
    "description": "Look a word up.",
    "input_schema": {"type": "object", "properties": {"word": {"type": "string"}}},
}


@pytest.fixture
def batch_delay(server: LocalServer) -> Iterator[Callable[[float], None]]:
    """Set how long new batches take; the server's default comes back after the test."""
    yield server.set_batch_delay
    server.set_batch_delay(DEFAULT_DELAY)


@pytest.fixture
def client(server: LocalServer) -> Iterator[Any]:
    server.reset()
    with anthropic.Anthropic(
        api_key=server.token, base_url=server.anthropic_base_url, max_retries=0
    ) as sdk:
        yield sdk


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def stream_events(
    client: Any, prompt: str, max_tokens: int = 100, **extra: Any
) -> tuple[list[Any], Any]:
    """The raw events of a streamed message and the message the SDK assembled."""
    with client.messages.stream(
        model=MODEL, max_tokens=max_tokens, messages=user(prompt), **extra
    ) as stream:
        events = list(stream)
        return events, stream.get_final_message()


def stream_until_error(client: Any, prompt: str) -> tuple[str, Exception]:
    """The text streamed before the SDK raised, and what it raised."""
    seen: list[str] = []
    try:
        with client.messages.stream(model=MODEL, max_tokens=100, messages=user(prompt)) as stream:
            seen.extend(stream.text_stream)
    except anthropic.APIError as exc:
        return "".join(seen), exc
    raise AssertionError("the stream ended without an error")


def test_stream_sends_the_message_events_in_order_with_usage(
    client: Any, server: LocalServer
) -> None:
    events, message = stream_events(client, "@@reply one two three")

    kinds = [e.type for e in events if e.type != "text"]
    assert kinds == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0].message.usage.input_tokens == 4  # words, the directive included
    assert message.content[0].text == "one two three"
    assert (message.stop_reason, message.usage.output_tokens) == ("end_turn", 3)
    [record] = server.requests()
    assert (record["kind"], record["outcome"], record["path"], record["chunks_sent"]) == (
        "stream",
        "complete",
        "/v1/messages",
        3,
    )


def test_non_stream_message_has_content_stop_reason_usage_and_request_id(
    client: Any, server: LocalServer
) -> None:
    message = client.messages.create(
        model=MODEL, max_tokens=100, system="be brief", messages=user("hi there")
    )

    assert [b.text for b in message.content] == ["Echo: hi there"]
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (4, 3)
    [record] = server.requests()
    assert message._request_id == f"req_agentrt_{record['id']}"


def test_max_tokens_cuts_the_reply(client: Any) -> None:
    message = client.messages.create(model=MODEL, max_tokens=2, messages=user("@@reply a b c d"))

    assert (message.content[0].text, message.stop_reason) == ("a b", "max_tokens")


def test_missing_max_tokens_is_a_bad_request_in_anthropic_shape(
    client: Any, server: LocalServer
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.post("/v1/messages", body={"model": MODEL, "messages": user("hi")}, cast_to=object)

    assert caught.value.body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in caught.value.body["error"]["message"]
    assert [r["outcome"] for r in server.requests()] == ["error"]


def test_thinking_streams_with_a_signature_and_goes_back_in_the_tool_loop(
    client: Any,
) -> None:
    prompt = '@@thought check the word\n@@call lookup {"word": "cat"}'
    thinking = {"type": "enabled", "budget_tokens": 1024}
    events, message = stream_events(client, prompt, tools=[TOOL], thinking=thinking)

    deltas = [e.delta.type for e in events if e.type == "content_block_delta"]
    assert deltas[:2] == ["thinking_delta", "signature_delta"]
    assert "input_json_delta" in deltas
    think, call = message.content
    assert (think.type, think.thinking) == ("thinking", "check the word")
    assert think.signature
    assert (call.type, call.name, call.input) == ("tool_use", "lookup", {"word": "cat"})
    assert message.stop_reason == "tool_use"
    assert message.usage.output_tokens == 3  # the thought's words
    assert message.usage.output_tokens_details.thinking_tokens == 3

    follow_up = [
        *user(prompt),
        {"role": "assistant", "content": [b.model_dump() for b in message.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "a pet"}],
        },
    ]
    reply = client.messages.create(
        model=MODEL, max_tokens=100, messages=follow_up, tools=[TOOL], thinking=thinking
    )
    texts = [b.text for b in reply.content if b.type == "text"]
    assert texts == ['Tool results: {"lookup":{"result":"a pet"}}']


def test_parallel_tool_calls_assemble_from_input_json_deltas(client: Any) -> None:
    events, message = stream_events(
        client, '@@call lookup {"word": "cat", "n": 2}\n@@call lookup {"word": "dog"}', tools=[TOOL]
    )

    fragments = [e for e in events if e.type == "content_block_delta"]
    assert len(fragments) > 2  # each input arrived in pieces
    assert [(b.name, b.input) for b in message.content] == [
        ("lookup", {"word": "cat", "n": 2}),
        ("lookup", {"word": "dog"}),
    ]
    assert len({b.id for b in message.content}) == 2


def test_models_lists_and_retrieves(client: Any) -> None:
    assert MODEL in [m.id for m in client.models.list()]
    assert client.models.retrieve("claude-x").id == "claude-x"


def test_wrong_key_is_an_authentication_error(server: LocalServer) -> None:
    server.reset()
    bad = anthropic.Anthropic(api_key="wrong", base_url=server.anthropic_base_url, max_retries=0)
    with bad, pytest.raises(anthropic.AuthenticationError) as caught:
        bad.messages.create(model=MODEL, max_tokens=10, messages=user("x"))

    assert caught.value.body["error"]["type"] == "authentication_error"
    [record] = server.requests()
    assert (record["outcome"], record["status"], record["api_key_ok"]) == ("rejected", 401, False)


def test_rate_limit_is_a_rate_limit_error_with_retry_after(
    client: Any, server: LocalServer
) -> None:
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(model=MODEL, max_tokens=10, messages=user("@@fault 429 minute 2s"))

    assert caught.value.body["error"]["type"] == "rate_limit_error"
    headers = caught.value.response.headers
    assert headers["retry-after"] == "2"
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    [record] = server.requests()
    assert (record["outcome"], record["status"], record["fault"]) == ("error", 429, "429 minute 2s")


def test_queued_529_is_an_overloaded_error(client: Any, server: LocalServer) -> None:
    server.push_faults("529")

    with pytest.raises(anthropic.OverloadedError) as caught:
        stream_events(client, "hi")

    assert caught.value.body["error"]["type"] == "overloaded_error"
    assert [(r["outcome"], r["status"], r["fault"]) for r in server.requests()] == [
        ("error", 529, "529")
    ]


def test_500_is_an_internal_server_error(client: Any) -> None:
    with pytest.raises(anthropic.InternalServerError) as caught:
        client.messages.create(model=MODEL, max_tokens=10, messages=user("@@fault 500"))

    assert caught.value.body["error"]["type"] == "api_error"


def test_drop_before_headers_is_a_connection_error(client: Any, server: LocalServer) -> None:
    with pytest.raises(anthropic.APIConnectionError):
        client.messages.create(model=MODEL, max_tokens=10, messages=user("@@fault drop_headers"))

    assert [r["outcome"] for r in server.requests()] == ["dropped"]


def test_drop_mid_stream_is_a_connection_error_after_the_first_chunks(
    client: Any, server: LocalServer
) -> None:
    text, error = stream_until_error(client, "@@reply a b c d\n@@fault drop_after 2")

    assert text == "a b "
    assert isinstance(error, anthropic.APIConnectionError)
    [record] = server.requests()
    assert (record["outcome"], record["chunks_sent"]) == ("dropped", 2)


def test_mid_stream_error_event_raises_after_the_text(client: Any, server: LocalServer) -> None:
    text, error = stream_until_error(client, "@@reply a b c\n@@fault sse_error 1 529")

    assert text == "a "
    assert isinstance(error, anthropic.APIStatusError)
    assert error.body["error"]["type"] == "overloaded_error"  # type: ignore[attr-defined]
    [record] = server.requests()
    assert (record["outcome"], record["status"]) == ("error", 200)


def test_garbage_sse_line_fails_to_parse(client: Any) -> None:
    with pytest.raises(json.JSONDecodeError):
        stream_events(client, "@@fault sse_garbage 1")


def test_async_client_streams_text(server: LocalServer) -> None:
    server.reset()

    async def main() -> str:
        sdk = anthropic.AsyncAnthropic(
            api_key=server.token, base_url=server.anthropic_base_url, max_retries=0
        )
        prompt = user("@@chunks 4\nabcdefgh")
        async with sdk, sdk.messages.stream(model=MODEL, max_tokens=100, messages=prompt) as stream:
            return "".join([text async for text in stream.text_stream])

    assert asyncio.run(main()) == "Echo: abcdefgh"


def test_closing_a_hung_stream_is_logged_as_client_closed(client: Any, server: LocalServer) -> None:
    prompt = user("@@reply a b c\n@@fault hang_after 1")
    with client.messages.stream(model=MODEL, max_tokens=100, messages=prompt) as stream:
        assert next(iter(stream.text_stream)) == "a "
        [running] = server.requests()
        assert running["outcome"] is None

    record = server.wait_for_request(running["id"])
    assert (record["outcome"], record["chunks_sent"]) == ("client_closed", 1)


def test_finish_none_leaves_the_stop_reason_empty(client: Any) -> None:
    _, message = stream_events(client, "@@reply done\n@@finish none")

    assert (message.content[0].text, message.stop_reason) == ("done", None)


def test_truncated_json_fault_cuts_the_first_event(client: Any) -> None:
    with pytest.raises(json.JSONDecodeError):
        stream_events(client, "@@fault truncated_json")


def test_images_and_pdfs_reach_the_engine_as_parts(client: Any) -> None:
    content = [
        {"type": "text", "text": "look"},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        },
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
        },
    ]
    message = client.messages.create(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": content}]
    )

    assert message.content[0].text == "Echo: look [parts: image/png, application/pdf]"


@pytest.fixture(scope="module")
def local_server() -> Iterator[LocalServer]:
    pytest.importorskip("llama_cpp")
    with LocalServer.start("local") as running:
        yield running


def test_embedded_model_answers_messages_with_real_usage(local_server: LocalServer) -> None:
    sdk = anthropic.Anthropic(
        api_key=local_server.token, base_url=local_server.anthropic_base_url, max_retries=0
    )
    with sdk:
        _, message = stream_events(sdk, "Say hello.", max_tokens=8)

    assert message.content[0].text.strip()
    assert message.usage.input_tokens > 3
    assert 0 < message.usage.output_tokens <= 8


def wait_ended(client: Any, batch_id: str, timeout: float = 10.0) -> Any:
    """Poll the batch as a client does until it has ended."""
    deadline = time.monotonic() + timeout
    while (batch := client.messages.batches.retrieve(batch_id)).processing_status != "ended":
        assert time.monotonic() < deadline, f"batch {batch_id} still {batch.processing_status}"
        time.sleep(0.02)
    return batch


def test_message_batch_answers_every_request_in_order(
    client: Any, server: LocalServer, batch_delay: Callable[[float], None]
) -> None:
    batch_delay(0.1)
    requests = [
        {"custom_id": "a", "params": {"model": MODEL, "max_tokens": 50, "messages": user("one")}},
        {
            "custom_id": "b",
            "params": {"model": MODEL, "max_tokens": 50, "messages": user("@@fault 500")},
        },
        {"custom_id": "c", "params": {"model": MODEL, "max_tokens": 50, "messages": user("two")}},
    ]

    created = client.messages.batches.create(requests=requests)
    assert created.processing_status == "in_progress"
    ended = wait_ended(client, created.id)
    results = list(client.messages.batches.results(created.id))

    counts = ended.request_counts
    assert (counts.succeeded, counts.errored, counts.processing) == (2, 1, 0)
    assert [r.custom_id for r in results] == ["a", "b", "c"]
    assert results[0].result.message.content[0].text == "Echo: one"
    assert results[1].result.type == "errored"
    assert results[1].result.error.error.type == "api_error"
    assert created.id in [b.id for b in client.messages.batches.list()]
    client.messages.batches.delete(created.id)
    kinds = [r["kind"] for r in server.requests()]
    assert kinds[0] == "batch_create"
    assert kinds[-2:] == ["batch_list", "batch_delete"]


def test_cancelled_message_batch_ends_with_canceled_results(
    client: Any, batch_delay: Callable[[float], None]
) -> None:
    batch_delay(5.0)
    params = {"model": MODEL, "max_tokens": 50, "messages": user("@@delay 200\nslow")}
    requests = [{"custom_id": str(k), "params": params} for k in range(5)]

    created = client.messages.batches.create(requests=requests)
    canceling = client.messages.batches.cancel(created.id)
    ended = wait_ended(client, created.id)

    assert canceling.processing_status in ("canceling", "ended")
    assert ended.request_counts.canceled >= 3
    assert ended.cancel_initiated_at is not None
