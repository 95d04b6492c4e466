"""Figure 11: fairness — a new turn's first chunk while many streams are busy.

N agents each stream `@@tiny M` (one-character chunks, as fast as the server sends them).
While they run, a fresh agent sends a short prompt ("probe") and we time, from `chat()`,
(1) the request reaching the server (its log's `received`) and (2) the first text chunk
reaching the caller (the `ChatHandle` iterated on the main thread). Where the delay sits:

- **same**: load and probe in one runtime on one server (issue 17 item 8's case);
- **client only**: the probe goes to a second, idle server: the runtime's loop and the
  hand-off to the caller, with the load's server out of the way;
- **server only**: the load comes from another process (its own runtime) on the same
  server, the probe from an idle runtime here: the co-located server's share;
- **read by threads**: as *same*, with each busy stream iterated by its own thread (as
  cells following their turns do): the hand-off's share;
- **idle**: the probe alone (the baseline).

Target: the probe's first chunk under load (same) within 0.5 s (p95) at N streams busy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from typing import Any

from _common import dist, main, row, runtime_config, show

from agentrt_jupyter import AgentRuntime, ChatHandle, TextDelta
from agentrt_jupyter.server.process import LocalServer

FIGURE = "11. Fairness"
TARGET_S = 0.5
LOAD_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from agentrt_jupyter import AgentRuntime, RuntimeConfig
    config = RuntimeConfig(base_url=os.environ["URL"], api_key=os.environ["KEY"],
                           api_version="v1beta", store_path=None, idle_chunk_timeout=120.0)
    runtime = AgentRuntime(config)
    agents, chunks = int(sys.argv[1]), int(sys.argv[2])
    handles = [runtime.create_agent().chat(f"@@tiny {chunks}\\nload {i}") for i in range(agents)]
    for handle in handles:
        next(iter(handle.events(timeout=60)))
    print("flowing", flush=True)
    sys.stdin.readline()
    runtime.shutdown(5)
    """
)


def probe(runtime: AgentRuntime, server: LocalServer, number: int) -> tuple[float, float]:
    """(seconds until the server received the probe, seconds to its first text chunk)."""
    agent = runtime.create_agent(base_url=server.url, api_key=server.token)
    marker = f"probe{number}x{time.time_ns()}"
    sent_wall, sent = time.time(), time.perf_counter()
    handle: ChatHandle = runtime.chat(agent, f"hello {marker}")
    first = None
    for event in handle:
        if isinstance(event, TextDelta) and first is None:
            first = time.perf_counter() - sent
    assert first is not None
    received = next(
        r["received"] for r in reversed(server.requests()) if marker in str(r.get("body"))
    )
    runtime.delete(agent)
    return received - sent_wall, first


def start_load(runtime: AgentRuntime, agents: int, chunks: int) -> list[ChatHandle]:
    handles = [
        runtime.chat(runtime.create_agent(), f"@@tiny {chunks}\nload {i}") for i in range(agents)
    ]
    for handle in handles:
        next(iter(handle.events(timeout=60)))
    return handles


def drain(handle: ChatHandle) -> None:
    for _ in handle:
        pass


def still_streaming(handles: list[ChatHandle]) -> int:
    return sum(not h.done for h in handles)


def measure(
    probes: int, sample: Callable[[int], tuple[float, float]], busy: Callable[[], int]
) -> dict[str, Any]:
    reached, first, streams = [], [], []
    for i in range(probes):
        streams.append(busy())
        r, f = sample(i)
        reached.append(r)
        first.append(f)
        time.sleep(0.2)
    return {"reached": dist(reached), "first": dist(first), "busy": min(streams)}


def run(quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    agents, chunks, probes = (20, 20_000, 8) if quick else (50, 20_000, 20)
    results: dict[str, dict[str, Any]] = {}
    with LocalServer.start("scripted") as loaded, LocalServer.start("scripted") as idle:
        runtime = AgentRuntime(runtime_config(loaded, idle_chunk_timeout=120.0))
        try:
            probe(runtime, loaded, -1)  # warm: imports, connections
            results["idle"] = measure(probes, lambda i: probe(runtime, loaded, i), lambda: 0)
            handles = start_load(runtime, agents, chunks)
            busy = lambda: still_streaming(handles)  # noqa: E731
            results["same"] = measure(probes, lambda i: probe(runtime, loaded, i), busy)
            results["client only"] = measure(probes, lambda i: probe(runtime, idle, i), busy)
            for handle in handles:
                handle.cancel()
            handles = start_load(runtime, agents, chunks)
            readers = [threading.Thread(target=drain, args=(h,), daemon=True) for h in handles]
            for reader in readers:
                reader.start()
            results["read by threads"] = measure(probes, lambda i: probe(runtime, loaded, i), busy)
            for handle in handles:
                handle.cancel()
            for reader in readers:
                reader.join(10)
        finally:
            runtime.shutdown()
        env = dict(os.environ, URL=loaded.url, KEY=loaded.token)
        load = subprocess.Popen(
            [sys.executable, "-c", LOAD_SCRIPT, str(agents), str(chunks)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            assert load.stdout is not None and load.stdout.readline().strip() == "flowing"
            fresh = AgentRuntime(runtime_config(loaded))
            try:
                probe(fresh, loaded, -2)
                alive = lambda: agents if load.poll() is None else 0  # noqa: E731
                results["server only"] = measure(probes, lambda i: probe(fresh, loaded, i), alive)
            finally:
                fresh.shutdown()
        finally:
            assert load.stdin is not None
            load.stdin.write("\n")
            load.stdin.flush()
            load.wait(30)

    same = results["same"]["first"]
    baseline = f"idle {show(results['idle']['first'], 's', 1, 3)}"
    rows = [
        row(
            FIGURE,
            f"first chunk of a new turn, {agents} streams of {chunks:,} tiny chunks busy",
            show(same, "s", 1, 3),
            baseline,
            f"{same['median'] / results['idle']['first']['median']:.0f}x idle",
            f"p95 ≤ {TARGET_S} s",
            same["p95"] <= TARGET_S,
            f"≥ {results['same']['busy']} streams busy at each probe",
        )
    ]
    for variant in ("same", "read by threads", "client only", "server only"):
        values = results[variant]
        rows.append(
            row(
                FIGURE,
                f"where: {variant} (request at server / first chunk)",
                f"{show(values['reached'], 's', 1, 3)} / {show(values['first'], 's', 1, 3)}",
                baseline,
                "—",
                "—",
                None,
                f"≥ {values['busy']} streams busy",
            )
        )
    details = {"agents": agents, "chunks": chunks, "probes": probes, "results": results}
    return rows, details


if __name__ == "__main__":
    main("fairness", __doc__, run)
