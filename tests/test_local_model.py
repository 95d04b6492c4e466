"""The `local` engine with the real SmolLM2 model on the CPU."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

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
    find_model_path,
)

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
        ({"generation_config": {"responseSchema": {"type": "OBJECT"}}}, "responseSchema"),
        ({"generation_config": {"responseJsonSchema": {"type": "object"}}}, "responseJsonSchema"),
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
