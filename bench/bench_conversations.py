"""Figure 9: what keeping conversations costs, and what the reply cache saves.

(a) Streaming throughput of a named agent with the store on (messages appended, the reply
checkpointed each second) against the store off, interleaved pairs, one ratio per pair.
(b) A 50-turn conversation replayed by a new runtime on the same store (a kernel restart
plus Run All): the whole replay against the live run's time, same prompts.
(c) The reply cache's cost per turn at 10,000 recorded replies: the request's key (a hash of
a 20-message request) plus the lookup, hits and misses.

Targets: (a) ratio >= 0.97; (b) the whole replay < 1 s; (c) < 1 ms per turn.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from _common import dist, main, row, runtime_config, show

from agentrt_jupyter import AgentConfig, AgentRuntime, TextDelta
from agentrt_jupyter.agent import reply_key
from agentrt_jupyter.backends.base import ModelRequest
from agentrt_jupyter.content import TextPart
from agentrt_jupyter.conversation import ConversationMessage, Usage
from agentrt_jupyter.server.process import LocalServer
from agentrt_jupyter.store import CachedReply, Store

FIGURE = "9. Conversations"
CHUNKS = 10_000
TURNS = 50
CACHED = 10_000


def _stream(runtime: AgentRuntime, name: str | None) -> float:
    """Chunks per second of one `@@tiny` stream through a (named) agent."""
    agent = runtime.create_agent(name=name, fresh=True) if name else runtime.create_agent()
    start = time.perf_counter()
    count = sum(1 for e in runtime.chat(agent, f"@@tiny {CHUNKS}") if isinstance(e, TextDelta))
    elapsed = time.perf_counter() - start
    assert count == CHUNKS, count
    runtime.delete(agent)
    return CHUNKS / elapsed


def _throughput(server: LocalServer, home: Path, pairs: int) -> tuple[list[float], ...]:
    stored = AgentRuntime(runtime_config(server, store_path=home / "tp.sqlite3"))
    plain = AgentRuntime(runtime_config(server))
    try:
        for runtime, name in ((stored, "warm"), (plain, None)):
            _stream(runtime, name)
        on, off, ratios = [], [], []
        for i in range(pairs):
            order = [(stored, "writer"), (plain, None)]
            results = [_stream(rt, n) for rt, n in (order if i % 2 == 0 else order[::-1])]
            a, b = (results[0], results[1]) if i % 2 == 0 else (results[1], results[0])
            on.append(a)
            off.append(b)
            ratios.append(a / b)
        return on, off, ratios
    finally:
        stored.shutdown()
        plain.shutdown()


def _replay(server: LocalServer, home: Path, runs: int) -> tuple[list[float], list[float], int]:
    """(live run seconds, replay seconds, server requests during the replays)."""
    live_times, replay_times = [], []
    requests_during_replay = 0
    for run in range(runs):
        path = home / f"replay-{run}.sqlite3"
        prompts = [f"turn {i} of run {run}: tell me about item {i}" for i in range(TURNS)]
        config = runtime_config(server, store_path=path, reply_cache=True)
        with AgentRuntime(config) as runtime:
            agent = runtime.create_agent(name="notebook")
            start = time.perf_counter()
            live = [agent.chat(p).text(timeout=30) for p in prompts]
            live_times.append(time.perf_counter() - start)
        before = len(server.requests())
        with AgentRuntime(config) as runtime:  # the restarted kernel
            agent = runtime.create_agent(name="notebook", fresh=True)
            start = time.perf_counter()
            replayed = [agent.chat(p).text(timeout=30) for p in prompts]
            replay_times.append(time.perf_counter() - start)
        requests_during_replay += len(server.requests()) - before
        assert replayed == live
    return live_times, replay_times, requests_during_replay


def _lookup(home: Path, samples: int) -> tuple[list[float], list[float]]:
    """Seconds per turn for key + lookup: hits and misses, at CACHED entries."""
    store = Store(home / "cache.sqlite3", cache_max_entries=CACHED + 10)
    config = AgentConfig(system_instruction="Be brief.", temperature=0.2)
    reply = CachedReply((TextPart("a recorded reply " * 20),), Usage(10, 0, 50), "STOP", "m")

    def request(n: int) -> ModelRequest:
        messages = [
            ConversationMessage("user" if i % 2 == 0 else "model", (TextPart(f"m{i} {n}" * 20),), 1)
            for i in range(20)
        ]
        return ModelRequest("gemini-2.5-flash", messages, "Be brief.", config)

    try:
        for n in range(CACHED):
            store.cache_put(reply_key(request(n)), reply)
        hits, misses = [], []
        for n in range(samples):
            for target, pool in ((n % CACHED, hits), (CACHED + n, misses)):
                start = time.perf_counter()
                found = store.cache_get(reply_key(request(target)))
                pool.append(time.perf_counter() - start)
                assert (found is not None) == (pool is hits)
        return hits, misses
    finally:
        store.close()


def run(quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    pairs, runs, samples = (3, 1, 300) if quick else (8, 3, 2000)
    with tempfile.TemporaryDirectory() as scratch, LocalServer.start("scripted") as server:
        home = Path(scratch)
        on, off, ratios = _throughput(server, home, pairs)
        live, replayed, replay_requests = _replay(server, home, runs)
        hits, misses = _lookup(home, samples)
    ratio, replay_d, hit_d, miss_d = dist(ratios), dist(replayed), dist(hits), dist(misses)
    rows = [
        row(
            FIGURE,
            f"streaming throughput, store on / store off ({CHUNKS:,}-chunk stream)",
            show(dist(on), "chunks/s", digits=0),
            show(dist(off), "chunks/s", digits=0),
            show(ratio, digits=3),
            "≥ 0.97",
            ratio["median"] >= 0.97,
        ),
        row(
            FIGURE,
            f"replay of a {TURNS}-turn conversation by a new runtime (restart + Run All)",
            show(replay_d, "ms", 1000, 0),
            f"live run {show(dist(live), 'ms', 1000, 0)}",
            f"{replay_d['median'] / dist(live)['median']:.2f} of live",
            "< 1 s, zero requests",
            replay_d["max"] < 1.0 and replay_requests == 0,
            f"{replay_requests} model requests during the replays",
        ),
        row(
            FIGURE,
            f"reply cache per turn at {CACHED:,} entries: key + lookup (hit; miss)",
            show(hit_d, "ms", 1000, 3),
            f"miss {show(miss_d, 'ms', 1000, 3)}",
            "—",
            "< 1 ms",
            hit_d["p95"] < 0.001 and miss_d["p95"] < 0.001,
        ),
    ]
    details = {
        "pairs": pairs,
        "ratios": ratios,
        "live_s": live,
        "replay_s": replayed,
        "replay_requests": replay_requests,
        "hit_s": hit_d,
        "miss_s": miss_d,
    }
    return rows, details


if __name__ == "__main__":
    main("conversations", __doc__, run)
