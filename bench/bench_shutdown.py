"""Figure 8: `AgentRuntime.shutdown()` while 100 agents stream.

Each repetition starts a runtime, has 100 agents stream a slow reply (`@@delay 20`,
250 chunks: 5 s), waits until every one has produced text, then times `shutdown()`. The
baseline is the shutdown of a runtime with one idle agent that has chatted (the SDK
client exists), measured in the same run. The server's log confirms each stream ended.

Target: < 1 s.
"""

from __future__ import annotations

import time
from typing import Any

from _common import dist, main, row, runtime_config, show

from agentrt_jupyter import AgentRuntime
from agentrt_jupyter.server.process import LocalServer

FIGURE = "8. Shutdown"
AGENTS = 100
PROMPT = "@@delay 20\n@@tiny 250"  # 5 s: far longer than the target


def idle_shutdown(server: LocalServer) -> float:
    runtime = AgentRuntime(runtime_config(server))
    runtime.chat(runtime.create_agent(), "hello").text()
    start = time.perf_counter()
    runtime.shutdown()
    return time.perf_counter() - start


def busy_shutdown(server: LocalServer) -> tuple[float, int, int]:
    """Seconds for shutdown() with AGENTS streaming, how many streams the server saw end,
    and how many turns ran to completion instead of being cancelled."""
    runtime = AgentRuntime(runtime_config(server))
    since = server.requests()[-1]["id"] if server.requests() else 0
    agents = [runtime.create_agent() for _ in range(AGENTS)]
    handles = [runtime.chat(agent, PROMPT) for agent in agents]
    deadline = time.monotonic() + 60
    while not all(h.partial_text for h in handles) and time.monotonic() < deadline:
        time.sleep(0.01)
    start = time.perf_counter()
    runtime.shutdown(30)
    elapsed = time.perf_counter() - start
    completed = sum(h.status == "complete" for h in handles)
    ended = 0
    for record in server.requests(since):
        if record.get("kind") == "stream":
            ended += server.wait_for_request(record["id"], timeout=10)["finished"] is not None
    return elapsed, ended, completed


def run(quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    reps = 3 if quick else 5
    idle, busy, ended, completed = [], [], [], []
    with LocalServer.start("scripted") as server:
        idle_shutdown(server)  # warm imports
        for _ in range(reps):
            idle.append(idle_shutdown(server))
            seconds, closed, uncancelled = busy_shutdown(server)
            busy.append(seconds)
            ended.append(closed)
            completed.append(uncancelled)
    busy_d, idle_d = dist(busy), dist(idle)
    all_closed = all(n == AGENTS for n in ended)
    notes = [] if all_closed else [f"streams the server saw end, per run: {ended}"]
    if any(completed):
        notes.append(f"turns that ran to completion instead of being cancelled: {completed}")
    rows = [
        row(
            FIGURE,
            f"shutdown() with {AGENTS} streaming agents",
            show(busy_d, "ms", 1000, 0),
            f"idle runtime {show(idle_d, 'ms', 1000, 0)}",
            f"{busy_d['median'] / idle_d['median']:.1f}x",
            "< 1 s",
            busy_d["max"] < 1.0 and all_closed,
            "; ".join(notes),
        )
    ]
    details = {"busy_s": busy, "idle_s": idle, "streams_ended": ended, "completed": completed}
    return rows, details


if __name__ == "__main__":
    main("shutdown", __doc__, run)
