"""Figure 3: a real kernel stays responsive while 20 agents stream in the background.

In one ipykernel (jupyter_client, like a front end), the round trip of a trivial cell
(`pass`: execute_request sent -> execute_reply received) is measured while the kernel is
idle (before the load and after it, to cancel drift), then while 20 `%%agent --background`
turns stream (`@@delay 20`: 50 chunks/s each, 1,000 chunks/s in all, each reply display
updated up to 20 times a second).

Targets: median under load <= 1.5x the idle median; p95 under load < 50 ms.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

from _common import dist, main, row, show
from _kernel import BenchKernel, agent_kernel

from agentrt_jupyter.server.process import LocalServer

FIGURE = "3. Kernel responsiveness"
AGENTS = 20
GAP = 0.02
"""Pause between probes, so the probe itself does not load the kernel."""


def probe(kernel: BenchKernel, count: int, until: Any = None) -> list[float]:
    """Round trips of `pass` cells, `count` at most, stopping early when `until()`."""
    times = []
    for _ in range(count):
        if until is not None and until():
            break
        times.append(kernel.run("pass")[1])
        time.sleep(GAP)
    return times


def run(quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    chunks = 300 if quick else 600  # 6 s or 12 s per turn
    idle_count = 60 if quick else 200
    with (
        LocalServer.start("scripted") as server,
        tempfile.TemporaryDirectory() as home,
        agent_kernel(server, home) as kernel,
    ):
        kernel.run("%%agent warm\nhello")
        probe(kernel, 10)
        idle = probe(kernel, idle_count // 2)
        cells = []
        for i in range(AGENTS):
            msg_id, _ = kernel.send(f"%%agent bg{i} --background\n@@delay 20\n@@tiny {chunks}")
            cells.append(msg_id)
        for msg_id in cells:
            kernel.reply(msg_id)
        started = time.monotonic()

        def ending() -> bool:
            return time.monotonic() - started > chunks * 0.02 * 0.8

        loaded = probe(kernel, 100_000, ending)
        kernel.run("%agent wait", timeout=120)
        idle += probe(kernel, idle_count // 2)
        updates = sum(len(kernel.of(m, "update_display_data")) for m in cells)

    idle_d, load_d = dist(idle), dist(loaded)
    ratio = load_d["median"] / idle_d["median"]
    rows = [
        row(
            FIGURE,
            f"`pass` round trip while {AGENTS} agents stream in the background",
            show(load_d, "ms", 1000, 1),
            f"idle kernel {show(idle_d, 'ms', 1000, 1)}",
            f"{ratio:.2f}x median",
            "median <= 1.5x idle",
            ratio <= 1.5,
        ),
        row(
            FIGURE,
            f"`pass` round trip p95 while {AGENTS} agents stream",
            f"{load_d['p95'] * 1000:.1f} ms",
            f"idle p95 {idle_d['p95'] * 1000:.1f} ms",
            f"{load_d['p95'] / idle_d['p95']:.2f}x",
            "p95 < 50 ms",
            load_d["p95"] < 0.050,
            f"{updates:,} display updates from the background cells",
        ),
    ]
    return rows, {"idle_s": idle_d, "loaded_s": load_d, "display_updates": updates}


if __name__ == "__main__":
    main("kernel_responsiveness", __doc__, run)
