"""Figure 14: streaming through the runtime against the raw `openai` and `anthropic` SDKs.

Figure 1's method for the other providers: (a) the SDK's own streaming call
(`chat.completions.create(stream=True)`, `messages.create(stream=True)`) in a plain
asyncio loop on the main thread; (b) `AgentRuntime.chat` iterated from the main thread,
an `openai:` / `anthropic:` agent with the same server as its `base_url`. Both read the
same `@@tiny N` stream from the local scripted server's Chat Completions and Messages
routes; runs are interleaved (a b, b a, ...) so drift on the shared machine cancels, and
each pair gives one ratio.

Target per provider: throughput (b)/(a) >= 0.90 (median of paired ratios).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import anthropic
import openai
from _common import dist, main, row, runtime_config, show

from agentrt_jupyter import AgentRuntime, TextDelta
from agentrt_jupyter.backends.anthropic import DEFAULT_MAX_TOKENS
from agentrt_jupyter.server.process import LocalServer

FIGURE = "14. Providers' streaming"
CHUNKS = 5_000
LONG = f"@@tiny {CHUNKS}"
MODELS = {"openai": "gpt-4.1-mini", "anthropic": "claude-sonnet-4-5"}

Measure = Callable[[str], tuple[float, int]]


async def _raw_openai(client: openai.AsyncOpenAI, prompt: str) -> tuple[float, int]:
    """(seconds to the end, characters) through the bare SDK, usage asked as we ask it."""
    start = time.perf_counter()
    chars = 0
    stream = await client.chat.completions.create(
        model=MODELS["openai"],
        messages=[{"role": "user", "content": prompt}],
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.choices:
            chars += len(chunk.choices[0].delta.content or "")
    return time.perf_counter() - start, chars


async def _raw_anthropic(client: anthropic.AsyncAnthropic, prompt: str) -> tuple[float, int]:
    start = time.perf_counter()
    chars = 0
    events = await client.messages.create(
        model=MODELS["anthropic"],
        max_tokens=DEFAULT_MAX_TOKENS,
        messages=[{"role": "user", "content": prompt}],
        stream=True,
    )
    async for event in events:
        if event.type == "content_block_delta" and event.delta.type == "text_delta":
            chars += len(event.delta.text)
    return time.perf_counter() - start, chars


def _ours(runtime: AgentRuntime, settings: dict[str, Any], prompt: str) -> tuple[float, int]:
    """The same through the runtime: a fresh agent, the handle iterated on this thread."""
    agent = runtime.create_agent(**settings)
    start = time.perf_counter()
    chars = 0
    for event in runtime.chat(agent, prompt):
        if isinstance(event, TextDelta):
            chars += len(event.text)
    end = time.perf_counter()
    runtime.delete(agent)
    return end - start, chars


def _pairs(raw: Measure, ours: Measure, pairs: int) -> dict[str, Any]:
    """Interleaved (a, b) runs of the long stream: throughputs, ratios, wrong counts."""
    for _ in range(2):  # warm both paths: imports, connections
        raw(LONG)
        ours(LONG)
    raw_tp, ours_tp, ratios, bad = [], [], [], []
    for i in range(pairs):
        order = [(raw, "a"), (ours, "b")]
        results = {key: fn(LONG) for fn, key in (order if i % 2 == 0 else order[::-1])}
        bad += [(key, chars) for key, (_, chars) in results.items() if chars != CHUNKS]
        a, b = CHUNKS / results["a"][0], CHUNKS / results["b"][0]
        raw_tp.append(a)
        ours_tp.append(b)
        ratios.append(b / a)
    return {"raw": raw_tp, "ours": ours_tp, "ratios": ratios, "bad": bad}


def run(quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    pairs = 3 if quick else 8
    measured: dict[str, dict[str, Any]] = {}
    with LocalServer.start("scripted") as server:
        runtime = AgentRuntime(runtime_config(server))
        loop = asyncio.new_event_loop()
        oai = openai.AsyncOpenAI(
            api_key=server.token, base_url=server.openai_base_url, max_retries=0
        )
        ant = anthropic.AsyncAnthropic(
            api_key=server.token, base_url=server.anthropic_base_url, max_retries=0
        )
        raws: dict[str, Measure] = {
            "openai": lambda p: loop.run_until_complete(_raw_openai(oai, p)),
            "anthropic": lambda p: loop.run_until_complete(_raw_anthropic(ant, p)),
        }
        bases = {"openai": server.openai_base_url, "anthropic": server.anthropic_base_url}
        try:
            for provider, raw in raws.items():
                settings = {
                    "model": f"{provider}:{MODELS[provider]}",
                    "base_url": bases[provider],
                    "api_key": server.token,
                }

                def ours(prompt: str, settings: dict[str, Any] = settings) -> tuple[float, int]:
                    return _ours(runtime, settings, prompt)

                measured[provider] = _pairs(raw, ours, pairs)
        finally:
            loop.run_until_complete(oai.close())
            loop.run_until_complete(ant.close())
            loop.close()
            runtime.shutdown()

    rows = []
    for provider, found in measured.items():
        ratio = dist(found["ratios"])
        rows.append(
            row(
                FIGURE,
                f"{provider}: throughput, {CHUNKS:,}-chunk stream (b runtime / a raw SDK)",
                show(dist(found["ours"]), "chunks/s", digits=0),
                show(dist(found["raw"]), "chunks/s", digits=0),
                show(ratio, digits=3),
                "≥ 0.90",
                ratio["median"] >= 0.90 and not found["bad"],
                f"wrong chunk counts: {found['bad']}" if found["bad"] else "",
            )
        )
    details = {"pairs": pairs, "chunks": CHUNKS, "measured": measured}
    return rows, details


if __name__ == "__main__":
    main("providers", __doc__, run)
