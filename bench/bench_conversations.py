"""Figure 9: what keeping conversations costs, and what the reply cache saves.

(a) Streaming throughput of a named agent with the store on (messages appended, the reply
checkpointed each second) against the store off, interleaved pairs, one ratio per pair.
(b) Run All of a 50-cell `%%agent` notebook in a real kernel (nbclient, scripted backend),
then again in a new kernel (a restart): the agent cells' total time replayed from the reply
cache against the live run's, and the replies compared.
(c) The reply cache's cost per turn at 10,000 recorded replies: the request's key (a hash of
a 20-message request) plus the lookup, hits and misses.

Targets: (a) ratio >= 0.97; (b) the whole replay < 1 s; (c) < 1 ms per turn.
"""

from __future__ import annotations

import os
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import nbformat
from _common import dist, main, row, runtime_config, show
from jupyter_client import KernelManager
from nbclient import NotebookClient

from agentrt_jupyter import AgentConfig, AgentRuntime, TextDelta
from agentrt_jupyter.backends.base import ModelRequest
from agentrt_jupyter.backends.cache import reply_key
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


def _notebook() -> Any:
    """`%load_ext` then TURNS `%%agent` cells (the reply cache is on for cells)."""
    cells = [nbformat.v4.new_code_cell("%load_ext agentrt_jupyter")]
    cells += [
        nbformat.v4.new_code_cell(f"%%agent notes\nTell me about item {i} of the inventory.")
        for i in range(TURNS)
    ]
    return nbformat.v4.new_notebook(cells=cells)


def _run_all(home: Path) -> tuple[float, list[Any]]:
    """Run All in a fresh kernel: (seconds the agent cells took, their outputs)."""
    notebook = _notebook()
    env = {**os.environ, "AGENTRT_HOME": str(home), "AGENTRT_BACKEND": "scripted"}
    env["JPY_SESSION_NAME"] = str(home / "inventory.ipynb")
    env.pop("GOOGLE_API_KEY", None)
    env.pop("GEMINI_API_KEY", None)
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel(env=env)
    try:
        NotebookClient(notebook, km=manager, timeout=120, record_timing=True).execute()
    finally:
        manager.shutdown_kernel(now=True)
    cells = notebook.cells[1:]
    seconds = 0.0
    for cell in cells:
        timing = cell.metadata["execution"]
        started = datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00"))
        ended = datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
        seconds += (ended - started).total_seconds()
    replies = [c.outputs[0].get("data", {}).get("text/markdown") for c in cells]  # not footers
    return seconds, replies


def _replay(home: Path, runs: int) -> tuple[list[float], list[float], int]:
    """(live Run All seconds, Run All after a restart seconds, cells not replayed)."""
    live_times, replay_times = [], []
    not_replayed = 0
    for run in range(runs):
        scratch = home / f"notebook-{run}"
        scratch.mkdir()
        live, live_out = _run_all(scratch)
        again, again_out = _run_all(scratch)  # a new kernel: the restart
        live_times.append(live)
        replay_times.append(again)
        not_replayed += sum(a != b for a, b in zip(live_out, again_out, strict=True))
    return live_times, replay_times, not_replayed


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
        live, replayed, replay_requests = _replay(home, runs)
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
            f"Run All of a {TURNS}-cell %%agent notebook after a kernel restart (agent cells)",
            show(replay_d, "ms", 1000, 0),
            f"live Run All {show(dist(live), 'ms', 1000, 0)}",
            f"{replay_d['median'] / dist(live)['median']:.2f} of live",
            "< 1 s, same outputs",
            replay_d["max"] < 1.0 and replay_requests == 0,
            f"{replay_requests} cells whose reply differed after the restart",
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
        "cells_not_replayed": replay_requests,
        "hit_s": hit_d,
        "miss_s": miss_d,
    }
    return rows, details


if __name__ == "__main__":
    main("conversations", __doc__, run)
