"""Figure 1: streaming overhead of the runtime against the raw google-genai SDK.

(a) `client.aio.models.generate_content_stream` in a plain asyncio loop on the main
thread; (b) `AgentRuntime.chat` iterated from the main thread. Both read the same
`@@tiny 10000` stream from the local scripted server; runs are interleaved (a b, b a, ...)
so drift on the shared machine cancels, and each pair gives one ratio.

Targets: throughput (b)/(a) >= 0.90 (median of paired ratios); time to first chunk added
by the runtime <= 1 ms (median of paired differences, short reply).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from _common import MODEL, dist, main, row, runtime_config, show
from google import genai
from google.genai import types

from agentrt_jupyter import AgentRuntime, TextDelta
from agentrt_jupyter.server.process import LocalServer

FIGURE = "1. Streaming overhead"
CHUNKS = 10_000
LONG = f"@@tiny {CHUNKS}"
SHORT = "hello"


async def _raw(client: genai.Client, prompt: str) -> tuple[float, float, int]:
    """(seconds to first chunk, seconds to end, characters) through the bare SDK."""
    start = time.perf_counter()
    first = None
    chars = 0
    stream = await client.aio.models.generate_content_stream(model=MODEL, contents=prompt)
    async for chunk in stream:
        text = chunk.text
        if text:
            if first is None:
                first = time.perf_counter()
            chars += len(text)
    end = time.perf_counter()
    assert first is not None
    return first - start, end - start, chars


def _ours(runtime: AgentRuntime, prompt: str) -> tuple[float, float, int]:
    """The same through the runtime: a fresh agent, the handle iterated on this thread."""
    agent = runtime.create_agent()
    start = time.perf_counter()
    first = None
    chars = 0
    for event in runtime.chat(agent, prompt):
        if isinstance(event, TextDelta):
            if first is None:
                first = time.perf_counter()
            chars += len(event.text)
    end = time.perf_counter()
    runtime.delete(agent)
    assert first is not None
    return first - start, end - start, chars


def run(quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    pairs = 3 if quick else 8
    ttft_pairs = 60 if quick else 300
    with LocalServer.start("scripted") as server:
        runtime = AgentRuntime(runtime_config(server))
        loop = asyncio.new_event_loop()
        client = genai.Client(
            api_key=server.token,
            http_options=types.HttpOptions(base_url=server.url, api_version="v1beta"),
        )
        try:

            def raw(prompt: str) -> tuple[float, float, int]:
                return loop.run_until_complete(_raw(client, prompt))

            for prompt in (SHORT, LONG):  # warm both paths: imports, connections
                raw(prompt)
                _ours(runtime, prompt)

            raw_tp, ours_tp, tp_ratio, bad = [], [], [], []
            for i in range(pairs):
                order = (raw, "a"), (lambda p: _ours(runtime, p), "b")
                results = {}
                for fn, key in order if i % 2 == 0 else reversed(order):
                    results[key] = fn(LONG)
                for key in results:
                    if results[key][2] != CHUNKS:
                        bad.append((key, results[key][2]))
                a, b = CHUNKS / results["a"][1], CHUNKS / results["b"][1]
                raw_tp.append(a)
                ours_tp.append(b)
                tp_ratio.append(b / a)

            raw_ttft, ours_ttft, added = [], [], []
            for i in range(ttft_pairs):
                if i % 2 == 0:
                    a, b = raw(SHORT)[0], _ours(runtime, SHORT)[0]
                else:
                    b, a = _ours(runtime, SHORT)[0], raw(SHORT)[0]
                raw_ttft.append(a)
                ours_ttft.append(b)
                added.append(b - a)
        finally:
            loop.run_until_complete(client.aio.aclose())
            loop.close()
            runtime.shutdown()

    ratio, added_d = dist(tp_ratio), dist(added)
    rows = [
        row(
            FIGURE,
            f"throughput, {CHUNKS:,}-chunk stream (b runtime / a raw SDK)",
            show(dist(ours_tp), "chunks/s", digits=0),
            show(dist(raw_tp), "chunks/s", digits=0),
            show(ratio, digits=3),
            "≥ 0.90",
            ratio["median"] >= 0.90 and not bad,
            f"wrong chunk counts: {bad}" if bad else "",
        ),
        row(
            FIGURE,
            "time to first chunk added by the runtime (b - a, short reply)",
            show(added_d, "ms", 1000, 2),
            f"raw TTFT {show(dist(raw_ttft), 'ms', 1000, 2)}",
            f"b/a {dist(ours_ttft)['median'] / dist(raw_ttft)['median']:.2f}",
            "≤ 1 ms median",
            added_d["median"] <= 0.001,
            f"ours TTFT {show(dist(ours_ttft), 'ms', 1000, 2)}",
        ),
    ]
    details = {
        "pairs": pairs,
        "ttft_pairs": ttft_pairs,
        "raw_chunks_per_s": raw_tp,
        "ours_chunks_per_s": ours_tp,
        "raw_ttft_s": dist(raw_ttft),
        "ours_ttft_s": dist(ours_ttft),
        "added_ttft_s": added_d,
    }
    return rows, details


if __name__ == "__main__":
    main("streaming", __doc__, run)
