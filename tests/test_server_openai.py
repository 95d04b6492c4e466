"""The local server's OpenAI Chat Completions API, driven by the official `openai` SDK."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agentrt_jupyter.server.batches import DEFAULT_DELAY
from agentrt_jupyter.server.process import LocalServer

openai = pytest.importorskip("openai")

MODEL = "gpt-4.1-mini"
TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look a word up.",
        "parameters": {"type": "object", "properties": {"word": {"type": "string"}}},
    },
}


@pytest.fixture
def client(server: LocalServer) -> Iterator[Any]:
    server.reset()
    with openai.OpenAI(api_key=server.token, base_url=server.openai_base_url, max_retries=0) as sdk:
        yield sdk


def stream_chunks(client: Any, prompt: str, **extra: Any) -> list[Any]:
    messages = [{"role": "user", "content": prompt}]
    with client.chat.completions.create(
        model=MODEL, messages=messages, stream=True, **extra
    ) as stream:
        return list(stream)


def stream_until_error(client: Any, prompt: str) -> tuple[str, Exception]:
    """The text streamed before the SDK raised, and what it raised."""
    seen: list[str] = []
    messages = [{"role": "user", "content": prompt}]
    try:
        with client.chat.completions.create(model=MODEL, messages=messages, stream=True) as stream:
            seen.extend(c.choices[0].delta.content or "" for c in stream if c.choices)
    except openai.APIError as exc:
        return "".join(seen), exc
    raise AssertionError("the stream ended without an error")


def text_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_stream_delivers_the_scripted_reply_in_chunks_with_usage_last(
    client: Any, server: LocalServer
) -> None:
    chunks = stream_chunks(client, "@@reply one two three", stream_options={"include_usage": True})

    assert text_of(chunks) == "one two three"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    last = chunks[-1]
    assert last.choices == []
    # Prompt tokens are words, the directive included.
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (4, 3)
    assert last.usage.total_tokens == 7
    [record] = server.requests()
    assert (record["kind"], record["outcome"], record["path"]) == (
        "stream",
        "complete",
        "/v1/chat/completions",
    )
    assert record["chunks_sent"] == 3


def test_stream_without_include_usage_sends_no_usage(client: Any) -> None:
    chunks = stream_chunks(client, "@@reply hello")

    assert text_of(chunks) == "hello"
    assert all(c.usage is None for c in chunks)


def test_non_stream_reply_has_message_finish_and_usage(client: Any) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi there"},
        ],
    )

    assert reply.choices[0].message.content == "Echo: hi there"
    assert reply.choices[0].finish_reason == "stop"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (4, 3)


def test_max_tokens_cuts_the_reply_with_finish_length(client: Any) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "@@reply a b c d e"}],
        max_completion_tokens=2,
    )

    assert (reply.choices[0].message.content, reply.choices[0].finish_reason) == (
        "a b",
        "length",
    )


def test_streamed_tool_call_arguments_assemble_into_json(client: Any) -> None:
    chunks = stream_chunks(
        client,
        '@@call lookup {"word": "cat", "lang": "en"}\n@@call lookup {"word": "dog"}',
        tools=[TOOL],
    )

    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += delta.id or ""
            call["name"] += delta.function.name or ""
            call["arguments"] += delta.function.arguments or ""
    fragments = sum(1 for c in chunks if c.choices and c.choices[0].delta.tool_calls is not None)

    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        ("lookup", {"word": "cat", "lang": "en"}),
        ("lookup", {"word": "dog"}),
    ]
    assert fragments > len(calls)  # the arguments arrived in pieces
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_parallel_tool_results_go_back_as_tool_messages(client: Any) -> None:
    define = {"type": "function", "function": {"name": "define", "parameters": {}}}
    prompt = '@@call lookup {"word": "cat"}\n@@call define {"word": "cat"}'
    first = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], tools=[TOOL, define]
    )
    calls = first.choices[0].message.tool_calls
    messages = [
        {"role": "user", "content": prompt},
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": calls[0].id, "content": '{"meaning": "a pet"}'},
        {"role": "tool", "tool_call_id": calls[1].id, "content": "a small feline"},
    ]

    second = client.chat.completions.create(model=MODEL, messages=messages, tools=[TOOL, define])

    assert second.choices[0].message.content == (
        'Tool results: {"lookup":{"meaning":"a pet"},"define":{"result":"a small feline"}}'
    )
    assert second.choices[0].finish_reason == "stop"


def test_thoughts_stream_as_reasoning_content_and_count_as_reasoning_tokens(
    client: Any,
) -> None:
    chunks = stream_chunks(
        client,
        "@@thought weigh it up\n@@reply done",
        reasoning_effort="low",
        stream_options={"include_usage": True},
    )

    reasoning = "".join(
        getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices
    )
    assert (reasoning, text_of(chunks)) == ("weigh it up", "done")
    usage = chunks[-1].usage
    assert usage.completion_tokens_details.reasoning_tokens == 3
    assert usage.completion_tokens == 4


def test_models_lists_and_retrieves(client: Any) -> None:
    assert MODEL in [m.id for m in client.models.list()]
    assert client.models.retrieve("gpt-x").id == "gpt-x"


def test_wrong_key_is_an_authentication_error(server: LocalServer) -> None:
    server.reset()
    bad = openai.OpenAI(api_key="wrong", base_url=server.openai_base_url, max_retries=0)
    with bad, pytest.raises(openai.AuthenticationError) as caught:
        bad.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])

    assert caught.value.code == "invalid_api_key"
    [record] = server.requests()
    assert (record["outcome"], record["status"], record["api_key_ok"]) == ("rejected", 401, False)


def test_rate_limit_carries_openai_retry_headers(client: Any, server: LocalServer) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        stream_chunks(client, "@@fault 429 minute 0.2s")

    error = caught.value
    assert error.status_code == 429
    assert error.type == "rate_limit_error"
    assert error.code == "rate_limit_exceeded"
    headers = error.response.headers
    assert (headers["retry-after"], headers["retry-after-ms"]) == ("0.2", "200")
    assert headers["x-ratelimit-reset-requests"] == "200ms"
    assert headers["x-ratelimit-reset-tokens"] == "200ms"
    [record] = server.requests()
    assert (record["outcome"], record["status"], record["fault"]) == (
        "error",
        429,
        "429 minute 0.2s",
    )


def test_queued_day_quota_is_the_insufficient_quota_billing_refusal(
    client: Any, server: LocalServer
) -> None:
    server.push_faults("429 day")

    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])

    assert caught.value.code == "insufficient_quota"
    [record] = server.requests()
    assert caught.value.request_id == f"req_agentrt_{record['id']}"
    assert "retry-after" not in caught.value.response.headers


@pytest.mark.parametrize("code", [500, 503])
def test_server_errors_are_internal_server_errors(client: Any, code: int) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        stream_chunks(client, f"@@fault {code}")

    assert caught.value.status_code == code
    assert caught.value.type == "server_error"


def test_drop_before_headers_is_a_connection_error(client: Any, server: LocalServer) -> None:
    with pytest.raises(openai.APIConnectionError):
        stream_chunks(client, "@@fault drop_headers")

    assert [r["outcome"] for r in server.requests()] == ["dropped"]


def test_drop_mid_stream_is_a_connection_error_after_the_first_chunks(
    client: Any, server: LocalServer
) -> None:
    text, error = stream_until_error(client, "@@reply a b c d\n@@fault drop_after 2")

    assert text == "a b "
    assert isinstance(error, openai.APIConnectionError)
    [record] = server.requests()
    assert (record["outcome"], record["chunks_sent"]) == ("dropped", 2)


def test_mid_stream_error_event_raises_api_error_after_the_text(
    client: Any, server: LocalServer
) -> None:
    text, error = stream_until_error(client, "@@reply a b c\n@@fault sse_error 1 503")

    assert text == "a "
    assert type(error) is openai.APIError
    assert error.body["type"] == "server_error"
    [record] = server.requests()
    assert (record["outcome"], record["status"]) == ("error", 200)


def test_garbage_html_page_is_an_api_status_error(client: Any) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "@@fault html 502"}]
        )

    assert caught.value.status_code == 502


def test_missing_model_is_a_bad_request_in_openai_shape(client: Any) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.post(
            "/chat/completions",
            body={"messages": [{"role": "user", "content": "x"}]},
            cast_to=dict,
        )

    assert caught.value.type == "invalid_request_error"


def test_async_client_streams_text(server: LocalServer) -> None:
    server.reset()

    async def main() -> str:
        async with openai.AsyncOpenAI(
            api_key=server.token, base_url=server.openai_base_url, max_retries=0
        ) as sdk:
            stream = await sdk.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "@@chunks 4\nabcdefgh"}],
                stream=True,
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    assert asyncio.run(main()) == "Echo: abcdefgh"


def test_closing_a_hung_stream_is_logged_as_client_closed(client: Any, server: LocalServer) -> None:
    messages = [{"role": "user", "content": "@@reply a b c\n@@fault hang_after 1"}]
    with client.chat.completions.create(model=MODEL, messages=messages, stream=True) as stream:
        chunks = iter(stream)
        assert next(chunks).choices[0].delta.role == "assistant"
        assert next(chunks).choices[0].delta.content == "a "
        [running] = server.requests()
        assert running["outcome"] is None

    record = server.wait_for_request(running["id"])
    assert (record["outcome"], record["chunks_sent"]) == ("client_closed", 1)


def test_tiny_chunks_arrive_one_token_each(client: Any, server: LocalServer) -> None:
    chunks = stream_chunks(client, "@@tiny 50", stream_options={"include_usage": True})

    assert text_of(chunks) == "x" * 50
    assert chunks[-1].usage.completion_tokens == 50
    assert server.requests()[0]["chunks_sent"] == 50


def test_finish_none_ends_the_stream_without_a_finish_reason(client: Any) -> None:
    chunks = stream_chunks(client, "@@reply done\n@@finish none")

    assert text_of(chunks) == "done"
    assert all(c.choices[0].finish_reason is None for c in chunks)


def test_truncated_json_fault_is_a_body_the_sdk_cannot_parse(client: Any) -> None:
    with pytest.raises(json.JSONDecodeError):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "@@fault truncated_json"}]
        )


def test_images_and_pdfs_reach_the_engine_as_parts(client: Any) -> None:
    content = [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {
            "type": "file",
            "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"},
        },
    ]
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": content}]
    )

    assert reply.choices[0].message.content == "Echo: look [parts: image/png, application/pdf]"


def test_a_body_that_is_not_json_is_a_bad_request(server: LocalServer) -> None:
    server.reset()
    request = urllib.request.Request(
        server.url + "/v1/chat/completions",
        data=b"{not json",
        headers={"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)

    assert caught.value.code == 400
    assert json.loads(caught.value.read())["error"]["type"] == "invalid_request_error"
    assert [(r["outcome"], r["status"]) for r in server.requests()] == [("error", 400)]


@pytest.fixture(scope="module")
def local_server() -> Iterator[LocalServer]:
    pytest.importorskip("llama_cpp")
    with LocalServer.start("local") as running:
        yield running


def test_embedded_model_answers_chat_completions_with_real_usage(
    local_server: LocalServer,
) -> None:
    sdk = openai.OpenAI(
        api_key=local_server.token, base_url=local_server.openai_base_url, max_retries=0
    )
    with sdk:
        chunks = stream_chunks(
            sdk, "Say hello.", max_tokens=8, seed=1, stream_options={"include_usage": True}
        )

    assert text_of(chunks).strip()
    usage = chunks[-1].usage
    assert usage.prompt_tokens > 3
    assert 0 < usage.completion_tokens <= 8


@pytest.fixture
def batch_delay(server: LocalServer) -> Iterator[Callable[[float], None]]:
    """Set how long new batches take; the server's default comes back after the test."""
    yield server.set_batch_delay
    server.set_batch_delay(DEFAULT_DELAY)


def batch_input(*prompts: str) -> bytes:
    lines = [
        {
            "custom_id": f"row-{k}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": prompt}]},
        }
        for k, prompt in enumerate(prompts)
    ]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def wait_done(client: Any, batch_id: str, timeout: float = 10.0) -> Any:
    """Poll the batch as a client does until it has completed or been cancelled."""
    deadline = time.monotonic() + timeout
    while (batch := client.batches.retrieve(batch_id)).status not in ("completed", "cancelled"):
        assert time.monotonic() < deadline, f"batch {batch_id} still {batch.status}"
        time.sleep(0.02)
    return batch


def jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.splitlines()]


def test_batch_runs_an_uploaded_file_and_writes_output_and_error_files(
    client: Any, server: LocalServer, batch_delay: Callable[[float], None]
) -> None:
    batch_delay(0.1)
    uploaded = client.files.create(
        file=("in.jsonl", batch_input("one", "@@fault 500", "two")), purpose="batch"
    )
    created = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert created.status == "in_progress"

    done = wait_done(client, created.id)
    outputs = jsonl(client.files.content(done.output_file_id).read())
    errors = jsonl(client.files.content(done.error_file_id).read())

    assert (done.status, done.request_counts.completed, done.request_counts.failed) == (
        "completed",
        2,
        1,
    )
    assert [o["custom_id"] for o in outputs] == ["row-0", "row-2"]
    assert outputs[0]["response"]["body"]["choices"][0]["message"]["content"] == "Echo: one"
    assert errors[0]["custom_id"] == "row-1"
    assert errors[0]["response"]["status_code"] == 500
    assert created.id in [b.id for b in client.batches.list()]
    assert client.files.delete(uploaded.id).deleted
    kinds = [r["kind"] for r in server.requests()]
    assert kinds[:2] == ["file_create", "batch_create"]
    assert kinds[-2:] == ["batch_list", "file_delete"]


def test_cancelled_batch_ends_cancelled(client: Any, batch_delay: Callable[[float], None]) -> None:
    batch_delay(5.0)
    uploaded = client.files.create(
        file=("in.jsonl", batch_input(*["@@delay 200\nslow"] * 5)), purpose="batch"
    )
    created = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )

    client.batches.cancel(created.id)
    done = wait_done(client, created.id)

    assert done.status == "cancelled"
    assert done.request_counts.completed <= 2


def test_models_with_a_wrong_key_are_refused(server: LocalServer) -> None:
    server.reset()
    bad = openai.OpenAI(api_key="wrong", base_url=server.openai_base_url, max_retries=0)
    with bad, pytest.raises(openai.AuthenticationError):
        bad.models.list()

    [record] = server.requests()
    assert (record["kind"], record["outcome"], record["status"]) == ("model", "rejected", 401)
