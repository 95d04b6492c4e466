"""The operators on the embedded local model: its replies follow a response schema (a
llama.cpp grammar), so the yes/no questions of topk, join and dedupe parse there too."""

from __future__ import annotations

import asyncio
import json

import pandas as pd
import pytest

from agentrt_jupyter import AgentRuntime, RuntimeConfig
from agentrt_jupyter.server.engines.base import GenerateRequest
from agentrt_jupyter.server.engines.local import create_engine

pytest.importorskip("llama_cpp")

pytestmark = [pytest.mark.local_model, pytest.mark.timeout(120)]


def reply_to(generation_config: dict[str, object]) -> str:
    request = GenerateRequest(
        model="smollm2",
        contents=[{"role": "user", "parts": [{"text": "Is the sky blue? Answer in JSON."}]}],
        generation_config=generation_config,
    )

    async def main() -> str:
        engine = create_engine()
        try:
            return "".join(
                part.get("text", "")
                for chunk in [c async for c in engine.generate(request)]
                for part in chunk.parts
            )
        finally:
            await engine.aclose()

    return asyncio.run(main())


@pytest.mark.parametrize(
    "generation_config",
    [
        {
            "responseMimeType": "application/json",
            "responseJsonSchema": {
                "type": "object",
                "properties": {"yes": {"type": "boolean"}},
                "required": ["yes"],
            },
        },
        {
            "responseMimeType": "application/json",
            "responseSchema": {
                "type": "OBJECT",
                "properties": {"yes": {"type": "BOOLEAN"}},
                "required": ["yes"],
            },
        },
    ],
    ids=["json schema", "gemini schema"],
)
def test_the_local_model_replies_in_the_schema_asked(generation_config: dict[str, object]) -> None:
    answer = json.loads(reply_to(generation_config))

    assert set(answer) == {"yes"} and isinstance(answer["yes"], bool)


def test_topk_on_the_embedded_model_parses_every_comparison() -> None:
    frame = pd.DataFrame(
        {"text": ["the site is down for everyone", "a typo on the about page", "login fails"]}
    )

    with AgentRuntime(RuntimeConfig(backend="local", store_path=None)) as runtime:
        top = runtime.topk(frame, "most urgent for support", k=2, by="{text}", progress=False)

    summary = top.attrs["agentrt"]
    assert len(top) == 2 and summary.failed == 0 and summary.calls >= 2
