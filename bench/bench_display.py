"""Figure 6: display coalescing of a fast stream into a `%%agent` cell in a real kernel.

A `%%agent` cell streams `@@tiny N` (one-character chunks as fast as the server sends
them, about 5,000 chunks/s through the SDK here). The front end side counts the
update_display_data messages of the cell's reply display: their rate over the stream,
the most in any one-second window, and whether the last one carries the exact reply.
The baseline is the chunk rate (what an uncoalesced display would send).

Target: <= 20 updates per second, and the exact final text.
"""

from __future__ import annotations

import tempfile
from typing import Any

from _common import dist, main, row, show
from _kernel import BenchKernel, agent_kernel, display_updates, first_display_id

from agentrt_jupyter.server.process import LocalServer

FIGURE = "6. Display coalescing"


def trial(kernel: BenchKernel, chunks: int) -> dict[str, Any]:
    msg_id, sent = kernel.send(f"%%agent fast\n@@tiny {chunks}")
    reply = kernel.reply(msg_id, 120)
    reply_id = first_display_id(kernel, msg_id)
    updates = display_updates(kernel, msg_id, reply_id)
    times = [m.at for m in updates]
    span = max(times[-1] - times[0], 1e-9) if len(times) > 1 else 0.0
    # A reply that ends within AgentMagics.live_after is one display, never updated.
    busiest = max((sum(1 for t in times if start <= t < start + 1.0) for start in times), default=0)
    shown = updates or [
        m
        for m in kernel.of(msg_id, "display_data")
        if m.content.get("transient", {}).get("display_id") == reply_id
    ]
    final = shown[-1].content["data"].get("text/plain", "") if shown else ""
    return {
        "updates": len(times),
        "stream_s": reply.at - sent,
        "chunks_per_s": chunks / (reply.at - sent),
        "updates_per_s": (len(times) - 1) / span if span else 0.0,
        "busiest_second": busiest,
        "exact_text": final == "x" * chunks,
    }


def run(quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    chunks = 10_000 if quick else 20_000
    reps = 2 if quick else 5
    with (
        LocalServer.start("scripted") as server,
        tempfile.TemporaryDirectory() as home,
        agent_kernel(server, home) as kernel,
    ):
        trial(kernel, 200)
        trials = [trial(kernel, chunks) for _ in range(reps)]
    rate = dist(t["updates_per_s"] for t in trials)
    busiest = max(t["busiest_second"] for t in trials)
    chunk_rate = dist(t["chunks_per_s"] for t in trials)
    exact = all(t["exact_text"] for t in trials)
    rows = [
        row(
            FIGURE,
            f"display updates/s, {chunks:,} one-character chunks into a %%agent cell",
            f"{show(rate, '/s', digits=1)}; busiest second {busiest}",
            f"stream {show(chunk_rate, 'chunks/s', digits=0)}",
            f"{rate['median'] / chunk_rate['median']:.4f} updates per chunk",
            "<= 20/s, exact final text",
            busiest <= 20 and exact,
            "final text exact" if exact else "final text NOT exact",
        )
    ]
    return rows, {"trials": trials}


if __name__ == "__main__":
    main("display", __doc__, run)
