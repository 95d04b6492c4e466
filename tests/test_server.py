"""The local server, driven by the real google-genai SDK as the runtime drives it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from google import genai
from google.genai import errors, types

from agentrt_jupyter.server import LocalServer

MODEL = "gemini-2.5-flash"
T = TypeVar("T")


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    with LocalServer.start() as running:
        yield running


@pytest.fixture(autouse=True)
def _clean_server(server: LocalServer) -> None:
    server.reset()


def make_client(
    server: LocalServer, api_version: str = "v1beta", *, attempts: int = 1
) -> genai.Client:
    """A client pointed at the local server; one attempt unless a test wants retries."""
    retry = types.HttpRetryOptions(attempts=attempts, initial_delay=0.01, max_delay=0.05)
    return genai.Client(
        api_key=server.token,
        http_options=types.HttpOptions(
            base_url=server.url, api_version=api_version, retry_options=retry
        ),
    )


def run(
    server: LocalServer,
    body: Callable[[Any], Awaitable[T]],
    *,
    api_version: str = "v1beta",
    attempts: int = 1,
) -> T:
    """Run `body(client.aio)` on a fresh loop and close the client's session after."""

    async def main() -> T:
        client = make_client(server, api_version, attempts=attempts)
        try:
            return await body(client.aio)
        finally:
            await client.aio.aclose()

    return asyncio.run(main())


async def collect(
    aio: Any, contents: Any, config: types.GenerateContentConfig | None = None
) -> list[types.GenerateContentResponse]:
    stream = await aio.models.generate_content_stream(model=MODEL, contents=contents, config=config)
    return [chunk async for chunk in stream]


async def collect_until_error(
    aio: Any, contents: str
) -> tuple[list[types.GenerateContentResponse], BaseException]:
    chunks: list[types.GenerateContentResponse] = []
    try:
        async for chunk in await aio.models.generate_content_stream(model=MODEL, contents=contents):
            chunks.append(chunk)
    except Exception as exc:
        return chunks, exc
    raise AssertionError(f"stream ended without an error after {len(chunks)} chunks")


def content_of(response: types.GenerateContentResponse) -> types.Content:
    assert response.candidates
    content = response.candidates[0].content
    assert content is not None
    return content


def parts_of(response: types.GenerateContentResponse) -> list[types.Part]:
    parts = content_of(response).parts
    assert parts is not None
    return parts


def usage_of(
    response: types.GenerateContentResponse,
) -> types.GenerateContentResponseUsageMetadata:
    assert response.usage_metadata is not None
    return response.usage_metadata


def calls_of(response: types.GenerateContentResponse) -> list[types.FunctionCall]:
    calls = [part.function_call for part in parts_of(response)]
    assert all(calls)
    return [call for call in calls if call is not None]


def text_of(chunks: list[types.GenerateContentResponse]) -> str:
    return "".join(
        part.text or "" for chunk in chunks for part in parts_of(chunk) if not part.thought
    )


def finish_reasons(chunks: list[types.GenerateContentResponse]) -> list[str | None]:
    reasons = []
    for chunk in chunks:
        assert chunk.candidates
        reason = chunk.candidates[0].finish_reason
        reasons.append(reason.value if reason else None)
    return reasons


def no_afc(**kwargs: Any) -> types.GenerateContentConfig:
    return types.GenerateContentConfig(
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True), **kwargs
    )


@pytest.mark.parametrize("api_version", ["v1beta", "v1"])
def test_stream_echo_is_one_chunk_per_word_with_running_usage(
    server: LocalServer, api_version: str
) -> None:
    chunks = run(server, lambda aio: collect(aio, "hello big world"), api_version=api_version)
    assert text_of(chunks) == "Echo: hello big world"
    assert [c.text for c in chunks] == ["Echo: ", "hello ", "big ", "world"]
    usage = [usage_of(c) for c in chunks]
    assert [u.candidates_token_count for u in usage] == [1, 2, 3, 4]
    assert {u.prompt_token_count for u in usage} == {3}
    assert usage[-1].total_token_count == 7
    assert finish_reasons(chunks) == [None, None, None, "STOP"]
    assert {c.model_version for c in chunks} == {MODEL}
    assert len({c.response_id for c in chunks}) == 1
    record = server.last_request()
    assert record["path"] == f"/{api_version}/models/{MODEL}:streamGenerateContent"
    assert (record["kind"], record["outcome"], record["chunks_sent"]) == ("stream", "complete", 4)


def test_sync_client_streams_over_httpx(server: LocalServer) -> None:
    client = make_client(server, "v1")
    try:
        chunks = list(client.models.generate_content_stream(model=MODEL, contents="@@reply a b c"))
    finally:
        client.close()
    assert text_of(chunks) == "a b c"


def test_system_instruction_and_history_count_as_prompt_tokens(server: LocalServer) -> None:
    contents = [
        types.Content(role="user", parts=[types.Part(text="one two")]),
        types.Content(role="model", parts=[types.Part(text="three")]),
        types.Content(role="user", parts=[types.Part(text="four")]),
    ]
    config = types.GenerateContentConfig(system_instruction="be terse")
    chunks = run(server, lambda aio: collect(aio, contents, config))
    assert text_of(chunks) == "Echo: four"
    assert usage_of(chunks[-1]).prompt_token_count == 6


@pytest.mark.parametrize("include", [True, False])
def test_thought_is_sent_only_when_asked_but_always_counted(
    server: LocalServer, include: bool
) -> None:
    config = types.GenerateContentConfig(
        thinking_config=types.ThinkingConfig(include_thoughts=include)
    )
    chunks = run(server, lambda aio: collect(aio, "@@thought let me see now\nhi", config))
    thoughts = [part.text for chunk in chunks for part in parts_of(chunk) if part.thought]
    assert thoughts == (["let me see now"] if include else [])
    assert text_of(chunks) == "Echo: hi"
    usage = usage_of(chunks[-1])
    assert (usage.prompt_token_count, usage.candidates_token_count) == (6, 2)
    assert usage.thoughts_token_count == 4
    assert usage.total_token_count == 6 + 2 + 4
    body = server.last_request()["body"]
    assert "include_thoughts" in body["generationConfig"]["thinkingConfig"]


def test_function_call_then_function_response_round(server: LocalServer) -> None:
    lookup = types.FunctionDeclaration(
        name="lookup",
        description="Look something up.",
        parameters=types.Schema(
            type=types.Type.OBJECT, properties={"q": types.Schema(type=types.Type.STRING)}
        ),
    )
    config = no_afc(tools=[types.Tool(function_declarations=[lookup])])
    prompt = types.Content(
        role="user", parts=[types.Part(text='@@call lookup {"q": "x"}\n@@call clock')]
    )

    async def body(aio: Any) -> tuple[list[Any], list[Any]]:
        first = await collect(aio, [prompt], config)
        responses = [
            types.Part.from_function_response(name=call.name or "", response={"n": i})
            for i, call in enumerate(calls_of(first[0]))
        ]
        answer = types.Content(role="user", parts=responses)
        return first, await collect(aio, [prompt, content_of(first[0]), answer], config)

    first, second = run(server, body)
    assert len(first) == 1
    assert [(c.id, c.name, c.args) for c in calls_of(first[0])] == [
        ("call-1", "lookup", {"q": "x"}),
        ("call-2", "clock", {}),
    ]
    assert finish_reasons(first) == ["STOP"]
    assert text_of(second) == 'Tool results: {"lookup":{"n":0},"clock":{"n":1}}'
    assert finish_reasons(second)[-1] == "STOP"


def test_call_always_keeps_calling_after_function_responses(server: LocalServer) -> None:
    prompt = types.Content(role="user", parts=[types.Part(text="@@call_always again {}")])

    async def body(aio: Any) -> list[str | None]:
        history = [prompt]
        ids: list[str | None] = []
        for _ in range(3):
            (reply,) = await collect(aio, history, no_afc())
            ids += [call.id for call in calls_of(reply)]
            history += [
                content_of(reply),
                types.Content(
                    role="user",
                    parts=[types.Part.from_function_response(name="again", response={})],
                ),
            ]
        return ids

    assert run(server, body) == ["call-1", "call-2", "call-3"]


def test_max_output_tokens_cuts_with_max_tokens(server: LocalServer) -> None:
    config = types.GenerateContentConfig(max_output_tokens=3)
    chunks = run(server, lambda aio: collect(aio, "@@reply one two three four five", config))
    assert text_of(chunks) == "one two three"
    assert finish_reasons(chunks)[-1] == "MAX_TOKENS"
    assert usage_of(chunks[-1]).candidates_token_count == 3


def test_stop_sequence_cuts_before_first_match(server: LocalServer) -> None:
    config = types.GenerateContentConfig(stop_sequences=["END", "three"])
    chunks = run(server, lambda aio: collect(aio, "@@reply one two three END four", config))
    assert text_of(chunks) == "one two "
    assert finish_reasons(chunks)[-1] == "STOP"


def test_chunks_reply_and_finish_directives(server: LocalServer) -> None:
    chunks = run(server, lambda aio: collect(aio, "@@reply abcdefghij\n@@chunks 3"))
    assert [c.text for c in chunks] == ["abcd", "efg", "hij"]
    chunks = run(server, lambda aio: collect(aio, "@@finish SAFETY\nbad"))
    assert finish_reasons(chunks)[-1] == "SAFETY"
    chunks = run(server, lambda aio: collect(aio, "@@finish none\ncut short"))
    assert finish_reasons(chunks) == [None, None, None]


def test_unknown_directive_is_a_400(server: LocalServer) -> None:
    with pytest.raises(errors.ClientError) as info:
        run(server, lambda aio: collect(aio, "@@rpely typo"))
    assert info.value.code == 400
    assert "@@rpely" in (info.value.message or "")


def test_non_text_parts_are_listed_and_counted(server: LocalServer) -> None:
    contents = [
        types.Content(
            role="user",
            parts=[
                types.Part(text="look"),
                types.Part.from_bytes(data=b"\x89PNG", mime_type="image/png"),
                types.Part.from_bytes(data=b"%PDF", mime_type="application/pdf"),
            ],
        )
    ]
    chunks = run(server, lambda aio: collect(aio, contents))
    assert text_of(chunks) == "Echo: look [parts: image/png, application/pdf]"
    assert usage_of(chunks[-1]).prompt_token_count == 3


def test_generate_content_returns_the_merged_response(server: LocalServer) -> None:
    config = types.GenerateContentConfig(
        thinking_config=types.ThinkingConfig(include_thoughts=True)
    )

    async def body(aio: Any) -> types.GenerateContentResponse:
        result: types.GenerateContentResponse = await aio.models.generate_content(
            model=MODEL, contents="@@thought hmm ok\none two", config=config
        )
        return result

    response = run(server, body)
    assert [(p.text, bool(p.thought)) for p in parts_of(response)] == [
        ("hmm ok", True),
        ("Echo: one two", False),
    ]
    assert finish_reasons([response]) == ["STOP"]
    assert usage_of(response).candidates_token_count == 3
    assert server.last_request()["kind"] == "generate"


def test_count_tokens_and_model_routes(server: LocalServer) -> None:
    async def body(aio: Any) -> tuple[Any, Any, list[Any]]:
        count = await aio.models.count_tokens(model=MODEL, contents="a b c d")
        model = await aio.models.get(model=MODEL)
        listed = [m async for m in await aio.models.list()]
        return count, model, listed

    count, model, listed = run(server, body)
    assert count.total_tokens == 4
    assert model.name == f"models/{MODEL}"
    assert f"models/{MODEL}" in [m.name for m in listed]
    assert [r["kind"] for r in server.requests()] == ["count_tokens", "model", "model"]


@pytest.mark.parametrize(
    ("spec", "quota_id", "quota_value", "retry_delay"),
    [
        ("429 minute 0.2s", "GenerateRequestsPerMinutePerProjectPerModel-FreeTier", "10", "0.2s"),
        ("429 minute", "GenerateRequestsPerMinutePerProjectPerModel-FreeTier", "10", "1s"),
        ("429 day", "GenerateRequestsPerDayPerProjectPerModel-FreeTier", "250", "3600s"),
        ("429 zero", "GenerateRequestsPerMinutePerProjectPerModel-FreeTier", "0", "30s"),
    ],
)
def test_429_carries_quota_failure_and_retry_info(
    server: LocalServer, spec: str, quota_id: str, quota_value: str, retry_delay: str
) -> None:
    with pytest.raises(errors.ClientError) as info:
        run(server, lambda aio: collect(aio, f"@@fault {spec}\nhi"))
    exc = info.value
    assert (exc.code, exc.status) == (429, "RESOURCE_EXHAUSTED")
    details = {d["@type"].rsplit(".", 1)[-1]: d for d in exc.details["error"]["details"]}
    violation = details["QuotaFailure"]["violations"][0]
    assert (violation["quotaId"], violation["quotaValue"]) == (quota_id, quota_value)
    assert violation["quotaDimensions"]["model"] == MODEL
    assert details["RetryInfo"]["retryDelay"] == retry_delay
    assert details["Help"]["links"]
    assert f"limit: {quota_value}," in (exc.message or "")
    assert f"Please retry in {retry_delay}." in (exc.message or "")
    record = server.last_request()
    assert (record["status"], record["outcome"], record["fault"]) == (429, "error", spec)


@pytest.mark.parametrize(("spec", "status"), [("500", "INTERNAL"), ("503", "UNAVAILABLE")])
def test_5xx_faults_raise_server_error(server: LocalServer, spec: str, status: str) -> None:
    with pytest.raises(errors.ServerError) as info:
        run(server, lambda aio: collect(aio, f"@@fault {spec}"))
    assert (info.value.code, info.value.status) == (int(spec), status)


def test_drop_headers_is_a_connection_error(server: LocalServer) -> None:
    chunks, exc = run(server, lambda aio: collect_until_error(aio, "@@fault drop_headers"))
    assert chunks == []
    assert isinstance(exc, aiohttp.ClientConnectionError)
    assert server.last_request()["outcome"] == "dropped"


def test_drop_after_breaks_the_stream_after_k_chunks(server: LocalServer) -> None:
    chunks, exc = run(server, lambda aio: collect_until_error(aio, "@@fault drop_after 2\na b c d"))
    assert [c.text for c in chunks] == ["Echo: ", "a "]
    assert isinstance(exc, aiohttp.ClientPayloadError)
    record = server.last_request()
    assert (record["outcome"], record["chunks_sent"]) == ("dropped", 2)


def test_sse_error_event_raises_mid_stream(server: LocalServer) -> None:
    chunks, exc = run(server, lambda aio: collect_until_error(aio, "@@fault sse_error 1 503\na b"))
    assert len(chunks) == 1
    assert isinstance(exc, errors.ServerError)
    assert (exc.code, exc.status) == (503, "UNAVAILABLE")


@pytest.mark.parametrize("spec", ["hang", "hang_headers", "hang_after 2"])
def test_cancelling_a_hung_stream_is_logged_as_client_closed(
    server: LocalServer, spec: str
) -> None:
    async def body(aio: Any) -> tuple[int, dict[str, Any]]:
        received: list[str] = []

        async def pump() -> None:
            async for chunk in await aio.models.generate_content_stream(
                model=MODEL, contents=f"@@fault {spec}\na b c"
            ):
                received.append(chunk.text)

        task = asyncio.create_task(pump())
        (record,) = await asyncio.to_thread(server.wait_for_count, 1)
        if spec.startswith("hang_after"):
            while record["chunks_sent"] < 2:
                record = await asyncio.to_thread(server.last_request)
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(server.wait_for_request, record["id"], 0.05)
        cancelled_at = time.time()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        finished = await asyncio.to_thread(server.wait_for_request, record["id"], 5.0)
        assert finished["finished"] - cancelled_at < 1.0
        return len(received), finished

    n_received, record = run(server, body)
    assert record["outcome"] == "client_closed"
    assert record["chunks_sent"] == n_received == (2 if spec.startswith("hang_after") else 0)


def test_slow_fault_spaces_chunks(server: LocalServer) -> None:
    started = time.monotonic()
    chunks = run(server, lambda aio: collect(aio, "@@fault slow 40\na b"))
    assert len(chunks) == 3
    assert time.monotonic() - started >= 0.12


@pytest.mark.parametrize("prompt", ["@@tiny 500", "@@fault tiny 500"])
def test_tiny_yields_n_chunks_of_x(server: LocalServer, prompt: str) -> None:
    chunks = run(server, lambda aio: collect(aio, prompt))
    assert len(chunks) == 500
    assert text_of(chunks) == "x" * 500
    assert usage_of(chunks[-1]).candidates_token_count == 500
    assert finish_reasons(chunks)[-1] == "STOP"


def test_queued_faults_are_consumed_in_order(server: LocalServer) -> None:
    server.push_faults("503", "429 minute 0.2s")
    outcomes: list[Any] = []
    for _ in range(3):
        try:
            outcomes.append(text_of(run(server, lambda aio: collect(aio, "hi"))))
        except errors.APIError as exc:
            outcomes.append(exc.code)
    assert outcomes == [503, 429, "Echo: hi"]
    assert [r["fault"] for r in server.requests()] == ["503", "429 minute 0.2s", None]


def test_queued_fault_with_match_waits_for_a_matching_prompt(server: LocalServer) -> None:
    server.push_faults("500", match="beta")
    assert text_of(run(server, lambda aio: collect(aio, "alpha"))) == "Echo: alpha"
    with pytest.raises(errors.ServerError):
        run(server, lambda aio: collect(aio, "beta"))
    assert text_of(run(server, lambda aio: collect(aio, "beta"))) == "Echo: beta"


def test_fails_once_then_succeeds_with_sdk_retries(server: LocalServer) -> None:
    server.push_faults("503")
    chunks = run(server, lambda aio: collect(aio, "retry me"), attempts=3)
    assert text_of(chunks) == "Echo: retry me"
    assert [(r["status"], r["outcome"]) for r in server.requests()] == [
        (503, "error"),
        (200, "complete"),
    ]


def test_clear_faults_empties_the_queue(server: LocalServer) -> None:
    server.push_faults("500", "500")
    server.clear_faults()
    assert text_of(run(server, lambda aio: collect(aio, "fine"))) == "Echo: fine"


def test_bad_fault_spec_is_refused(server: LocalServer) -> None:
    with pytest.raises(RuntimeError, match="unknown fault"):
        server.push_faults("explode")


def test_wrong_api_key_is_rejected_like_gemini(server: LocalServer) -> None:
    client = genai.Client(
        api_key="not-the-key",
        http_options=types.HttpOptions(
            base_url=server.url, retry_options=types.HttpRetryOptions(attempts=1)
        ),
    )
    with pytest.raises(errors.ClientError) as info:
        client.models.generate_content(model=MODEL, contents="hi")
    client.close()
    assert (info.value.code, info.value.status) == (400, "INVALID_ARGUMENT")
    assert info.value.message == "API key not valid. Please pass a valid API key."
    record = server.last_request()
    assert (record["outcome"], record["api_key_ok"]) == ("rejected", False)


def test_api_key_never_appears_in_the_log(server: LocalServer) -> None:
    run(server, lambda aio: collect(aio, "header key"))
    request = urllib.request.Request(
        f"{server.url}/v1beta/models/{MODEL}:generateContent?key={server.token}",
        data=json.dumps({"contents": [{"parts": [{"text": "query key"}]}]}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert json.loads(response.read())["candidates"][0]["content"]["parts"][0]["text"] == (
            "Echo: query key"
        )
    records = server.requests()
    assert [r["api_key_ok"] for r in records] == [True, True]
    assert server.token not in json.dumps(records)
    assert server.token not in repr(server)


def test_control_api_needs_the_token(server: LocalServer) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{server.url}/_agentrt/requests", timeout=5)
    assert info.value.code == 401


def test_accepted_sockets_have_tcp_nodelay(server: LocalServer) -> None:
    assert server.health() == {"ok": True, "engine": "scripted", "tcp_nodelay": True}


def test_wait_for_request_times_out_while_running(server: LocalServer) -> None:
    async def body(aio: Any) -> None:
        task = asyncio.create_task(collect(aio, "@@fault hang_headers"))
        (record,) = await asyncio.to_thread(server.wait_for_count, 1)
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(server.wait_for_request, record["id"], 0.05)
        assert (record["outcome"], record["finished"]) == (None, None)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(server, body)


def test_200_concurrent_streams_all_complete(server: LocalServer) -> None:
    async def body(aio: Any) -> list[str]:
        streams = [collect(aio, f"@@delay 5\nstream {i}") for i in range(200)]
        return [text_of(chunks) for chunks in await asyncio.gather(*streams)]

    assert run(server, body) == [f"Echo: stream {i}" for i in range(200)]
    records = server.wait_for_count(200)
    assert [r["outcome"] for r in records] == ["complete"] * 200


@pytest.mark.parametrize(
    ("engine_args", "message"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["-o", "colour=1"], "cannot start the 'scripted' engine: .* no options"),
    ],
)
def test_start_failure_reports_stderr(engine_args: list[str], message: str) -> None:
    with pytest.raises(RuntimeError, match=message):
        LocalServer.start(engine_args=engine_args, startup_timeout=30)


def test_stop_kills_the_process_and_is_idempotent() -> None:
    server = LocalServer.start()
    log_path = Path(server.log_path)
    assert server.health()["ok"]
    assert log_path.exists()
    server.stop()
    assert not server.running
    assert not log_path.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(server.pid, 0)
    server.stop()
    assert "stopped" in repr(server)


def _spawn_cli(*args: str) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    env = dict(os.environ, AGENTRT_SERVER_TOKEN="cli-test-token")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [sys.executable, "-m", "agentrt_jupyter.server", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    assert process.stdout is not None
    ready = json.loads(process.stdout.readline())
    return process, ready


def test_cli_prints_one_ready_line_and_exits_when_stdin_closes() -> None:
    process, ready = _spawn_cli()
    assert set(ready) == {"url", "token", "pid", "engine"}
    assert ready["url"].startswith("http://127.0.0.1:")
    assert (ready["token"], ready["pid"], ready["engine"]) == (
        "cli-test-token",
        process.pid,
        "scripted",
    )
    assert process.stdin is not None
    process.stdin.close()
    assert process.wait(timeout=5) == 0
    assert process.stdout is not None
    assert process.stdout.read() == b""


def test_sigterm_exits_promptly_despite_a_hanging_stream() -> None:
    process, ready = _spawn_cli()

    async def hang_then_terminate() -> BaseException:
        async with aiohttp.ClientSession() as session:
            response = await session.post(
                f"{ready['url']}/v1beta/models/{MODEL}:streamGenerateContent?alt=sse",
                json={"contents": [{"parts": [{"text": "@@fault hang"}]}]},
                headers={"x-goog-api-key": ready["token"]},
            )
            assert response.status == 200
            process.send_signal(signal.SIGTERM)
            try:
                await response.content.read()
            except aiohttp.ClientError as exc:
                return exc
            raise AssertionError("a hung stream cannot end cleanly")

    started = time.monotonic()
    assert isinstance(asyncio.run(hang_then_terminate()), aiohttp.ClientPayloadError)
    assert process.wait(timeout=5) == 0
    assert time.monotonic() - started < 3.0
    for pipe in (process.stdin, process.stdout):
        assert pipe is not None
        pipe.close()


def test_the_console_script_serves_and_exits_when_stdin_closes() -> None:
    script = Path(sys.executable).with_name("agentrt-server")
    assert script.exists(), "the agentrt-server console script is not installed"
    process = subprocess.Popen(
        [str(script), "--engine", "scripted"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None and process.stdin is not None
    ready = json.loads(process.stdout.readline())
    assert ready["url"].startswith("http://127.0.0.1:") and ready["engine"] == "scripted"
    process.stdin.close()
    assert process.wait(timeout=10) == 0
