"""Figure 2: many agents on one runtime.

N agents each stream a 200-chunk reply at once (N = 10, 100, 1,000). While they run, the
main thread times cheap commands (`is_idle` and `history` of an idle probe agent) and
compares them with the same commands on the idle runtime. The aggregate throughput is
compared with one agent alone, and with N raw SDK streams in a plain asyncio loop.
Memory per idle agent is the tracemalloc delta over creating idle agents (handles
included, no history), measured in three batches.

Targets: 1,000 agents all complete without errors; dispatch latency p99 < 20 ms under
that load; memory per idle agent < 20 KB.
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from typing import Any

from _common import MODEL, dist, main, row, runtime_config, show
from google import genai
from google.genai import types

from agentrt_jupyter import AgentRuntime
from agentrt_jupyter.server.process import LocalServer

FIGURE = "2. Concurrency"
CHUNKS = 200
PROMPT = f"@@tiny {CHUNKS}"
IDLE_BATCH = 1_000


def idle_agent_bytes(runtime: AgentRuntime, batches: int) -> list[float]:
    """Bytes per idle agent (tracemalloc, all threads) over `batches` of new agents."""
    warm = runtime.create_agent()
    runtime.chat(warm, "hello").text()  # the SDK client exists before we count
    kept = []
    per_agent = []
    for _ in range(batches):
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        kept.append([runtime.create_agent() for _ in range(IDLE_BATCH)])
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        per_agent.append((after - before) / IDLE_BATCH)
    return per_agent


def command_latencies(runtime: AgentRuntime, probe: Any, until: Any, limit: int) -> list[float]:
    """Time `is_idle` and `history` round trips from this thread until `until()` is true."""
    latencies = []
    while len(latencies) < limit and not until():
        for command in (runtime.is_idle, runtime.history):
            start = time.perf_counter()
            command(probe)
            latencies.append(time.perf_counter() - start)
        time.sleep(0.002)
    return latencies


def load(runtime: AgentRuntime, probe: Any, n: int) -> dict[str, Any]:
    """N agents stream at once; returns throughput, errors and command latencies."""
    agents = [runtime.create_agent() for _ in range(n)]

    async def start_all() -> list[Any]:
        return await asyncio.gather(*(runtime.aio.chat(agent, PROMPT) for agent in agents))

    start = time.perf_counter()
    handles = asyncio.run(start_all())
    started = time.perf_counter() - start
    deadline = time.monotonic() + 600

    def finished() -> bool:
        return all(h.done for h in handles) or time.monotonic() > deadline

    latencies = command_latencies(runtime, probe, finished, 200_000)
    errors, wrong, durations = [], 0, []
    for handle in handles:
        try:
            result = handle.result(timeout=max(1.0, deadline - time.monotonic()))
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        wrong += result.text != "x" * CHUNKS
        durations.append(result.duration)
    elapsed = time.perf_counter() - start
    for agent in agents:
        runtime.delete(agent)
    return {
        "n": n,
        "elapsed_s": elapsed,
        "chunks_per_s": n * CHUNKS / elapsed,
        "errors": errors[:5],
        "error_count": len(errors),
        "wrong_text": wrong,
        "completed": len(durations),
        "turn_duration_s": dist(durations),
        "command_latency_s": dist(latencies),
        "all_chats_started_s": started,
        "_latencies": latencies,
    }


async def _raw_streams(client: genai.Client, n: int) -> float:
    async def one() -> None:
        stream = await client.aio.models.generate_content_stream(model=MODEL, contents=PROMPT)
        async for chunk in stream:
            _ = chunk.text

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return n * CHUNKS / (time.perf_counter() - start)


def raw_throughput(server: LocalServer, n: int) -> float:
    """N concurrent raw SDK streams in a plain asyncio program (after one warm-up)."""

    async def go() -> float:
        client = genai.Client(
            api_key=server.token,
            http_options=types.HttpOptions(base_url=server.url, api_version="v1beta"),
        )
        try:
            await _raw_streams(client, 1)
            return await _raw_streams(client, n)
        finally:
            await client.aio.aclose()

    return asyncio.run(go())


def run(quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    sizes = [10, 100, 1000]
    reps = {10: 2, 100: 1, 1000: 1} if quick else {10: 3, 100: 3, 1000: 2}
    with LocalServer.start("scripted") as server:
        runtime = AgentRuntime(runtime_config(server))
        try:
            memory = idle_agent_bytes(runtime, 2 if quick else 3)
        finally:
            runtime.shutdown(30)
        runtime = AgentRuntime(runtime_config(server))
        try:
            probe = runtime.create_agent()
            runtime.chat(probe, "hello").text()
            idle = command_latencies(runtime, probe, lambda: False, 400 if quick else 2000)
            single = [load(runtime, probe, 1)["chunks_per_s"] for _ in range(3)]
            curve: dict[int, list[dict[str, Any]]] = {
                n: [load(runtime, probe, n) for _ in range(reps[n])] for n in sizes
            }
        finally:
            runtime.shutdown(30)
        raw = {n: [raw_throughput(server, n) for _ in range(reps[n])] for n in sizes}

    idle_d = dist(idle)
    single_d = dist(single)
    rows = []
    big = curve[1000]
    completed = sum(r["completed"] for r in big)
    failures = sum(r["error_count"] + r["wrong_text"] for r in big)
    rows.append(
        row(
            FIGURE,
            "1,000 agents x 200-chunk stream at once: completed without error",
            f"{completed:,} / {1000 * len(big):,} turns",
            "—",
            "—",
            "all, no errors",
            failures == 0 and completed == 1000 * len(big),
            "; ".join(e for r in big for e in r["errors"])[:300],
        )
    )
    under = dist([x for r in big for x in _raw_latencies(r)])
    rows.append(
        row(
            FIGURE,
            "command dispatch latency (is_idle/history) under 1,000-agent load",
            show(under, "ms", 1000, 2) + f", p99 {under['p99'] * 1000:.2f} ms",
            f"idle runtime {show(idle_d, 'ms', 1000, 3)}",
            f"p99 {under['p99'] / idle_d['p99']:.1f}x idle p99",
            "p99 < 20 ms",
            under["p99"] < 0.020,
        )
    )
    mem = dist(memory)
    rows.append(
        row(
            FIGURE,
            "memory per idle agent (tracemalloc, 1,000-agent batches)",
            show(mem, "KB", 1 / 1024, 2),
            "empty runtime (delta)",
            "—",
            "< 20 KB",
            mem["max"] < 20 * 1024,
        )
    )
    for n in sizes:
        tp = dist(r["chunks_per_s"] for r in curve[n])
        raw_d = dist(raw[n])
        latency = dist([x for r in curve[n] for x in _raw_latencies(r)])
        turn = dist([r["turn_duration_s"]["median"] for r in curve[n]])
        rows.append(
            row(
                FIGURE,
                f"curve: {n:,} agents — aggregate throughput; dispatch p50/p99; turn p50",
                f"{show(tp, 'chunks/s', digits=0)}; dispatch {latency['median'] * 1000:.2f}/"
                f"{latency['p99'] * 1000:.2f} ms; turn {turn['median']:.2f} s",
                f"raw SDK x{n}: {show(raw_d, 'chunks/s', digits=0)}; one agent "
                f"{single_d['median']:,.0f} chunks/s",
                f"{tp['median'] / raw_d['median']:.2f} of raw",
                "informational",
                None,
            )
        )
    details = {
        "idle_agent_bytes": memory,
        "idle_command_latency_s": idle_d,
        "single_agent_chunks_per_s": single,
        "raw_chunks_per_s": raw,
        "curve": {n: [_summary(r) for r in curve[n]] for n in sizes},
    }
    return rows, details


def _raw_latencies(result: dict[str, Any]) -> list[float]:
    return result["_latencies"]


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if not k.startswith("_")}


if __name__ == "__main__":
    main("concurrency", __doc__, run)
