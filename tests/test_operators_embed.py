"""Embeddings (issue 20 item 8): `runtime.embed` / `embed_texts` through the real SDKs
against the local server's embedding routes, cached per text, a ledger row per call."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

from agentrt_jupyter import (
    AgentRuntime,
    BackendError,
    InvalidConfig,
    QuotaExceeded,
    RuntimeConfig,
)
from agentrt_jupyter.backends.openai import OpenAIBackend
from agentrt_jupyter.server.engines.vectors import hashed_vector
from agentrt_jupyter.server.process import LocalServer

from .conftest import every_agent_on, requests_with
from .operator_helpers import fake_runtime

pytestmark = pytest.mark.timeout(60)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_embed_gives_a_vector_per_row_and_texts_sharing_words_are_close(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    frame = pd.DataFrame(
        {"text": [f"{tag} red apple pie", f"{tag} red apple tart", f"{tag} tax return form"]},
        index=[10, 20, 30],
    )

    vectors = rt.embed(frame, "{text}")

    assert list(vectors.index) == [10, 20, 30] and vectors.name == "embedding"
    assert all(v.dtype == np.float32 and v.shape == (256,) for v in vectors)
    assert cosine(vectors[10], vectors[20]) > cosine(vectors[10], vectors[30])
    np.testing.assert_allclose(vectors[30], hashed_vector(f"{tag} tax return form"), rtol=1e-6)
    (record,) = requests_with(server, tag)
    assert record["kind"] == "embed" and record["path"].endswith(":batchEmbedContents")
    (row,) = [entry for entry in rt.ledger() if entry.agent == "embed"]
    assert (row.status, row.model, row.provider) == ("ok", "gemini-embedding-001", "gemini")


def test_embedding_the_same_texts_again_makes_no_request(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    texts = [f"{tag} first", f"{tag} second", f"{tag} first"]

    first = rt.embed_texts(texts)
    again = rt.embed_texts(list(reversed(texts)))

    assert (first.calls, first.cached) == (1, 0)
    assert (again.calls, again.cached) == (0, 2)
    assert again.vectors == list(reversed(first.vectors))
    assert len(requests_with(server, tag)) == 1
    assert len([e for e in rt.ledger() if e.agent == "embed"]) == 1
    fresh = rt.embed_texts(texts, refresh=True)
    assert (fresh.calls, fresh.cached) == (1, 0) and len(requests_with(server, tag)) == 2


def test_many_texts_go_a_hundred_a_call(rt: AgentRuntime, server: LocalServer, tag: str) -> None:
    found = rt.embed_texts([f"{tag} row {n}" for n in range(250)])

    assert found.calls == 3 and len(found.vectors) == 250
    sizes = sorted(len(r["body"]["requests"]) for r in requests_with(server, tag))
    assert sizes == [50, 100, 100]


def test_the_async_facade_embeds_without_blocking_the_callers_loop(
    rt: AgentRuntime, tag: str
) -> None:
    frame = pd.DataFrame({"text": [f"{tag} a", f"{tag} b"]})

    async def main() -> pd.Series:
        return await rt.aio.embed(frame, "{text}")

    vectors = asyncio.run(main())

    assert len(vectors) == 2 and vectors.attrs["agentrt"].calls == 1


@pytest.fixture
def openai_runtime(server: LocalServer) -> Iterator[AgentRuntime]:
    """Every agent on `OpenAIBackend`: its embeddings route."""
    pytest.importorskip("openai")
    with every_agent_on(
        server, lambda: OpenAIBackend(api_key=server.token, base_url=server.openai_base_url)
    ) as made:
        yield made


def test_an_openai_model_embeds_through_v1_embeddings(
    openai_runtime: AgentRuntime, server: LocalServer, tag: str
) -> None:
    found = openai_runtime.embed_texts(
        [f"{tag} one two", f"{tag} three"], model="openai:text-embedding-3-small"
    )

    (record,) = requests_with(server, tag)
    assert record["path"] == "/v1/embeddings" and record["model"] == "text-embedding-3-small"
    assert found.vectors[0] == pytest.approx(hashed_vector(f"{tag} one two"), rel=1e-6)
    assert found.tokens == 5
    (row,) = [e for e in openai_runtime.ledger() if e.agent == "embed"]
    assert (row.provider, row.usage.prompt_tokens) == ("openai", 5)


def test_the_openai_route_answers_base64_as_the_sdk_asks_by_default(server: LocalServer) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(api_key=server.token, base_url=server.openai_base_url)

    reply = client.embeddings.create(model="m", input=["alpha beta"])

    assert reply.data[0].embedding == pytest.approx(hashed_vector("alpha beta"), rel=1e-6)


def test_a_single_embed_content_is_answered_in_geminis_format(server: LocalServer) -> None:
    body = json.dumps({"content": {"parts": [{"text": "one"}]}, "outputDimensionality": 8})
    request = urllib.request.Request(
        f"{server.url}/v1beta/models/gemini-embedding-001:embedContent",
        data=body.encode(),
        headers={"x-goog-api-key": server.token, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        values = json.load(answer)["embedding"]["values"]

    assert values == pytest.approx(hashed_vector("one", 8))


def test_an_anthropic_model_cannot_embed(rt: AgentRuntime) -> None:
    with pytest.raises(InvalidConfig, match="Anthropic has no embeddings API"):
        rt.embed_texts(["x"], model="anthropic:claude-sonnet-4-5")


def test_embed_refuses_an_option_it_does_not_take(rt: AgentRuntime) -> None:
    with pytest.raises(InvalidConfig) as caught:
        rt.embed(pd.DataFrame({"text": ["x"]}), "{text}", concurrency=3)

    assert caught.value.field == "concurrency"


def test_embed_explain_sends_nothing(rt: AgentRuntime, server: LocalServer, tag: str) -> None:
    frame = pd.DataFrame({"text": [f"{tag} {n}" for n in range(150)]})

    plan = rt.embed(frame, "{text}", explain=True)

    assert plan.calls == 2 and plan.steps[0].name == "embed"
    assert requests_with(server, tag) == []


@pytest.mark.local_model
def test_the_local_engine_embeds_with_the_embedded_models_own_vectors() -> None:
    pytest.importorskip("llama_cpp")
    from agentrt_jupyter.server.engines.local import create_engine

    async def main() -> list[list[float]]:
        engine = create_engine()
        try:
            return (await engine.embed(["the cat sat", "a cat sat", "tax forms due"], None)).vectors
        finally:
            await engine.aclose()

    vectors = [np.asarray(v) for v in asyncio.run(main())]

    assert len(vectors[0]) > 256 and abs(np.linalg.norm(vectors[0]) - 1) < 1e-3
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])


@pytest.mark.local_model
def test_the_offline_default_embeds_with_the_embedded_model() -> None:
    pytest.importorskip("llama_cpp")
    frame = pd.DataFrame({"text": ["the cat sat", "tax forms due", "dogs bark"]})

    with AgentRuntime(RuntimeConfig(backend="local", store_path=None)) as runtime:
        found = runtime.search(frame, "a cat sitting", on="{text}", k=1)

    assert list(found.index) == [0]
    assert found.attrs["agentrt"].embed_calls == 1


def test_a_failed_embedding_call_keeps_the_vectors_of_the_calls_that_succeeded() -> None:
    def embedder(texts: list[str]) -> list[list[float]]:
        if "refused" in texts:
            raise BackendError("400 INVALID_ARGUMENT: refused", code=400)
        return [hashed_vector(text) for text in texts]

    texts = [f"text {n}" for n in range(100)] + ["refused"]
    with fake_runtime(lambda request: "unused", embedder) as (runtime, _):
        with pytest.raises(BackendError, match="refused"):
            runtime.embed_texts(texts)
        again = runtime.embed_texts(texts[:100])
        rows = [entry.status for entry in runtime.ledger() if entry.agent == "embed"]

    assert (again.calls, again.cached) == (0, 100)
    assert sorted(rows) == ["error", "ok"]


@pytest.mark.parametrize(
    ("fault", "statuses"),
    [("429 minute 0.2s", ["rate-limited", "ok"]), ("503", ["retried", "ok"])],
)
def test_embedding_calls_wait_out_a_rate_limit_and_retry_a_5xx(
    rt: AgentRuntime, server: LocalServer, tag: str, fault: str, statuses: list[str]
) -> None:
    server.push_faults(fault, match=tag)

    found = rt.embed_texts([f"{tag} once"])

    assert found.calls == 1 and len(found.vectors[0]) == 256
    assert [e.status for e in rt.ledger() if e.agent == "embed"] == statuses
    assert [r["status"] for r in requests_with(server, tag)] == [int(fault[:3]), 200]


def test_a_per_day_quota_on_embeddings_fails_at_once(
    rt: AgentRuntime, server: LocalServer, tag: str
) -> None:
    server.push_faults("429 day", match=tag)

    with pytest.raises(QuotaExceeded) as caught:
        rt.embed_texts([f"{tag} once"])

    assert caught.value.scope == "day" and len(requests_with(server, tag)) == 1
