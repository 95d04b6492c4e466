"""The `local` engine with the real SmolLM2 model on the CPU."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from google import genai
from google.genai import errors, types

llama_cpp = pytest.importorskip("llama_cpp")

from agentrt_jupyter.server.engines.base import (  # noqa: E402
    EngineChunk,
    EngineError,
    GenerateRequest,
)
from agentrt_jupyter.server.engines.local import (  # noqa: E402
    DEFAULT_SYSTEM_PROMPT,
    LocalEngine,
    create_engine,
    default_threads,
    find_model_path,
)
from agentrt_jupyter.server.process import LocalServer  # noqa: E402

pytestmark = [pytest.mark.local_model, pytest.mark.anyio]

QUESTION = "What is the capital of France? Answer in one sentence."
STORY = "Write a long story about a lighthouse keeper and a storm."


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def engine() -> AsyncIterator[LocalEngine]:
    engine = create_engine()
    await engine.load()
    yield engine
    await engine.aclose()


@pytest.fixture(scope="module")
def vocab() -> Any:
    """The model's own tokenizer, loaded independently of the engine."""
    return llama_cpp.Llama(model_path=str(find_model_path()), vocab_only=True, verbose=False)


@pytest.mark.parametrize(("usable", "threads"), [({0}, 1), ({0, 1}, 1), (set(range(8)), 7)])
def test_the_model_leaves_one_usable_cpu_to_the_kernel(
    monkeypatch: pytest.MonkeyPatch, usable: set[int], threads: int
) -> None:
    monkeypatch.delenv("AGENTRT_LOCAL_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: usable)
    assert default_threads() == threads
    assert create_engine().n_threads == threads


def test_agentrt_local_threads_chooses_the_threads_and_a_bad_value_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENTRT_LOCAL_THREADS", "3")
    assert create_engine().n_threads == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("AGENTRT_LOCAL_THREADS", bad)
        with pytest.raises(ValueError, match=r"AGENTRT_LOCAL_THREADS=.*positive integer"):
            create_engine()


def loop_time() -> float:
    return asyncio.get_running_loop().time()


def request(text: str = QUESTION, **config: Any) -> GenerateRequest:
    return GenerateRequest(
        model="smollm2",
        contents=[{"role": "user", "parts": [{"text": text}]}],
        generation_config=config,
    )


async def collect(engine: LocalEngine, req: GenerateRequest) -> list[EngineChunk]:
    return [chunk async for chunk in engine.generate(req)]


def text_of(chunks: list[EngineChunk]) -> str:
    return "".join(part["text"] for chunk in chunks for part in chunk.parts)


async def test_streams_a_real_reply_over_several_chunks(engine: LocalEngine) -> None:
    chunks = await collect(engine, request(seed=1))

    assert len(chunks) >= 3
    assert "Paris" in text_of(chunks)
    assert [c.finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].finish_reason == "STOP"
    generated = [c.usage["candidatesTokenCount"] for c in chunks]
    assert generated == sorted(generated)
    assert generated[0] >= 1


async def test_token_counts_are_the_model_tokenizers(engine: LocalEngine, vocab: Any) -> None:
    chatml = (
        f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n"
        f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    )
    prompt_tokens = len(vocab.tokenize(chatml.encode(), add_bos=False, special=True))

    chunks = await collect(engine, request(temperature=0.0))
    reply_tokens = len(vocab.tokenize(text_of(chunks).encode(), add_bos=False, special=False))

    assert await engine.count_tokens(request()) == prompt_tokens
    assert chunks[-1].usage == {
        "promptTokenCount": prompt_tokens,
        "candidatesTokenCount": reply_tokens,
        "totalTokenCount": prompt_tokens + reply_tokens,
    }


async def test_system_instruction_replaces_the_default(engine: LocalEngine, vocab: Any) -> None:
    req = GenerateRequest(
        model="smollm2",
        contents=[
            {"role": "user", "parts": [{"text": "Hi"}]},
            {"role": "model", "parts": [{"text": "Hello!"}]},
            {"role": "user", "parts": [{"text": "Bye"}]},
        ],
        system_instruction="Be terse.",
    )
    chatml = (
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert await engine.count_tokens(req) == len(
        vocab.tokenize(chatml.encode(), add_bos=False, special=True)
    )


async def test_stop_sequence_cuts_the_reply_before_it(engine: LocalEngine) -> None:
    full = text_of(await collect(engine, request(temperature=0.0)))
    stop = full[len(full) // 2 : len(full) // 2 + 4]

    chunks = await collect(engine, request(temperature=0.0, stopSequences=["NEVER", stop]))

    assert text_of(chunks) == full[: full.index(stop)]
    assert chunks[-1].finish_reason == "STOP"


async def test_max_output_tokens_ends_with_max_tokens(engine: LocalEngine) -> None:
    chunks = await collect(engine, request(STORY, maxOutputTokens=5))

    assert chunks[-1].finish_reason == "MAX_TOKENS"
    assert chunks[-1].usage["candidatesTokenCount"] == 5
    assert text_of(chunks)


async def test_multibyte_characters_arrive_whole(engine: LocalEngine) -> None:
    chunks = await collect(
        engine,
        request("Repeat exactly: café, naïve, 東京, 🙂", temperature=0.0, maxOutputTokens=40),
    )

    text = text_of(chunks)
    assert "\ufffd" not in text
    assert any(ord(ch) > 0x7F for ch in text)


async def test_same_seed_same_text(engine: LocalEngine) -> None:
    first = text_of(
        await collect(engine, request(STORY, seed=42, temperature=1.0, maxOutputTokens=40))
    )
    await collect(engine, request("Say something else.", maxOutputTokens=10))
    second = text_of(
        await collect(engine, request(STORY, seed=42, temperature=1.0, maxOutputTokens=40))
    )

    assert first == second


async def test_cancelled_consumer_stops_generation_within_one_token(engine: LocalEngine) -> None:
    seen = asyncio.Event()

    async def consume() -> None:
        chunks = 0
        async for _ in engine.generate(request(STORY, maxOutputTokens=400)):
            chunks += 1
            if chunks == 3:
                seen.set()

    task = asyncio.create_task(consume())
    await seen.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    follow_up = await collect(engine, request(maxOutputTokens=8))

    cancelled = list(engine.records)[-2]
    assert cancelled.cancelled
    assert cancelled.finish_reason is None
    assert cancelled.tokens_at_cancel is not None
    assert cancelled.generated_tokens - cancelled.tokens_at_cancel <= 1
    assert cancelled.generated_tokens < 400
    assert follow_up[-1].finish_reason in ("STOP", "MAX_TOKENS")
    assert engine.tokens_generated == sum(r.generated_tokens for r in engine.records)


async def test_cancelled_consumer_stops_a_long_prompt_evaluation(engine: LocalEngine) -> None:
    long_prompt = request("The harbour was calm and grey. " * 250 + STORY, seed=3)
    task = asyncio.create_task(collect(engine, long_prompt))
    await asyncio.sleep(0)  # one step: the request takes the free model and starts its worker
    assert engine.records
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    follow_up = await collect(engine, request(maxOutputTokens=2))

    cancelled = list(engine.records)[-2]
    assert cancelled.cancelled
    assert not cancelled.prompt_evaluated  # the 2,000-token read was aborted, not finished
    assert cancelled.generated_tokens == 0
    assert follow_up[-1].finish_reason == "MAX_TOKENS"
    assert list(engine.records)[-1].prompt_evaluated


async def test_concurrent_chats_are_served_one_after_the_other(engine: LocalEngine) -> None:
    order: list[tuple[str, str | None]] = []

    async def chat(name: str, text: str) -> list[EngineChunk]:
        chunks = []
        async for chunk in engine.generate(request(text, maxOutputTokens=30)):
            order.append((name, chunk.finish_reason))
            chunks.append(chunk)
        return chunks

    first, second = await asyncio.gather(chat("a", QUESTION), chat("b", "Name a colour."))

    assert first[-1].finish_reason is not None
    assert second[-1].finish_reason is not None
    assert text_of(first)
    assert text_of(second)
    names = [name for name, _ in order]
    assert names == sorted(names)


@pytest.mark.parametrize(
    ("change", "mentions"),
    [
        ({"tools": [{"functionDeclarations": [{"name": "f"}]}]}, "tools"),
        ({"parts": [{"functionCall": {"name": "f", "args": {}}}]}, "functionCall"),
        ({"parts": [{"functionResponse": {"name": "f", "response": {}}}]}, "functionResponse"),
        ({"parts": [{"inlineData": {"mimeType": "image/png", "data": "AA=="}}]}, "image/png"),
        (
            {"parts": [{"fileData": {"fileUri": "gs://x", "mimeType": "application/pdf"}}]},
            "fileData",
        ),
        ({"generation_config": {"responseMimeType": "text/x-python"}}, "text/x-python"),
        ({"generation_config": {"temperature": -1}}, "temperature"),
    ],
)
async def test_unsupported_requests_are_refused_with_400(
    engine: LocalEngine, change: dict[str, Any], mentions: str
) -> None:
    parts = change.get("parts", [{"text": "hi"}])
    req = GenerateRequest(
        model="smollm2",
        contents=[{"role": "user", "parts": parts}],
        tools=change.get("tools", []),
        generation_config=change.get("generation_config", {}),
    )

    with pytest.raises(EngineError) as refused:
        await collect(engine, req)

    assert refused.value.code == 400
    assert mentions in refused.value.message
    assert len(engine.records) == 0


async def test_context_overflow_is_a_400_naming_the_counts(engine: LocalEngine) -> None:
    req = request("lighthouse " * 3000)
    prompt_tokens = await engine.count_tokens(req)

    with pytest.raises(EngineError) as refused:
        await collect(engine, req)

    assert refused.value.code == 400
    assert str(prompt_tokens) in refused.value.message
    assert "2048" in refused.value.message


async def test_closed_engine_refuses_new_requests() -> None:
    engine = create_engine()
    await engine.aclose()

    with pytest.raises(EngineError) as refused:
        await collect(engine, request())

    assert refused.value.code == 503


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    with LocalServer.start("local") as server:
        yield server


@pytest.fixture
def client(server: LocalServer) -> genai.Client:
    return genai.Client(
        api_key=server.token,
        http_options=types.HttpOptions(base_url=server.url, api_version="v1beta"),
    )


def finish_reason(response: types.GenerateContentResponse) -> types.FinishReason | None:
    return response.candidates[0].finish_reason if response.candidates else None


async def test_sdk_streams_a_reply_with_the_models_token_counts(
    client: genai.Client, vocab: Any
) -> None:
    chatml = (
        f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n"
        f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    )
    prompt_tokens = len(vocab.tokenize(chatml.encode(), add_bos=False, special=True))

    stream = await client.aio.models.generate_content_stream(
        model="smollm2", contents=QUESTION, config=types.GenerateContentConfig(temperature=0.0)
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(chunk.text or "" for chunk in chunks)
    usage = chunks[-1].usage_metadata
    assert usage is not None
    counted = await client.aio.models.count_tokens(model="smollm2", contents=QUESTION)

    assert len(chunks) >= 3
    assert "Paris" in text
    assert finish_reason(chunks[-1]) == types.FinishReason.STOP
    assert usage.prompt_token_count == prompt_tokens == counted.total_tokens
    assert usage.candidates_token_count == len(vocab.tokenize(text.encode(), add_bos=False))
    assert usage.total_token_count == prompt_tokens + (usage.candidates_token_count or 0)


async def test_sdk_honours_max_tokens_stop_sequences_and_seed(client: genai.Client) -> None:
    async def reply(**config: Any) -> types.GenerateContentResponse:
        return await client.aio.models.generate_content(
            model="smollm2", contents=STORY, config=types.GenerateContentConfig(**config)
        )

    capped = await reply(max_output_tokens=6)
    full = await reply(temperature=0.0, max_output_tokens=60)
    full_text = full.text or ""
    stop = full_text[20:24]
    stopped = await reply(temperature=0.0, max_output_tokens=60, stop_sequences=[stop])
    seeded = [await reply(seed=9, temperature=1.0, max_output_tokens=30) for _ in range(2)]

    assert finish_reason(capped) == types.FinishReason.MAX_TOKENS
    assert capped.usage_metadata is not None
    assert capped.usage_metadata.candidates_token_count == 6
    assert stopped.text == full_text[: full_text.index(stop)]
    assert finish_reason(stopped) == types.FinishReason.STOP
    assert seeded[0].text == seeded[1].text


@pytest.mark.parametrize(
    ("contents", "config", "mentions"),
    [
        (
            "What is the weather?",
            types.GenerateContentConfig(
                tools=[types.Tool(function_declarations=[types.FunctionDeclaration(name="w")])]
            ),
            "tools",
        ),
        (
            [types.Part.from_bytes(data=b"\x89PNG", mime_type="image/png"), "What is this?"],
            None,
            "image/png",
        ),
    ],
)
async def test_sdk_gets_a_400_for_what_the_model_cannot_do(
    client: genai.Client, contents: Any, config: Any, mentions: str
) -> None:
    with pytest.raises(errors.ClientError) as refused:
        await client.aio.models.generate_content(model="smollm2", contents=contents, config=config)

    assert refused.value.code == 400
    assert mentions in (refused.value.message or "")


async def test_sdk_closing_a_stream_frees_the_model_for_the_next_chat(
    client: genai.Client, server: LocalServer
) -> None:
    three_chunks = asyncio.Event()

    async def read_some() -> None:
        stream = await client.aio.models.generate_content_stream(
            model="smollm2",
            contents=STORY,
            config=types.GenerateContentConfig(max_output_tokens=1500, seed=5),
        )
        seen = 0
        async for _ in stream:
            seen += 1
            if seen == 3:
                three_chunks.set()

    task = asyncio.create_task(read_some())
    await three_chunks.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    abandoned = server.wait_for_request(server.last_request()["id"])

    follow_up = await asyncio.wait_for(
        client.aio.models.generate_content(model="smollm2", contents=QUESTION), timeout=5
    )

    assert abandoned["outcome"] == "client_closed"
    assert follow_up.text


async def test_sdk_concurrent_chats_both_finish(client: genai.Client) -> None:
    replies = await asyncio.gather(
        client.aio.models.generate_content(model="smollm2", contents=QUESTION),
        client.aio.models.generate_content(model="smollm2", contents="Name a colour."),
    )

    for reply in replies:
        assert reply.text
        assert finish_reason(reply) == types.FinishReason.STOP
